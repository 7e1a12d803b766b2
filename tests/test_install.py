"""Installed like a library: `pip install .` (not editable) carries the package and the shipped weights, so a user
outside the checkout loads a tag with timm and predicts with the CLI."""
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "kanvision").rglob("__init__.py")}
    assert found | {"kanvision.weights"} == listed


@pytest.mark.slow
def test_pip_install_outside_the_checkout_serves_tags_and_predict(tmp_path):
    target = tmp_path / "site"
    # --no-deps: torch, timm, ... are this venv's; what is checked is that kanvision and its weights install.
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(target), str(ROOT)], check=True, capture_output=True, timeout=600)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "KANVISION_CHECKPOINTS"}
    env["PYTHONPATH"] = str(target)
    code = ("import kanvision, timm, torch\n"
            f"assert kanvision.__file__.startswith({str(target)!r}), kanvision.__file__\n"
            "from PIL import Image\n"
            "Image.new('RGB', (32, 32), (200, 30, 30)).save('img.png')\n"
            "m = timm.create_model('kan_mixer_tiny_p4_32.cifar10_none', pretrained=True).eval()\n"
            "assert m.pretrained_cfg['label_names'][0] == 'airplane'\n"
            "print('loaded', sum(p.numel() for p in m.parameters()))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "loaded 1132170" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "kanvision.cli", "predict", "kan_mixer_tiny_p4_32.cifar10_none",
                           "img.png"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "img.png" in proc.stdout and "%" in proc.stdout
