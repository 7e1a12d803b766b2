"""Export, verify and load kanvision weights.

An export is a directory with `model.safetensors` (plain timm state-dict keys) and `config.json` in the
layout timm reads for `timm.create_model("local-dir:<dir>", pretrained=True)`: `architecture`,
`num_classes`, `pretrained_cfg` (only timm's PretrainedCfg fields: timm validates them) and `model_args`
(the factory keywords, e.g. kan / kan_hidden / kan_kwargs). kanvision's own record (dataset, metrics,
class names, sha256 of the weights, versions, source checkpoint) sits beside them under "kanvision",
which timm ignores.

Lightning `.ckpt` files written by kanvision's training hold the same record in `checkpoint["kanvision"]`
and the weights under `state_dict` as `model.<timm key>`; `load_pretrained` reads those directly too.
A `.ckpt` is a pickle: kanvision reads it with `torch.load(weights_only=True)` (kanvision.hub.safe_load), which
refuses a file asking for any Python object beyond tensors and plain data instead of running its code. The
safetensors export is the format to share.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kanvision.hub.safe_load import CheckpointError, load_checkpoint_file
from kanvision.kinds import get_kind, kind_names

__all__ = [
    "CheckpointError", "export", "export_main", "find_run_checkpoint", "load_pretrained",
    "read_weights", "strip_prefixes", "timm_kwargs",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
# Wrappers that prefix state-dict keys: LightningModule attribute, DDP/DataParallel, torch.compile.
PREFIXES = ("model.", "module.", "_orig_mod.")
_PRETRAINED_CFG_FIELDS = (  # carried over from the model's default cfg; weight *sources* are not
    "input_size", "fixed_input_size", "interpolation", "crop_pct", "crop_mode", "first_conv", "classifier",
    "pool_size", "license", "paper_ids", "paper_name", "origin_url", "description",
)



# ---------------------------------------------------------------------------------------------- reading

def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Plain timm keys: keep only the network's entries of a LightningModule state dict, drop wrappers."""
    if any(k.startswith("model.") for k in state_dict):
        state_dict = {k[len("model."):]: v for k, v in state_dict.items() if k.startswith("model.")}
    out = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in PREFIXES[1:]:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        out[key] = value
    return out


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_ckpt(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    ckpt = load_checkpoint_file(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no 'state_dict' entry)")
    meta = ckpt.get("kanvision")
    if not isinstance(meta, dict) or not meta.get("model"):
        raise CheckpointError(f"{path}: no 'kanvision' record (model name, kan options, mean/std): it was not "
                              "written by kanvision's training; build the model with timm and load its "
                              "state_dict yourself")
    meta = dict(meta, source=str(path))
    return strip_prefixes(ckpt["state_dict"]), meta


def _read_export(path: Path, verify_hash: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path]:
    weights = path / WEIGHTS_NAME if path.is_dir() else path
    config_path = weights.parent / CONFIG_NAME
    for p in (weights, config_path):
        if not p.is_file():
            raise CheckpointError(f"{p}: missing; an export directory holds {WEIGHTS_NAME} and {CONFIG_NAME} "
                                  "(written by `kanvision export`)")
    try:
        config = json.loads(config_path.read_text())
        config["architecture"], config["model_args"], config["kanvision"]  # noqa: B018  (required fields)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{config_path}: not a kanvision export config ({type(e).__name__}: {e})") from None
    expected = config["kanvision"].get("sha256")
    if verify_hash and expected:
        actual = sha256_file(weights)
        if actual != expected:
            raise CheckpointError(f"{weights}: sha256 {actual[:16]}... does not match {CONFIG_NAME}'s "
                                  f"{expected[:16]}...: the file changed after export (truncated, corrupt "
                                  "or replaced); re-export it")
    from safetensors.torch import load_file
    try:
        state_dict = load_file(str(weights), device="cpu")
    except Exception as e:
        raise CheckpointError(f"{weights}: not a readable safetensors file (truncated or corrupt?): "
                              f"{type(e).__name__}: {e}") from None
    return state_dict, config, weights


def read_weights(path: str | os.PathLike, verify_hash: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """(timm state dict, config) from an export dir, a model.safetensors beside its config.json or a .ckpt.

    The config of a .ckpt is synthesized in the export layout, so both kinds of input look the same.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_dir() or path.suffix == ".safetensors":
        state_dict, config, _ = _read_export(path, verify_hash)
        return state_dict, config
    state_dict, meta = _read_ckpt(path)
    return state_dict, build_config(meta)


# --------------------------------------------------------------------------------------------- building

def _model_args(meta: dict[str, Any]) -> dict[str, Any]:
    args = {k: meta.get(k) for k in ("kan", "kan_hidden", "kan_kwargs", "num_classes")}
    args.update(meta.get("model_kwargs") or {})
    return {k: v for k, v in args.items() if v is not None}  # timm prunes None; keep JSON and kwargs equal


def build_config(meta: dict[str, Any], sha256: str | None = None) -> dict[str, Any]:
    """The export's config.json from a checkpoint's "kanvision" record (see the module docstring)."""
    import timm

    name = meta["model"]
    if not timm.is_model(name):
        raise CheckpointError(f"unknown model {name!r}: not registered with timm (is kanvision installed and "
                              "imported, and does this version still have that model?)")
    default = timm.models.get_pretrained_cfg(name)
    pretrained_cfg = {k: v for k, v in (default.to_dict() if default else {}).items()
                      if k in _PRETRAINED_CFG_FIELDS and v is not None}
    img_size = meta.get("img_size")
    if img_size:
        pretrained_cfg["input_size"] = [3, int(img_size), int(img_size)]
        pretrained_cfg.pop("pool_size", None)  # the default's pool size belongs to its default input size
    # Evaluation in kanvision's training resizes the whole image (no centre crop), bilinear as torchvision's
    # Resize: say so, so that timm's resolve_data_config/create_transform reproduce it.
    pretrained_cfg.update(mean=list(meta["mean"]), std=list(meta["std"]), num_classes=meta["num_classes"],
                          crop_pct=1.0, crop_mode="squash", interpolation="bilinear")
    if meta.get("class_names"):
        pretrained_cfg["label_names"] = list(meta["class_names"])
    record = {k: meta.get(k) for k in ("model", "kan", "kan_hidden", "kan_kwargs", "num_classes", "model_kwargs",
                                       "dataset", "class_names", "mean", "std", "img_size", "metrics", "source")}
    record["sha256"] = sha256
    record["versions"] = {"kanvision": _version("kanvision"), "timm": timm.__version__, "torch": torch.__version__}
    return {"architecture": name, "num_classes": meta["num_classes"], "pretrained_cfg": pretrained_cfg,
            "model_args": _model_args(meta), "kanvision": record}


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def kan_kind_of(keys) -> str:
    """The kinds whose weights `keys` hold ("+"-joined; "none" for none): a kind counts when every one of its
    record's key markers ends some key, and a kind whose markers are a subset of a found kind's is dropped (FastKAN's
    keys include RSWAF's)."""
    keys = list(keys)
    found = [k for k in kind_names() if (m := get_kind(k).key_markers)
             and all(any(key.endswith(marker) for key in keys) for marker in m)]
    markers = {k: set(get_kind(k).key_markers) for k in found}
    found = [k for k in found if not any(o != k and markers[k] < markers[o] for o in found)]
    return "+".join(found) or "none"


def _short(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def check_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str, strict: bool = True):
    """Raise CheckpointError naming `source` and what does not fit, before torch's load_state_dict would."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape]
    if not shapes and (not strict or not (missing or unexpected)):
        return
    problems = []
    want, have = kan_kind_of(own), kan_kind_of(state_dict)
    if want != have:
        marker = get_kind(want).key_markers[0] if want in kind_names() and get_kind(want).key_markers else None
        problems.append(f"expected kan={want!r} weights" + (f" ({marker[1:]} keys)" if marker else "")
                        + f" but file has kan={have!r} weights: was it exported with kan={have!r}?")
    if missing:
        problems.append(f"{len(missing)} missing keys: {_short(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_short(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches: {_short(shapes, 3)}")
    raise CheckpointError(f"{source}: weights do not fit the model: " + "; ".join(problems))


def check_finite(state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointError when any weight is NaN/inf: such a model predicts NaN for every input."""
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{source}: {len(bad)} weight tensor(s) hold NaN/inf values ({_short(bad, 3)}): the "
                              "training run diverged; use a checkpoint saved before it did, or retrain with a lower "
                              "learning rate")


def load_pretrained(path: str | os.PathLike, device: str | torch.device | None = None, strict: bool = True,
                    verify_hash: bool = True) -> nn.Module:
    """Model from an export dir, a model.safetensors beside its config.json, or a kanvision Lightning .ckpt.

    Returns the model in eval mode on `device`, with `model.pretrained_cfg` carrying the checkpoint's
    mean, std, input_size, num_classes and label_names (so `timm.data.resolve_data_config(model=model)`
    gives its preprocessing), `model.class_names` (list or None) and `model.kanvision_config` (the config).
    `strict=False` tolerates missing/unexpected keys (never shape mismatches).
    """
    import timm

    state_dict, config = read_weights(path, verify_hash=verify_hash)
    name = config["architecture"]
    try:
        model = timm.create_model(name, **config["model_args"])
    except Exception as e:
        raise CheckpointError(f"{path}: cannot build {name!r} with {config['model_args']}: {e}") from None
    check_state_dict(model, state_dict, str(path), strict=strict)
    check_finite(state_dict, str(path))
    model.load_state_dict(state_dict, strict=strict)
    model.pretrained_cfg = dict(getattr(model, "pretrained_cfg", {}) or {}, **config["pretrained_cfg"])
    model.class_names = config["kanvision"].get("class_names")
    model.kanvision_config = config
    return model.to(device).eval() if device is not None else model.eval()


def timm_kwargs(path: str | os.PathLike) -> dict[str, Any]:
    """Keywords for timm's own loader: `timm.create_model(**timm_kwargs("checkpoints/<name>"))`.

    timm's `file` path does not check the sha256; the overlay's num_classes must equal the weights', else
    timm discards the classifier and loads the rest non-strictly.
    """
    path = Path(path)
    weights = path / WEIGHTS_NAME if path.is_dir() else path
    try:
        config = json.loads((weights.parent / CONFIG_NAME).read_text())
        overlay = dict(config["pretrained_cfg"], file=str(weights))
        name, model_args = config["architecture"], config["model_args"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{weights.parent / CONFIG_NAME}: not a kanvision export config: {e}") from None
    return dict(model_name=name, pretrained=True, pretrained_cfg_overlay=overlay, **model_args)


# -------------------------------------------------------------------------------------------- exporting

def _ckpt_callbacks_best(ckpt_path: Path) -> Path | None:
    """best_model_path recorded by ModelCheckpoint in a .ckpt, if that file still exists.

    An unreadable or refused (unsafe) file is an error, not "no best recorded": falling back to another file
    would hide that the run directory holds a file kanvision will not load."""
    ckpt = load_checkpoint_file(ckpt_path, mmap=True)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{ckpt_path}: not a Lightning checkpoint (a {type(ckpt).__name__}, not a dict)")
    for key, state in (ckpt.get("callbacks") or {}).items():
        # A ModelCheckpoint without a monitor records the newest file as its "best": not a best.
        if "ModelCheckpoint" in str(key) and "'monitor': None" not in str(key) and isinstance(state, dict) \
                and state.get("best_model_path"):
            best = Path(state["best_model_path"])
            for candidate in (best, ckpt_path.parent / best.name):  # the run may have been moved
                if candidate.is_file():
                    return candidate
    return None


def find_run_checkpoint(run: str | os.PathLike) -> tuple[Path, str]:
    """(checkpoint, why it was chosen) for a .ckpt file or a run directory."""
    run = Path(run)
    if run.is_file():
        return run, "given"
    if not run.is_dir():
        raise CheckpointError(f"{run}: no such checkpoint file or run directory")
    ckpts = sorted(run.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not ckpts:
        raise CheckpointError(f"{run}: no .ckpt files in this run directory (did the run save checkpoints?)")
    lasts = [p for p in ckpts if p.name == "last.ckpt"]
    if lasts:
        best = _ckpt_callbacks_best(lasts[-1])
        if best is not None:
            return best, f"best checkpoint recorded by ModelCheckpoint in {lasts[-1]}"
        return lasts[-1], "last.ckpt (no best checkpoint recorded)"
    best = _ckpt_callbacks_best(ckpts[-1])
    if best is not None:
        return best, f"best checkpoint recorded by ModelCheckpoint in {ckpts[-1]}"
    return ckpts[-1], f"newest of {len(ckpts)} .ckpt files (no last.ckpt, no best recorded)"


def export(run_or_ckpt: str | os.PathLike, out: str | os.PathLike, force: bool = False) -> dict[str, Any]:
    """Write out/model.safetensors + out/config.json from a kanvision .ckpt or run dir; return the config."""
    from safetensors.torch import save as safetensors_bytes

    from kanvision.train.atomic import atomic_write_bytes, atomic_write_text

    ckpt_path, why = find_run_checkpoint(run_or_ckpt)
    state_dict, meta = _read_ckpt(ckpt_path)
    config = build_config(meta)  # validates the architecture name before anything is written
    try:
        json.dumps(config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{ckpt_path}: its 'kanvision' record does not fit in config.json ({e}); "
                              "kan_kwargs/model_kwargs must be plain numbers, strings, lists and dicts") from None
    import timm
    check_state_dict(timm.create_model(config["architecture"], **config["model_args"]), state_dict, str(ckpt_path))
    check_finite(state_dict, str(ckpt_path))
    # clone: safetensors refuses shared storage (tied weights) and needs contiguous tensors
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    data = safetensors_bytes(tensors, metadata={"format": "pt"})
    sha = hashlib.sha256(data).hexdigest()
    out = Path(out)
    weights = out / WEIGHTS_NAME
    if (weights.exists() or (out / CONFIG_NAME).exists()) and not force:
        old = sha256_file(weights) if weights.exists() else None
        if old != sha:
            raise CheckpointError(f"{out}: holds a different export (sha256 {str(old)[:16]}... vs new "
                                  f"{sha[:16]}...); pass --force to overwrite it or choose another --out")
    config = build_config(meta, sha256=sha)
    config["kanvision"]["source"] = f"{ckpt_path} ({why})"
    # Each file under a temporary name, fsynced and renamed (train/atomic.py), with the mode of any new file
    # (safetensors' own save_file makes it 0600). A full disk keeps the previous export whole; a failure between
    # the two files leaves a config whose sha256 does not match, which loading refuses by name.
    atomic_write_bytes(weights, data)
    atomic_write_text(out / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    return config


def export_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kanvision export", description=(
        "Export a kanvision Lightning checkpoint (or a run directory: its best checkpoint if recorded, else "
        "last.ckpt) to OUT/model.safetensors + OUT/config.json, loadable with kanvision.load_pretrained "
        "or timm.create_model('local-dir:OUT', pretrained=True)."))
    parser.add_argument("run_or_ckpt", help="a .ckpt file or a run directory")
    parser.add_argument("--out", required=True, help="export directory, e.g. checkpoints/<name>/")
    parser.add_argument("--force", action="store_true", help="overwrite a different existing export")
    args = parser.parse_args(argv)
    try:
        config = export(args.run_or_ckpt, args.out, force=args.force)
    except (CheckpointError, OSError) as e:
        print(f"kanvision export: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    record = config["kanvision"]
    print(f"exported {record['source']}\n  -> {Path(args.out) / WEIGHTS_NAME} (sha256 {record['sha256']})\n"
          f"  model {config['architecture']} kan={record.get('kan')!r} num_classes={config['num_classes']} "
          f"metrics {record.get('metrics') or {}}")
    return 0
