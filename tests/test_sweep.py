"""`kanvision sweep`: a 2x2 grid of real `kanvision fit` subprocesses on synthetic data (results, skip, resume,
divergence, failure), the SLURM array script, the flags a grid point becomes, and bad input."""
import csv
import json
import math
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from kanvision.cli import main
from kanvision.sweep.grid import grid_flags, plan_runs, resolved_base, run_name

BASE = {
    "model": {"model": "kan_mixer_tiny_p4_32", "kan": "bspline", "model_kwargs": {"num_blocks": 1},
              "kan_kwargs": {"compile": False},
              "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.01}}, "lr_scheduler": None},
    "data": {"dataset": "synthetic", "batch_size": 16, "num_workers": 0, "synthetic_size": 48, "augment": "none",
             "val_split": 16, "train_eval_size": 16},
    "trainer": {"max_epochs": 2, "enable_model_summary": False, "accelerator": "cpu", "devices": 1,
                "gradient_clip_val": 1.0, "log_every_n_steps": 1},
}
# lr 1e6 with clipping (steps of norm 1e6): the loss is not finite within a few steps, for both kinds.
GRID = {"model.kan": ["none", "bspline"], "model.optimizer.init_args.lr": [0.01, 1.0e6]}


def _files(tmp_path, grid=GRID, base=BASE):
    cfg, grid_file = tmp_path / "base.yaml", tmp_path / "grid.yaml"
    cfg.write_text(yaml.safe_dump(base))
    grid_file.write_text(yaml.safe_dump(grid))
    return str(cfg), str(grid_file)


def _print_config(cfg, *flags):
    with pytest.raises(SystemExit):
        main(["fit", "--config", cfg, *flags, "--print_config"])


def test_grid_point_flags_merge_dicts_and_switch_optimizer_class(tmp_path, capsys):
    """model.kan_kwargs.<key> becomes the whole dict merged over the config's (jsonargparse replaces a dict given
    as a flag); a new optimizer class keeps the init_args it accepts (weight_decay, lr) and drops the others."""
    base = json.loads(json.dumps(BASE))
    base["model"]["kan_kwargs"] = {"compile": False, "grid_size": 5}
    base["model"]["optimizer"] = {"class_path": "torch.optim.AdamW",
                                  "init_args": {"lr": 0.001, "betas": [0.8, 0.9], "weight_decay": 0.05}}
    cfg, _ = _files(tmp_path, base=base)
    resolved = resolved_base([cfg], [])
    assert resolved["model"]["kan_kwargs"] == {"compile": False, "grid_size": 5}
    values = {"model.kan_kwargs.spline_order": 2, "model.optimizer.init_args.lr": 0.01,
              "model.optimizer.class_path": "torch.optim.SGD"}
    flags = grid_flags(values, resolved)
    assert flags[0].startswith('--model.optimizer={"class_path": "torch.optim.SGD", "init_args": {')
    assert flags[1:] == ["--model.optimizer.init_args.lr=0.01",
                         '--model.kan_kwargs={"compile": false, "grid_size": 5, "spline_order": 2}']
    _print_config(cfg, *flags)
    model = yaml.safe_load(capsys.readouterr().out)["model"]
    assert model["kan_kwargs"] == {"compile": False, "grid_size": 5, "spline_order": 2}
    assert model["optimizer"]["class_path"] == "torch.optim.SGD"
    args = model["optimizer"]["init_args"]
    assert args["lr"] == 0.01 and args["weight_decay"] == 0.05 and "betas" not in args  # set by the config: kept
    # Why the merge: the dict alone on the command line replaces the config's.
    _print_config(cfg, '--model.kan_kwargs={"spline_order": 2}')
    assert yaml.safe_load(capsys.readouterr().out)["model"]["kan_kwargs"] == {"spline_order": 2}
    # A config that leaves weight_decay at AdamW's default (0.01): SGD gets its own default (0), and momentum
    # from a class given with init_args. jsonargparse alone would carry AdamW's 0.01 over.
    base["model"]["optimizer"] = {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.001}}
    cfg, _ = _files(tmp_path, base=base)
    _print_config(cfg, "--model.optimizer.class_path=torch.optim.SGD")
    assert yaml.safe_load(capsys.readouterr().out)["model"]["optimizer"]["init_args"]["weight_decay"] == 0.01
    sgd = {"class_path": "torch.optim.SGD", "init_args": {"momentum": 0.9}}
    for value in ("torch.optim.SGD", sgd):
        key = "model.optimizer.class_path" if isinstance(value, str) else "model.optimizer"
        _print_config(cfg, *grid_flags({key: value, "model.optimizer.init_args.lr": 0.1}, resolved_base([cfg], [])))
        args = yaml.safe_load(capsys.readouterr().out)["model"]["optimizer"]["init_args"]
        assert args["weight_decay"] == 0 and args["lr"] == 0.1 and args["momentum"] == (0 if value == "torch.optim.SGD" else 0.9)
    assert run_name({"model.optimizer": sgd, "model.optimizer.init_args.lr": 0.1}, 0) == "optimizer-SGD-momentum-0.9_lr-0.1_seed0"
    # In results.csv such a value is its JSON (data); results.md shows it short. (No run: nothing to measure.)
    from kanvision.sweep.grid import Run
    from kanvision.sweep.report import write_report
    write_report([Run("optimizer-SGD-momentum-0.9_seed0", {"model.optimizer": sgd}, 0)], tmp_path / "r")
    with open(tmp_path / "r" / "results.csv") as f:
        assert json.loads(next(csv.DictReader(f))["model.optimizer"]) == sgd
    assert "| optimizer-SGD-momentum-0.9_seed0 | SGD-momentum-0.9 | 0 | not run |" in (tmp_path / "r" / "results.md").read_text()
    # kan none takes only kan_kwargs.init (its MLPs' init): the KAN-only values collapse to one run ("n/a"), the
    # config's KAN keywords (compile, grid_size) are dropped, init goes through.
    grid = {"model.kan": ["none", "bspline"], "model.kan_kwargs.grid_size": [3, 5],
            "model.kan_kwargs.init": ["default", "orthogonal"]}
    runs = plan_runs(grid, 1, [cfg], [], tmp_path / "s", resolved)
    assert [r.name for r in runs] == [
        "kan-none_grid_size-n-a_init-default_seed0", "kan-none_grid_size-n-a_init-orthogonal_seed0",
        "kan-bspline_grid_size-3_init-default_seed0", "kan-bspline_grid_size-3_init-orthogonal_seed0",
        "kan-bspline_grid_size-5_init-default_seed0", "kan-bspline_grid_size-5_init-orthogonal_seed0"]
    assert '--model.kan_kwargs={"init": "orthogonal"}' in runs[1].command and "--model.kan_hidden=null" in runs[1].command
    assert '--model.kan_kwargs={"compile": false, "grid_size": 3, "init": "orthogonal"}' in runs[3].command
    _print_config(cfg, *[a for a in runs[1].command if a.startswith("--model.")])
    model = yaml.safe_load(capsys.readouterr().out)["model"]
    assert model["kan"] == "none" and model["kan_kwargs"] == {"init": "orthogonal"}
    assert run_name({"model.kan": "none", "model.optimizer.class_path": "torch.optim.SGD",
                     "model.optimizer.init_args.lr": 0.001}, 2) == "kan-none_optimizer-SGD_lr-0.001_seed2"


@pytest.mark.parametrize("grid, args, message", [
    (None, ["--grid", "missing.yaml"], r"grid file \S*missing\.yaml not found: give --grid the path"),
    ({"model.kan": "bspline"}, [], r"model\.kan is 'bspline', not a list: write 'model\.kan: \[bspline\]'"),
    ({}, [], r"grid file \S+ is empty or not a mapping"),
    ({"model.kan": []}, [], r"model\.kan has an empty list"),
    ({"model.kan": ["none"]}, ["--launcher", "pbs"], r"unknown launcher 'pbs': use --launcher local .* or --launcher slurm"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, grid, args, message):
    cfg, grid_file = _files(tmp_path, grid={} if grid is None else grid)
    argv = ["sweep", "--config", cfg, "--out", str(tmp_path / "s")] + (["--grid", grid_file] if grid is not None else [])
    assert main(argv + args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kanvision sweep: error: ") and re.search(message, err), err


def _csv(path):
    with open(path) as f:
        return {r["run"]: r for r in csv.DictReader(f)}


@pytest.mark.slow
def test_sweep_runs_records_resumes_and_writes_slurm_array(tmp_path, capsys, monkeypatch):
    cfg, grid = _files(tmp_path)
    out = tmp_path / "sweep"
    argv = ["sweep", "--config", cfg, "--grid", grid, "--out", str(out)]

    # SLURM: an array script over commands.txt, nothing run.
    assert main(argv + ["--launcher", "slurm"]) == 0
    assert "sbatch " + str(out / "sweep.sbatch") in capsys.readouterr().out and not (out / "runs").exists()
    script = (out / "sweep.sbatch").read_text()
    assert "#SBATCH --array=0-3\n" in script and f' sweep --out {out} --task "$SLURM_ARRAY_TASK_ID"\n' in script
    slurm_commands = (out / "commands.txt").read_text().splitlines()
    assert len(slurm_commands) == 4

    # Local: the same four commands, run one after the other.
    assert main(argv) == 0  # two runs diverged: recorded, not a failure
    printed = capsys.readouterr().out
    assert re.search(r"sweep: 4 runs: 2 finished now, 0 done before \(skipped\), 2 diverged, 0 failed", printed)
    names = ["kan-none_lr-0.01_seed0", "kan-none_lr-1000000.0_seed0", "kan-bspline_lr-0.01_seed0",
             "kan-bspline_lr-1000000.0_seed0"]
    assert [(out / "runs" / n / "command.txt").read_text().strip() for n in names] == slurm_commands
    assert all(f"--name={n}" in shlex.split(c) for n, c in zip(names, slurm_commands))

    rows = _csv(out / "results.csv")
    assert list(rows) == names
    for name in names:
        row, run = rows[name], out / "runs" / name / "version_0"
        kan, lr = name.split("_")[0][4:], float(name.split("_")[1][3:])
        assert row["model.kan"] == kan and float(row["model.optimizer.init_args.lr"]) == lr and row["seed"] == "0"
        status = json.loads((run / "status.json").read_text())
        assert row["status"] == status["status"] == ("finished" if lr == 0.01 else "diverged")
        assert row["diverged"] == str(lr != 0.01)
        from kanvision.train.module import ImageClassifier
        expected = ImageClassifier(model="kan_mixer_tiny_p4_32", kan=kan, model_kwargs={"num_blocks": 1},
                                   kan_kwargs={"compile": False} if kan == "bspline" else None).counts
        assert int(row["params"]) == expected["total"] and int(row["kan_params"]) == expected["kan"]
        assert float(row["wall_s"]) > 0
        with open(run / "metrics.csv") as f:
            vals = [r for r in csv.DictReader(f) if r.get("val/acc1")]
        if lr != 0.01:  # clipped steps of norm 1e6: finite weights whose first validation's outputs are not
            assert status["stage"] == "validation" and status["epoch"] == 0 and status["step"] == 2
            assert row["error"] == f"val/loss {status['loss']} after step 2 (lr 1000000.0)"
            assert [math.isfinite(float(r["val/loss"])) for r in vals] == [False]
            assert row["val_top1"] == row["best_epoch"] == row["test_top1"] == ""  # a NaN validation is no result
            continue
        assert len(vals) == 2
        best = max(vals, key=lambda r: float(r["val/acc1"]))
        assert float(row["val_top1"]) == pytest.approx(float(best["val/acc1"]))
        assert float(row["val_top5"]) == pytest.approx(float(best["val/acc5"]))
        assert float(row["train_top1_at_best"]) == pytest.approx(float(best["train_eval/acc1"]))
        assert float(row["train_top1_last"]) == pytest.approx(float(vals[-1]["train_eval/acc1"]))
        assert float(row["gap"]) == pytest.approx(float(best["train_eval/acc1"]) - float(best["val/acc1"]))
        assert float(row["test_top1"]) == pytest.approx(status["test"]["acc1"])
        assert float(row["top1_per_Mparam"]) == pytest.approx(float(best["val/acc1"]) / (expected["total"] / 1e6))
        # The study's efficiency: best accuracy / (its epoch + 1) / ln(1 + params - 9000).
        epoch = int(best["epoch"])
        assert row["best_epoch"] == str(epoch)
        assert float(row["efficiency"]) == pytest.approx(
            float(best["val/acc1"]) / (epoch + 1) / math.log(1 + expected["total"] - 9000))
    saved = yaml.safe_load((out / "runs" / names[0] / "version_0" / "config.yaml").read_text())
    assert saved["model"]["kan_kwargs"] is None and saved["model"]["optimizer"]["init_args"]["lr"] == 0.01
    md = (out / "results.md").read_text()
    assert all(f"| {n} |" in md for n in names) and "ln(1 + params - ID), ID = 9000" in md
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"

    # Again: every run is done (finished or diverged), so no fit starts at all.
    def no_fit(*a, **k):
        raise AssertionError("a fit was started for a finished run")
    import kanvision.sweep.runner as sweep
    monkeypatch.setattr(sweep.subprocess, "Popen", no_fit)
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("skip ") == 4 and "4 done before (skipped)" in printed
    monkeypatch.undo()

    # The SLURM task of a finished run exits at once, as the local launcher skips it.
    task = subprocess.run(["bash", str(out / "sweep.sbatch")], env={"SLURM_ARRAY_TASK_ID": "0", "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)
    assert task.returncode == 0 and task.stdout.strip() == f"skip {names[0]}: finished already", task.stdout + task.stderr

    # An interrupted run resumes from its newest checkpoint, in its own directory; report-only rebuilds the table.
    run = out / "runs" / names[2]
    (run / "version_0" / "status.json").write_text(json.dumps({"status": "interrupted"}))
    before = (out / "runs" / names[0] / "version_0" / "metrics.csv").stat().st_mtime_ns
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"resume {names[2]} from last.ckpt" in printed and printed.count("skip ") == 3
    assert "--ckpt_path=" in (run / "fit.log").read_text() and not (run / "version_1").exists()
    assert json.loads((run / "version_0" / "status.json").read_text())["status"] == "finished"
    assert (out / "runs" / names[0] / "version_0" / "metrics.csv").stat().st_mtime_ns == before
    (out / "results.csv").unlink()
    assert main(["sweep", "--out", str(out), "--report-only"]) == 0
    assert list(_csv(out / "results.csv")) == names


def test_a_failing_run_is_recorded_and_the_sweep_exits_1(tmp_path, capsys):
    # A value the fit parser takes (a string) but the run refuses: the grid check passes it, the run fails.
    cfg, grid = _files(tmp_path, grid={"data.augment": ["cutouts"]})
    out = tmp_path / "sweep"
    assert main(["sweep", "--config", cfg, "--grid", grid, "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "0 diverged, 1 failed" in printed and "unknown augment 'cutouts'" in printed
    row = _csv(out / "results.csv")["augment-cutouts_seed0"]
    assert row["status"] == "failed" and "unknown augment 'cutouts'" in row["error"] and row["diverged"] == "False"
