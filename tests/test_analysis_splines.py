"""Spline plots: edge functions equal the layer's output decomposition; importance ranking; plot written."""
import pytest
import torch
from torch import nn

from kanvision.analysis.splines import capture_inputs, edge_values, kan_layers, plot_edges
from kanvision.layers import BSplineKAN, RSWAFKAN


@pytest.mark.parametrize("cls", [BSplineKAN, RSWAFKAN])
def test_edges_sum_to_layer_output(cls):
    torch.manual_seed(0)
    layer = cls(5, 4)
    x = torch.randn(32, 5)
    u = layer.layernorm(x).detach() if cls is RSWAFKAN else x
    assert torch.allclose(edge_values(layer, u).sum(-1), layer(x).detach(), atol=1e-5)


def test_capture_and_plot(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), BSplineKAN(6, 4))
    name, layer = kan_layers(model)[0]
    u = capture_inputs(model, layer, torch.randn(50, 3) * 3)
    assert u.shape == (50, 6)
    info = plot_edges(layer, u, tmp_path / "s.png", top=4)
    assert [d["importance"] for d in info] == sorted([d["importance"] for d in info], reverse=True)
    assert all(0 <= d["fraction_outside_grid"] <= 1 for d in info)
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_non_kan_layer_is_an_error():
    with pytest.raises(TypeError, match="KAN layer with edge functions"):
        edge_values(nn.Linear(2, 2), torch.randn(3, 2))


@pytest.mark.parametrize("cls", [BSplineKAN, RSWAFKAN])
def test_plot_edges_builds_its_inputs_like_the_layer(cls, tmp_path, monkeypatch):
    """A float64 layer given float32 data: the plotting grid must take the layer's dtype (and device)."""
    import kanvision.analysis.splines as splines
    torch.manual_seed(0)
    layer = cls(4, 3).double()
    seen = []

    def checked(lay, u):
        seen.append((u.dtype, u.device))
        return edge_values(lay, u)
    monkeypatch.setattr(splines, "edge_values", checked)
    info = plot_edges(layer, torch.randn(40, 4), tmp_path / "d.png", top=2)
    assert seen and set(seen) == {(torch.float64, next(layer.parameters()).device)}
    assert len(info) == 2 and (tmp_path / "d.png").stat().st_size > 1000
