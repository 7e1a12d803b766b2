"""Peak memory of one training step, measured, beside the limitations paper's analytic KAN estimate.

Measurement:
- CUDA: `torch.cuda.max_memory_allocated` over forward + backward + optimizer step, minus the memory
  allocated before the step (the allocator's real peak).
- CPU (no allocator statistics): saved-tensor accounting. A `saved_tensors_hooks` pair records every
  tensor autograd keeps for backward, de-duplicated by storage; the reported number is
  parameters + gradients + saved activations + the fast KAN kernels' scratch buffers (kept between steps,
  one per thread and slot, sized by the largest layer call; see kanvision.layers.workspace). It is a
  measured lower bound on the step's peak: transient memory freed inside an op is not seen. The method
  is returned with every result.

Analytic estimate (`kan_layer_estimate`, ours): per KAN layer with I inputs, B rows, grid size G, spline
order S, forward I(1+G+S)B and backward I(G+S-1)B elements, converted to bytes with the parameter dtype's size;
RSWAF layers with G = num_grids, S = 0. This was written as "the limitations paper's counting", but it is NOT the
paper's Eq. (1): an audit (issue 14) found that its backward term lacks the paper's -O*B, it has no parameter
term, Eq. (2) is absent and the RSWAF variant is our addition. It is kept, under this label, because the
recorded tables in docs/results.md were computed with it. For the paper's own equations see `paper_estimate`.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from kanvision.device import synchronize
from kanvision.layers.workspace import release_scratch, scratch_bytes

__all__ = ["kan_layer_estimate", "analytic_estimate", "paper_estimate", "measure_step", "memory_sweep"]


PAPER = ('Avik Pal and Dipankar Das, "Understanding the Limitations of B-Spline KANs: Convergence Dynamics and '
         'Computational Efficiency", NeurIPS 2024 Workshop on Scientific Methods for Understanding Deep Learning')


def paper_estimate(in_features: int, out_features: int, rows: int, grid_size: int, spline_order: int) -> dict[str, int]:
    """Eq. (1) and Eq. (2) of Pal & Das (`PAPER`), in elements: forward, reverse, parameters, total.

    NOT IMPLEMENTED, on purpose. The paper's text was not available where this was written: searches of the
    stored arXiv/web pages and documentation (title, authors, "memory" / "forward" / "reverse" with the layer's
    symbols) found only a citation of it (in arXiv:2503.10632's references), not its equations. What is known
    second-hand (issue 14: Eq. (1)'s reverse term contains a -O*B, the paper has a parameter term and an Eq. (2))
    is not enough to write the equations exactly, and a guessed formula would be tested against itself.
    Raises NotImplementedError until the equations are copied from the paper (then test them against values
    worked by hand from the paper's own definitions of I, O, B, G, S).
    """
    raise NotImplementedError(
        "paper_estimate: Eq. (1)/(2) of " + PAPER + " were not available to implement exactly; "
        "kan_layer_estimate is our own (different) count. Copy the equations from the paper to implement this.")


def kan_layer_estimate(in_features: int, rows: int, grid_size: int, spline_order: int) -> dict[str, int]:
    """Our per-layer count, NOT the paper's Eq. (1) (module docstring): forward I(1+G+S)B, backward I(G+S-1)B."""
    I, B, G, S = in_features, rows, grid_size, spline_order
    return {"forward": I * (1 + G + S) * B, "backward": I * (G + S - 1) * B}


def _kan_layers(model: nn.Module):
    from kanvision.layers import BSplineKAN, RSWAFKAN
    for name, m in model.named_modules():
        if isinstance(m, BSplineKAN):
            yield name, m, m.grid_size, m.spline_order
        elif isinstance(m, RSWAFKAN):
            yield name, m, m.num_grids, 0


def analytic_estimate(model: nn.Module, example: torch.Tensor, batch_size: int) -> dict[str, float]:
    """Sum of the per-layer estimate over every KAN layer (bytes), rows per image found by a forward hook."""
    rows, hooks = {}, []
    layers = list(_kan_layers(model))
    for name, m, _, _ in layers:
        hooks.append(m.register_forward_hook(
            lambda mod, inp, out, name=name: rows.__setitem__(name, inp[0].numel() // inp[0].shape[-1])))
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in hooks:
            h.remove()
    elem = next(model.parameters()).element_size()
    fwd = bwd = params = 0
    for name, m, G, S in layers:
        est = kan_layer_estimate(m.in_features, rows.get(name, 0) * batch_size, G, S)
        fwd, bwd = fwd + est["forward"], bwd + est["backward"]
        params += sum(p.numel() for p in m.parameters())
    return {"forward_bytes": fwd * elem, "backward_bytes": bwd * elem, "kan_param_bytes": params * elem,
            "kan_layers": len(layers)}


def saved_tensor_bytes(module: nn.Module, run: Callable[[], Any]) -> tuple[int, Any]:
    """(bytes of the distinct storages autograd saves for backward while `run()` executes, its result).

    The module's parameters are excluded (they exist anyway); views of one storage count once.
    """
    param_ptrs = {p.untyped_storage().data_ptr() for p in module.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_ptrs:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    return sum(seen.values()), out


def measure_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 loss_fn: Callable = F.cross_entropy) -> dict[str, float | str]:
    """Bytes of one SGD training step (see the module docstring for the method per device)."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: measure without changing the weights
    opt.zero_grad(set_to_none=True)
    if x.is_cuda:
        # Statistics of x's device: the current device is another one for cuda:N unless it was set.
        device = x.device
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        loss_fn(model(x), y).backward()
        opt.step()
        synchronize(device)
        return {"bytes": torch.cuda.max_memory_allocated(device) - base, "method": "cuda.max_memory_allocated"}
    release_scratch()  # count this model's own scratch, not a larger earlier one's
    saved, loss = saved_tensor_bytes(model, lambda: loss_fn(model(x), y))
    loss.backward()
    opt.step()
    pbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    scratch = scratch_bytes()
    return {"bytes": 2 * pbytes + saved + scratch, "activation_bytes": saved, "scratch_bytes": scratch,
            "method": "cpu saved-tensor accounting: params + grads + tensors saved for backward + the fast KAN "
                      "kernels' scratch buffers (lower bound)"}


def memory_sweep(build: Callable[[], nn.Module], batch_sizes, input_shape, num_classes: int,
                 device="cpu", cap_bytes: float | None = None,
                 progress: Callable[[int], None] | None = None) -> list[dict]:
    """One row per batch size; OOM (real, or above `cap_bytes` on CPU) is a row with bytes=None.

    `progress(batch_size)` is called after each batch size's row, skipped ones included.
    """
    rows, over = [], False
    for bs in sorted(batch_sizes):
        row = {"batch_size": bs}
        if over:  # a smaller batch already exceeded the cap: larger ones would too
            rows.append(dict(row, bytes=None, oom="skipped: smaller batch over the cap"))
            if progress is not None:
                progress(bs)
            continue
        model = build().to(device)
        x = torch.randn(bs, *input_shape, device=device)
        y = torch.randint(0, num_classes, (bs,), device=device)
        try:
            row.update(measure_step(model, x, y))
        except torch.OutOfMemoryError as e:
            row.update(bytes=None, oom=f"out of memory: {str(e).splitlines()[0]}")
        row.update({f"estimate_{k}": v for k, v in analytic_estimate(model, x, bs).items()})
        if row.get("bytes") is not None and cap_bytes is not None and row["bytes"] > cap_bytes:
            row.update(measured_bytes=row["bytes"], bytes=None, oom=f"over the {cap_bytes:.0f}-byte cap")
            over = True
        rows.append(row)
        del model, x, y
        if torch.device(device).type == "cuda":
            with torch.cuda.device(device):  # empty_cache acts on the current device
                torch.cuda.empty_cache()
        if progress is not None:
            progress(bs)
    return rows
