"""Files from outside run no code (issue 25, item 8): a .ckpt whose pickle would run code is refused in one line by
every command that takes a checkpoint, and the code does not run.

The payload is live: a full unpickle (torch.load(weights_only=False), what export/predict did before) runs it and
creates the marker file; the test checks that first, so a payload that silently stopped working cannot make the
refusals pass.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kanvision.hub.checkpoints import CheckpointError, export, find_run_checkpoint
from kanvision.hub.safe_load import check_checkpoint_file, load_checkpoint_file

REPO = Path(__file__).resolve().parent.parent


class WritesMarker:
    """Unpickling this calls exec(...), which creates the marker file: what a crafted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def evil_ckpt(path: Path, marker: Path) -> Path:
    # A kanvision-looking checkpoint: the payload hides in an ordinary-looking record field.
    meta = dict(model="kan_mixer_tiny_p4_32", kan="none", num_classes=10, mean=[0.5] * 3, std=[0.5] * 3,
                metrics={"val/acc1": WritesMarker(marker)})
    torch.save({"state_dict": {"model.head.bias": torch.zeros(10)}, "kanvision": meta, "global_step": 1,
                "hyper_parameters": {"model": "kan_mixer_tiny_p4_32"}}, path)
    return path


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "MARKER"
    path = evil_ckpt(tmp_path / "evil.ckpt", marker)
    torch.load(path, weights_only=False)  # the payload works: a full unpickle runs it
    assert marker.read_text() == "ran"
    marker.unlink()
    return path, marker


def _one_line_refusal(text: str, path=None) -> None:
    lines = [ln for ln in text.strip().splitlines() if ln.strip() and not ln.startswith("Seed set to")]
    assert len(lines) == 1, text
    assert "refused" in lines[0] and "could run code" in lines[0] and "Traceback" not in text, text
    if path is not None:
        assert str(path) in lines[0]


def test_library_readers_refuse_and_name_the_object(evil):
    path, marker = evil
    for read in (check_checkpoint_file, load_checkpoint_file):
        with pytest.raises(CheckpointError) as e:
            read(path)
        _one_line_refusal(str(e.value), path)
        assert "builtins.exec" in str(e.value)
    assert not marker.exists()


def test_export_refuses_a_file_and_a_run_directory_holding_one(evil, tmp_path, capsys):
    from kanvision.hub.checkpoints import export_main

    path, marker = evil
    with pytest.raises(SystemExit) as e:
        export_main([str(path), "--out", str(tmp_path / "exp")])
    assert e.value.code == 1
    _one_line_refusal(capsys.readouterr().err, path)
    # A run directory: its last.ckpt is read for the best checkpoint it records (that read was a full unpickle
    # whose failure fell back silently to another file).
    run = tmp_path / "run" / "version_0" / "checkpoints"
    run.mkdir(parents=True)
    evil_ckpt(run / "last.ckpt", marker)
    with pytest.raises(CheckpointError) as e:
        find_run_checkpoint(tmp_path / "run")
    _one_line_refusal(str(e.value), run / "last.ckpt")
    with pytest.raises(CheckpointError):
        export(tmp_path / "run", tmp_path / "exp")
    assert not marker.exists() and not (tmp_path / "exp").exists()


def test_predict_refuses(evil, tmp_path, capsys):
    from PIL import Image

    from kanvision.hub.predict import main as predict_main

    path, marker = evil
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    with pytest.raises(SystemExit) as e:
        predict_main([str(path), str(tmp_path / "x.png"), "--device", "cpu"])
    assert e.value.code == 1
    captured = capsys.readouterr()
    _one_line_refusal(captured.err, path)
    assert captured.out == "" and not marker.exists()


def test_analyze_refuses(evil):
    from kanvision.analysis.cli import main as analyze_main

    path, marker = evil
    with pytest.raises(SystemExit) as e:
        analyze_main(["throughput", "--checkpoint", str(path), "--device", "cpu"])
    _one_line_refusal(str(e.value.code), path)
    assert not marker.exists()


@pytest.mark.slow
def test_fit_ckpt_path_refuses(evil, tmp_path):
    """Through the real command (LightningCLI reads --ckpt_path before anything else). Also with
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1, which turns torch.load's weights_only=None default into a full unpickle."""
    path, marker = evil
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    proc = subprocess.run(
        [sys.executable, "-m", "kanvision.cli", "fit", "--model.model", "kan_mixer_tiny_p4_32", "--model.kan", "none",
         "--data.dataset", "synthetic", "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(tmp_path / "runs"),
         "--ckpt_path", str(path)], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode != 0
    _one_line_refusal(proc.stderr)
    assert not marker.exists()
    assert not any((tmp_path / "runs").rglob("*.ckpt")) if (tmp_path / "runs").exists() else True


def test_plain_data_checkpoints_still_load(tmp_path):
    """Tensors, nested containers, numbers, strings, bytes, None and paths load; refusing those would refuse
    real checkpoints (a real kanvision run's files are checked in tests/test_quiet.py)."""
    record = {"state_dict": {"w": torch.arange(3.0)}, "nested": [1, 2.5, "s", None, (True, b"x")],
              "root": Path("/data/x"), "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(2)}}}]}
    torch.save(record, tmp_path / "ok.ckpt")
    loaded = load_checkpoint_file(tmp_path / "ok.ckpt")
    assert loaded["nested"] == record["nested"] and loaded["root"] == Path("/data/x")
    assert torch.equal(loaded["state_dict"]["w"], record["state_dict"]["w"])
    check_checkpoint_file(tmp_path / "ok.ckpt")


def test_no_full_unpickle_left_in_the_package():
    """Every torch.load in kanvision/ says weights_only=True; no pickle.load / pickle.loads anywhere."""
    offenders = []
    for path in (REPO / "kanvision").rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if ("torch.load(" in code and "weights_only=True" not in code) or "pickle.load" in code:
                offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
