"""A training run's directory and its outcome: `status.json`, and a stop on a non-finite loss or validation.

`status.json` in the run directory (`<root>/<name>/version_N/`) is what a sweep reads to tell a finished
run from one that diverged, failed or is still going:

    {"status": "running" | "finished" | "diverged" | "failed" | "interrupted", ...}

"interrupted" (a first SIGINT / SIGTERM: training stops at the next step boundary, after a validation or an
epoch end that is due, and saves its state) adds `step`, `epoch` and
`checkpoint`, the file to resume from with --ckpt_path. "diverged" adds `step` (the optimizer step whose loss was
not finite; with `stage: "validation"`, the steps trained before a validation whose loss was not finite), `epoch`,
`loss` ("nan", "inf", "-inf", or "non-finite on another rank" under DDP), `last_finite_loss` (of training; null
when no step was finite) and `lr`; "failed" adds `error` (the exception's type and first line, or for a full
disk the one line naming the file and the fix). The file is replaced atomically (train/atomic.py).

A run that --trainer.max_steps ends in mid-epoch keeps its state at that step (stopped-step<N>.ckpt, and the
same state in the checkpoints written after it), so a resume with a larger max_steps continues that epoch.
"""
from __future__ import annotations

import copy
import json
import math
import re
import os
import signal
import threading
from pathlib import Path

import lightning as L
import torch

__all__ = ["DivergedError", "RunInterrupted", "RunStatus", "allocate_version", "read_status",
           "resume_version", "write_status"]

STATUS_NAME = "status.json"


class DivergedError(RuntimeError):
    """Training produced a non-finite loss; the run was stopped and marked diverged."""


class RunInterrupted(RuntimeError):
    """SIGINT or SIGTERM stopped training after a whole step, whose state was saved for --ckpt_path."""


def write_status(run_dir: str | os.PathLike, **record) -> Path:
    """status.json replaced atomically (train/atomic.py): a reader never sees half a file, and a full disk
    leaves the previous status in place (WriteError, one line)."""
    from kanvision.train.atomic import atomic_write_text

    return atomic_write_text(Path(run_dir) / STATUS_NAME, json.dumps(record, indent=2) + "\n")


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


def resume_version(root: str | os.PathLike, name: str, ckpt_path: str | os.PathLike | None) -> int | None:
    """N when ckpt_path is <root>/<name>/version_N/checkpoints/<file>: a resumed run goes on in its own
    directory (metrics.csv continues, best-checkpoint tracking carries over) instead of starting version_N+1."""
    if not ckpt_path or not Path(ckpt_path).is_file():
        return None
    run = Path(ckpt_path).resolve().parent.parent
    base = (Path(root) / name).resolve()
    if run.parent == base and run.name.startswith("version_") and run.name[len("version_"):].isdigit():
        return int(run.name[len("version_"):])
    return None


def _loss_text(x: float) -> str:
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


class RunStatus(L.Callback):
    """Writes status.json for `fit`, and stops training at the first non-finite training loss or validation.

    A NaN/inf loss otherwise trains on (every later step is NaN), validates at chance, saves a "best"
    checkpoint and exits 0. Checked on every rank and agreed over ranks, so DDP ranks stop together.
    Also: the SIGINT/SIGTERM stop with its state saved, the max_steps stop's resumable state, and the
    checkpoint records of a run that was moved (on_load_checkpoint, rundir.relocate_checkpoint_states).
    """

    def __init__(self):
        self.last_finite: float | None = None
        self._signal = self._asked = None
        self._deferred, self._previous = False, {}
        self._step = self._lr = None
        self._stop_state, self._capturing = None, False

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
        self._signal, self._deferred, self._asked = None, False, None
        self._stop_state, self._capturing = None, False
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _on_signal(self, signum, frame) -> None:
        # The first Ctrl-C / SIGTERM (a scheduler's notice) ends the run at the next step boundary, state saved;
        # the handlers from before (Python's KeyboardInterrupt, Lightning's SIGTERM handling) take a second one.
        self._signal = signal.Signals(signum).name
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        previous, self._previous = getattr(self, "_previous", {}), {}
        if previous and threading.current_thread() is threading.main_thread():
            for sig, handler in previous.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def _stop_requested(self, trainer) -> bool:
        """Agreed over ranks after every step: whether a signal arrived on any of them."""
        asked = self._signal
        if trainer.strategy.reduce_boolean_decision(asked is not None, all=False):
            self._asked = asked or "a signal on another rank"
            return True
        return False

    @staticmethod
    def _epoch_end_or_validation_due(trainer) -> bool:
        loop = trainer.fit_loop.epoch_loop
        if loop.batch_progress.is_last_batch:
            return True
        try:  # Lightning's own test for a mid-epoch validation after this batch (val_check_interval)
            return bool(loop._should_check_val_fx(trainer.fit_loop._data_fetcher))
        except (AttributeError, TypeError):
            return False

    def _checkpoint_dir(self, trainer) -> Path:
        # Beside the run's other checkpoints (ModelCheckpoint resolved its folder at setup).
        folder = getattr(trainer.checkpoint_callback, "dirpath", None)
        return Path(folder) if folder else Path(self._dir(trainer) or trainer.default_root_dir) / "checkpoints"

    def _stop(self, trainer) -> None:
        path = self._checkpoint_dir(trainer) / f"interrupted-step{trainer.global_step:06d}.ckpt"
        trainer.save_checkpoint(path)  # every rank calls it; rank 0 writes (a failed write raises WriteError)
        saved = path.is_file()  # what the message names must exist (a rank without the shared folder: says so)
        self._write(trainer, status="interrupted", signal=self._asked, step=trainer.global_step,
                    epoch=trainer.current_epoch, checkpoint=str(path) if saved else None)
        how = (f"its state is saved: resume with the same command plus --ckpt_path {path} (or --ckpt_path last)"
               if saved else f"its state was written by rank 0 to {path}, not visible here: resume with the same "
                             "command plus --ckpt_path last on the machine of rank 0")
        raise RunInterrupted(f"stopped by {self._asked} after step {trainer.global_step} (epoch "
                             f"{trainer.current_epoch}); {how}")

    def _save_at_max_steps(self, trainer, batch_idx: int) -> None:
        """A run that --trainer.max_steps ends in mid-epoch: its state after the last step, as the SIGTERM stop
        saves it, in stopped-step<N>.ckpt, and (on_save_checkpoint) in every checkpoint written after it.

        Lightning goes on to the epoch's end hooks (a validation, the epoch-end checkpoints), and those
        checkpoints say the epoch is over: resumed with a larger max_steps, the run would start the next epoch
        and never train the rest of this one (1.8e-2 off an uninterrupted run after 10 steps)."""
        max_steps = trainer.max_steps
        if (max_steps is None or max_steps < 0 or trainer.global_step < max_steps or self._stop_state is not None
                or not trainer.checkpoint_callbacks or batch_idx + 1 >= trainer.num_training_batches):
            return  # at an epoch's end Lightning's own epoch-end checkpoints resume exactly
        folder = self._checkpoint_dir(trainer)
        path = folder / f"stopped-step{trainer.global_step:06d}.ckpt"
        self._capturing = True
        try:
            trainer.save_checkpoint(path)
        finally:
            self._capturing = False
        if trainer.is_global_zero:  # one resume point per run: older max_steps stops are behind this one
            for old in folder.glob("stopped-step*.ckpt"):
                if old != path:
                    old.unlink(missing_ok=True)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        watched = {cb.state_key for cb in trainer.checkpoint_callbacks}
        if self._capturing:  # the loops', data's and generators' states at the max_steps stop
            dm = trainer.datamodule
            keys = ["loops"] + ([type(dm).__qualname__] if dm is not None else [])
            state = {k: copy.deepcopy(checkpoint[k]) for k in keys if k in checkpoint}
            state["callbacks"] = {k: copy.deepcopy(v) for k, v in (checkpoint.get("callbacks") or {}).items()
                                  if k not in watched}
            self._stop_state = state
        elif self._stop_state is not None:
            # Written after the stop (epoch end, validation): resumes from the stop. The checkpoint callbacks'
            # own records (best so far, file names) stay as they are now.
            for key, value in self._stop_state.items():
                if key == "callbacks":
                    checkpoint.setdefault("callbacks", {}).update(copy.deepcopy(value))
                else:
                    checkpoint[key] = copy.deepcopy(value)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        from kanvision.train.rundir import relocate_checkpoint_states
        relocate_checkpoint_states(checkpoint, trainer.checkpoint_callbacks)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._deferred:  # a stop asked for at the end of the previous epoch or before a validation
            self._stop(trainer)
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
            if self._stop_requested(trainer):
                # Not before a validation or an epoch's end that is due now: resuming would skip them (Lightning
                # goes on with the next batch), so the stop waits for the start of the next batch.
                if self._epoch_end_or_validation_due(trainer):
                    self._deferred = True
                else:
                    self._stop(trainer)
                return
            self._save_at_max_steps(trainer, batch_idx)
            return
        record = dict(status="diverged", step=self._step, epoch=trainer.current_epoch,
                      loss=_loss_text(value) if not math.isfinite(value) else "non-finite on another rank",
                      last_finite_loss=self.last_finite, lr=self._lr)
        self._diverged(trainer, record, f"training diverged: loss {record['loss']} at step {self._step}")

    def _diverged(self, trainer, record: dict, what: str, note: str = "") -> None:
        self._restore_handlers()
        try:
            run_dir = self._write(trainer, **record)
            where = f"the run is marked diverged in {Path(run_dir) / STATUS_NAME}" if run_dir else "no run directory"
        except OSError as e:  # a full disk on top: the divergence is still what stopped the run
            where = f"status.json not updated ({e})"
        last = f"{self.last_finite:.4g}" if self.last_finite is not None else "none (the first step)"
        lr = f"{record['lr']:.3g}" if record.get("lr") is not None else "unknown"
        clip = "" if trainer.gradient_clip_val else " or clip gradients (--trainer.gradient_clip_val 1)"
        loss = "training loss" if record.get("stage") == "validation" else "loss"
        raise DivergedError(f"{what} (epoch {trainer.current_epoch}){note}, last finite {loss} {last}, lr {lr}; "
                            f"{where}. Lower the learning rate (--model.optimizer.init_args.lr){clip}")

    def on_validation_end(self, trainer, pl_module) -> None:
        """Non-finite validation outputs while the training loss is still finite (weights grown huge, not yet
        inf): the run stops as diverged here, before ModelCheckpoint (Lightning runs it after every other
        callback) could keep these weights as a "best" and the after-fit test could score them."""
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        m = trainer.callback_metrics
        bad = {k: float(m[k]) for k in ("val/loss", "train_eval/loss") if k in m and not math.isfinite(float(m[k]))}
        if not trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            return
        key, value = next(iter(bad.items()), ("val/loss", None))
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        record = dict(status="diverged", stage="validation", step=trainer.global_step, epoch=trainer.current_epoch,
                      loss=_loss_text(value) if value is not None else "non-finite on another rank",
                      last_finite_loss=self.last_finite, lr=lr)
        self._diverged(trainer, record, f"validation diverged: {key} {record['loss']} after step {trainer.global_step}",
                       ": the weights give non-finite outputs, no checkpoint of them is kept")

    def on_fit_end(self, trainer, pl_module) -> None:
        self._restore_handlers()
        self._write(trainer, status="finished")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore_handlers()
        if (isinstance(exception, (DivergedError, RunInterrupted)) or trainer.state.fn != "fit" or not trainer.is_global_zero
                or not trainer.loggers or trainer.fast_dev_run):
            return
        # Not trainer.log_dir: a collective, and other ranks may not be here.
        logger = trainer.loggers[0]
        run_dir = getattr(logger, "log_dir", None) or logger.save_dir
        if not run_dir:
            return
        from lightning.pytorch.utilities.exceptions import SIGTERMException
        # SIGTERMException: Lightning's own handler took a SIGTERM that came outside our window (after the last
        # training step, e.g. during the final validation): the run was stopped, not broken.
        from kanvision.train.atomic import disk_error
        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            record = dict(status="interrupted", step=trainer.global_step, epoch=trainer.current_epoch)
        else:
            first = (str(exception).splitlines() or [""])[0]
            found = disk_error(exception)  # a full disk: the one line naming the path and the fix
            record = dict(status="failed", step=trainer.global_step, epoch=trainer.current_epoch,
                          error=str(found) if found else f"{type(exception).__name__}: {first}"[:500])
        try:
            write_status(run_dir, **record)
        except OSError:
            pass  # the disk that stopped the run may refuse this too: the previous status.json stays whole


def latest_version(run_root: Path) -> Path | None:
    """The run's highest-numbered version_N directory (numeric order, not lexical), or None."""
    versions = [p for p in run_root.glob("version_*") if p.name[len("version_"):].isdigit()]
    return max(versions, key=version_number, default=None)


def version_number(path: Path | None) -> int:
    """N of a version_N directory; -1 for None (no version yet)."""
    return int(path.name[len("version_"):]) if path is not None else -1


def error_line(log: Path) -> str:
    """The line of a fit's log that says why it stopped: our one-line error, else an exception line, else the last."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no output"
    for ln in reversed(lines):
        if ln.startswith("kanvision: ") or re.match(r"\w+(Error|Exception)\b", ln):
            return ln[:300]
    return lines[-1][:300] if lines else "no output"
