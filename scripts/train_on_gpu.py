"""Train several recipe runs side by side on one GPU inside a fixed time box, and pack each finished run so
that another machine can ship it (scripts/ship_pretrained.py) without the GPU.

    python scripts/train_on_gpu.py --data /tmp/data --runs /tmp/runs --pack OUT --deadline-s 420

Every run is an ordinary `kanvision fit` with configs/trainer/gpu.yaml (one GPU, float32) and the shipped
recipe (configs/pretrained/cifar10_kan_mixer_tiny_p4_32.yaml): the same command as on the CPU but for the
trainer file. Small models leave one GPU mostly idle between kernel launches, so the runs share it at once.
Runs have a priority: while a first-priority run's projected end (its measured seconds per epoch) falls after
the deadline, the lower-priority runs are stopped so the first ones get the GPU. At the deadline every run still
going is stopped. A stop is one SIGTERM, which `kanvision fit` answers by saving an interrupted checkpoint.

Each finished run (status.json "finished", test scored) is packed as PACK/<name>.tar: metrics.csv,
status.json, hparams.yaml, config.yaml, the fit's log, wall_s and its best checkpoint with the optimizer and
loop state dropped (the weights and the kanvision record, all ship_pretrained.py reads), small enough to
copy back from a lent machine.
"""
from __future__ import annotations

import argparse
import json
import shlex
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RECIPE = "configs/pretrained/cifar10_kan_mixer_tiny_p4_32.yaml"
EPOCHS = 15  # the recipe's trainer.max_epochs
# name -> (priority, extra fit arguments). The three GPU-trained tags are shipped (their manifest entries name the
# commit that ran them); what the Hessian study still needs is a second seed of the MLP and B-spline Mixers.
# The ConvMixer pair (kan_convmixer_128_8_p4) was trained on a CPU with its own recipe (train_pretrained.sh).
PLAN = {
    "cifar10_none_seed1": (1, ["--model.kan", "none", "--seed_everything", "1"]),
    "cifar10_bspline_seed1": (1, ["--model.kan", "bspline", "--seed_everything", "1"]),
}


def fit_command(name: str, extra: list[str], data: Path, runs: Path, workers: int, trainer: str) -> list[str]:
    return [sys.executable, "-m", "kanvision.cli", "fit", "--config", trainer, "--config", RECIPE,
            "--name", name, "--data.root", str(data), "--data.num_workers", str(workers),
            "--trainer.default_root_dir", str(runs), "--trainer.enable_progress_bar", "false", *extra]


def epochs_done(run_dir: Path) -> int:
    """Finished epochs, read off the newest latest-epochNNN.ckpt that `kanvision fit` keeps."""
    found = sorted((run_dir / "checkpoints").glob("latest-epoch*.ckpt")) if run_dir.is_dir() else []
    return int(found[-1].stem.removeprefix("latest-epoch")) + 1 if found else 0


def pack(run_dir: Path, log: Path, wall_s: float, out: Path) -> Path | None:
    status = json.loads((run_dir / "status.json").read_text()) if (run_dir / "status.json").is_file() else {}
    if status.get("status") != "finished" or "test" not in status:
        return None
    best = Path(status["test"]["checkpoint"])
    slim = run_dir / "checkpoints" / best.name.replace(".ckpt", ".weights.ckpt")
    ckpt = torch.load(best, map_location="cpu", weights_only=False)
    torch.save({k: v for k, v in ckpt.items() if k in ("state_dict", "kanvision", "hyper_parameters", "epoch",
                                                       "global_step", "pytorch-lightning_version")}, slim)
    (run_dir / "wall_s").write_text(f"{wall_s:.0f}\n")
    target = out / f"{run_dir.parent.name}.tar"
    with tarfile.open(target, "w") as tar:
        for f in ("metrics.csv", "status.json", "hparams.yaml", "config.yaml", "wall_s"):
            if (run_dir / f).is_file():
                tar.add(run_dir / f, arcname=f"{run_dir.parent.name}/{run_dir.name}/{f}")
        tar.add(slim, arcname=f"{run_dir.parent.name}/{run_dir.name}/checkpoints/{best.name}")
        tar.add(log, arcname=f"{run_dir.parent.name}/fit.log")
    return target


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="CIFAR-10 image folders: DATA/{train,test}/<class>/")
    p.add_argument("--runs", type=Path, required=True, help="where the run directories go")
    p.add_argument("--pack", type=Path, required=True, help="where the <name>.tar of each finished run goes")
    p.add_argument("--deadline-s", type=float, required=True, help="seconds from now by which every run stops")
    p.add_argument("--only", default="", help="comma-separated run names (default: the whole plan)")
    p.add_argument("--workers", type=int, default=2, help="data-loading workers per run")
    p.add_argument("--trainer", default="configs/trainer/gpu.yaml", help="trainer config (cpu.yaml for a dry run)")
    p.add_argument("--fit-args", default="", help="appended to every fit, e.g. a small subset for a dry run")
    args = p.parse_args()
    t0 = time.time()
    deadline = t0 + args.deadline_s
    names = [n for n in PLAN if not args.only or n in args.only.split(",")]
    args.runs.mkdir(parents=True, exist_ok=True)
    args.pack.mkdir(parents=True, exist_ok=True)
    procs, logs, starts, ends, first_epoch_at = {}, {}, {}, {}, {}
    for name in names:
        logs[name] = args.runs / f"{name}.log"
        cmd = fit_command(name, PLAN[name][1] + shlex.split(args.fit_args), args.data, args.runs, args.workers,
                          args.trainer)
        print(f"[{time.time() - t0:5.0f}s] start {name}: {' '.join(cmd[1:])}", flush=True)
        procs[name] = subprocess.Popen(cmd, cwd=ROOT, stdout=open(logs[name], "w"), stderr=subprocess.STDOUT)
        starts[name] = time.time()
    stopped: set[str] = set()

    def stop(name: str, why: str) -> None:
        if procs[name].poll() is None and name not in stopped:
            print(f"[{time.time() - t0:5.0f}s] stop {name}: {why}", flush=True)
            procs[name].send_signal(signal.SIGTERM)
            stopped.add(name)

    last_report = 0.0
    while any(pr.poll() is None for pr in procs.values()):
        now = time.time()
        projected = {}
        for name in names:
            if procs[name].poll() is not None:
                ends.setdefault(name, now)
                continue
            done = epochs_done(args.runs / name / "version_0")
            if done and name not in first_epoch_at:
                first_epoch_at[name] = (now, done)
            if done and done > first_epoch_at[name][1]:
                # Timed from the first epoch seen on: the first epoch also pays start-up and compilation, which
                # made a first on-H100 session stop the second-priority runs on a projection 2.5x too long.
                t1, d1 = first_epoch_at[name]
                projected[name] = now + (now - t1) / (done - d1) * (EPOCHS - done) + 30  # + the test pass
        late = [n for n, t in projected.items() if PLAN[n][0] == 1 and t > deadline]
        if late:
            for name in names:
                if PLAN[name][0] > 1:
                    stop(name, f"first-priority {late[0]} projected to end {projected[late[0]] - deadline:.0f}s late")
        if now > deadline:
            for name in names:
                stop(name, "deadline")
        if now - last_report > 30:
            last_report = now
            print(f"[{now - t0:5.0f}s] " + ", ".join(
                f"{n}: {epochs_done(args.runs / n / 'version_0')}/{EPOCHS}"
                + (f" (ends ~{projected[n] - t0:.0f}s)" if n in projected else "")
                + ("" if procs[n].poll() is None else f" exit {procs[n].returncode}") for n in names), flush=True)
        time.sleep(3)
    status = {}
    for name in names:
        wall = ends.get(name, time.time()) - starts[name]
        packed = pack(args.runs / name / "version_0", logs[name], wall, args.pack)
        status[name] = {"exit": procs[name].returncode, "wall_s": round(wall), "packed": str(packed) if packed else None}
        print(f"{name}: exit {procs[name].returncode}, {wall:.0f}s, " + (f"packed {packed}" if packed else
              "not packed (unfinished); log tail:\n" + "".join(logs[name].read_text().splitlines(True)[-15:])))
    (args.pack / "train_on_gpu.json").write_text(json.dumps(status, indent=2) + "\n")
    return 0 if all(v["packed"] for n, v in status.items() if PLAN[n][0] == 1) else 1


if __name__ == "__main__":
    raise SystemExit(main())
