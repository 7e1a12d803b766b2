"""A sweep's grid as runs: GRID.yaml read and checked, each point as `kanvision fit` flags and a run name.

Flags are what jsonargparse needs to read the point as meant (tests/test_sweep.py checks each against
`--print_config`): a key inside a dict option becomes the whole dict merged over the config's (a dict flag
replaces the config's dict); a class becomes the whole {class_path, init_args} (switched_class); a point with
model.kan none keeps only the kan_kwargs an MLP takes (_mlp_point).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import re
import shlex
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

__all__ = ["FINGERPRINT_NAME", "Run", "first_current_version", "recorded_fingerprint", "SweepError", "check_grid", "changed_options", "fingerprint", "grid_flags", "plan_runs",
           "read_grid", "resolved_base", "run_name", "switched_class", "value_label"]

SECTIONS_WITH_DICTS = {"model": ("kanvision.train.module", "ImageClassifier"), "data": ("kanvision.data.datamodule", "ImageDataModule")}


class SweepError(ValueError):
    """Bad sweep input; the message names the problem and the fix."""


FINGERPRINT_NAME = "fingerprint.json"  # DIR/runs/<run>/fingerprint.json: what the run's versions ran with


def recorded_fingerprint(run_root: Path) -> dict | None:
    """DIR/runs/<run>/fingerprint.json: the options the run's versions ran with, and from_version, the first
    version_N run with them; None when absent or unreadable."""
    try:
        found = json.loads((Path(run_root) / FINGERPRINT_NAME).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def first_current_version(run_root: Path) -> int:
    """The first version_N run with the run's current options (0 without a fingerprint)."""
    try:
        return int((recorded_fingerprint(run_root) or {}).get("from_version", 0))
    except (TypeError, ValueError):
        return 0


@dataclass
class Run:
    name: str
    values: dict  # grid key -> value
    seed: int
    command: list = field(default_factory=list)
    fingerprint: dict = field(default_factory=dict)  # {"sha256", "config", "flags"}: see fingerprint()


# ------------------------------------------------------------------------------------------- the grid
def read_grid(path: str | None) -> dict:
    if not path:
        raise SweepError("no grid: give --grid GRID.yaml, a file mapping fit options to lists of values "
                         "(e.g. 'model.kan: [none, bspline]')")
    p = Path(path)
    if not p.is_file():
        raise SweepError(f"grid file {p} not found: give --grid the path of a YAML file mapping fit options to "
                         "lists of values (e.g. 'model.kan: [none, bspline]')")
    try:
        grid = yaml.load(p.read_text(), Loader=_UniqueKeys)
    except _RepeatedKey as e:
        raise SweepError(f"grid file {p}: key {e.args[0]!r} is given twice (YAML keeps only the last one, "
                         "silently): merge the two lists into one") from None
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SweepError(f"grid file {p} is not valid YAML ({first}): fix its syntax") from None
    if not isinstance(grid, dict) or not grid:
        raise SweepError(f"grid file {p} is empty or not a mapping: write one 'option: [value, ...]' line per "
                         "swept option (e.g. 'model.kan: [none, bspline]')")
    for key, values in grid.items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", key):
            raise SweepError(f"grid file {p}: key {key!r} is not a dotted fit option: use the names of "
                             "`kanvision fit --print_config`, e.g. model.optimizer.init_args.lr")
        if key in ("seed_everything", "name") or key.startswith("trainer.default_root_dir"):
            raise SweepError(f"grid file {p}: {key} is set by the sweep itself (--seeds, the run name, --out): "
                             "remove it from the grid")
        if not isinstance(values, list):
            raise SweepError(f"grid file {p}: {key} is {values!r}, not a list: write '{key}: [{values}]' "
                             "(a list, even for a single value)")
        if not values:
            raise SweepError(f"grid file {p}: {key} has an empty list: give it at least one value or remove it")
    return grid


class _RepeatedKey(Exception):
    pass


def _unique_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise _RepeatedKey(key)
        seen.add(key)
    return loader.construct_mapping(node, deep)


class _UniqueKeys(yaml.SafeLoader):
    """SafeLoader refusing a mapping that repeats a key (SafeLoader keeps the last one without a word)."""


_UniqueKeys.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _label_of(key: str) -> str:
    parts = [k for k in key.split(".") if k not in ("init_args", "class_path", "model", "data", "trainer")]
    return parts[-1] if parts else key.split(".")[-1]


def value_label(key: str, value, values: dict) -> str:
    """A grid value as shown in names and tables: torch.optim.AdamW -> AdamW; a class given with init_args ->
    SGD-momentum-0.9 (without the init_args that another grid key sets, e.g. lr)."""
    if isinstance(value, dict) and "class_path" in value:
        args = [f"{k}-{_flag_value(v)}" for k, v in (value.get("init_args") or {}).items()
                if f"{key}.init_args.{k}" not in values]
        return "-".join([value_label(key, value["class_path"], values), *args])
    if isinstance(value, str) and re.fullmatch(r"[\w.]+\.[A-Z]\w*", value):
        return value.rsplit(".", 1)[1]
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def run_name(values: dict, seed: int) -> str:
    """Readable and deterministic: `kan-bspline_lr-0.001_seed0` (label-value per key, in grid order)."""
    labels = {k: _label_of(k) for k in values}
    clashing = {lab for lab in labels.values() if list(labels.values()).count(lab) > 1}
    parts = []
    for key, value in values.items():
        label = labels[key] if labels[key] not in clashing else key.replace(".", "-")
        text = re.sub(r"[^A-Za-z0-9.+-]+", "-", value_label(key, value, values)).strip("-") or "x"
        parts.append(f"{label}-{text}")
    return "_".join(parts + [f"seed{seed}"])


def _flag_value(value) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)  # numbers, true/false/null, lists and dicts as JSON: what jsonargparse reads


def _dict_params(section: str) -> set:
    """The dict-typed options of a section (model.kan_kwargs, model.model_kwargs): a key inside one must be
    given as the whole dict (see grid_flags)."""
    import importlib
    import inspect

    if section not in SECTIONS_WITH_DICTS:
        return set()
    module, cls = SECTIONS_WITH_DICTS[section]
    params = inspect.signature(getattr(importlib.import_module(module), cls).__init__).parameters
    return {n for n, p in params.items() if re.search(r"\b(dict|Dict|Mapping)\b", str(p.annotation))}


def _dotted(config: dict, option: str):
    for part in option.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def _signature_defaults(class_path: str) -> dict | None:
    import importlib
    import inspect

    module, _, name = class_path.rpartition(".")
    try:
        params = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return None
    return {n: p.default for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _plain(value):
    return json.loads(json.dumps(value, default=repr))  # tuples -> lists, to compare with YAML values


def switched_class(option: str, spec: dict, base: dict) -> dict:
    """The whole {class_path, init_args} of a class the grid puts in place of the config's (an optimizer).

    Given only the new class_path, jsonargparse keeps every init_arg of the old class that the new one accepts,
    including the old class's defaults as print_config fills them in: SGD after AdamW would train with AdamW's
    default weight_decay 0.01 (SGD's is 0). Here a value the config set (one that differs from the old
    class's default, e.g. weight_decay 0.05) is kept, as jsonargparse keeps it; an old default becomes the new
    class's default; what the new class does not take is dropped (betas); the grid's own init_args win."""
    old, args = _dotted(base, option), {}
    if isinstance(old, dict) and old.get("class_path") and old["class_path"] != spec["class_path"]:
        old_defaults, new_defaults = _signature_defaults(old["class_path"]), _signature_defaults(spec["class_path"])
        for key, value in (old.get("init_args") or {}).items():
            if old_defaults is None or new_defaults is None or key not in new_defaults:
                continue  # dropped (jsonargparse drops it too)
            if key in old_defaults and _plain(value) == _plain(old_defaults[key]):
                default = new_defaults[key]
                if default is None or isinstance(default, (bool, int, float, str)):
                    args[key] = default
            else:
                args[key] = value
    args.update(spec.get("init_args") or {})
    return {"class_path": spec["class_path"], "init_args": args}


def grid_flags(values: dict, base: dict) -> list[str]:
    """`--key=value` flags for one grid point.

    A key inside a dict-typed option (model.kan_kwargs.init) becomes the whole dict, `--model.kan_kwargs=
    {"compile": true, "init": "..."}`, merged over the base config's dict: jsonargparse replaces a dict
    given on the command line, it does not merge it into the config's. A class (model.optimizer.class_path, or
    model.optimizer as {class_path, init_args}) becomes the whole --model.optimizer={...} of switched_class,
    before any init_args flag, so that flag is checked against the new class."""
    flags, dicts, classes = [], {}, {}
    for key, value in values.items():
        parts = key.split(".")
        if len(parts) >= 3 and parts[1] in _dict_params(parts[0]):
            option = ".".join(parts[:2])
            if option not in dicts:
                start = (base.get(parts[0]) or {}).get(parts[1]) or {}
                dicts[option] = json.loads(json.dumps(start))  # a deep copy
            target = dicts[option]
            for p in parts[2:-1]:
                target = target.setdefault(p, {})
            target[parts[-1]] = value
        elif key.endswith(".class_path") or (isinstance(value, dict) and "class_path" in value):
            option = key[:-len(".class_path")] if key.endswith(".class_path") else key
            spec = value if isinstance(value, dict) else {"class_path": value}
            classes[option] = switched_class(option, spec, base)
        else:
            flags.append((key, value))
    # The class first: the init_args flags after it are then checked against the new class.
    return [f"--{k}={_flag_value(v)}" for k, v in [*classes.items(), *flags, *dicts.items()]]


def resolved_base(configs: list[str], extra: list[str]) -> dict:
    """The base configuration as `kanvision fit` resolves it (configs + extra flags), read with --print_config."""
    from kanvision.cli import main as cli_main

    args = ["fit", *[a for c in configs for a in ("--config", c)], *extra, "--print_config"]
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        # Parsed in-process while sys.argv holds the sweep's own command: Lightning warns that both are given.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        try:
            cli_main(args)
        except SystemExit as e:
            code = e.code
    if code not in (0, None):
        why = [ln for ln in (err.getvalue() + str(code)).splitlines() if ln.strip()]
        raise SweepError(f"the base configuration does not parse ({why[-1] if why else code}): check "
                         f"`kanvision {shlex.join(args[:-1])} --print_config`")
    return yaml.safe_load(out.getvalue()) or {}


def fit_command() -> list[str]:
    script = Path(sys.executable).with_name("kanvision")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "kanvision.cli"]


NOT_APPLICABLE = "n/a"
MLP_KAN_KWARGS = ("init",)  # the kan_kwargs that kan='none' takes (its channel MLPs' init; models/_factory.py)


def _mlp_point(values: dict, base: dict) -> tuple[dict, list[str]]:
    """A point with model.kan none (timm's MLP, no KAN layers): its values of KAN-only options (kan_hidden,
    kan_kwargs other than init) become "n/a", and its kan_kwargs keep only what the MLP takes, from the base
    config and the grid (null when nothing is left), so points differing only in KAN-only values are one run."""
    kept = {k: v for k, v in ((base.get("model") or {}).get("kan_kwargs") or {}).items() if k in MLP_KAN_KWARGS}
    if isinstance(values.get("model.kan_kwargs"), dict):
        kept = {k: v for k, v in values["model.kan_kwargs"].items() if k in MLP_KAN_KWARGS}
    point = {}
    for key, value in values.items():
        sub = key[len("model.kan_kwargs."):] if key.startswith("model.kan_kwargs.") else None
        if sub in MLP_KAN_KWARGS:
            kept[sub] = value
            point[key] = value
        else:
            point[key] = NOT_APPLICABLE if key.startswith(("model.kan_kwargs", "model.kan_hidden")) else value
    rest = {k: v for k, v in point.items() if v != NOT_APPLICABLE and not k.startswith("model.kan_kwargs")}
    flags = grid_flags(rest, base) + [f"--model.kan_kwargs={json.dumps(kept) if kept else 'null'}",
                                      "--model.kan_hidden=null"]
    return point, flags


def plan_runs(grid: dict, seeds: int, configs: list[str], extra: list[str], out: Path, base: dict) -> list[Run]:
    """The runs of the grid's product x seeds, in grid order (see _mlp_point for model.kan none)."""
    runs, seen = [], {}
    keys = list(grid)
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = dict(zip(keys, combo))
        if "model.kan" in values and values["model.kan"] in ("none", None):
            values, flags = _mlp_point(values, base)
        else:
            flags = grid_flags(values, base)
        for seed in range(seeds):
            name = run_name(values, seed)
            if name in seen:
                if seen[name] != values:
                    raise SweepError(f"two grid points get the same run name {name} ({seen[name]} and {values}: "
                                     "values that differ only in characters outside A-Z a-z 0-9 . + -): make the "
                                     "values distinguishable")
                continue  # the same run (a KAN-only value of an MLP point)
            seen[name] = values
            options = ["--trainer.enable_progress_bar=false", *extra, *flags, f"--seed_everything={seed}"]
            command = [*fit_command(), "fit", *[a for c in configs for a in ("--config", str(Path(c).resolve()))],
                       *options, f"--trainer.default_root_dir={out.resolve() / 'runs'}", f"--name={name}"]
            runs.append(Run(name, values, seed, command, fingerprint(base, options)))
    return runs


# ------------------------------------------------------------------------------ what a run is, checked
def _flatten(config, prefix: str = "") -> dict:
    flat = {}
    for key, value in (config or {}).items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def fingerprint(base: dict, options: list[str]) -> dict:
    """What decides a run's result: the base configuration as `kanvision fit` resolves it (the --config files'
    contents with the extra flags, not their paths) and the run's own flags (grid values, seed), as
    {"sha256", "config": dotted key -> value, "flags": option -> text}. Not part of it: where the sweep
    directory is (--trainer.default_root_dir) and the run name, so a moved sweep is the same sweep."""
    config = _plain(_flatten(base))
    flags = {}
    for option in options:
        key, _, value = option[2:].partition("=")
        flags[key] = value
    text = json.dumps({"config": config, "flags": flags}, sort_keys=True, separators=(",", ":"))
    return {"sha256": hashlib.sha256(text.encode()).hexdigest(), "config": config, "flags": flags}


def changed_options(old: dict, new: dict, n: int = 4) -> str:
    """`key (old -> new)` for the options two fingerprints disagree on, shortest first."""
    changes = []
    for part in ("flags", "config"):
        a, b = old.get(part) or {}, new.get(part) or {}
        for key in sorted(set(a) | set(b)):
            if a.get(key, "(unset)") != b.get(key, "(unset)"):
                name = f"--{key}" if part == "flags" else key
                changes.append(f"{name} ({_short_value(a.get(key, '(unset)'))} -> {_short_value(b.get(key, '(unset)'))})")
    if not changes:
        return "the recorded fingerprint differs (an older kanvision?)"
    return "; ".join(changes[:n]) + (f"; and {len(changes) - n} more" if len(changes) > n else "")


def _short_value(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _parse_error(parser, args: list[str]) -> str | None:
    """The fit parser's complaint about `args` in one line, or None when they parse."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(args)
    except SystemExit:
        text = err.getvalue()
        tail = text[text.rfind("error:"):] if "error:" in text else text
        return " ".join(tail.split())[:400] or "rejected"
    return None


def check_grid(grid: dict, runs: list[Run]) -> None:
    """Every run of the grid checked before the first starts (SweepError, one line): model.kan values are
    registered kinds, no list repeats a value, no two runs are the same fit, and `kanvision fit`'s own parser
    takes each run's options (names, value types, a class's init_args)."""
    from kanvision.kinds import normalize_kan_kind

    for key, values in grid.items():
        seen = {}
        for value in values:
            if key == "model.kan":
                try:
                    canon = normalize_kan_kind(value)
                except ValueError as e:
                    raise SweepError(f"grid: model.kan {value!r}: {str(e).splitlines()[0]}") from None
            else:
                canon = json.dumps(_plain(value), sort_keys=True)
            if canon in seen:
                raise SweepError(f"grid: {key} lists the same value twice ({seen[canon]!r} and {value!r}): each "
                                 "run would be run twice; remove the repeat")
            seen[canon] = value
    same = {}
    for run in runs:
        options = {k: v for k, v in run.fingerprint.get("flags", {}).items() if k != "seed_everything"}
        key = json.dumps(options, sort_keys=True) + str(run.seed)
        if key in same:
            raise SweepError(f"grid: runs {same[key]} and {run.name} are the same fit (their options resolve "
                             "alike): remove one of the values that make them")
        same[key] = run.name
    from kanvision.train.cli import fit_parser

    parser, checked = fit_parser(), set()
    for run in runs:
        args = run.command[run.command.index("fit"):]
        key = tuple(a for a in args if not a.startswith(("--seed_everything=", "--name=")))
        if key in checked:
            continue
        checked.add(key)
        error = _parse_error(parser, args)
        if error:
            raise SweepError(f"grid: run {run.name}: `kanvision fit` refuses its options ({error}): fix the grid "
                             "values (or the base config)")
