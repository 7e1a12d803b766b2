"""`kanvision sweep`: a grid of ordinary `kanvision fit` runs, resumable, with one results table.

    kanvision sweep --config BASE.yaml [--config ...] --grid GRID.yaml --out DIR [--seeds N]
                    [--launcher local|slurm] [--report-only] [-- extra fit flags]

GRID.yaml maps fit options (the keys of `kanvision fit --print_config`, dotted) to lists of values:

    model.kan: [none, bspline]
    model.kan_kwargs.init: [default, kaiming_normal]      # merged into the config's kan_kwargs
    model.optimizer.class_path: [torch.optim.AdamW, torch.optim.SGD]
    model.optimizer.init_args.lr: [0.001, 0.01]

Every point of the product, times `--seeds` (`--seed_everything` 0..N-1), is one run: the real CLI in a
subprocess, `kanvision fit --config ... [extra flags] --<key>=<value> ... --seed_everything=s
--trainer.default_root_dir=DIR/runs --name=<run>`, so a run is exactly a command a user could type. Its
run directory is DIR/runs/<run>/version_N (status.json, metrics.csv, checkpoints); DIR/runs/<run>/command.txt
holds its command, fit.log its output, wall_s its wall time summed over resumes; DIR/commands.txt lists all
commands (one per line, the SLURM array's input).

Run again, the sweep skips runs whose status says finished or diverged (a result, not an accident) and
resumes the others from their newest interrupted-step*.ckpt / last.ckpt (exact resume, see resume.py).
A diverged run (non-finite loss: runs.RunStatus stops it) is recorded as diverged; a run failing for another
reason is recorded with its error line and the sweep goes on; the exit status is 1 only if some run failed.
Results: sweep_report.py (DIR/results.csv, .md, .png), also alone with --report-only.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Run", "main", "plan_runs", "resume_checkpoint"]

LAUNCHERS = ("local", "slurm")
SECTIONS_WITH_DICTS = {"model": ("kanvision.module", "ImageClassifier"), "data": ("kanvision.data", "ImageDataModule")}
DONE = ("finished", "diverged")  # a diverged run is a result of its scheme: not retried


class SweepError(ValueError):
    """Bad sweep input; the message names the problem and the fix."""


@dataclass
class Run:
    name: str
    values: dict  # grid key -> value
    seed: int
    command: list = field(default_factory=list)


# ------------------------------------------------------------------------------------------- the grid
def read_grid(path: str | None) -> dict:
    import yaml

    if not path:
        raise SweepError("no grid: give --grid GRID.yaml, a file mapping fit options to lists of values "
                         "(e.g. 'model.kan: [none, bspline]')")
    p = Path(path)
    if not p.is_file():
        raise SweepError(f"grid file {p} not found: give --grid the path of a YAML file mapping fit options to "
                         "lists of values (e.g. 'model.kan: [none, bspline]')")
    try:
        grid = yaml.safe_load(p.read_text())
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


def _label_of(key: str) -> str:
    parts = [k for k in key.split(".") if k not in ("init_args", "class_path", "model", "data", "trainer")]
    return parts[-1] if parts else key.split(".")[-1]


def _value_text(value) -> str:
    if isinstance(value, str) and re.fullmatch(r"[\w.]+\.[A-Z]\w*", value):
        value = value.rsplit(".", 1)[1]  # torch.optim.AdamW -> AdamW
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", str(text)).strip("-") or "x"


def run_name(values: dict, seed: int) -> str:
    """Readable and deterministic: `kan-bspline_lr-0.001_seed0` (label-value per key, in grid order)."""
    labels = {k: _label_of(k) for k in values}
    clashing = {lab for lab in labels.values() if list(labels.values()).count(lab) > 1}
    parts = []
    for key, value in values.items():
        label = labels[key] if labels[key] not in clashing else key.replace(".", "-")
        parts.append(f"{label}-{_value_text(value)}")
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


def grid_flags(values: dict, base: dict) -> list[str]:
    """`--key=value` flags for one grid point.

    A key inside a dict-typed option (model.kan_kwargs.init) becomes the whole dict, `--model.kan_kwargs=
    {"compile": true, "init": "..."}`, merged over the base config's dict: jsonargparse replaces a dict
    given on the command line, it does not merge it into the config's. class_path flags come before
    init_args flags, so an option of the new class is checked against the new class (jsonargparse keeps the
    config's init_args the new class accepts, and drops the others, e.g. AdamW's betas for SGD)."""
    flags, dicts = [], {}
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
        else:
            flags.append((key, value))
    flags += list(dicts.items())
    order = lambda kv: (0 if kv[0].endswith(".class_path") or kv[0] == "model.optimizer" else 1)  # noqa: E731
    return [f"--{k}={_flag_value(v)}" for k, v in sorted(flags, key=order)]


def resolved_base(configs: list[str], extra: list[str]) -> dict:
    """The base configuration as `kanvision fit` resolves it (configs + extra flags), read with --print_config."""
    import yaml

    from .cli import main as cli_main

    args = ["fit", *[a for c in configs for a in ("--config", c)], *extra, "--print_config"]
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
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
            command = [*fit_command(), "fit", *[a for c in configs for a in ("--config", str(Path(c).resolve()))],
                       "--trainer.enable_progress_bar=false", *extra, *flags,
                       f"--seed_everything={seed}", f"--trainer.default_root_dir={out.resolve() / 'runs'}",
                       f"--name={name}"]
            runs.append(Run(name, values, seed, command))
    return runs


# ------------------------------------------------------------------------------------- one run's state
def latest_version(run_root: Path) -> Path | None:
    versions = [p for p in run_root.glob("version_*") if p.name[len("version_"):].isdigit()]
    return max(versions, key=lambda p: int(p.name[len("version_"):]), default=None)


def run_status(run_root: Path) -> dict | None:
    from .runs import read_status

    latest = latest_version(run_root)
    return read_status(latest) if latest is not None else None


def resume_checkpoint(run_root: Path) -> Path | None:
    """The newest interrupted-step*.ckpt or last.ckpt of any version of the run (as scripts/train_pretrained.sh)."""
    found = []
    for pattern in ("version_*/checkpoints/interrupted-step*.ckpt", "version_*/checkpoints/last.ckpt"):
        for p in run_root.glob(pattern):
            try:
                found.append((p.stat().st_mtime, p))  # follows last.ckpt's link
            except OSError:
                continue  # a dangling link
    return max(found)[1] if found else None


def _error_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no output"
    for ln in reversed(lines):
        if ln.startswith("kanvision: ") or re.match(r"\w+(Error|Exception)\b", ln):
            return ln[:300]
    return lines[-1][:300] if lines else "no output"


def run_local(run: Run, out: Path) -> str:
    """Run (or resume, or skip) one fit; returns finished | diverged | failed | skipped (already done)."""
    root = out / "runs" / run.name
    status = (run_status(root) or {}).get("status")
    if status in DONE:
        print(f"skip {run.name}: {status} already", flush=True)
        return "skipped"
    root.mkdir(parents=True, exist_ok=True)
    (root / "command.txt").write_text(shlex.join(run.command) + "\n")
    command = list(run.command)
    resume = resume_checkpoint(root)
    if resume is not None:
        command.append(f"--ckpt_path={resume}")
    print(f"{'resume' if resume else 'run'} {run.name}" + (f" from {resume.name}" if resume else ""), flush=True)
    start, interrupted = time.monotonic(), False
    with open(root / "fit.log", "a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {shlex.join(command)}\n")
        log.flush()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        while True:
            try:
                rc = proc.wait()
                break
            except KeyboardInterrupt:  # the fit got the same Ctrl-C: let it save its state, then stop the sweep
                interrupted = True
    wall = time.monotonic() - start
    previous = float((root / "wall_s").read_text()) if (root / "wall_s").is_file() else 0.0
    (root / "wall_s").write_text(f"{previous + wall:.1f}\n")
    if interrupted:
        raise KeyboardInterrupt
    status = (run_status(root) or {}).get("status")
    if rc == 0 and status == "finished":
        return "finished"
    if status == "diverged":
        return "diverged"
    print(f"  failed (exit {rc}): {_error_line(root / 'fit.log')} (log: {root / 'fit.log'})", flush=True)
    return "failed"


# ------------------------------------------------------------------------------------------ commands
def write_commands(runs: list[Run], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "commands.txt"
    path.write_text("".join(shlex.join(r.command) + "\n" for r in runs))
    (out / "sweep.json").write_text(json.dumps(
        {"runs": [{"name": r.name, "values": r.values, "seed": r.seed, "command": r.command} for r in runs]},
        indent=1) + "\n")
    return path


# ------------------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kanvision sweep", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="\n\n".join(__doc__.split("\n\n")[:4]),
                                epilog="Flags after -- go to every `kanvision fit` unchanged. README: Sweeps.")
    p.add_argument("--config", action="append", default=[], help="base fit config (repeatable, composed in order)")
    p.add_argument("--grid", help="YAML: fit option -> list of values; the sweep runs their product")
    p.add_argument("--out", required=True, help="sweep directory: runs/, commands.txt, results.csv/.md/.png")
    p.add_argument("--seeds", type=int, default=1, help="runs per grid point, --seed_everything 0..N-1 (default 1)")
    p.add_argument("--launcher", default="local", help="local (sequential, default) | slurm (writes DIR/sweep.sbatch)")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild results.csv/.md/.png from the run directories, run nothing (the grid comes from "
                        "DIR/sweep.json when --grid is not given)")
    return p


def _fail(message: str) -> int:
    print(f"kanvision sweep: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str]) -> int:
    argv = list(argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    args = _parser().parse_args(argv)
    out = Path(args.out).expanduser()
    try:
        if args.launcher not in LAUNCHERS:
            raise SweepError(f"unknown launcher {args.launcher!r}: use --launcher local (runs one after the other "
                             "here) or --launcher slurm (writes an sbatch array script)")
        if args.seeds < 1:
            raise SweepError(f"--seeds {args.seeds}: give at least 1 (runs per grid point)")
        for c in args.config:
            if not Path(c).is_file():
                raise SweepError(f"config {c} not found: give --config the path of a fit config (e.g. "
                                 "configs/quickstart.yaml)")
        if args.report_only and not args.grid:
            runs = _planned(out)
        else:
            grid = read_grid(args.grid)
            runs = plan_runs(grid, args.seeds, args.config, extra, out, resolved_base(args.config, extra))
    except SweepError as e:
        return _fail(str(e))
    from .sweep_report import write_report
    from .sweep_slurm import write_sbatch

    if args.report_only:
        rows = write_report(runs, out)
        print(f"wrote {out / 'results.csv'}, {out / 'results.md'}, {out / 'results.png'} ({len(rows)} runs)")
        return 0
    write_commands(runs, out)
    if args.launcher == "slurm":
        script = write_sbatch(runs, out)
        again = shlex.join(["kanvision", "sweep", *argv, "--report-only"] + (["--", *extra] if extra else []))
        print(f"wrote {script} ({len(runs)} array tasks, one per line of {out / 'commands.txt'})\n"
              f"submit:   sbatch {script}\nresults:  {again}   (when the tasks are done; safe to rerun)")
        return 0
    outcomes = {}
    try:
        for run in runs:
            outcomes[run.name] = run_local(run, out)
    except KeyboardInterrupt:
        write_report(runs, out)
        print("kanvision sweep: interrupted; the run in progress saved its state: run the same command again to "
              "resume", file=sys.stderr)
        return 130
    write_report(runs, out)
    count = {k: sum(v == k for v in outcomes.values()) for k in ("finished", "skipped", "diverged", "failed")}
    print(f"sweep: {len(runs)} runs: {count['finished']} finished now, {count['skipped']} done before (skipped), "
          f"{count['diverged']} diverged, {count['failed']} failed; results in {out / 'results.md'}")
    return 1 if count["failed"] else 0


def _planned(out: Path) -> list[Run]:
    try:
        plan = json.loads((out / "sweep.json").read_text())
    except (OSError, ValueError):
        raise SweepError(f"no sweep at {out} ({out / 'sweep.json'} missing): give --grid (and the --config "
                         "files) of the sweep, or the --out it ran with") from None
    return [Run(r["name"], r["values"], r["seed"], r["command"]) for r in plan["runs"]]
