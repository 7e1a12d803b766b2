"""The run directory's loggers and config file, written so that a failed write loses nothing.

kanvision's runs log through Lightning's CSVLogger and TensorBoardLogger and save the resolved command through
LightningCLI's SaveConfigCallback. Their writes replace or extend files in place: a full disk (ENOSPC), a file
size limit (EFBIG) or a lost permission while one is written leaves a truncated metrics.csv, hparams.yaml or
config.yaml under its normal name, and the run's record of what it ran and measured is gone. Here:

- metrics.csv: rows are appended, and on a failed append the file is cut back to its length before it (no
  half row); when new columns appear the whole table is replaced atomically (train/atomic.py). A resumed run
  keeps its metrics.csv and drops the rows of steps past its checkpoint (they are trained, and logged, again);
  Lightning's writer would delete the file.
- hparams.yaml (CSV and TensorBoard) and config.yaml: written under a temporary name and renamed.

Only public Lightning APIs are extended (Logger / ExperimentWriter / SaveConfigCallback methods, and
`save_hparams_to_yaml`), except AppendingWriter._check_log_dir_exists, pinned by tests/test_internals.py.
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
from pathlib import Path

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from kanvision.train.atomic import atomic_write_path, atomic_write_text, disk_error, tmp_name

__all__ = ["AppendingCSVLogger", "AppendingWriter", "AtomicSaveConfig", "RunTensorBoardLogger", "write_hparams_yaml"]


def write_hparams_yaml(path, hparams) -> None:
    """Lightning's hparams.yaml (save_hparams_to_yaml: the same content), replaced atomically."""
    atomic_write_path(path, lambda tmp: save_hparams_to_yaml(str(tmp), hparams))


def _table(keys, rows) -> str:
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


class AppendingWriter(ExperimentWriter):
    """Lightning's CSV experiment writer, with the writes described in the module docstring."""

    def __init__(self, log_dir: str, resume_step: int | None = None):
        self.resume_step = resume_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning's: deletes an existing metrics.csv
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            reader = csv.DictReader(f)
            rows, self.metrics_keys = list(reader), sorted(reader.fieldnames or [])
        if self.resume_step is not None:
            rows = [r for r in rows if not r.get("step") or int(float(r["step"])) < self.resume_step]
            atomic_write_text(self.metrics_file_path, _table(self.metrics_keys, rows))

    def log_hparams(self, params) -> None:
        self.hparams.update(params)
        write_hparams_yaml(Path(self.log_dir) / self.NAME_HPARAMS_FILE, self.hparams)

    def save(self) -> None:
        if not self.metrics:
            return
        path = Path(self.metrics_file_path)
        keys = sorted(set(self.metrics_keys).union(*self.metrics))
        if not path.is_file() or keys != self.metrics_keys:
            rows = []
            if path.is_file():
                with open(path, newline="") as f:
                    rows = list(csv.DictReader(f))
            atomic_write_text(path, _table(keys, rows + self.metrics))
        else:
            text = io.StringIO(newline="")
            csv.DictWriter(text, fieldnames=keys).writerows(self.metrics)
            size = path.stat().st_size
            try:
                with open(path, "a", newline="") as f:
                    f.write(text.getvalue())
                    f.flush()
            except OSError as e:  # cut back to the rows written before: no half row stays
                with contextlib.suppress(OSError):
                    os.truncate(path, size)
                found = disk_error(e, path)
                if found is not None:
                    raise found from None
                raise
        self.metrics_keys, self.metrics = keys, []


class AppendingCSVLogger(CSVLogger):
    """CSVLogger writing through AppendingWriter: metrics.csv survives a resume into its run directory and a
    failed write."""

    def __init__(self, *args, resume_step: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingWriter(self.log_dir, self._resume_step)
        return self._experiment


class RunTensorBoardLogger(TensorBoardLogger):
    """TensorBoardLogger whose hparams.yaml is replaced atomically (its event files are append-only streams that
    TensorBoard reads up to a torn last record)."""

    @rank_zero_only
    def save(self) -> None:
        path = Path(self.log_dir) / self.NAME_HPARAMS_FILE
        if path.parent.is_dir() and not path.is_file():
            write_hparams_yaml(path, self.hparams)
        super().save()  # finds the file there and leaves it


class AtomicSaveConfig(SaveConfigCallback):
    """LightningCLI's config.yaml, written under a temporary name in the run directory and renamed (the CLI runs
    with overwrite=True: a resumed run rewrites it)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.already_saved or not self.save_to_log_dir:
            return super().setup(trainer, pl_module, stage)
        log_dir = Path(trainer.log_dir)  # a collective under DDP: every rank asks
        final = self.config_filename
        self.config_filename = tmp_name(log_dir / final).name
        try:
            super().setup(trainer, pl_module, stage)
            if trainer.is_global_zero:
                os.replace(log_dir / self.config_filename, log_dir / final)
        except BaseException:
            with contextlib.suppress(OSError):
                (log_dir / self.config_filename).unlink()
            raise
        finally:
            self.config_filename = final
