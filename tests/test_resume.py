"""Exact resume: stop a run after any step (SIGINT, as Ctrl-C or a scheduler would), resume it from the
checkpoint that stop wrote, and get bit-identical weights, the same best checkpoint and the same test score as
an uninterrupted run, under the settings users train with (crop+flip or RandAugment, mixup, drop-path,
workers > 0, max_steps, a validation hold-out)."""
import csv
import json
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from kanvision.cli import main
from kanvision.data.datamodule import ImageDataModule
from kanvision.train.resume import SeededAugment, SeededSampler, get_rng_state, sample_seed, set_rng_state

CONFIG = {
    "model": {"model": "kan_mixer_tiny_p4_32", "kan": "bspline", "model_kwargs": {"num_blocks": 1},
              "drop_path_rate": 0.1, "mixup_alpha": 0.2, "label_smoothing": 0.1,
              "grid_update_every": 3, "grid_update_until": 6},
    "data": {"dataset": "synthetic", "batch_size": 16, "num_workers": 2, "synthetic_size": 96, "augment": "cifar",
             "val_split": 0.25},
    "trainer": {"max_epochs": 3, "enable_progress_bar": False, "enable_model_summary": False,
                "accelerator": "cpu", "devices": 1, "log_every_n_steps": 1},
}  # 72 training images: 4 steps of 16 per epoch (drop_last), 24 held out for validation


class SigintAtStep(L.Callback):
    """Sends this process SIGINT when the given optimizer step has finished, as a user's Ctrl-C would."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


class SaveFinal(L.Callback):
    def on_fit_end(self, trainer, pl_module):
        torch.save(pl_module.state_dict(), Path(trainer.log_dir) / "final.pt")


def _config(tmp_path, data=None, trainer=None):
    cfg = {k: dict(v) for k, v in CONFIG.items()}
    cfg["data"].update(data or {})
    cfg["trainer"].update(trainer or {})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _fit(cfg, root, name, *extra):
    main(["fit", "--config", cfg, f"--trainer.default_root_dir={root}", f"--name={name}",
          "--trainer.callbacks+=test_resume.SaveFinal", *extra])


def _val_rows(run: Path):
    with open(run / "metrics.csv") as f:
        return [(r["epoch"], r["val/acc1"], r["val/loss"]) for r in csv.DictReader(f) if r.get("val/acc1")]


@pytest.mark.slow
@pytest.mark.parametrize("case", [
    dict(stop=6),  # mid-epoch 1 (of 0, 1, 2), 2 workers, crop+flip, mixup, drop-path, grid updates
    dict(stop=4, trainer={"max_epochs": -1, "max_steps": 10}),  # at an epoch end; max_steps ends mid-epoch
    dict(stop=2, data={"augment": "deit", "num_workers": 0}),  # RandAugment + random erasing in-process
], ids=["mid-epoch-workers", "epoch-end-max_steps", "deit-augment-no-workers"])
def test_stop_anywhere_and_resume_is_bit_identical(tmp_path, case, capsys):
    cfg = _config(tmp_path, case.get("data"), case.get("trainer"))
    _fit(cfg, tmp_path, "full")
    with pytest.raises(SystemExit) as stopped:
        _fit(cfg, tmp_path, "part", f"--trainer.callbacks+=test_resume.SigintAtStep",
             f"--trainer.callbacks.init_args.step={case['stop']}")
    assert stopped.value.code == 130
    run = tmp_path / "part" / "version_0"
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted" and status["step"] == case["stop"]
    assert f"--ckpt_path {status['checkpoint']}" in capsys.readouterr().err
    _fit(cfg, tmp_path, "part", f"--ckpt_path={status['checkpoint']}")

    assert not (tmp_path / "part" / "version_1").exists()  # the resumed run went on in its own directory
    full_run = tmp_path / "full" / "version_0"
    full, resumed = torch.load(full_run / "final.pt"), torch.load(run / "final.pt")
    assert full.keys() == resumed.keys()
    different = [k for k in full if not torch.equal(full[k], resumed[k])]
    assert not different, different
    # Validation rows once per epoch, equal to the uninterrupted run's: metrics.csv kept its first part.
    assert _val_rows(run) == _val_rows(full_run) and len(_val_rows(run)) >= 2
    # Best-checkpoint tracking carried over the resume, and the test split was scored once, on that one.
    a, b = (json.loads((r / "status.json").read_text()) for r in (full_run, run))
    assert b["status"] == "finished" and "test" in a
    assert Path(a["test"]["checkpoint"]).name == Path(b["test"]["checkpoint"]).name
    assert a["test"]["acc1"] == b["test"]["acc1"]


def test_augmentation_depends_on_seed_epoch_and_index_only():
    """The same (index, seed) gives the same augmented image in any process order, with workers or not, and
    leaves the training process's generators untouched; another epoch's seed gives another crop."""
    dm = ImageDataModule("synthetic", batch_size=8, num_workers=0, synthetic_size=32, augment="cifar")
    dm.setup("fit")
    ds = SeededAugment(dm.train_set)
    key = (5, sample_seed(0, 3, 5))
    torch.manual_seed(123)
    before = get_rng_state()
    a = ds[key][0]
    torch.rand(100)  # the training process draws in between
    b = ds[key][0]
    assert torch.equal(a, b)
    torch.manual_seed(123)
    assert torch.equal(torch.get_rng_state(), before["torch"])  # (re-seeded to compare) ...
    set_rng_state(before)
    ds[key]
    assert torch.equal(torch.get_rng_state(), before["torch"])  # ... augmenting did not move it
    other_epochs = [ds[(5, sample_seed(0, e, 5))][0] for e in range(4, 12)]
    assert any(not torch.equal(a, o) for o in other_epochs)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2,
                                         sampler=SeededSampler(len(ds), seed=0, epoch=3))
    order = list(SeededSampler(len(ds), seed=0, epoch=3))
    in_workers = torch.cat([x for x, _ in loader])
    in_process = torch.stack([ds[k][0] for k in order])
    assert torch.equal(in_workers, in_process)


def test_sampler_shards_skips_and_keeps_its_length():
    n, seed = 103, 7
    full = [i for i, _ in SeededSampler(n, seed, epoch=2)]
    assert sorted(full) == list(range(n)) and full != [i for i, _ in SeededSampler(n, seed, epoch=3)]
    shards = [[i for i, _ in SeededSampler(n, seed, num_replicas=4, rank=r, epoch=2)] for r in range(4)]
    assert all(len(s) == n // 4 for s in shards)
    assert sorted(sum(shards, [])) == sorted(full[:n // 4 * 4])  # disjoint, the same images as one process
    resumed = SeededSampler(n, seed, num_replicas=4, rank=1, epoch=2, skip=10)
    assert [i for i, _ in resumed] == shards[1][10:] and len(resumed) == n // 4
    resumed.set_epoch(2)  # Lightning sets the same epoch again after the loader was built: skip stays
    assert [i for i, _ in resumed] == shards[1][10:]
    resumed.set_epoch(3)  # the next epoch is whole
    assert len(list(resumed)) == n // 4
    assert all(s == sample_seed(seed, 2, i) for i, s in SeededSampler(n, seed, epoch=2))
    assert len({sample_seed(0, e, i) for e in range(10) for i in range(1000)}) == 10_000


@pytest.mark.slow
def test_resume_from_the_epoch_end_checkpoint(tmp_path):
    """last.ckpt (written at each epoch's end) resumes into the next epoch, as an uninterrupted run goes on."""
    cfg = _config(tmp_path, trainer={"max_epochs": 2})
    _fit(cfg, tmp_path, "full")
    _fit(cfg, tmp_path, "part", "--trainer.callbacks+=test_resume.StopAfterEpoch")
    run = tmp_path / "part" / "version_0"
    _fit(cfg, tmp_path, "part", f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}")
    full, resumed = torch.load(tmp_path / "full" / "version_0" / "final.pt"), torch.load(run / "final.pt")
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert _val_rows(run) == _val_rows(tmp_path / "full" / "version_0")


class StopAfterEpoch(L.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


def test_sigterm_outside_a_step_is_not_exit_0(monkeypatch, tmp_path, capsys):
    """Lightning answers a SIGTERM after the last training step with SystemExit() (status 0): a scheduler would
    read a killed job as a success. The CLI turns it into 143 and the run's status into "interrupted"."""
    import json
    from types import SimpleNamespace

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from kanvision.train import cli
    from kanvision.train.runs import RunStatus

    def raise_sigterm(*a, **k):
        raise SIGTERMException()
    monkeypatch.setattr(cli, "_cli_class", lambda: raise_sigterm)
    with pytest.raises(SystemExit) as e:
        cli.lightning_main(["fit"])
    assert e.value.code == 143
    assert "SIGTERM" in capsys.readouterr().err

    trainer = SimpleNamespace(state=SimpleNamespace(fn="fit"), is_global_zero=True, fast_dev_run=False,
                              loggers=[SimpleNamespace(log_dir=str(tmp_path), save_dir=str(tmp_path))],
                              global_step=6, current_epoch=2)
    RunStatus().on_exception(trainer, None, SIGTERMException())
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "interrupted"
