"""One command for a time-limited GPU allocation (a SLURM job, a 15-minute interactive slot): the GPU self-check,
the kernel and training benchmarks, then a resumable queue of trainings and Hessians, each packed into OUT as it
finishes. Run it again with the same OUT (a later slot) and it skips what is done and resumes what was stopped.

    scripts/gpu_run.sh OUT --budget-minutes 12 [--data DIR] [--only PATTERN] [--dry-run]

The queue, in order (names are the job ids in OUT/state.json):
  check/gpu           kanvision gpu-check --quick                      -> OUT/gpu_check.md
  bench/layers        benchmarks/layers.py on the card                 -> OUT/RESULTS_layers_gpu.md
  bench/train         benchmarks/train_throughput.py on the card       -> OUT/RESULTS_train_gpu.md
  train/<tag>         every registered pretrained tag not yet in checkpoints/manifest.json (Mixer recipe for the MLP,
                      every kind and the size-matched MLP; the ConvMixer pair; seed 0 and seed 1), then the DeiT-tiny
                      rows and the ConvMixer-256/8 strong baseline (configs/pretrained/), 2 seeds each
  hessian/<group>     scripts/hessian_study.sh at full scale for the shipped weights present in checkpoints/

Time: a job starts only if its expected seconds fit in what is left of the budget (expected = the last time this
job or its family took on this card, recorded in OUT/timings.json; a job never timed is expected to take its
family's default, printed in the plan). Trainings run several at once (small models leave a GPU mostly idle);
at the deadline every fit still going gets one SIGTERM, saves an interrupted checkpoint and resumes next time.
A finished fit is packed as OUT/pack/<run>.tar (scripts/train_on_gpu.py's pack: logs, metrics, best weights) for
scripts/ship_pretrained.py on any machine.

--dry-run prints the plan with every command and checks it here: each training's config parses (`--print_config`),
each script exists. No GPU is needed for the dry run.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
PY = sys.executable

# Expected seconds per job family before the card has timed one (OUT/timings.json replaces them).
DEFAULT_S = {"check": 240, "bench": 240, "train": 420, "hessian": 600}
RECIPES = {  # architecture -> (recipe, trainer extras)
    "kan_mixer_tiny_p4_32": ("configs/pretrained/cifar10_kan_mixer_tiny_p4_32.yaml", []),
    "kan_convmixer_128_8_p4": ("configs/pretrained/cifar10_kan_convmixer_128_8_p4.yaml", []),
    "kan_deit_tiny_patch4_32": ("configs/pretrained/cifar10_kan_deit_tiny_patch4_32.yaml", []),
    "kan_convmixer_256_8": ("configs/pretrained/cifar10_kan_convmixer_256_8.yaml", ["--trainer.precision", "16-mixed"]),
}


@dataclass
class Job:
    id: str
    family: str
    command: list[str]
    outputs: list[str] = field(default_factory=list)
    run_name: str | None = None  # trainings: runs/<run_name>
    env: dict[str, str] = field(default_factory=dict)


def training_jobs(data: Path, runs: Path) -> list[Job]:
    from kanvision.hub.pretrained import TAGS, read_manifest
    from kanvision.kinds.registry import KINDS

    try:
        shipped = set(read_manifest())
    except Exception:  # no manifest: nothing shipped yet
        shipped = set()
    options = dict(TAGS)
    # The evidence issue's DeiT rows and strong baseline: not shipped tags yet, trained and packed the same way.
    for arch, kinds in (("kan_deit_tiny_patch4_32", ["none", "bspline", "rswaf", "grkan"]),
                        ("kan_convmixer_256_8", ["none", *KINDS])):
        for kind in kinds:
            for seed in (0, 1):
                options[f"{arch}.cifar10_{kind}{'' if seed == 0 else f'_seed{seed}'}"] = {"kan": kind}
    for suffix in ("", "_seed1"):  # DeiT's size-matched MLP (the paper's Table 1 has none; ours does)
        options[f"kan_deit_tiny_patch4_32.cifar10_none_match_bspline{suffix}"] = {"kan": "none", "match_params": "bspline"}
    jobs = []
    for tag, opts in options.items():
        if tag in shipped:
            continue
        arch, suffix = tag.split(".", 1)
        recipe, extra = RECIPES[arch]
        seed = int(suffix.rsplit("_seed", 1)[1]) if "_seed" in suffix else 0
        name = f"{arch}_{suffix}"
        cmd = [PY, "-m", "kanvision.cli", "fit", "--config", "configs/trainer/gpu.yaml", "--config", recipe,
               "--model.kan", opts["kan"], "--seed_everything", str(seed), "--name", name,
               "--data.root", str(data), "--trainer.default_root_dir", str(runs),
               "--trainer.enable_progress_bar", "false", *extra]
        if opts.get("match_params"):
            cmd += ["--model.model_kwargs", json.dumps({"match_params": opts["match_params"]})]
        jobs.append(Job(f"train/{tag}", "train", cmd, run_name=name))
    return jobs


def plan(out: Path, data: Path) -> list[Job]:
    jobs = [
        Job("check/gpu", "check", [PY, "-m", "kanvision.cli", "gpu-check", "--quick", "--out", str(out / "gpu_check.md")],
            [str(out / "gpu_check.md")]),
        Job("bench/layers", "bench", [PY, "benchmarks/layers.py", "--device", "cuda", "--out",
                                      str(out / "RESULTS_layers_gpu.md")], [str(out / "RESULTS_layers_gpu.md")]),
        Job("bench/train", "bench", [PY, "benchmarks/train_throughput.py", "--device", "cuda", "--out",
                                     str(out / "RESULTS_train_gpu.md")], [str(out / "RESULTS_train_gpu.md")]),
    ]
    jobs += training_jobs(data, out / "runs")
    models = [str(p) for p in sorted((ROOT / "checkpoints").glob("kan_*.cifar10_*")) if p.is_dir()]
    if models:
        jobs.append(Job("hessian/shipped", "hessian", ["bash", "scripts/hessian_study.sh", str(out / "hessian"), str(data)],
                        [str(out / "hessian" / "hessian.json")], env={"MODELS": " ".join(models)}))
    return jobs


def unpack_data(data: Path, archive: Path) -> None:
    """DATA/{train,test} from the image-folder archive when missing (a fresh GPU machine has only the archive)."""
    import tarfile

    if (data / "train").is_dir() and (data / "test").is_dir():
        return
    if not archive.is_file():
        raise SystemExit(f"gpu_run: no {data}/train and no archive {archive} to unpack: pass --data DIR with "
                         "{train,test}/<class>/ images, or --archive cifar10-jpeg.tar.gz")
    data.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(data, filter="data")


def load_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def save_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def expected_s(job: Job, timings: dict) -> float:
    return float(timings.get(job.id) or timings.get(job.family) or DEFAULT_S[job.family])


def dry_run(jobs: list[Job], timings: dict, budget_s: float) -> int:
    """Print the plan and check it here: configs parse, scripts exist."""
    left, problems = budget_s, []
    for job in jobs:
        want = expected_s(job, timings)
        fits = "runs" if want <= left else "waits for a later slot"
        if want <= left:
            left -= want if job.family != "train" else 0  # trainings share the card: counted as one block below
        print(f"{job.id:<60} ~{want:>5.0f}s  {fits}\n    {shlex.join(job.command[1:] if job.command[0] == PY else job.command)}")
        if job.family == "train":
            check = job.command + ["--print_config"]
            proc = subprocess.run(check, cwd=ROOT, capture_output=True, text=True, timeout=300)
            if proc.returncode != 0:
                problems.append(f"{job.id}: config does not parse: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        for arg in job.command[1:3]:
            if arg.endswith((".py", ".sh")) and not (ROOT / arg).is_file():
                problems.append(f"{job.id}: {arg} does not exist")
    for p in problems:
        print("PROBLEM", p)
    print(f"{len(jobs)} jobs; {len(problems)} problems")
    return 1 if problems else 0


def run_queue(jobs: list[Job], out: Path, budget_s: float, parallel: int) -> int:
    from train_on_gpu import pack

    t0 = time.time()
    deadline = t0 + budget_s
    state_path, timings_path = out / "state.json", out / "timings.json"
    state, timings = load_json(state_path), load_json(timings_path)
    (out / "pack").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    running: dict[str, tuple[subprocess.Popen, float, Job]] = {}
    queue = [j for j in jobs if state.get(j.id) != "done"]
    for j in jobs:
        if state.get(j.id) == "done":
            print(f"skip {j.id}: done", flush=True)

    def finish(job: Job, proc: subprocess.Popen, started: float) -> None:
        took = time.time() - started
        ok = proc.returncode == 0
        if job.family == "train" and ok:
            run_dirs = sorted((out / "runs" / job.run_name).glob("version_*"))
            packed = pack(run_dirs[-1], out / "logs" / f"{job.id.replace('/', '_')}.log", took, out / "pack") \
                if run_dirs else None
            ok = packed is not None
        state[job.id] = "done" if ok else ("stopped" if proc.returncode in (130, 143, -15) else "failed")
        if ok:
            timings[job.id] = round(took)
            timings[job.family] = max(timings.get(job.family, 0), round(took))
        save_json(state_path, state)
        save_json(timings_path, timings)
        print(f"[{time.time() - t0:5.0f}s] {job.id}: {state[job.id]} ({took:.0f}s)", flush=True)

    while queue or running:
        now = time.time()
        for jid, (proc, started, job) in list(running.items()):
            if proc.poll() is not None:
                del running[jid]
                finish(job, proc, started)
            elif now > deadline:
                proc.send_signal(signal.SIGTERM)  # a fit saves an interrupted checkpoint and resumes next time
        slots = parallel if all(j.family == "train" for _, _, j in running.values()) else 1
        while queue and len(running) < slots and now < deadline:
            job = queue[0]
            if running and (job.family != "train" or any(j.family != "train" for _, _, j in running.values())):
                break  # checks, benchmarks and Hessians run alone: they time the card
            if expected_s(job, timings) > deadline - now:
                print(f"[{now - t0:5.0f}s] {job.id}: needs ~{expected_s(job, timings):.0f}s, "
                      f"{deadline - now:.0f}s left: left for a later slot", flush=True)
                queue.pop(0)
                continue
            queue.pop(0)
            log = open(out / "logs" / f"{job.id.replace('/', '_')}.log", "a")
            env = dict(os.environ, **job.env)
            print(f"[{now - t0:5.0f}s] start {job.id}", flush=True)
            running[job.id] = (subprocess.Popen(job.command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                                                start_new_session=True), time.time(), job)
        if not running and (not queue or now >= deadline):
            break
        time.sleep(2)
    left = [j.id for j in jobs if state.get(j.id) != "done"]
    print(f"done: {sum(1 for j in jobs if state.get(j.id) == 'done')}/{len(jobs)}; "
          f"left for a later slot: {len(left)}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/gpu_run.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="output directory (kept between slots: state, timings, runs, packs)")
    p.add_argument("--budget-minutes", type=float, default=12.0, help="wall-clock budget of this slot")
    p.add_argument("--data", type=Path, default=Path(os.environ.get("DATA", "~/data")).expanduser(),
                   help="CIFAR-10 image folders DATA/{train,test}/<class>/ (default $DATA or ~/data)")
    p.add_argument("--archive", type=Path, default=Path(os.environ.get(
        "KANVISION_CIFAR10_JPEG", ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz")),
        help="the CIFAR-10 JPEG archive unpacked into --data when DATA/train is missing")
    p.add_argument("--only", default="*", help="fnmatch pattern(s) of job ids, comma-separated (default: all)")
    p.add_argument("--parallel", type=int, default=4, help="trainings that share the card at once")
    p.add_argument("--dry-run", action="store_true", help="print the plan and check it on this machine")
    args = p.parse_args(argv)
    if args.budget_minutes <= 0:
        p.error("--budget-minutes must be positive")
    out = args.out.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not args.dry_run:
        unpack_data(args.data, args.archive)
    patterns = [s.strip() for s in args.only.split(",") if s.strip()]
    jobs = [j for j in plan(out, args.data) if any(fnmatch.fnmatch(j.id, pat) for pat in patterns)]
    timings = load_json(out / "timings.json")
    if args.dry_run:
        return dry_run(jobs, timings, args.budget_minutes * 60)
    import torch
    if not torch.cuda.is_available():
        print("gpu_run: no CUDA device on this machine; use --dry-run here, or run it on the GPU machine",
              file=sys.stderr)
        return 2
    print(f"gpu_run: {torch.cuda.get_device_name()}, budget {args.budget_minutes:g} min, {len(jobs)} jobs", flush=True)
    return run_queue(jobs, out, args.budget_minutes * 60, args.parallel)


if __name__ == "__main__":
    raise SystemExit(main())
