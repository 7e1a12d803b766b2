"""One run directory for all the processes of a DDP job, however they were started.

kanvision.train.cli.default_loggers numbers a new run on global rank 0 (allocate_version creates
`<root>/<name>/version_N`) and hands N to the other ranks through the environment (KANVISION_RUN_VERSION):
that reaches them only when rank 0 starts them itself (Lightning's subprocess launcher copies its
environment). Ranks started separately (torchrun, `srun` under SLURM, several nodes) build their loggers
before any of them can talk to another, do not see rank 0's N, and fall back to version 0: their loggers then
name another directory than rank 0's. Lightning's own writers broadcast rank 0's directory (trainer.log_dir,
ModelCheckpoint), but anything else that reads a logger's directory on those ranks (a lock, a status check, a
callback's files) would use the wrong one.

AgreeRunVersion fixes it at the first point where the ranks can talk: the Trainer's `setup` hook runs on every
rank after the process group is up and before ModelCheckpoint (which Lightning orders last) resolves its
directory. Rank 0's logger version is broadcast; every other rank whose loggers name another version gets
them rebuilt with rank 0's (their experiments are inert off rank 0: nothing was written through them), and
KANVISION_RUN_VERSION is set on every rank for whatever starts after.
"""
from __future__ import annotations

import os

import lightning as L

__all__ = ["RUN_VERSION_ENV", "AgreeRunVersion", "agree_run_version", "with_version"]

from kanvision.train.rundir import RUN_VERSION_ENV  # the name train/cli.py's default_loggers reads and sets


def with_version(logger, version):
    """`logger` naming run `version`: itself when it already does, else a new CSV / TensorBoard logger with the
    same directory, name and sub directory. Other loggers (their own version schemes) are returned as they are."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    if getattr(logger, "version", None) == version:
        return logger
    if isinstance(logger, TensorBoardLogger):
        return type(logger)(logger.save_dir, name=logger.name, version=version, sub_dir=logger.sub_dir)
    if isinstance(logger, CSVLogger):
        return type(logger)(logger.save_dir, name=logger.name, version=version)
    return logger


def agree_run_version(trainer: L.Trainer):
    """Rank 0's run version, agreed by every rank (a collective: every rank must call it at the same point);
    the other ranks' loggers are switched to it. None without loggers."""
    mine = trainer.loggers[0].version if trainer.loggers else None
    if trainer.world_size <= 1:
        return mine
    agreed = trainer.strategy.broadcast(mine, src=0)
    if agreed is None:
        return None
    os.environ[RUN_VERSION_ENV] = str(agreed)
    if not trainer.is_global_zero and any(getattr(lg, "version", agreed) != agreed for lg in trainer.loggers):
        trainer.loggers = [with_version(lg, agreed) for lg in trainer.loggers]
    return agreed


class AgreeRunVersion(L.Callback):
    """agree_run_version at every `setup` (fit, validate, test): all ranks log to rank 0's run directory."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        agree_run_version(trainer)
