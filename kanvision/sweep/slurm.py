"""`kanvision sweep --launcher slurm`: an sbatch array script, one task per run of the sweep.

Task i runs `kanvision sweep --out DIR --task i`: run i of DIR/sweep.json (line i+1 of DIR/commands.txt, the
same `kanvision fit` command the local launcher runs), by the local launcher's rules: done (finished or
diverged with the run's current options) exits at once; options changed since it ran (fingerprint.json):
rerun into a new version; else resumed from its newest checkpoint. Resubmitting the array after preemption or a
time limit is safe. The sweep's own scheduler is
SLURM's: nothing here waits for or watches jobs. Results afterwards: `kanvision sweep ... --report-only`.
"""
from __future__ import annotations

import shlex
from pathlib import Path

from kanvision.sweep.grid import fit_command
from kanvision.train.atomic import atomic_write_text

__all__ = ["SBATCH", "write_sbatch"]

SBATCH = """#!/bin/bash
#SBATCH --job-name=kanvision-sweep
#SBATCH --array=0-{last}
#SBATCH --output={out}/slurm/%A_%a.out
# {n} tasks, one per run: task i runs run i of {out}/sweep.json (line i+1 of {out}/commands.txt), the
# `kanvision fit` command that `kanvision sweep --launcher local` runs for that run.
# Add your cluster's resources above (--partition, --gres=gpu:1, --cpus-per-task, --time); a %N suffix on
# --array caps how many run at once. Resubmitting is safe: a finished or diverged run exits at once, an
# interrupted one resumes from its newest checkpoint, one whose options changed reruns into a new version.
# Afterwards: kanvision sweep ... --report-only (the same arguments).
set -uo pipefail
# The task's run, with the local launcher's rules (kanvision/sweep/runner.py run_local): skipped when done with
# its current options, rerun into a new version when its options changed since it ran, else resumed.
exec {kanvision} sweep --out {out} --task "$SLURM_ARRAY_TASK_ID"
"""


def write_sbatch(runs: list, out: Path) -> Path:
    """DIR/sweep.sbatch over DIR/commands.txt (sweep.write_commands), one array task per run."""
    path = out / "sweep.sbatch"
    (out / "slurm").mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, SBATCH.format(last=len(runs) - 1, n=len(runs), out=shlex.quote(str(out.resolve())),
                                           kanvision=shlex.join(fit_command())))
    return path
