"""Grid-update and init fits: the math against independent float64 least squares, one fit per layer at
build time, DDP gathering of unequal row counts with one fit per layer, once per optimizer step.

Tolerances: coefficients agree with LAPACK's gelsd (minimum norm, float64) to 1e-9 relative; they are the
same least-squares problems solved another way (Gram matrices + eigh instead of an SVD of the rows).
"""
import datetime
import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from kanvision.train.grid_update import grid_layers, update_grids
from kanvision.layers import BSplineKAN, b_spline_basis


from kanvision.kinds.bspline import fit as bspline_fit
def lstsq_min_norm(x, y, grid, order):
    """Independent reference: per-input gelsd on the dense (N, G + k) basis, y (N, in, out) -> (out, in, G + k)."""
    a = b_spline_basis(x.double(), grid.double(), order).transpose(0, 1)
    return torch.linalg.lstsq(a, y.double().transpose(0, 1), driver="gelsd").solution.permute(2, 0, 1)


def paper_knots(x, grid_size, order, eps, margin):
    """KAN paper sec. 2.5, one input at a time: eps-mix of uniform and quantile knots, extended by k steps."""
    rows = []
    for col in x.T.tolist():
        col = sorted(col)
        n = len(col)
        lo, hi = col[0], col[-1]
        h = (hi - lo + 2 * margin) / grid_size
        inner = [eps * (lo - margin + j * h) + (1 - eps) * col[round(j * (n - 1) / grid_size)]
                 for j in range(grid_size + 1)]
        rows.append([inner[0] - (order - j) * h for j in range(order)] + inner
                    + [inner[-1] + (j + 1) * h for j in range(order)])
    return torch.tensor(rows, dtype=x.dtype)


def assert_close_rel(got, want, rel=1e-9):
    scale = want.abs().max().clamp_min(1e-30)
    err = (got - want).abs().max() / scale
    assert err <= rel, f"max relative error {err:.3e} > {rel:g}"


def data(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.7
    x[:, 0] = torch.randint(0, 3, (n,), generator=g).double() * 0.4  # three distinct values: rank 3 of 8
    x[:, 1] = 0.25  # constant: rank 1, every knot within 0.02 * 2 * margin
    x[:, 2] = x[:, 2].abs() ** 3  # skewed: quantile knots far from uniform
    return x


@pytest.mark.parametrize("grid_size,order,scaler", [(5, 3, True), (3, 1, False), (8, 2, True)])
def test_update_grid_equals_independent_least_squares(grid_size, order, scaler):
    torch.manual_seed(0)
    layer = BSplineKAN(6, 5, grid_size=grid_size, spline_order=order,
                       enable_standalone_scale_spline=scaler).double()
    with torch.no_grad():
        layer.spline_weight.normal_()  # O(1) splines, not the init's 1e-2 noise
    x = data(500, 6, seed=1)
    old_grid, old_coeff = layer.grid.clone(), layer.spline_weight.detach().clone()
    per_edge = torch.einsum("nim,oim->nio", b_spline_basis(x, old_grid, order), old_coeff)  # unscaled

    layer.update_grid(x)

    want_grid = paper_knots(x, grid_size, order, layer.grid_eps, 0.01)
    assert torch.allclose(layer.grid, want_grid, rtol=0, atol=1e-12)
    assert_close_rel(layer.spline_weight.detach(), lstsq_min_norm(x, per_edge, want_grid, order))
    # _fit_coefficients (least squares to explicit targets) is the same problem.
    assert_close_rel(layer._fit_coefficients(x, per_edge, want_grid), lstsq_min_norm(x, per_edge, want_grid, order))


def test_refit_projection_is_pinv_new_times_old():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(300, 3, generator=g, dtype=torch.float64) * 2 - 1
    old = torch.linspace(-2.2, 2.2, 12, dtype=torch.float64).expand(3, 12)
    new = bspline_fit.new_knots(x, 5, 3, 0.02, 0.01)
    a_old = b_spline_basis(x, old, 3).transpose(0, 1)
    a_new = b_spline_basis(x, new, 3).transpose(0, 1)
    want = torch.linalg.pinv(a_new) @ a_old  # (in, 8, 8)
    assert_close_rel(bspline_fit.refit_projection(x, old, new, 3), want)


def test_refit_chunks_rows_without_changing_the_result(monkeypatch):
    x = data(700, 4, seed=3)
    old = torch.linspace(-2.2, 2.2, 12, dtype=torch.float64).expand(4, 12)
    new = bspline_fit.new_knots(x, 5, 3, 0.02, 0.01)
    whole = bspline_fit.refit_projection(x, old, new, 3)
    monkeypatch.setattr(bspline_fit, "CHUNK_ELEMENTS", 4 * 12 * 37)  # 37 rows per chunk
    assert_close_rel(bspline_fit.refit_projection(x, old, new, 3), whole)


@pytest.mark.parametrize("grid_size,order", [(5, 3), (1, 1), (3, 2), (10, 4)])
@pytest.mark.parametrize("scaler", [True, False])
def test_init_is_the_min_norm_fit_of_the_same_noise(grid_size, order, scaler):
    """Same draws as efficient-kan's init (kaiming base weight, then float64 noise on the CPU generator)."""
    d_in, d_out = 7, 4
    torch.manual_seed(11)
    layer = BSplineKAN(d_in, d_out, grid_size=grid_size, spline_order=order, scale_spline=1.5,
                       enable_standalone_scale_spline=scaler, dtype=torch.float64)
    torch.manual_seed(11)
    nn.init.kaiming_uniform_(torch.empty(d_out, d_in, dtype=torch.float64), a=math.sqrt(5))
    noise = (torch.rand(grid_size + 1, d_in, d_out, dtype=torch.float64) - 0.5) * 0.1 / grid_size
    want = lstsq_min_norm(layer.grid.T[order:-order], noise, layer.grid, order)
    if not scaler:
        want = want * 1.5
    assert_close_rel(layer.spline_weight.detach(), want)


def test_init_refit_after_grid_update_uses_each_inputs_knots():
    torch.manual_seed(4)
    layer = BSplineKAN(3, 2, dtype=torch.float64)
    layer.update_grid(data(200, 3, seed=4))
    torch.manual_seed(5)
    layer.reset_parameters()
    torch.manual_seed(5)
    nn.init.kaiming_uniform_(torch.empty(2, 3, dtype=torch.float64), a=math.sqrt(5))
    noise = (torch.rand(6, 3, 2, dtype=torch.float64) - 0.5) * 0.1 / 5
    assert_close_rel(layer.spline_weight.detach(), lstsq_min_norm(layer.grid.T[3:-3], noise, layer.grid, 3))


@pytest.mark.parametrize("model,kwargs", [
    ("kan_deit_tiny_patch4_32", dict(depth=2, kan_hidden=16)),
    ("kan_mixer_tiny_p4_32", dict(num_blocks=1)),
    ("kan_convmixer_256_8", dict(dim=32, depth=1)),
])
def test_built_models_keep_the_construction_init_and_fit_once(model, kwargs, monkeypatch):
    """timm's init passes do not touch B-spline parameters, so the build fits each layer exactly once."""
    import timm

    import kanvision.models  # noqa: F401

    snapshots, fits = [], []
    init = BSplineKAN.__init__

    def recording_init(self, *args, **kw):
        init(self, *args, **kw)
        snapshots.append((self, {k: v.clone() for k, v in self.state_dict().items()}))

    real_fit = bspline_fit.init_coefficients
    monkeypatch.setattr(BSplineKAN, "__init__", recording_init)
    monkeypatch.setattr(bspline_fit, "init_coefficients", lambda *a: fits.append(1) or real_fit(*a))
    torch.manual_seed(0)
    built = timm.create_model(model, kan="bspline", **kwargs)
    layers = grid_layers(built)
    assert layers and len(snapshots) == len(layers) == len(fits)
    for layer, before in snapshots:
        assert any(layer is other for other in layers)
        for key, value in layer.state_dict().items():
            assert torch.equal(value, before[key]), key


def test_build_still_reinitialises_rswaf_after_timm():
    """The RSWAF layer's nn.Linear gets timm's trunc_normal(0.02); the build puts xavier-uniform back."""
    import timm

    import kanvision.models  # noqa: F401
    from kanvision.layers import RSWAFKAN

    model = timm.create_model("kan_deit_tiny_patch4_32", kan="rswaf", depth=1, kan_hidden=16)
    layer = next(m for m in model.modules() if isinstance(m, RSWAFKAN))
    w = layer.spline_linear.weight
    bound = math.sqrt(6 / (w.size(0) + w.size(1)))
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound  # trunc_normal(0.02) stays below 0.04


# ------------------------------------------------------------------------------------------- DDP
ROWS = {0: 37, 1: 53}  # unequal per rank


def stack(seed=0):
    torch.manual_seed(seed)
    # Three layers on two ranks: rank 0 fits layers 0 and 2, rank 1 layer 1 (and nothing in round two).
    # compile=False: a fresh worker process would spend its time compiling kernels for three tiny layers.
    return nn.Sequential(BSplineKAN(4, 6, compile=False), BSplineKAN(6, 3, grid_size=4, compile=False),
                         BSplineKAN(3, 2, compile=False)).double()


def rank_rows(rank):
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(ROWS[rank], 4, generator=g, dtype=torch.float64) * (0.5 + rank)


def _ddp_worker(rank, world, port, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        model = stack()
        updated = update_grids(model, rank_rows(rank))
        result = {"updated": updated, "state": {k: v.clone() for k, v in model.state_dict().items()}}
        bad = rank_rows(rank)
        if rank == 1:
            bad[3, 2] = float("nan")  # only rank 1 sees it; both ranks must fail, neither may hang
        try:
            update_grids(model, bad)
            result["nan"] = "no error"
        except ValueError as e:
            result["nan"] = str(e)
        torch.save(result, f"{out}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ddp
@pytest.mark.slow  # two fresh interpreters importing torch: ~10 s of the ~15 s here
def test_ddp_unequal_rows_fit_once_and_ranks_identical(tmp_path):
    mp.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["updated"] == r1["updated"] == 3
    for key, value in r0["state"].items():
        assert torch.equal(value, r1["state"][key]), key

    single = stack()
    update_grids(single, torch.cat([rank_rows(0), rank_rows(1)]))
    for key, value in single.state_dict().items():
        assert torch.allclose(r0["state"][key], value, rtol=0, atol=1e-12), key
    assert not torch.equal(r0["state"]["0.grid"], stack().state_dict()["0.grid"])
    for r in (r0, r1):
        assert "NaN" in r["nan"], r["nan"]


def test_gather_free_path_matches_layer_update_grid():
    """Single process: update_grids is each layer's update_grid on what the layer saw."""
    model = stack()
    reference = stack()
    x = rank_rows(1)
    with torch.no_grad():
        inputs = [x, reference[0](x), reference[1](reference[0](x))]
    for layer, seen in zip(reference, inputs):
        layer.update_grid(seen)
    assert update_grids(model, x) == 3
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


# ------------------------------------------------------------------------------ accumulation
def test_grid_update_once_per_optimizer_step_under_accumulation(tmp_path, monkeypatch):
    import lightning as L

    import kanvision.train.module as module
    from kanvision.data.datamodule import ImageDataModule
    from kanvision.train.module import ImageClassifier

    steps = []
    monkeypatch.setattr(module, "update_grids", lambda model, images: steps.append(model_ref.global_step))
    data = ImageDataModule(dataset="synthetic", batch_size=4, num_workers=0, synthetic_size=32, augment="none")
    model_ref = ImageClassifier(model="kan_mixer_tiny_p4_32", model_kwargs=dict(num_blocks=1), num_classes=10,
                                kan="bspline", kan_kwargs={"compile": False}, grid_update_every=1,
                                grid_update_until=2)
    trainer = L.Trainer(max_steps=4, accumulate_grad_batches=2, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(model_ref, data)
    assert trainer.global_step == 4
    assert steps == [0, 1, 2]  # 8 micro-batches, one update at each of the steps 0..2 (until=2)
