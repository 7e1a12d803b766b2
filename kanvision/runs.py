"""A training run's directory and its outcome: `status.json`, and a stop on a non-finite training loss.

`status.json` in the run directory (`<root>/<name>/version_N/`) is what a sweep reads to tell a finished
run from one that diverged, failed or is still going:

    {"status": "running" | "finished" | "diverged" | "failed" | "interrupted", ...}

"diverged" adds `step` (the optimizer step whose loss was not finite), `epoch`, `loss` ("nan", "inf",
"-inf", or "non-finite on another rank" under DDP), `last_finite_loss` (null when no step was finite)
and `lr` (the learning rate of that step); "failed" adds `error` (the exception's type and first line).
The file is replaced atomically.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import lightning as L
import torch

__all__ = ["DivergedError", "RunStatus", "allocate_version", "read_status", "write_status"]

STATUS_NAME = "status.json"


class DivergedError(RuntimeError):
    """Training produced a non-finite loss; the run was stopped and marked diverged."""


def write_status(run_dir: str | os.PathLike, **record) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / STATUS_NAME
    tmp = run_dir / f".{STATUS_NAME}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)  # a reader never sees half a file
    return path


def read_status(run_dir: str | os.PathLike) -> dict | None:
    try:
        return json.loads((Path(run_dir) / STATUS_NAME).read_text())
    except (OSError, ValueError):
        return None


def allocate_version(root: str | os.PathLike, name: str) -> int:
    """Create <root>/<name>/version_N for the first free N and return N.

    os.mkdir either creates the directory or fails because it exists, so of two runs started together with
    the same name each gets its own N (a scan for the next free number would give both the same one).
    """
    base = Path(root) / name
    base.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name[len("version_"):]) for p in base.glob("version_*") if p.name[len("version_"):].isdigit()]
    n = max(taken, default=-1) + 1
    while True:
        try:
            os.mkdir(base / f"version_{n}")
            return n
        except FileExistsError:
            n += 1


def _loss_text(x: float) -> str:
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


class RunStatus(L.Callback):
    """Writes status.json for `fit`, and stops training at the first non-finite training loss.

    A NaN/inf loss otherwise trains on (every later step is NaN), validates at chance, saves a "best"
    checkpoint and exits 0. Checked on every rank and agreed over ranks, so DDP ranks stop together.
    """

    def __init__(self):
        self.last_finite: float | None = None
        self._step = self._lr = None

    def _dir(self, trainer) -> str | None:
        run_dir = trainer.log_dir  # a collective under DDP: every rank asks
        # Without a logger, or under fast_dev_run (a dummy logger), there is no run directory to mark.
        return run_dir if trainer.loggers and not trainer.fast_dev_run else None

    def _write(self, trainer, **record) -> str | None:
        run_dir = self._dir(trainer)
        if trainer.is_global_zero and run_dir:
            write_status(run_dir, **record)
        return run_dir

    def on_fit_start(self, trainer, pl_module) -> None:
        self._write(trainer, status="running")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # The step and learning rate this batch trains with (both move on before on_train_batch_end).
        self._step = trainer.global_step
        self._lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        value = float(loss.detach())
        if not trainer.strategy.reduce_boolean_decision(not math.isfinite(value), all=False):
            self.last_finite = value
            return
        record = dict(status="diverged", step=self._step, epoch=trainer.current_epoch,
                      loss=_loss_text(value) if not math.isfinite(value) else "non-finite on another rank",
                      last_finite_loss=self.last_finite, lr=self._lr)
        run_dir = self._write(trainer, **record)
        where = f"the run is marked diverged in {Path(run_dir) / STATUS_NAME}" if run_dir else "no run directory"
        last = f"{self.last_finite:.4g}" if self.last_finite is not None else "none (the first step)"
        lr = f"{self._lr:.3g}" if self._lr is not None else "unknown"
        clip = "" if trainer.gradient_clip_val else " or clip gradients (--trainer.gradient_clip_val 1)"
        raise DivergedError(
            f"training diverged: loss {record['loss']} at step {self._step} (epoch {trainer.current_epoch}), "
            f"last finite loss {last}, lr {lr}; {where}. Lower the learning rate "
            f"(--model.optimizer.init_args.lr){clip}")

    def on_fit_end(self, trainer, pl_module) -> None:
        self._write(trainer, status="finished")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if (isinstance(exception, DivergedError) or trainer.state.fn != "fit" or not trainer.is_global_zero
                or not trainer.loggers or trainer.fast_dev_run):
            return
        # Not trainer.log_dir: a collective, and other ranks may not be here.
        logger = trainer.loggers[0]
        run_dir = getattr(logger, "log_dir", None) or logger.save_dir
        if not run_dir:
            return
        if isinstance(exception, KeyboardInterrupt):
            write_status(run_dir, status="interrupted", step=trainer.global_step, epoch=trainer.current_epoch)
        else:
            first = (str(exception).splitlines() or [""])[0]
            write_status(run_dir, status="failed", step=trainer.global_step, epoch=trainer.current_epoch,
                         error=f"{type(exception).__name__}: {first}"[:500])
