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
resumes the others from their newest interrupted-step*.ckpt / stopped-step*.ckpt / last.ckpt (exact resume,
see resume.py). Each run records what it ran in DIR/runs/<run>/fingerprint.json (sha256 of its resolved
config and flags, sweep/grid.py fingerprint); a run whose options changed since is run again from the start,
in a new version_N, and the sweep says which options changed. The whole grid is checked (kinds, repeated
values, option names and types, through `kanvision fit`'s own parser) before the first run starts, and one
sweep at a time works in DIR (DIR/run.lock).
A diverged run (non-finite loss: runs.RunStatus stops it) is recorded as diverged; a run failing for another
reason is recorded with its error line and the sweep goes on; the exit status is 1 only if some run failed.
How a grid point becomes flags and a run name: sweep/grid.py. Results: sweep/report.py (DIR/results.csv,
.md, .png), also alone with --report-only. SLURM: sweep/slurm.py (each array task is `--task i`, run_task).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from kanvision.sweep.grid import (FINGERPRINT_NAME, Run, SweepError, changed_options, check_grid, plan_runs, read_grid,
                                  recorded_fingerprint, resolved_base)
from kanvision.train.atomic import WriteError, atomic_write_text
from kanvision.train.rundir import RunInUse, lock_run_dir, release_locks
from kanvision.train.runs import error_line, latest_version, version_number

__all__ = ["main", "resume_checkpoint", "run_local"]

LAUNCHERS = ("local", "slurm")
DONE = ("finished", "diverged")  # a diverged run is a result of its scheme: not retried


class SweepInterrupted(RuntimeError):
    """A signal (Ctrl-C, SIGTERM) stopped the running fit, which saved its state: the sweep stops."""


# ------------------------------------------------------------------------------------- one run's state


def run_status(run_root: Path, min_version: int = 0) -> dict | None:
    """The status of the run's newest version, if that version is one of the current options (>= min_version)."""
    from kanvision.train.runs import read_status

    latest = latest_version(run_root)
    return read_status(latest) if latest is not None and version_number(latest) >= min_version else None


def resume_checkpoint(run_root: Path, min_version: int = 0) -> Path | None:
    """The checkpoint `kanvision fit --ckpt_path last` would resume (train/rundir.py), among versions run with
    the current options."""
    from kanvision.train.rundir import newest_resumable

    return newest_resumable(run_root, min_version)


def _previous(root: Path, run: Run) -> dict | None:
    """The fingerprint the run's versions were run with (None: never run). A run by a kanvision without
    fingerprints has its command.txt: the same command counts as the same fingerprint."""
    found = recorded_fingerprint(root)
    if found is not None:
        return found
    if latest_version(root) is None:
        return None
    try:
        same = (root / "command.txt").read_text().strip() == shlex.join(run.command)
    except OSError:
        same = False
    return dict(run.fingerprint, from_version=0) if same else {"sha256": None}


def _recorded(root: Path, run: Run, when: str = "") -> int:
    """The first version_N run with `run`'s current options; records them in fingerprint.json. A run whose
    options changed since its last start goes on in a new version (one line says which options changed)."""
    path = root / FINGERPRINT_NAME
    old, latest = _previous(root, run), latest_version(root)
    if old is not None and old.get("sha256") == run.fingerprint["sha256"]:
        if not path.is_file():
            atomic_write_text(path, json.dumps(old, indent=1) + "\n")
        return int(old.get("from_version", 0))
    start = version_number(latest) + 1
    if old is not None and latest is not None:
        print(f"rerun {run.name} into version_{start}{f' ({when})' if when else ''}: its options changed since it "
              f"ran ({changed_options(old, run.fingerprint)}); the earlier versions are kept", flush=True)
    atomic_write_text(path, json.dumps(dict(run.fingerprint, from_version=start), indent=1) + "\n")
    return start


def run_local(run: Run, out: Path) -> str:
    """Run (or resume, or skip) one fit; returns finished | diverged | failed | skipped (already done)."""
    root = out / "runs" / run.name
    root.mkdir(parents=True, exist_ok=True)
    first = _recorded(root, run)
    status = (run_status(root, first) or {}).get("status")
    if status in DONE:
        print(f"skip {run.name}: {status} already", flush=True)
        return "skipped"
    atomic_write_text(root / "command.txt", shlex.join(run.command) + "\n")
    command = list(run.command)
    resume = resume_checkpoint(root, first)
    if resume is not None:
        command.append(f"--ckpt_path={resume}")
    print(f"{'resume' if resume else 'run'} {run.name}" + (f" from {resume.name}" if resume else ""), flush=True)
    start, received = time.monotonic(), []
    with open(root / "fit.log", "a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {shlex.join(command)}\n")
        log.flush()
        # Its own session: a Ctrl-C reaches the fit once, forwarded from here (the terminal's would come on top,
        # and a second SIGINT stops a fit at once, unsaved); SIGTERM to the sweep (nohup, kill) is passed on too.
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))

        def forward(signum, frame):
            received.append(signum)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)  # the fit saves its state at the next step and exits

        main_thread = threading.current_thread() is threading.main_thread()
        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
        try:
            rc = proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    wall = time.monotonic() - start
    before = float((root / "wall_s").read_text()) if (root / "wall_s").is_file() else 0.0
    atomic_write_text(root / "wall_s", f"{before + wall:.1f}\n")
    status = (run_status(root, first) or {}).get("status")
    if received or status == "interrupted":  # stopped (here or by a signal to the fit): the sweep stops too
        raise SweepInterrupted(f"{run.name} stopped ({status or f'exit {rc}'})")
    if rc == 0 and status == "finished":
        return "finished"
    if status == "diverged":
        return "diverged"
    print(f"  failed (exit {rc}): {error_line(root / 'fit.log')} (log: {root / 'fit.log'})", flush=True)
    return "failed"


# ------------------------------------------------------------------------------------------ commands
def write_commands(runs: list[Run], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "commands.txt"
    atomic_write_text(path, "".join(shlex.join(r.command) + "\n" for r in runs))
    atomic_write_text(out / "sweep.json", json.dumps(
        {"runs": [{"name": r.name, "values": r.values, "seed": r.seed, "command": r.command,
                   "fingerprint": r.fingerprint} for r in runs]}, indent=1) + "\n")
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
    p.add_argument("--intrinsic-dim", type=int, default=9000,
                   help="ID in the study's efficiency metric, acc / (best epoch + 1) / ln(1 + params - ID): its "
                        "value for CIFAR is 9000, for MNIST 750 (default 9000)")
    p.add_argument("--task", type=int, default=None,
                   help="run one run of the sweep at --out (0-based index into DIR/sweep.json), as a SLURM array "
                        "task does; skipped / rerun / resumed by the same rules as the local launcher")
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
        if args.task is not None:
            runs = []  # the task's run comes from DIR/sweep.json (run_task)
        elif args.report_only and not args.grid:
            runs = _planned(out)
        else:
            grid = read_grid(args.grid)
            runs = plan_runs(grid, args.seeds, args.config, extra, out, resolved_base(args.config, extra))
            if not args.report_only:
                check_grid(grid, runs)
    except SweepError as e:
        return _fail(str(e))
    try:
        return run_task(out, args.task) if args.task is not None else _sweep(args, argv, extra, out, runs)
    except SweepError as e:
        return _fail(str(e))
    except WriteError as e:  # a full disk, a read-only --out: the path and the fix
        print(f"kanvision sweep: error: {e}", file=sys.stderr)
        return 1
    except RunInUse as e:
        return _fail(str(e))
    finally:
        release_locks()


def _sweep(args, argv: list[str], extra: list[str], out: Path, runs: list[Run]) -> int:
    from kanvision.sweep.report import write_report
    from kanvision.sweep.slurm import write_sbatch

    if args.report_only:
        rows = write_report(runs, out, args.intrinsic_dim)
        print(f"wrote {out / 'results.csv'}, {out / 'results.md'}, {out / 'results.png'} ({len(rows)} runs)")
        return 0
    lock_run_dir(out, advice=": two sweeps in one --out would run the same fits at once; give another --out")
    write_commands(runs, out)
    if args.launcher == "slurm":
        for run in runs:  # options changed since a run ran: recorded now, so its task reruns it (and the report
            if (out / "runs" / run.name).is_dir():  # shows no old result for it meanwhile)
                _recorded(out / "runs" / run.name, run, when="its array task reruns it")
        script = write_sbatch(runs, out)
        again = shlex.join(["kanvision", "sweep", *argv, "--report-only"] + (["--", *extra] if extra else []))
        print(f"wrote {script} ({len(runs)} array tasks, one per line of {out / 'commands.txt'})\n"
              f"submit:   sbatch {script}\nresults:  {again}   (when the tasks are done; safe to rerun)")
        return 0
    outcomes = {}
    try:
        for run in runs:
            outcomes[run.name] = run_local(run, out)
    except (KeyboardInterrupt, SweepInterrupted) as e:
        write_report(runs, out, args.intrinsic_dim)
        print(f"kanvision sweep: interrupted{f' ({e})' if str(e) else ''}; the run in progress saved its state: "
              "run the same command again to resume it", file=sys.stderr)
        return 130
    write_report(runs, out, args.intrinsic_dim)
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
    # An older sweep.json recorded the fingerprint's sha256 alone.
    return [Run(r["name"], r["values"], r["seed"], r["command"],
                r["fingerprint"] if isinstance(r.get("fingerprint"), dict) else {"sha256": r.get("fingerprint")})
            for r in plan["runs"]]


def run_task(out: Path, index: int) -> int:
    """`kanvision sweep --out DIR --task I`: run I of DIR/sweep.json (0-based; a SLURM array task's
    $SLURM_ARRAY_TASK_ID), with the local launcher's rules: skip it when done with its current options, rerun it
    into a new version when they changed, resume it otherwise. Exit 0 for finished / done / diverged, 130 when
    stopped by a signal (resubmit to resume), 1 when the fit failed."""
    runs = _planned(out)
    if not 0 <= index < len(runs):
        raise SweepError(f"--task {index}: the sweep at {out} has runs 0..{len(runs) - 1}: give one of those "
                         "(the array's --array=0-N must match the sweep it was written for)")
    try:
        outcome = run_local(runs[index], out)
    except (KeyboardInterrupt, SweepInterrupted) as e:
        print(f"kanvision sweep: task {index} interrupted ({e}); submit it again to resume", file=sys.stderr)
        return 130
    return 1 if outcome == "failed" else 0
