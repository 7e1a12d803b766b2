"""ImageClassifier: model building and errors, losses, micro-averaged metrics, schedule, grid updates."""
import json

import pytest
import torch

from kanvision.train.grid_update import grid_layers, update_grids
from kanvision.train.module import ConfigError, ImageClassifier, WarmupCosine

TINY = dict(model="kan_mixer_tiny_p4_32", model_kwargs=dict(num_blocks=1), num_classes=10)


def batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_builds_zoo_and_plain_timm_models():
    m = ImageClassifier(kan="rswaf", **TINY)
    assert m.counts["kan"] > 0 and m.hparams.kan == "rswaf"
    plain = ImageClassifier(model="test_vit", model_kwargs=dict(img_size=32), num_classes=3)
    assert plain(torch.randn(2, 3, 32, 32)).shape == (2, 3) and plain.counts["kan"] == 0


def test_bad_model_or_kind_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown model 'kan_mixr'.*kan_mixer_tiny_p4_32"):
        ImageClassifier(model="kan_mixr")
    with pytest.raises(ConfigError, match="unknown kan kind 'spline'"):
        ImageClassifier(kan="spline", **TINY)


def mixed_target_by_hand(x, x_mix, y, num_classes, smoothing):
    """(mode, lam, target) read off timm's mixed batch: CutMix copies a box of the flipped batch (each pixel is
    x's or x.flip(0)'s; lam = 1 - box area), mixup blends (x_mix = lam x + (1 - lam) x.flip(0)); the target is
    lam * smoothed one-hot(y) + (1 - lam) * smoothed one-hot(y.flip(0)), off = smoothing / C, on = 1 - smoothing + off."""
    x, x_mix, xf = x.double(), x_mix.double(), x.flip(0).double()
    from_flip, from_self = (x_mix == xf).all(1), (x_mix == x).all(1)
    if bool((from_flip | from_self).all()):
        mode, lam = "cutmix", 1.0 - from_flip[0].double().mean().item()
    else:
        mode, lam = "mixup", (((x_mix - xf) * (x - xf)).sum() / ((x - xf) ** 2).sum()).item()
        assert torch.allclose(x_mix, lam * x + (1 - lam) * xf, atol=1e-6)
    off = smoothing / num_classes
    one_hot = torch.full((len(y), num_classes), off, dtype=torch.float64)
    one_hot[torch.arange(len(y)), y] = 1 - smoothing + off
    return mode, lam, lam * one_hot + (1 - lam) * one_hot.flip(0)


@pytest.mark.parametrize("seed,mode", [(0, "mixup"), (2, "cutmix")])  # numpy's draw picks timm's mode
def test_mixup_loss_and_reg_weight(seed, mode):
    import numpy as np
    from timm.data import Mixup

    torch.manual_seed(0)
    x, y = batch()
    plain = ImageClassifier(kan="bspline", **TINY)
    torch.nn.init.normal_(plain.model.head.weight)  # timm's Mixer head starts at zero: every loss would be ln 10
    mixed = ImageClassifier(kan="bspline", mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, **TINY)
    mixed.load_state_dict(plain.state_dict())
    for m in (plain, mixed):
        m.log = lambda *a, **k: None  # no trainer attached
    base = plain.training_step((x, y), 0)
    np.random.seed(seed)  # timm's Mixup draws the mode, lambda and the CutMix box from numpy's global generator
    soft = mixed.training_step((x.clone(), y), 0)  # timm mixes the batch in place
    assert torch.isfinite(soft) and not torch.isclose(base, soft)
    # The value: the soft-target cross-entropy, -sum_c t_c log softmax(z)_c averaged over the batch, of the model
    # on timm's mixed batch (a Mixup built here with the options given to the module, on the same numpy draws),
    # with the target checked against its formula; in float64.
    np.random.seed(seed)
    x_mix, target = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10)(x.clone(), y)
    got_mode, lam, target_by_hand = mixed_target_by_hand(x, x_mix, y, 10, 0.1)
    assert got_mode == mode and 0 < lam < 1
    assert torch.allclose(target.double(), target_by_hand, rtol=0, atol=1e-6)
    with torch.no_grad():
        log_p = torch.log_softmax(plain.model(x_mix).double(), dim=-1)
    want = -(target_by_hand * log_p).sum(-1).mean()
    assert torch.allclose(soft.double(), want, rtol=1e-5, atol=1e-6), (soft.item(), want.item())
    reg = ImageClassifier(kan="bspline", reg_weight=0.5, **TINY)
    reg.load_state_dict(plain.state_dict())
    reg.log = lambda *a, **k: None
    expected = base + 0.5 * sum(layer.regularization_loss() for layer in grid_layers(plain.model))
    assert torch.allclose(reg.training_step((x, y), 0), expected)


def test_accuracy_is_micro_averaged():
    m = ImageClassifier(**TINY)
    logits = torch.zeros(4, 10)
    logits[torch.arange(4), torch.tensor([0, 0, 0, 1])] = 1  # predicts 0,0,0,1
    m.val_acc1(logits, torch.tensor([0, 0, 0, 2]))
    assert m.val_acc1.compute() == pytest.approx(0.75)  # macro over present classes would give 0.5


def test_warmup_cosine():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupCosine(opt, warmup_steps=0.1, total_steps=100, min_lr_ratio=0.0)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0) and max(lrs) == pytest.approx(1.0)
    assert lrs[-1] < 0.01 and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_grid_update_moves_grids_and_keeps_the_function():
    torch.manual_seed(0)
    model = ImageClassifier(kan="bspline", **TINY).model.double().eval()
    x = batch(16)[0].double()
    before = model.forward_features(x)  # (the Mixer head starts at zero)
    grids = [layer.grid.clone() for layer in grid_layers(model)]
    assert update_grids(model, x) == 2
    assert all(not torch.equal(g, layer.grid) for g, layer in zip(grids, grid_layers(model)))
    rel = (model.forward_features(x) - before).norm() / before.norm()
    assert rel < 0.05  # the refit preserves what the network computes on that batch


def test_checkpoint_record_is_json():
    m = ImageClassifier(kan="bspline", kan_kwargs={"grid_size": 4}, **TINY)
    ckpt = {}
    m.on_save_checkpoint(ckpt)
    record = json.loads(json.dumps(ckpt["kanvision"]))
    assert record["model"] == "kan_mixer_tiny_p4_32" and record["kan_kwargs"] == {"grid_size": 4}
    assert record["params"]["kan"] == m.counts["kan"] and record["model_kwargs"] == {"num_blocks": 1}


def test_images_per_s_syncs_once_per_logging_step_and_counts_images_and_flops(tmp_path, monkeypatch):
    """train/images_per_s comes from TrainThroughput (Lightning's ThroughputMonitor): the device is synchronized at
    training start and at each logging step, never at the steps between; the rate is the logging interval's images
    over its time, FLOP/s its images x 3 x the forward FLOPs of one image."""
    import types

    import lightning as L

    import kanvision.train.callbacks as callbacks
    from kanvision.analysis.params import count_flops
    from kanvision.data.datamodule import ImageDataModule

    synced, clock = [], iter(range(0, 10**6, 2))  # every clock read 2 s after the previous one
    monkeypatch.setattr(callbacks, "synchronize", lambda device: synced.append(torch.device(device)))
    monkeypatch.setattr(callbacks, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    data = ImageDataModule(dataset="synthetic", batch_size=8, num_workers=0, synthetic_size=24, augment="none")
    trainer = L.Trainer(max_steps=6, log_every_n_steps=2, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, default_root_dir=tmp_path)
    module = ImageClassifier(kan="rswaf", **TINY)
    trainer.fit(module, data)
    assert synced == [torch.device("cpu")] * 4  # training start, steps 2, 4 and 6
    m = trainer.callback_metrics
    assert float(m["train/images_per_s"]) == pytest.approx(16 / 2)  # 2 steps of 8 images in 2 s
    with torch.device("meta"):
        meta = ImageClassifier(kan="rswaf", **TINY).model
    per_image = sum(count_flops(meta, torch.empty(1, 3, 32, 32, device="meta")).values())
    assert float(m["train/device/flops_per_sec"]) == pytest.approx(16 * 3 * per_image / 2, rel=1e-6)
    assert "train/device/mfu" not in m  # no known peak for a CPU


def test_compile_options_and_fused_adamw(monkeypatch):
    from kanvision.train.callbacks import FastStep, fused_on_cuda

    with pytest.raises(ConfigError, match="compile must be one of auto, true, false; got 'sometimes'"):
        ImageClassifier(compile="sometimes", **TINY)
    with pytest.raises(ConfigError, match="compile_mode must be one of default, reduce-overhead, max-autotune"):
        ImageClassifier(compile_mode="fast", **TINY)
    for setting, compiled in (("auto", False), (True, True), ("false", False)):  # auto on a CPU: eager
        m = ImageClassifier(compile=setting, **TINY)
        FastStep().on_fit_start(None, m)
        assert (getattr(m.model, "_compiled_call_impl", None) is not None) == compiled, setting
    m = ImageClassifier(lr_scheduler=None, **TINY)
    opt = m.configure_optimizers()
    assert opt.defaults["fused"] is None  # CPU parameters: left as built
    monkeypatch.setattr(torch.nn.Parameter, "is_cuda", property(lambda self: True))
    fused = fused_on_cuda(torch.optim.AdamW(m.parameter_groups(), lr=3e-3, weight_decay=0.05))
    assert type(fused) is torch.optim.AdamW and all(g["fused"] for g in fused.param_groups)
    assert [g["weight_decay"] for g in fused.param_groups] == [0.05, 0.0] and fused.defaults["lr"] == 3e-3
    assert fused_on_cuda(torch.optim.SGD(m.parameters(), lr=0.1)).defaults.get("fused") is None


def test_weight_decay_spares_biases_norms_and_embeddings():
    from functools import partial
    m = ImageClassifier(model="kan_deit_tiny_patch4_32", kan="bspline", model_kwargs=dict(depth=1), num_classes=10,
                        optimizer=partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.05), lr_scheduler=None)
    opt = m.configure_optimizers()
    wd = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    named = dict(m.model.named_parameters())
    assert len(wd) == len(named)  # every parameter in exactly one group
    for name in ("pos_embed", "cls_token", "norm.weight", "head.bias", "blocks.0.norm1.bias"):
        assert wd[id(named[name])] == 0.0, name
    for name in ("head.weight", "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.spline_weight",
                 "blocks.0.mlp.fc1.base_weight", "blocks.0.mlp.fc1.spline_scaler"):
        assert wd[id(named[name])] == 0.05, name
