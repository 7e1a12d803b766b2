"""scripts/gpu_run.py: the plan a GPU slot would run, checked here without a GPU (--dry-run)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def dry(tmp_path, only):
    return subprocess.run([sys.executable, "scripts/gpu_run.py", str(tmp_path / "out"), "--dry-run", "--budget-minutes",
                           "12", "--only", only], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_dry_run_plans_checks_benchmarks_trainings_and_parses_a_recipe(tmp_path):
    proc = dry(tmp_path, "check/*,bench/layers,train/kan_convmixer_256_8.cifar10_none_seed1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "gpu-check --quick" in out and "benchmarks/layers.py --device cuda" in out
    # The strong baseline's second seed: its recipe, seed 1, float16 autocast as locuslab's script.
    line = next(ln for ln in out.splitlines() if "cifar10_kan_convmixer_256_8.yaml" in ln)
    assert "--seed_everything 1" in line and "--trainer.precision 16-mixed" in line
    # 12 minutes: the check and the layer benchmark fit (~240 s each before the card has timed them), and the plan
    # says which jobs wait for a later slot instead of starting what cannot finish.
    assert out.count(" runs\n") == 2 and "waits for a later slot" in out
    assert "3 jobs; 0 problems" in out


@pytest.mark.slow
def test_dry_run_of_an_empty_selection_says_so(tmp_path):
    proc = dry(tmp_path, "nothing/matches")
    assert proc.returncode == 0 and "0 jobs; 0 problems" in proc.stdout
