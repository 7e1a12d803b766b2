"""Pretrained tags: the weights shipped in the checkout's `checkpoints/`, found by name and checked before use.

`kan_mixer_tiny_p4_32.cifar10_bspline` is a timm model name with a pretrained tag. Its files sit in the
checkpoints directory (`$KANVISION_CHECKPOINTS`, else `checkpoints/` beside the `kanvision` package of the
checkout) as `<tag>/model.safetensors` + `config.json` (the `kanvision export` layout), listed with their sha256
in `manifest.json`. Nothing is downloaded: timm's `file` source is filled in at build time with the path
resolved here, after the hash has been checked against the manifest.

A tag fixes the model options its weights were trained with (`TAGS`); the zoo's factory takes them from the
tag, so `timm.create_model(tag, pretrained=True)` needs no `kan=`, and a contradicting one is refused.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kanvision.hub.checkpoints import CONFIG_NAME, CheckpointError, load_pretrained, read_weights, sha256_file

__all__ = [
    "ENV", "TAGS", "PretrainedError", "apply_tag", "checkpoints_dir", "is_tag", "load", "locate",
    "read_manifest", "resolve", "tag_cfgs", "untagged_default",
]

ENV = "KANVISION_CHECKPOINTS"
MANIFEST_NAME = "manifest.json"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The training recipe of each architecture with shipped weights (all its tags differ only in the model options).
RECIPES = {"kan_mixer_tiny_p4_32": "configs/pretrained/cifar10_kan_mixer_tiny_p4_32.yaml",
           "kan_convmixer_128_8_p4": "configs/pretrained/cifar10_kan_convmixer_128_8_p4.yaml"}

def _tags() -> dict[str, dict[str, Any]]:
    """<architecture>.cifar10_<suffix>[_seed<s>] -> the model options its weights were trained with (every other
    option is the model's default). The Mixer recipe is trained for the MLP, every built-in kind, and the MLP sized
    like the B-spline model; the ConvMixer pair is the Hessian study's (MLP vs B-spline channel mixer). Seed 0 is
    each recipe's first weight; seed 1 (tag suffix _seed1) the second of the two the weights table averages."""
    from kanvision.kinds.registry import KINDS

    by_arch = {
        "kan_mixer_tiny_p4_32": {"none": {"kan": "none"}, **{k: {"kan": k} for k in KINDS},
                                 "none_match_bspline": {"kan": "none", "match_params": "bspline"}},
        "kan_convmixer_128_8_p4": {"none": {"kan": "none"}, "bspline": {"kan": "bspline"}},
    }
    return {f"{arch}.cifar10_{suffix}{'' if seed == 0 else f'_seed{seed}'}": options
            for arch, runs in by_arch.items() for suffix, options in runs.items() for seed in SEEDS}


SEEDS = (0, 1)
TAGS: dict[str, dict[str, Any]] = _tags()
# Options that change the architecture, with the value a tag implies when it does not name them.
_ARCH_OPTIONS = {"kan": "none", "kan_hidden": None, "kan_kwargs": None, "match_params": None,
                 "kan_token_mixing": False}


class PretrainedError(CheckpointError):
    """A pretrained tag that cannot be used: no checkpoints directory, no manifest entry, missing or changed file."""


# ------------------------------------------------------------------------------------------- locating

def checkpoints_dir() -> Path:
    """$KANVISION_CHECKPOINTS, else the checkout's `checkpoints/` (beside the kanvision package), else the weights
    installed with the package (`pip install .` puts checkpoints/ in as kanvision.weights)."""
    env = os.environ.get(ENV)
    if env:
        return Path(env).expanduser()
    checkout = Path(__file__).resolve().parents[2] / "checkpoints"
    if (checkout / MANIFEST_NAME).is_file():
        return checkout
    installed = Path(__file__).resolve().parents[1] / "weights"
    return installed if (installed / MANIFEST_NAME).is_file() else checkout


def _where() -> str:
    how = (f"the directory {ENV} names" if os.environ.get(ENV) else
           f"{ENV} is not set, so this is the checkout's checkpoints/")
    return f"pretrained weights live there as <tag>/model.safetensors + {MANIFEST_NAME} ({how}); set {ENV} to the " \
           "directory that holds them"


def read_manifest(directory: Path | None = None, tag: str | None = None) -> dict[str, dict[str, Any]]:
    """{tag: entry} from manifest.json (`{"entries": [{"tag", "file", "sha256", ...}]}`)."""
    directory = checkpoints_dir() if directory is None else directory
    path = directory / MANIFEST_NAME
    who = f"{tag}: " if tag else ""
    if not directory.is_dir():
        raise PretrainedError(f"{who}no checkpoints directory {directory}: {_where()}")
    if not path.is_file():
        raise PretrainedError(f"{who}{directory} has no {MANIFEST_NAME}: {_where()}")
    try:
        entries = json.loads(path.read_text())["entries"]
        return {e["tag"]: e for e in entries}
    except (ValueError, KeyError, TypeError) as e:
        raise PretrainedError(f"{path}: not a manifest ({type(e).__name__}: {e}); it holds "
                              '{"entries": [{"tag", "file", "sha256", ...}]}, as scripts/ship_pretrained.py '
                              "writes it") from None


def resolve(tag: str) -> Path:
    """The weights file of `tag`, its sha256 checked against the manifest (and its config.json against the tag)."""
    directory = checkpoints_dir()
    manifest = read_manifest(directory, tag)
    entry = manifest.get(tag)
    if entry is None:
        listed = ", ".join(sorted(manifest)) or "nothing"
        raise PretrainedError(f"{tag}: no entry in {directory / MANIFEST_NAME} (it lists {listed}): not shipped in "
                              f"this checkout yet, or elsewhere: {_where()}")
    weights = directory / entry["file"]
    if not weights.is_file():
        raise PretrainedError(f"{tag}: {weights} is missing, though {MANIFEST_NAME} lists it: {_where()}")
    expected, actual = entry.get("sha256"), sha256_file(weights)
    if expected != actual:
        raise PretrainedError(f"{weights}: sha256 {actual} does not match {MANIFEST_NAME}'s {expected} for {tag}: the "
                              "file changed after it was shipped (truncated copy, Git LFS pointer, edited); restore it "
                              f"from the repository (git lfs pull / git restore) or set {ENV} to an intact copy")
    config_path = weights.parent / CONFIG_NAME
    if tag in TAGS and config_path.is_file():
        _check_config(tag, json.loads(config_path.read_text()), config_path)
    return weights


def _check_config(tag: str, config: dict[str, Any], source: Path) -> None:
    """PretrainedError when an export's model is not the one its tag stands for (shipped under the wrong tag)."""
    arch = tag.split(".", 1)[0]
    args = dict(config.get("model_args") or {})
    have = {k: _norm(k, args.get(k, v)) for k, v in _ARCH_OPTIONS.items()}
    want = {k: _norm(k, TAGS[tag].get(k, v)) for k, v in _ARCH_OPTIONS.items()}
    if config.get("architecture") != arch or have != want:
        held = " ".join([str(config.get("architecture"))] + [f"{k}={have[k]!r}" for k in have if have[k] != want[k]])
        raise PretrainedError(f"{source}: holds {held} weights, not what {tag} stands for ({_describe(tag)}): it was "
                              "shipped under the wrong tag; re-ship the right run into it (scripts/ship_pretrained.py)")


def _norm(key: str, value: Any) -> Any:
    if key == "kan":
        from kanvision.layers.kan_mlp import normalize_kan_kind
        return normalize_kan_kind(value)
    if key == "match_params" and value is not None:
        return str(value).lower()
    if key == "kan_kwargs":
        return dict(value) if value else None
    return value


def _describe(tag: str) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in TAGS[tag].items())


def is_tag(name: str) -> bool:
    """`name` is written as `<registered model>.<tag>` (not a path): a shipped tag or a manifest entry."""
    import timm

    name = str(name)
    if name in TAGS:
        return True
    return "." in name and os.sep not in name and "/" not in name and timm.is_model(name) and \
        name.split(".", 1)[1] not in ("ckpt", "safetensors", "json")


def locate(source: str | os.PathLike) -> Path:
    """An existing path as given (a path wins over a tag of the same spelling); else a tag's export directory."""
    path = Path(source).expanduser()
    if path.exists() or not is_tag(str(source)):
        return path
    return resolve(str(source)).parent


def load(source: str | os.PathLike, device=None):
    """`load_pretrained` of a path, or of a tag's export (hash checked against the manifest first)."""
    return load_pretrained(locate(source), device=device)


def read_source(source: str | os.PathLike) -> tuple[dict, dict, str]:
    """(state dict, export config, name to report) for a tag or a checkpoint path (the CLI's --pretrained)."""
    path = locate(source)
    state_dict, config = read_weights(path)
    return state_dict, config, str(source) if str(source) == str(path) else f"{source} ({path})"


# ------------------------------------------------------------------------------------------ timm side

def tag_cfgs(arch: str, base: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """generate_default_cfgs entries for the shipped tags of `arch`: `base` plus where and what the weights are."""
    out = {}
    for tag in (t for t in TAGS if t.split(".", 1)[0] == arch):
        out[tag] = dict(
            base, file=f"{tag}/model.safetensors", num_classes=10, label_names=CIFAR10_CLASSES,
            description=f"{arch} ({_describe(tag)}) trained from scratch by kanvision on the JPEG copy of CIFAR-10 "
                        f"with {RECIPES[arch]}; accuracies in checkpoints/README.md",
            notes=(f"file is relative to the checkpoints directory (${ENV}, else the checkout's checkpoints/); "
                   f"its sha256 is checked against {MANIFEST_NAME} before loading",
                   f"the tag fixes the model options: {_describe(tag)}"),
        )
    return out


def untagged_default(default_cfgs: dict) -> dict:
    """Keep each untagged name (no weights) as its architecture's default cfg.

    timm makes the first tag with weights the default: the bare name would then claim a tag's label names and
    description (which exports copy from it) and `pretrained=True` would load that tag's weights whatever kan= says.
    """
    for cfg in default_cfgs.values():
        if "" in cfg.tags:
            cfg.tags.remove("")
            cfg.tags.appendleft("")
    return default_cfgs


def apply_tag(variant: str, pretrained: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Factory keywords for a shipped tag: the tag's model options, and its checked file when pretrained.

    ValueError when a given option contradicts the tag (its weights would not fit, or would be another model's).
    """
    tag = kwargs.get("pretrained_cfg")
    name = f"{variant}.{tag}" if isinstance(tag, str) and tag else None
    if name not in TAGS:
        return kwargs
    kwargs = dict(kwargs)
    problems = []
    for key, default in _ARCH_OPTIONS.items():
        want = TAGS[name].get(key, default)
        given = kwargs.get(key)
        if given is None or (key == "kan_kwargs" and not given):
            if want != default or key in kwargs:
                kwargs[key] = want
            continue
        try:
            same = _norm(key, given) == _norm(key, want)
        except ValueError:
            same = False
        if not same:
            problems.append(f"{key}={given!r}")
    if problems:
        others = [t for t in TAGS if t.split(".", 1)[0] == variant and t != name]
        verb = "contradicts" if len(problems) == 1 else "contradict"
        raise ValueError(f"{name} holds weights of {_describe(name)}: {', '.join(problems)} {verb} the tag; drop "
                         f"{'it' if len(problems) == 1 else 'them'} (the tag sets the model options) or use another "
                         f"tag ({', '.join(others)})")
    overlay = dict(kwargs.get("pretrained_cfg_overlay") or {})
    if pretrained and not any(overlay.get(k) for k in ("file", "url", "hf_hub_id", "state_dict")):
        overlay["file"] = str(resolve(name))
        kwargs["pretrained_cfg_overlay"] = overlay
        _check_weights_serve(name, variant, kwargs, Path(overlay["file"]))
    return kwargs


# Keywords that never change the shape of a weight (the tag's options are checked by apply_tag itself).
_SHAPELESS = {"pretrained_cfg", "pretrained_cfg_overlay", "num_classes", "drop_rate", "drop_path_rate", "cache_dir",
              "proj_drop_rate", "attn_drop_rate", "pos_drop_rate", *_ARCH_OPTIONS}


def _misfits(variant: str, kwargs: dict[str, Any], have: dict[str, tuple]) -> list[str]:
    """"key: weights [..] vs model [..]" for each weight of the model `kwargs` build (on the meta device: no memory,
    no init cost) whose shape differs from the file's, that the file lacks, or that only the file has. The
    classifier is left out: another num_classes is fine-tuning, which timm handles by dropping it. [] also when
    the model cannot be built at all (the real build that follows reports why)."""
    import timm
    import torch

    try:
        with torch.device("meta"):
            model = timm.create_model(variant, pretrained=False,
                                      **{k: v for k, v in kwargs.items() if k != "pretrained_cfg_overlay"})
    except Exception:  # noqa: BLE001 - e.g. an option this architecture does not take: not ours to word
        return []
    head = str(model.pretrained_cfg.get("classifier") or "head") + "."
    own = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith(head)}
    unfit = [f"{k}: weights {list(have[k]) if k in have else 'none'} vs model {list(shape)}"
             for k, shape in own.items() if have.get(k) != shape]
    return unfit + [f"{k}: weights {list(shape)} vs model none" for k, shape in have.items()
                    if k not in own and not k.startswith(head)]


def _check_weights_serve(name: str, variant: str, kwargs: dict[str, Any], weights: Path) -> None:
    """ValueError (one line) when other keywords (img_size, patch_size, num_blocks...) build a model the tag's weights
    do not fit, naming the keywords at fault: timm would otherwise fail deep in load_state_dict with a traceback."""
    given = {k: v for k, v in kwargs.items() if k not in _SHAPELESS}
    if not given:
        return
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            have = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception:  # noqa: BLE001 - an unreadable file is reported by the load that follows, with its name
        return
    bad = _misfits(variant, kwargs, have)
    if not bad:
        return
    # The entry point merged the architecture's defaults into kwargs: name only the keywords that break the fit
    # on their own (a default value does not).
    base = {k: v for k, v in kwargs.items() if k in _SHAPELESS}
    at_fault = [k for k, v in given.items() if _misfits(variant, dict(base, **{k: v}), have)] or list(given)
    size = "x".join(map(str, (_trained_input_size(weights) or [])[1:])) or "its own input size"
    asked = ", ".join(f"{k}={given[k]!r}" for k in at_fault)
    more = f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""
    raise ValueError(f"{name} was trained at input size {size} with its architecture's defaults: its weights cannot "
                     f"serve {asked} ({bad[0]}{more}); drop {', '.join(at_fault)} to load them, or train that model "
                     "without pretrained=True")


def _trained_input_size(weights: Path) -> list[int] | None:
    try:
        return list(json.loads((weights.parent / CONFIG_NAME).read_text())["pretrained_cfg"]["input_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
