"""`kanvision sweep --launcher slurm`: an sbatch array script, one task per run of the sweep.

Task i runs line i+1 of DIR/commands.txt, the same `kanvision fit` command the local launcher runs, with the
same skip / resume rules (finished or diverged: done; else resume from the newest interrupted-step*.ckpt or
last.ckpt), so resubmitting the array after preemption or a time limit is safe. The sweep's own scheduler is
SLURM's: nothing here waits for or watches jobs. Results afterwards: `kanvision sweep ... --report-only`.
"""
from __future__ import annotations

import shlex
from pathlib import Path

from kanvision.train.atomic import atomic_write_text

__all__ = ["SBATCH", "write_sbatch"]

SBATCH = """#!/bin/bash
#SBATCH --job-name=kanvision-sweep
#SBATCH --array=0-{last}
#SBATCH --output={out}/slurm/%A_%a.out
# {n} tasks, one per run: task i runs line i+1 of {out}/commands.txt, the `kanvision fit` command that
# `kanvision sweep --launcher local` runs for that run. Add your cluster's resources above (--partition,
# --gres=gpu:1, --cpus-per-task, --time); a %N suffix on --array caps how many run at once.
# Resubmitting is safe: a finished or diverged run exits at once, an interrupted one resumes from its newest
# interrupted-step*.ckpt / last.ckpt. Afterwards: kanvision sweep ... --report-only (the same arguments).
set -uo pipefail
SWEEP={out}
cmd=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" "$SWEEP/commands.txt")
name=$(grep -o -- '--name=[^ ]*' <<<"$cmd" | tail -1 | cut -d= -f2)
run="$SWEEP/runs/$name"
if grep -qsE '"status": "(finished|diverged)"' "$run"/version_*/status.json; then
  echo "$name: done already"; exit 0
fi
mkdir -p "$run"
echo "$cmd" > "$run/command.txt"
# Anything to resume: `--ckpt_path last` picks the newest of them by version and step (train/rundir.py).
resume=$(ls -L "$run"/version_*/checkpoints/interrupted-step*.ckpt "$run"/version_*/checkpoints/stopped-step*.ckpt "$run"/version_*/checkpoints/last.ckpt 2>/dev/null | head -1)
[ -n "$resume" ] && cmd="$cmd --ckpt_path=last"
start=$(date +%s)
eval "$cmd" >> "$run/fit.log" 2>&1
rc=$?
prev=$(cat "$run/wall_s" 2>/dev/null || echo 0)
awk -v a="$prev" -v b="$(( $(date +%s) - start ))" 'BEGIN {{ printf "%.1f\\n", a + b }}' > "$run/wall_s"  # summed over resumes
# A diverged run is a result of its scheme, recorded in its status.json, not a failed task.
grep -qs '"status": "diverged"' "$run"/version_*/status.json && rc=0
exit $rc
"""


def write_sbatch(runs: list, out: Path) -> Path:
    """DIR/sweep.sbatch over DIR/commands.txt (sweep.write_commands), one array task per run."""
    path = out / "sweep.sbatch"
    (out / "slurm").mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, SBATCH.format(last=len(runs) - 1, n=len(runs), out=shlex.quote(str(out.resolve()))))
    return path
