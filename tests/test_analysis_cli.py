"""`kanvision analyze` end to end on timm's tiny test_vit (MLP vs B-spline KAN), synthetic data."""
import json

import pytest

from kanvision.cli import main

TINY = ["--model", "test_vit", "--model-kwargs", '{"img_size": 16}', "--num-classes", "3"]


@pytest.mark.slow
def test_hessian_cli_writes_json_and_png(tmp_path):
    res = main(["analyze", "hessian", *TINY, "--kan", "none", "--kan", "bspline", "--batch-size", "4",
                "--top-k", "2", "--steps", "6", "--probes", "2", "--trace-probes", "3", "--maxiter", "50",
                "--device", "cpu", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "hessian.json").read_text())
    assert data["settings"]["device"] == "cpu"
    assert set(data["models"]) == {"test_vit:none", "test_vit:bspline"}
    r = data["models"]["test_vit:bspline"]
    for m in data["models"].values():
        # Both requested eigenvalues at each end (converged within maxiter 50; about 60-90 HVPs here), ordered.
        top, bottom = m["top_eigenvalues"], m["bottom_eigenvalues"]
        assert len(top) == 2 and top == sorted(top, reverse=True)
        assert len(bottom) == 2 and bottom == sorted(bottom)
        # Independent check of both methods: Ritz values of any Lanczos run lie inside the spectrum, so no SLQ
        # node may exceed ARPACK's largest eigenvalue or undercut its smallest.
        nodes = [v for run in m["slq"] for v in run["nodes"]]
        assert max(nodes) <= top[0] * (1 + 1e-6) and min(nodes) >= bottom[0] * (1 + 1e-6)
        assert m["counts"]["positive_topk"] == sum(v > m["counts"]["threshold"] for v in top)
    assert r["density"]["integral"] == pytest.approx(1.0, abs=1e-2)
    assert (tmp_path / "hessian_density.png").stat().st_size > 1000
    assert res["models"]["test_vit:none"]["num_params"] < r["num_params"]


def test_memory_cli_table_and_plot(tmp_path):
    rows = main(["analyze", "memory", *TINY, "--kan", "none", "--kan", "rswaf", "--batch-sizes", "2", "8",
                 "--out", str(tmp_path)])
    kan = [r for r in rows if r["model"] == "test_vit:rswaf"]
    # The CLI reports what measure_step measures on the model it built (values checked against hand counts in
    # test_analysis_memory.py), and the estimate of analytic_estimate for that model and batch.
    import torch
    from kanvision.analysis.cli import _models, _parser
    from kanvision.analysis.memory import analytic_estimate, measure_step
    args = _parser().parse_args(["memory", *TINY, "--kan", "rswaf"])
    ((_, model),) = _models(args)
    for row, bs in zip(kan, (2, 8)):
        x, y = torch.randn(bs, 3, 16, 16), torch.zeros(bs, dtype=torch.long)
        assert row["batch_size"] == bs and row["bytes"] == measure_step(model, x, y)["bytes"]
        assert row["estimate_forward_bytes"] == analytic_estimate(model, x, bs)["forward_bytes"] > 0
    assert "saved-tensor" in (tmp_path / "memory.md").read_text()
    assert (tmp_path / "memory.png").exists()


def test_bad_model_is_a_clear_error():
    with pytest.raises(SystemExit, match="cannot build 'no_such_model'"):
        main(["analyze", "memory", "--model", "no_such_model"])
    with pytest.raises(SystemExit, match="--checkpoint PATH or --model"):
        main(["analyze", "memory"])
    with pytest.raises(SystemExit, match="--model-kwargs is not valid JSON"):
        main(["analyze", "memory", "--model", "test_vit", "--model-kwargs", "{img_size: 16}"])
    with pytest.raises(SystemExit, match="--kan-kwargs must be a JSON object"):
        main(["analyze", "memory", "--model", "kan_mixer_tiny_p4_32", "--kan-kwargs", "[1]"])


@pytest.mark.parametrize("command", ["hessian", "memory", "splines", "throughput"])
def test_unusable_device_is_one_line(command):
    import torch
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU; cuda:0 on a CPU-only machine
    with pytest.raises(SystemExit, match=rf"kanvision analyze {command}: device '{missing}' asked for, but"):
        main(["analyze", command, *TINY, "--kan", "none", "--device", missing])
    with pytest.raises(SystemExit, match=r"unknown device 'gpu0': use cpu, cuda or cuda:N"):
        main(["analyze", command, *TINY, "--kan", "none", "--device", "gpu0"])


def test_kan_kwargs_reach_only_the_kan_models():
    from kanvision.analysis.cli import _models, _parser
    from kanvision.layers import BSplineKAN
    args = _parser().parse_args(["memory", "--model", "kan_mixer_tiny_p4_32", "--model-kwargs", '{"num_blocks": 1}',
                                 "--kan", "none", "--kan", "bspline", "--kan-kwargs", '{"grid_size": 3}'])
    (_, mlp), (_, kan) = _models(args)
    assert not any(isinstance(m, BSplineKAN) for m in mlp.modules())  # kan none accepted the flag silently
    assert {m.grid_size for m in kan.modules() if isinstance(m, BSplineKAN)} == {3}


def test_splines_cli(tmp_path):
    res = main(["analyze", "splines", *TINY, "--kan", "bspline", "--batch-size", "8", "--top", "4",
                "--out", str(tmp_path)])
    assert len(res["test_vit:bspline"]["edges"]) == 4
    assert (tmp_path / "splines_test_vit_bspline.png").exists()
    with pytest.raises(SystemExit, match="no KAN layer with edge functions"):
        main(["analyze", "splines", *TINY, "--kan", "none", "--out", str(tmp_path)])


def test_throughput_cli(tmp_path, monkeypatch):
    import torch

    import kanvision.analysis.throughput as tp
    synced = []
    monkeypatch.setattr(tp, "synchronize", lambda device: synced.append(device))
    rows = main(["analyze", "throughput", *TINY, "--kan", "none", "--batch-size", "4", "--warmup", "1",
                 "--repeats", "2", "--device", "cpu", "--out", str(tmp_path)])
    assert rows[0]["train_images_per_s"] > 0 and rows[0]["inference_images_per_s"] > 0  # values: tests below
    # Around each of the (1 + 2) x 2 timed calls, the asked device is synchronized, not "the current one".
    assert synced == [torch.device("cpu")] * 12 and rows[0]["device"] == "cpu"
    assert "median of 2" in (tmp_path / "throughput.md").read_text()


def test_checkpoints_are_labelled_by_architecture_and_kind(tmp_path):
    from kanvision.analysis.cli import _models, _parser
    from test_checkpoints import ARCH, make_ckpt
    for name in ("a", "b"):
        make_ckpt(tmp_path / f"{name}.ckpt")
    args = _parser().parse_args(["memory", "--checkpoint", str(tmp_path / "a.ckpt"),
                                 "--checkpoint", str(tmp_path / "b.ckpt")])
    labels = [label for label, _ in _models(args)]
    # Same weights twice: the second label names its file to tell them apart.
    assert labels == [f"{ARCH}:none", f"{ARCH}:none ({tmp_path / 'b.ckpt'})"]


def test_throughput_statistic_on_a_known_clock(monkeypatch):
    # A fake clock makes every timed call take a known time: the result must be batch / median of the timed
    # repeats. perf_counter is read at the start of every call and at the end of the timed ones (warm-up 1,
    # repeats 3). Train repeats take 0.5, 0.7, 0.4 s -> 4 / 0.5 = 8 images/s; inference 0.125, 0.3, 0.1 s -> 32.
    import kanvision.analysis.throughput as tp
    from torch import nn
    readings = iter([0, 10, 10.5, 20, 20.7, 30, 30.4,          # train: warm-up start, then (start, end) x 3
                     40, 50, 50.125, 60, 60.3, 70, 70.1])     # inference
    monkeypatch.setattr(tp, "time", type("Clock", (), {"perf_counter": staticmethod(lambda: next(readings))}))
    out = tp.throughput(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), (12,), 3, batch_size=4, warmup=1, repeats=3)
    assert out["train_images_per_s"] == pytest.approx(8.0) and out["inference_images_per_s"] == pytest.approx(32.0)


def test_throughput_of_a_timed_workload():
    # A model whose forward sleeps 20 ms: 8 images per step can run at most 8 / 0.02 = 400 images/s, and on an
    # idle-enough machine not much slower (the rest of the step is a 12 -> 3 linear map). Within a factor 2.
    import time

    from torch import nn

    from kanvision.analysis.throughput import throughput

    class Sleepy(nn.Linear):
        def forward(self, x):
            time.sleep(0.02)
            return super().forward(x)

    out = throughput(nn.Sequential(nn.Flatten(), Sleepy(12, 3)), (12,), 3, batch_size=8, warmup=1, repeats=3)
    for key in ("train_images_per_s", "inference_images_per_s"):
        assert 200 < out[key] <= 400, (key, out[key])


@pytest.mark.slow
def test_hessian_on_training_images_excludes_the_hold_out(tmp_path):
    """--split train: the Hessian's images are trained-on images, never the validation hold-out, which is
    scored beside them for the train-vs-validation gap; asking for more images than that is one clear line."""
    import argparse

    import numpy as np
    import timm
    import torch
    from PIL import Image

    from kanvision.analysis.hessian_cli import _train_split

    g = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(6):  # 18 distinct noise images
            Image.fromarray(g.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "train" / c / f"{i}.png")
    kw = ["--model", "test_vit", "--model-kwargs", '{"img_size": 16}', "--num-classes", "3", "--kan", "none",
          "--device", "cpu", "--data", "imagefolder", "--data-root", str(tmp_path), "--val-split", "6",
          "--batch-size", "4", "--top-k", "1", "--bottom-k", "0", "--steps", "3", "--probes", "1",
          "--trace-probes", "0", "--no-progress"]
    res = main(["analyze", "hessian", *kw, "--batches", "3", "--out", str(tmp_path / "out")])
    r = res["models"]["test_vit:none"]
    assert r["images"] == 12 and r["scores"]["held_out"]["images"] == 6
    assert r["scores"]["gap_top1"] == pytest.approx(r["scores"]["hessian_images"]["top1"]
                                                    - r["scores"]["held_out"]["top1"])
    assert r["relative_counts"][0]["exact_topk"] == 1 and r["top"]["converged"]

    args = argparse.Namespace(data_root=str(tmp_path), batch_size=4, batches=3, val_split=6, data_seed=0)
    model = timm.create_model("test_vit", img_size=16, num_classes=3)
    model.pretrained_cfg = {"mean": (0.5,) * 3, "std": (0.5,) * 3}
    hess, held = _train_split(args, model)
    hess_x, held_x = torch.cat([x for x, _ in hess]), torch.cat([x for x, _ in held])
    assert len(hess_x) == 12 and len(held_x) == 6
    # 18 distinct images: the 12 and the 6 are disjoint, so together they are the whole training folder.
    assert not any(torch.equal(h, v) for h in hess_x for v in held_x)
    with pytest.raises(SystemExit, match="only 12 are outside the hold-out"):
        _train_split(argparse.Namespace(**{**vars(args), "batches": 4}), model)


def test_hessian_on_training_images_needs_a_folder_named_in_one_line(tmp_path, capsys):
    base = ["analyze", "hessian", *TINY, "--kan", "none", "--device", "cpu", "--data", "imagefolder"]
    with pytest.raises(SystemExit, match="--data imagefolder needs --data-root DIR"):
        main(base)
    with pytest.raises(SystemExit, match=f"no train images at {tmp_path}/train.*point --data-root at"):
        main([*base, "--data-root", str(tmp_path)])


@pytest.mark.slow
def test_hessian_resume_keeps_finished_models_and_refuses_other_settings(tmp_path, capsys):
    run = ["analyze", "hessian", *TINY, "--batch-size", "4", "--top-k", "1", "--steps", "4", "--probes", "1",
           "--trace-probes", "0", "--maxiter", "30", "--bottom-k", "0", "--device", "cpu", "--out", str(tmp_path)]
    first = main([*run, "--kan", "none"])["models"]["test_vit:none"]
    both = main([*run, "--kan", "none", "--kan", "rswaf", "--resume"])["models"]
    assert set(both) == {"test_vit:none", "test_vit:rswaf"}
    # the finished model is kept as it was written (same HVP count and seconds, not recomputed)
    assert both["test_vit:none"]["seconds"] == first["seconds"] and both["test_vit:none"]["top"] == first["top"]
    assert "test_vit:none: kept from" in capsys.readouterr().out
    assert both["test_vit:rswaf"]["device_name"].startswith("cpu")
    with pytest.raises(SystemExit) as e:
        main([*run, "--kan", "bspline", "--resume", "--steps", "8"])
    msg = str(e.value)
    assert msg.startswith("kanvision analyze hessian: --resume with other settings than ") and "\n" not in msg
    assert "steps 4 there, 8 now" in msg and "give another --out" in msg
    assert set(json.loads((tmp_path / "hessian.json").read_text())["models"]) == {"test_vit:none", "test_vit:rswaf"}
