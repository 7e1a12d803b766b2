"""Why RSWAF models show Hessian eigenvalues of 1e5..1e10 at init: a check, not an assumption.

For a ViT (timm's test_vit by default, or a zoo model) with each MLP kind it prints
  1. the top Hessian eigenvalue in float32 and float64 (a numerical artefact would differ between them);
  2. how much a tiny perturbation of the class token grows through the network, block by block
     (output change / input change of each block's residual stream).
If (1) agrees across precisions and (2) shows a large gain per block, the curvature is a property of the
function, not of the arithmetic: the top eigenvalue grows roughly like the product of squared gains.

    .venv/bin/python scripts/rswaf_curvature.py [--model test_vit] [--depth N]
"""
from __future__ import annotations

import argparse
import time

import timm
import torch

import kanvision  # noqa: F401
from kanvision.analysis.hessian import HessianOperator, top_eigenvalues
from kanvision.layers import kan_mlp_layer


def build(model: str, kind: str, depth: int | None, dtype: torch.dtype):
    torch.manual_seed(0)
    kw = dict(num_classes=10)
    if depth is not None:
        kw["depth"] = depth
    if model.startswith("kan_"):
        kw["kan"] = kind
    else:
        kw.update(img_size=32)
        if kind != "none":
            kw["mlp_layer"] = kan_mlp_layer(kind)
    return timm.create_model(model, **kw).to(dtype).eval()


def block_gains(model, x: torch.Tensor, eps: float = 1e-6) -> list[float]:
    """|change of block output| / |change of block input| for a class-token perturbation of size eps."""
    states = []
    hooks = [b.register_forward_hook(lambda m, i, o: states.append((i[0].detach(), o.detach()))) for b in model.blocks]
    direction = torch.randn_like(model.cls_token)
    direction /= direction.norm()
    with torch.no_grad():
        model(x)
        base = list(states)
        states.clear()
        model.cls_token.add_(eps * direction)
        model(x)
        model.cls_token.sub_(eps * direction)
    for h in hooks:
        h.remove()
    return [float((o1 - o0).norm() / (i1 - i0).norm()) for (i0, o0), (i1, o1) in zip(base, states)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="test_vit")
    parser.add_argument("--depth", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    print(f"# {args.model} depth={args.depth or 'default'}, batch {args.batch_size} of seeded Gaussian images, "
          f"random labels, eval mode, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| kind | top eigenvalue fp32 | top eigenvalue fp64 | per-block gain of a class-token perturbation (fp64) |")
    print("|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (args.batch_size,), generator=g)
    for kind in ("none", "bspline", "rswaf"):
        t0 = time.time()
        tops = []
        for dtype in (torch.float32, torch.float64):
            model = build(args.model, kind, args.depth, dtype)
            tops.append(float(top_eigenvalues(HessianOperator(model, [(x.to(dtype), y)]), k=1, tol=1e-3)[0]))
        gains = block_gains(build(args.model, kind, args.depth, torch.float64), x.double())
        print(f"| {kind} | {tops[0]:.4g} | {tops[1]:.4g} | {', '.join(f'{v:.1f}' for v in gains)} |"
              f"  <!-- {time.time() - t0:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
