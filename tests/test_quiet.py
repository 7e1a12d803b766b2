"""Quiet output (issue 25, item 7): a tiny compiled `kanvision fit` and a `kanvision predict` print none of the torch /
Lightning lines a user cannot act on (kanvision/_quiet.py lists them), and the filters drop only those lines.

The fit's checkpoints also show that kanvision's own training writes plain data only: each one passes the
weights-only check every user-given checkpoint goes through (tests/test_safe_loading.py), and exports.
"""
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kanvision import _quiet

NOISE = ("No CUDA runtime is found", "💡 Tip", "litlogger", "LeafSpec", "to estimate number of stepping batches",
         "DeprecationWarning", "FutureWarning")


def test_filters_drop_only_their_messages(caplog):
    _quiet.install()
    _quiet.install()  # idempotent: one filter per logger
    cpp = logging.getLogger("torch.utils.cpp_extension")
    assert sum(getattr(f, "kanvision_quiet", False) for f in cpp.filters) == 1
    from lightning.pytorch.utilities.rank_zero import rank_zero_info
    with caplog.at_level(logging.INFO):
        cpp.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local")
        cpp.warning("Error building extension 'x'")
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing [litlogger]")
        rank_zero_info("Loading `train_dataloader` to estimate number of stepping batches.")
        rank_zero_info("GPU available: False, used: False")
    shown = [r.getMessage() for r in caplog.records]
    assert shown == ["Error building extension 'x'", "GPU available: False, used: False"]


@pytest.fixture(scope="module")
def tiny_fit(tmp_path_factory):
    """A 1-epoch, 1-block B-spline Mixer on synthetic images, its KAN kernels compiled (the default)."""
    root = tmp_path_factory.mktemp("quiet")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("KANVISION_COMPILE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "kanvision.cli", "fit", "--model.model", "kan_mixer_tiny_p4_32", "--model.kan", "bspline",
         "--model.model_kwargs", '{"num_blocks": 1}', "--data.dataset", "synthetic", "--data.synthetic_size", "64",
         "--data.batch_size", "16", "--data.num_workers", "0", "--data.train_eval_size", "0",
         "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--trainer.log_every_n_steps", "1",
         "--trainer.default_root_dir", str(root / "runs"), "--name", "tiny"],
        env=env, capture_output=True, text=True, timeout=600, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, proc


@pytest.mark.slow
def test_tiny_fit_stderr_has_no_noise(tiny_fit):
    _, proc = tiny_fit
    noisy = [ln for ln in proc.stderr.splitlines() if any(n in ln for n in NOISE)]
    assert not noisy, "\n".join(noisy)
    assert "test: top-1" in proc.stdout  # it did run: fit, then the test split


@pytest.mark.slow
def test_predict_is_quiet_and_the_real_checkpoints_are_plain_data(tiny_fit):
    from PIL import Image

    from kanvision.hub.checkpoints import export
    from kanvision.hub.safe_load import check_checkpoint_file

    root, _ = tiny_fit
    ckpts = sorted((root / "runs" / "tiny").rglob("*.ckpt"))
    assert len(ckpts) >= 2
    for ckpt in ckpts:
        check_checkpoint_file(ckpt)
    export(root / "runs" / "tiny" / "version_0", root / "exp")
    Image.new("RGB", (32, 32), (10, 200, 30)).save(root / "img.png")
    proc = subprocess.run([sys.executable, "-m", "kanvision.cli", "predict", str(Path("runs/tiny/version_0/checkpoints/last.ckpt")),
                           "img.png", "--device", "cpu"], capture_output=True, text=True, timeout=300, cwd=root,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0 and proc.stdout.startswith("img.png"), proc.stderr
    assert proc.stderr == ""
