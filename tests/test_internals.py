"""Private APIs kanvision still leans on (issue 25, item 10), each checked here so that an upgrade that moves one
fails this file loudly, naming it, instead of breaking a run (or, worse, silently changing what it does).

pyproject.toml pins the upper versions these were checked against (lightning < 2.7, timm < 1.1). Where a use is,
and the public alternative when there is one:

    train/cli.py      LightningCLI._parse_ckpt_path (overridden), LightningCLI._get
    train/runs.py     _TrainingEpochLoop._should_check_val_fx(fit_loop._data_fetcher)  (public alternative: derive
                      "validation due after this batch" from trainer.val_check_batch / check_val_every_n_epoch)
    train/module.py   LightningModule._trainer  (public: `self._trainer` is what `self.trainer` raises on when unset)
    hub/checkpoints   ModelCheckpoint.state_key's text ("ModelCheckpoint{'monitor': ...}"), read to find the best file
                      "_orig_mod." state-dict prefix of torch.compile's wrapper (stripped from loaded weights)
    train/loggers.py  ExperimentWriter._check_log_dir_exists (overridden: it deletes metrics.csv), its _fs;
                      CSVLogger._experiment / _fs (the experiment property, as Lightning's own); SaveConfigCallback.setup
                      forming the file's path from self.config_filename (AtomicSaveConfig points it at a temp name)
    kinds/compile.py  torch._dynamo.maybe_mark_dynamic, torch._dynamo.eval_frame._debug_get_cache_entry_list
    kinds/bspline     Tensor._version (in-place version counter), nn.Module._apply / _load_from_state_dict hooks

No module of kanvision imports a `_`-prefixed module of timm or Lightning (checked below too).
"""
import inspect
import re
from pathlib import Path

import lightning as L
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def test_lightning_cli_private_methods():
    from lightning.pytorch.cli import LightningCLI

    assert list(inspect.signature(LightningCLI._parse_ckpt_path).parameters) == ["self"]
    assert list(inspect.signature(LightningCLI._get).parameters)[:4] == ["self", "config", "key", "default"]


def test_csv_writer_logger_and_save_config_internals(tmp_path):
    from lightning.pytorch.cli import SaveConfigCallback
    from lightning.pytorch.loggers import CSVLogger
    from lightning.fabric.loggers.csv_logs import _ExperimentWriter as FabricWriter
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    assert issubclass(ExperimentWriter, FabricWriter)
    assert "self._check_log_dir_exists()" in inspect.getsource(FabricWriter.__init__)
    writer = ExperimentWriter(str(tmp_path / "w"))
    assert hasattr(writer, "_fs") and writer.NAME_HPARAMS_FILE == "hparams.yaml" and writer.hparams == {}
    logger = CSVLogger(str(tmp_path))
    assert logger._experiment is None and hasattr(logger, "_fs")
    setup = inspect.getsource(SaveConfigCallback.setup)
    assert "os.path.join(log_dir, self.config_filename)" in setup and "self.already_saved" in setup


def test_training_epoch_loop_validation_check():
    from lightning.pytorch.loops.fit_loop import _FitLoop
    from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop

    assert list(inspect.signature(_TrainingEpochLoop._should_check_val_fx).parameters) == ["self", "data_fetcher"]
    assert "self._data_fetcher" in inspect.getsource(_FitLoop.__init__)


def test_lightning_module_trainer_attribute():
    module = L.LightningModule()
    assert module._trainer is None
    with pytest.raises(RuntimeError):
        module.trainer  # noqa: B018  (the public property raises while unattached: why the code reads _trainer)


def test_model_checkpoint_state_key_text():
    from lightning.pytorch.callbacks import ModelCheckpoint

    assert "'monitor': 'val/acc1'" in ModelCheckpoint(monitor="val/acc1").state_key
    assert "'monitor': None" in ModelCheckpoint(monitor=None).state_key
    assert ModelCheckpoint().state_key.startswith("ModelCheckpoint{")


def test_torch_compile_key_prefix_and_dynamo_helpers():
    assert list(torch.compile(torch.nn.Linear(1, 1)).state_dict()) == ["_orig_mod.weight", "_orig_mod.bias"]
    assert callable(torch._dynamo.maybe_mark_dynamic)
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    assert list(inspect.signature(_debug_get_cache_entry_list).parameters) == ["code"]
    assert _debug_get_cache_entry_list(test_torch_compile_key_prefix_and_dynamo_helpers.__code__) == []


def test_tensor_version_and_module_hooks():
    t = torch.zeros(2)
    v = t._version
    t.add_(1)
    assert t._version == v + 1
    assert "recurse" in inspect.signature(torch.nn.Module._apply).parameters
    assert list(inspect.signature(torch.nn.Module._load_from_state_dict).parameters)[:3] == ["self", "state_dict", "prefix"]


def test_no_private_modules_of_timm_or_lightning_imported():
    pattern = re.compile(r"^\s*(from|import)\s+(timm|lightning|lightning_fabric|pytorch_lightning)(\.\w+)*\._\w+")
    offenders = [f"{p.relative_to(REPO)}:{n}: {line.strip()}"
                 for p in (REPO / "kanvision").rglob("*.py")
                 for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.match(line)]
    assert not offenders, "\n".join(offenders)


def test_versions_are_within_the_pins():
    """The pins in pyproject.toml are the versions these checks passed on; a newer install must re-run them."""
    import timm

    text = (REPO / "pyproject.toml").read_text()
    assert '"lightning>=2.4,<2.7"' in text and '"timm>=1.0.21,<1.1"' in text
    major_minor = lambda v: tuple(int(x) for x in v.split(".")[:2])  # noqa: E731
    assert major_minor(L.__version__) < (2, 7) and major_minor(timm.__version__) < (1, 1)
