"""`kanvision fit | validate | test`: LightningCLI with kanvision's checks (checkpoint and pretrained options that
contradict each other, input size, class counts), run directories and loggers."""
from __future__ import annotations

import signal
import sys
import threading
from typing import Optional

# The checks a command's options pass before anything runs; light: no Lightning import.
from kanvision.train.checks import (check_ckpt_classes, check_ckpt_contradictions, check_input_size,
                                    load_pretrained_into, pretrained_hparams, read_pretrained)

RUNS_DIR = "runs"


def _cli_class():
    # Built lazily: importing Lightning costs seconds that the tools above should not pay.
    from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, RichProgressBar
    from lightning.pytorch.cli import LightningCLI

    from kanvision.train.ranks import AgreeRunVersion
    from kanvision.train.runs import RunStatus

    class KanvisionCLI(LightningCLI):
        def __init__(self, *args, **kwargs):
            from kanvision.train.loggers import AtomicSaveConfig
            kwargs.setdefault("save_config_callback", AtomicSaveConfig)  # config.yaml written atomically
            super().__init__(*args, **kwargs)

        def add_arguments_to_parser(self, parser):
            parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
            parser.set_defaults({"checkpoint.monitor": "val/acc1", "checkpoint.mode": "max",
                                 "checkpoint.save_last": False, "checkpoint.auto_insert_metric_name": False,
                                 "checkpoint.filename": "epoch{epoch:03d}-top1_{val/acc1:.4f}"})
            parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
            parser.add_argument("--name", default="kanvision",
                                help="run name: logs and checkpoints go to <default_root_dir or runs>/<name>/version_N")
            parser.add_argument("--test_after_fit", type=bool, default=True,
                                help="fit only: evaluate the test split once, on the best checkpoint (chosen on "
                                     "validation), after training")
            parser.add_argument("--pretrained", type=Optional[str], default=None,
                                help="validate/test only: start from shipped weights, a pretrained tag such as "
                                     "kan_mixer_tiny_p4_32.cifar10_bspline (or an export directory); the model "
                                     "options come from it, as with --ckpt_path")

        def _parse_ckpt_path(self):
            # Lightning replaces the model's config with the checkpoint's hyper-parameters, so a flag such as
            # --model.kan rswaf would be dropped without a word and the checkpoint's model run instead.
            sub = self.config.get("subcommand")
            if sub and self.config[sub].get("ckpt_path") == "last":
                # Lightning's "last" looks in this run's new version folder only, finds nothing and starts over.
                from kanvision.train.rundir import resolve_last
                self.config[sub]["ckpt_path"] = str(resolve_last(self.config[sub].get("trainer.default_root_dir")
                                                                 or RUNS_DIR, self.config[sub].get("name")))
            if sub and self.config[sub].get("ckpt_path"):
                # A file handed in is data: read weights-only before Lightning unpickles it (a crafted .ckpt
                # would otherwise run code on its load; TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 forces a full one).
                from kanvision.hub.safe_load import check_checkpoint_file
                check_checkpoint_file(self.config[sub]["ckpt_path"])
            before = self.config[sub].get("model") if sub else None
            before = before.clone() if before is not None else None
            super()._parse_ckpt_path()
            if before is not None:
                check_ckpt_contradictions(before, self.config[sub]["model"], self.config[sub].get("ckpt_path"))
            self._pretrained = None
            if sub and self.config[sub].get("pretrained"):
                # As Lightning does for --ckpt_path: the weights' own model options replace the config's.
                self._pretrained = read_pretrained(sub, self.config[sub])
                _, config, source = self._pretrained
                # The weights' normalization unless the data config sets one: an image folder's own would be
                # measured on a sample, a little off the statistics the weights were trained with.
                data = self.config[sub].get("data")
                stats = {k: list(config["pretrained_cfg"][k]) for k in ("mean", "std")
                         if data is not None and data.get(k) is None and config["pretrained_cfg"].get(k)}
                self.config = self.parser.parse_object(
                    {sub: {"model": pretrained_hparams(config), "data": stats}}, self.config)
                check_ckpt_contradictions(before, self.config[sub]["model"], source, flag="--pretrained")

        def after_instantiate_classes(self):
            # Found here, before any step: these would otherwise surface as tracebacks from deep inside the
            # first forward (patch size assertion) or the checkpoint load (size mismatch for model.head).
            sub = self.config.get("subcommand")
            check_input_size(self.model, self.datamodule)
            if sub and self.config[sub].get("ckpt_path"):
                check_ckpt_classes(self.config[sub]["ckpt_path"], self.datamodule)
            if getattr(self, "_pretrained", None):
                load_pretrained_into(self.model, self.datamodule, *self._pretrained)

        def instantiate_trainer(self, **kwargs):
            # Rich progress bar by default, unless the config turns bars off or brings its own.
            cfg = self._get(self.config_init, "trainer", default={})
            callbacks = list(cfg.get("callbacks") or [])
            if cfg.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
                callbacks.append(RichProgressBar())
            callbacks.append(RunStatus())
            if cfg.get("logger") in (None, True) and not any(isinstance(c, AgreeRunVersion) for c in callbacks):
                # Ranks started separately (torchrun, srun) take rank 0's run version before anything writes.
                callbacks.insert(0, AgreeRunVersion())
            kwargs.setdefault("callbacks", callbacks)
            from kanvision.train.atomic import with_atomic_checkpoints
            kwargs.setdefault("plugins", with_atomic_checkpoints(cfg.get("plugins")))
            if cfg.get("logger") in (None, True):
                sub = self.config.get("subcommand")
                ckpt = self.config[sub].get("ckpt_path") if sub == "fit" else None
                kwargs.setdefault("logger", default_loggers(cfg.get("default_root_dir") or RUNS_DIR,
                                                            self._get(self.config, "name") or "kanvision", ckpt))
            trainer = super().instantiate_trainer(**kwargs)
            if cfg.get("enable_checkpointing") is not False:
                # Resumable runs: the monitored callback ("checkpoint.*") keeps the best; this one keeps the
                # newest epoch, with last.ckpt linked to it (ModelCheckpoint only refreshes last.ckpt when it
                # saves, i.e. when the monitored metric improved). Appended last so it saves after the
                # monitored one: last.ckpt then records this epoch's best path, which export reads.
                trainer.callbacks.append(ModelCheckpoint(filename="latest-epoch{epoch:03d}", monitor=None,
                                                         save_top_k=1, save_last="link",
                                                         auto_insert_metric_name=False))
            return trainer

        def after_fit(self):
            self._report("val")
            if self._get(self.config, "test_after_fit") and not self.trainer.fast_dev_run:
                self._test_chosen()

        def _best_checkpoint(self) -> str:
            """The monitored ModelCheckpoint's best file ("" if none): not the newest-epoch callback's, whose
            "best" is just its latest file."""
            monitored = [c for c in self.trainer.checkpoint_callbacks if getattr(c, "monitor", None)]
            return monitored[0].best_model_path if monitored else ""

        def _test_chosen(self):
            """The test split, once, on the checkpoint validation chose (the last weights if none was saved)."""
            if not getattr(self.datamodule, "has_test_split", lambda: True)():
                print(f"no test split under {getattr(self.datamodule, 'root', '?')}: the test set was not evaluated")
                return
            best = self._best_checkpoint()
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None, verbose=False)
            self._report("test")
            m = self.trainer.callback_metrics
            if self.trainer.is_global_zero and self.trainer.loggers and "test/acc1" in m:
                from kanvision.train.runs import read_status, write_status
                run_dir = self.trainer.loggers[0].log_dir
                status = read_status(run_dir) or {}
                status["test"] = {"acc1": float(m["test/acc1"]), "acc5": float(m["test/acc5"]),
                                  "checkpoint": best or "last weights (no checkpoint saved)"}
                write_status(run_dir, **status)

        def after_test(self):
            self._report("test")

        def after_validate(self):
            self._report("val")

        def _report(self, stage):
            m = self.trainer.callback_metrics
            log_dir = self.trainer.log_dir  # a collective under DDP (broadcast): every rank must ask
            if f"{stage}/acc1" in m and self.trainer.is_global_zero:
                ckpt = self._best_checkpoint() or "-"
                print(f"{stage}: top-1 {float(m[f'{stage}/acc1']):.4f}  top-5 {float(m[f'{stage}/acc5']):.4f}  "
                      f"(log dir {log_dir}; best checkpoint {ckpt})")
                if stage == "val" and "train_eval/acc1" in m:  # the data module's un-augmented training images
                    train = float(m["train_eval/acc1"])
                    print(f"train_eval: top-1 {train:.4f}  top-5 {float(m['train_eval/acc5']):.4f}  "
                          f"(training images, no augmentation; gap to val top-1 {train - float(m['val/acc1']):+.4f})")

    return KanvisionCLI


def default_loggers(root: str, name: str, resume_from: str | None = None) -> list:
    """CSV + TensorBoard in one run directory <root>/<name>/version_N (TensorBoard events in its tensorboard/).

    Resuming from a checkpoint of <root>/<name>/version_N goes on in version_N."""
    import os
    from pathlib import Path

    import torch
    from lightning.pytorch.utilities import rank_zero_only

    from kanvision.train.loggers import AppendingCSVLogger, RunTensorBoardLogger
    from kanvision.train.runs import allocate_version, resume_version

    version = resume_version(root, name, resume_from)
    resume_step = None
    if version is not None:
        resume_step = int(torch.load(resume_from, map_location="cpu", weights_only=True, mmap=True)["global_step"])
        os.environ[RUN_VERSION_ENV] = str(version)
    elif rank_zero_only.rank == 0:
        # Created here, atomically: the loggers would each scan for the next free version_N when they first
        # write, and two runs of the same name started together would both take the same one.
        base_existed = (Path(root) / name).exists()
        version = allocate_version(root, name)
        os.environ[RUN_VERSION_ENV] = str(version)  # DDP ranks started after this (same job) inherit it
        _ALLOCATED.append((Path(root) / name / f"version_{version}", base_existed))
    else:
        # Other ranks write no logs (Lightning broadcasts rank 0's directory); take its number, create nothing.
        version = int(os.environ.get(RUN_VERSION_ENV, "0"))
    if rank_zero_only.rank == 0:
        # One writer per run directory for this command's life (released by lightning_main, or at exit).
        from kanvision.train.rundir import lock_run_dir
        run_dir = Path(root) / name / f"version_{version}"
        lock_run_dir(run_dir, advice=": resume a copy of the run (cp -r) under another --name or "
                                     "--trainer.default_root_dir, or start a new version without --ckpt_path")
        _CURRENT_RUN[:] = [run_dir]
    return [AppendingCSVLogger(root, name=name, version=version, resume_step=resume_step),
            RunTensorBoardLogger(root, name=name, version=version, sub_dir="tensorboard")]


from kanvision.train.rundir import RUN_VERSION_ENV  # noqa: E402 - one name for the variable, in a light module
_ALLOCATED: list = []  # (run directory, whether <root>/<name> was there before), for _drop_empty_run_dirs
_CURRENT_RUN: list = []  # this command's run directory (rank 0), for the messages of lightning_main


def _drop_empty_run_dirs() -> None:
    """A command stopped by a check before it ran (bad --data.img_size...) leaves no empty version_N behind:
    the directory is made when the loggers are built, before those checks."""
    from kanvision.train.rundir import LOCK_NAME

    while _ALLOCATED:
        run, base_existed = _ALLOCATED.pop()
        try:
            if [p.name for p in run.iterdir()] == [LOCK_NAME]:  # its lock (released) is all it holds
                (run / LOCK_NAME).unlink()
            run.rmdir()  # only if empty
            if not base_existed:
                run.parent.rmdir()
        except OSError:
            pass


def lightning_main(args: list[str]) -> None:
    """`kanvision fit|validate|test ...`: LightningCLI over ImageClassifier and ImageDataModule."""
    from kanvision.hub.checkpoints import CheckpointError
    from kanvision.data.datamodule import DataError, ImageDataModule
    from kanvision.train.module import ConfigError, ImageClassifier
    from kanvision.train.atomic import disk_error
    from kanvision.train.rundir import RunInUse, release_locks
    from kanvision.train.runs import DivergedError, RunInterrupted
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    # A file size limit (ulimit -f) kills a process with SIGXFSZ at the first write past it, before anything
    # can say why; ignored, the write fails with EFBIG and the run stops with the one line below.
    xfsz = None
    if hasattr(signal, "SIGXFSZ") and threading.current_thread() is threading.main_thread():
        xfsz = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    # From the shell args is sys.argv[1:]: LightningCLI then reads sys.argv itself, since given both it warns
    # (printing the whole command line twice) on every command, --help included.
    cli_args = None if list(args) == sys.argv[1:] else args
    try:
        cli = _cli_class()(ImageClassifier, ImageDataModule, args=cli_args, **CLI_KWARGS)
    except (DataError, ConfigError, CheckpointError, DivergedError, RunInUse) as e:  # user input, not a bug
        raise SystemExit(f"kanvision: error: {e}") from None
    except OSError as e:  # a full disk, a size limit, a read-only or foreign folder: the path and the fix
        found = disk_error(e)
        if found is None:
            raise
        raise SystemExit(f"kanvision: error: {found}") from None
    except RunInterrupted as e:
        print(f"kanvision: {e}", file=sys.stderr)
        raise SystemExit(130) from None
    except SIGTERMException:
        # Lightning raises SystemExit() for a SIGTERM outside a training step (after the last one, or a second
        # signal): exit status 0 would tell a scheduler the job succeeded.
        from kanvision.train.rundir import resume_hint
        print(f"kanvision: stopped by SIGTERM outside a training step (final validation or the after-fit test); "
              f"{resume_hint(_CURRENT_RUN[0] if _CURRENT_RUN else None)}", file=sys.stderr)
        raise SystemExit(143) from None
    finally:
        release_locks()
        _drop_empty_run_dirs()
        if xfsz is not None:
            signal.signal(signal.SIGXFSZ, xfsz)
    _close_process_group()
    return cli


CLI_KWARGS = dict(trainer_defaults={"max_epochs": 10}, save_config_kwargs={"overwrite": True},
                  seed_everything_default=0,
                  parser_kwargs={"description": "kanvision training (LightningCLI); see configs/ and the README"})


def fit_parser():
    """The parser of `kanvision fit|validate|test`, built once and nothing run: `parse_args(["fit", ...])`
    checks a command's options (names, value types, classes' init_args) in milliseconds (the sweep checks its
    whole grid with it). Caught at LightningCLI.parse_arguments, the hook that receives the built parser."""
    from kanvision.data.datamodule import ImageDataModule
    from kanvision.train.module import ImageClassifier

    class _Built(Exception):
        pass

    class ParserOnly(_cli_class()):
        def parse_arguments(self, parser, args):
            raise _Built(parser)

    try:
        ParserOnly(ImageClassifier, ImageDataModule, args=["fit"], **CLI_KWARGS)
    except _Built as built:
        return built.args[0]
    raise RuntimeError("LightningCLI did not call parse_arguments")  # a Lightning that changed its order


def _close_process_group() -> None:
    """Tear DDP down in step on every rank before the interpreter exits.

    Lightning destroys only NCCL groups at exit. A gloo group left alive is torn down by C++ destructors
    racing the peer's own exit, and about one run in three then aborts ("terminate called without an active
    exception", exit 134) after all work is saved."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


