"""timm's tracing conventions on the zoo with KAN layers: FX feature extraction (layers as leaves), meta-device
forward, a clear TorchScript error naming the alternatives, and torch.export of an eval-mode model."""
import pytest
import timm
import torch
from timm.models._features_fx import create_feature_extractor, get_graph_node_names, get_notrace_modules

import kanvision  # noqa: F401  registers the zoo
from kanvision.layers import BSplineKAN, RSWAFKAN, TorchScriptUnsupported

MODELS = [("kan_mixer_tiny_p4_32", dict(num_blocks=2)), ("kan_convmixer_256_8", dict(depth=1)),
          ("kan_deit_tiny_patch4_32", dict(depth=2))]
KINDS = ["bspline", "rswaf"]


def build(name, kind, extra, **kw):
    torch.manual_seed(0)
    model = timm.create_model(name, kan=kind, num_classes=10, **extra, **kw)
    with torch.no_grad():
        model.get_classifier().weight.normal_(0, 0.1)
    return model


def test_kan_layers_are_fx_leaves():
    assert {BSplineKAN, RSWAFKAN} <= set(get_notrace_modules())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name,extra", MODELS, ids=[m[0] for m in MODELS])
def test_fx_feature_extraction(name, extra, kind):
    # What timm's test_model_forward_fx / backward_fx do: trace, take the last node, compare with the model.
    model = build(name, kind, extra).train()
    train_nodes, eval_nodes = get_graph_node_names(model)
    assert train_nodes[-1] == eval_nodes[-1]
    fx = create_feature_extractor(model, [eval_nodes[-1]])
    x = torch.randn(2, 3, 32, 32)
    out = next(iter(fx(x).values()))
    out.pow(2).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # The values: the traced graph (sharing the model's parameters) gives the model's own gradients.
    traced = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    model(x).pow(2).mean().backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(traced[n], p.grad, rtol=1e-5, atol=1e-7), n
    model.eval(), fx.eval()
    with torch.no_grad():
        assert torch.allclose(next(iter(fx(x).values())), model(x), atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name,extra", MODELS, ids=[m[0] for m in MODELS])
def test_meta_device_forward(name, extra, kind):
    # timm's default-cfg tests run models on the meta device: no host reads of tensor values allowed.
    with torch.device("meta"):
        model = timm.create_model(name, kan=kind, num_classes=10, **extra)
        out = model(torch.empty(2, 3, 32, 32))
    assert out.is_meta and out.shape == (2, 10)
    feats = model.forward_features(torch.empty(2, 3, 32, 32, device="meta"))
    assert feats.is_meta


def test_torchscript_raises_one_clear_error():
    model = build("kan_mixer_tiny_p4_32", "bspline", dict(num_blocks=1))
    with pytest.raises(TorchScriptUnsupported, match=r"torch\.compile\(model\).*torch\.export\.export"):
        torch.jit.script(model)
    with pytest.raises(TorchScriptUnsupported, match="RSWAFKAN"):
        torch.jit.script(RSWAFKAN(4, 3))


@pytest.mark.parametrize("kind", KINDS)
def test_torch_export_of_eval_model(kind):
    model = build("kan_mixer_tiny_p4_32", kind, dict(num_blocks=1)).eval()
    if kind == "bspline":  # the general (non-uniform) kernel must export too
        from kanvision.train.grid_update import update_grids
        update_grids(model, torch.randn(4, 3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        want = model(x)
        assert torch.allclose(program.module()(x), want, atol=1e-5)
        x2 = torch.randn(2, 3, 32, 32)
        assert torch.allclose(program.module()(x2), model(x2), atol=1e-5)
