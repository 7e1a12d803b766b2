"""Peak memory of one training step, measured, beside the limitations paper's analytic KAN estimate.

Measurement:
- CUDA: the caching allocator's peak, `torch.cuda.max_memory_allocated`, over forward + backward + optimizer
  step, minus the memory allocated before the step (parameters, inputs, anything else already on the device);
  one unmeasured warm-up step first (compiled kernels, cuBLAS workspace), then the peak statistics are reset
  (`torch.cuda.reset_peak_memory_stats`) right before the measured step. Gradients are inside the peak.
- CPU (no allocator statistics): saved-tensor accounting. A `saved_tensors_hooks` pair records every
  tensor autograd keeps for backward, de-duplicated by storage; the reported number is
  parameters + gradients + saved activations + the fast KAN kernels' scratch buffers (kept between steps,
  one per thread and slot, sized by the largest layer call; see kanvision.kinds.workspace). It is a
  measured lower bound on the step's peak: transient memory freed inside an op is not seen. The method
  is returned with every result.

Storage modes (`impl`, issue 14): every KAN layer with storage modes (B-spline, RSWAF) runs either "fast" (our kernels: the basis
is rebuilt in backward from the saved input, inside reused scratch buffers) or "reference" (plain autograd, which
keeps the expanded (N, in, G + S) basis for backward, as efficient-kan does). `set_kan_impl` switches a model's
layers so both can be measured on the same weights; the reference path allocates no scratch, and `measure_step`
frees the scratch before and after each CPU measurement, so a fast run's buffers never count in a reference row.

Analytic estimate (`kan_layer_estimate`, ours): per KAN layer with I inputs, B rows, grid size G, spline
order S, forward I(1+G+S)B and backward I(G+S-1)B elements, converted to bytes with the parameter dtype's size;
RSWAF layers with G = num_grids, S = 0. This was written as "the limitations paper's counting", but it is NOT the
paper's Eq. (1): an audit (issue 14) found that its backward term lacks the paper's -O*B, it has no parameter
term, Eq. (2) is absent and the RSWAF variant is our addition. It is kept, under this label, as a
per-layer order of magnitude beside the measurements (memory.md's estimate columns).

The paper's own count (`paper_estimate`: Eq. (1) term by term, as printed, with Section 3.1's parameter counts
beside it; `paper_eq2`: its simplified form; `paper_model_estimate`: Eq. (1) summed over a model's B-spline
layers) is the memory a KAN layer needs BEYOND an FC layer of the same I -> O, in elements, not a whole
training step: it is drawn beside the measurements in docs/results.md's Figure 4, not subtracted from them.
"""
from __future__ import annotations

import numbers
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from kanvision.device import synchronize
from kanvision.kinds.workspace import release_scratch, scratch_bytes

__all__ = ["kan_layer_estimate", "analytic_estimate", "paper_estimate", "paper_eq2", "paper_model_estimate",
           "EQ1_TERMS", "measure_step", "memory_sweep",
           "IMPLS", "impl_layers", "set_kan_impl", "add_mlp_ratios", "memory_table"]

IMPLS = ("fast", "reference")


PAPER = ('Avik Pal and Dipankar Das, "Understanding the Limitations of B-Spline KANs: Convergence Dynamics and '
         'Computational Efficiency", NeurIPS 2024 Workshop on Scientific Methods for Understanding Deep Learning')


EQ1_TERMS = ("forward_pass", "reverse_pass", "parameter_count")


def _check_counts(fn: str, **counts) -> None:
    for name, v in counts.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{fn}: {name} must be a positive integer, got {v!r}")


def paper_estimate(I: int, O: int, B: int, G: int, S: int, *,
                   element_size: int | None = None) -> dict[str, int | str]:
    """Eq. (1) of Pal & Das (`PAPER`, Section 3.2) as printed: a B-spline KAN layer's memory beyond an FC layer's.

    I inputs, O outputs, B rows (batch x tokens), grid size G, spline order S; the paper counts efficient-kan's
    layer (its footnote 2). Unit: elements (floats); `element_size` (bytes per element, e.g. 4 for float32)
    adds "element_size" and "total_bytes". The three terms, named after the paper's underbraces:

    - "forward_pass", I(1+G+S)B: the KAN forward allocates its input I*B, its output O*B and the basis
      I*(G+S)*B, against the FC layer's single O*B output.
    - "reverse_pass", I(G+S-1)B - OB: De Boor's recursion differentiates order S through the order S-1 bases,
      one extra I*(G+S-1)*B tensor, less the O*B the FC layer caches for its own backward. Negative when
      O > I(G+S-1), as printed.
    - "parameter_count", IO(2+G+S) - I(O+1): the KAN layer's parameters (Section 3.1) less the FC layer's,
      which Eq. (1) writes I*(O+1), while Section 3.1 counts an FC layer O*(I+1) (bias per output). The two
      differ by I - O (zero for a square layer). Eq. (1) is implemented as printed, since it is what the paper
      plots (its Figure 1); Section 3.1's counts are returned beside it: "kan_params_sec31" = IO(2+G+S) (base
      weight, spline weight and spline scaler, the shape of kanvision's BSplineKAN), "fc_params_sec31" =
      O(I+1), and "parameter_count_sec31" = their difference.

    "total" is the sum of the three terms; `paper_eq2` is the paper's simplified form of that sum.
    """
    _check_counts("paper_estimate", I=I, O=O, B=B, G=G, S=S)
    terms = {"forward_pass": I * (1 + G + S) * B,
             "reverse_pass": I * (G + S - 1) * B - O * B,
             "parameter_count": I * O * (2 + G + S) - I * (O + 1)}
    out: dict[str, int | str] = dict(terms, total=sum(terms.values()), unit="elements (floats)",
                                     kan_params_sec31=I * O * (2 + G + S), fc_params_sec31=O * (I + 1),
                                     parameter_count_sec31=I * O * (2 + G + S) - O * (I + 1))
    if element_size is not None:
        _check_counts("paper_estimate", element_size=element_size)
        out.update(element_size=element_size, total_bytes=out["total"] * element_size)
    return out


def paper_eq2(I: int, O: int, B: int, G: int, S: int) -> int:
    """Eq. (2) of Pal & Das, the simplified form of Eq. (1): I[2(G+S)B + (G+S+1)O - 1] - OB elements."""
    _check_counts("paper_eq2", I=I, O=O, B=B, G=G, S=S)
    return I * (2 * (G + S) * B + (G + S + 1) * O - 1) - O * B


def paper_model_estimate(model: nn.Module, example: torch.Tensor, batch_size: int) -> dict:
    """Eq. (1) summed over the model's B-spline KAN layers at `batch_size` images, each layer with its own I, O,
    G, S and B = batch_size x its rows per image (found by a forward hook on `example[:1]`).

    Returns the summed terms, "total" and Section 3.1's counts (elements, as `paper_estimate`), "total_bytes"
    (at the parameter dtype's size) and "layers": one (name, I, O, rows per image, G, S) per layer the forward
    reaches (others are left out). RSWAF layers are not counted: Eq. (1) is the B-spline count, and the
    substitution G = num_grids, S = 0 is our own (`kan_layer_estimate`), not the paper's.
    """
    _check_counts("paper_model_estimate", batch_size=batch_size)
    layers = [(n, m) for n, m in _kan_named(model) if _is_spline(m)]
    rows = _rows_per_image(model, example, layers)
    elem = next(model.parameters()).element_size()
    out = dict.fromkeys(EQ1_TERMS + ("total", "kan_params_sec31", "fc_params_sec31", "parameter_count_sec31"), 0)
    shapes = []
    for name, m in layers:
        if name not in rows:  # not reached by the forward: no activations, and no B to put in Eq. (1)
            continue
        est = paper_estimate(m.in_features, m.out_features, rows[name] * batch_size, m.grid_size, m.spline_order)
        for k in out:
            out[k] += est[k]
        shapes.append((name, m.in_features, m.out_features, rows[name], m.grid_size, m.spline_order))
    return dict(out, unit="elements (floats)", element_size=elem, total_bytes=out["total"] * elem, layers=shapes)


def _rows_per_image(model: nn.Module, example: torch.Tensor, layers) -> dict[str, int]:
    """Rows each named layer sees for one image (tokens, pixels), from a no-grad forward of `example[:1]`."""
    rows, hooks = {}, []
    for name, m in layers:
        hooks.append(m.register_forward_hook(
            lambda mod, inp, out, name=name: rows.__setitem__(name, inp[0].numel() // inp[0].shape[-1])))
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in hooks:
            h.remove()
    return rows


def kan_layer_estimate(in_features: int, rows: int, grid_size: int, spline_order: int) -> dict[str, int]:
    """Our per-layer count, NOT the paper's Eq. (1) (module docstring): forward I(1+G+S)B, backward I(G+S-1)B."""
    I, B, G, S = in_features, rows, grid_size, spline_order
    return {"forward": I * (1 + G + S) * B, "backward": I * (G + S - 1) * B}


def _kan_named(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from kanvision.models import kan_modules
    kan = {id(m) for m in kan_modules(model)}
    return [(n, m) for n, m in model.named_modules() if id(m) in kan]


def _is_spline(layer: nn.Module) -> bool:
    """A layer with a spline grid (grid_size G, spline_order S): what Eq. (1) and our estimate count."""
    return hasattr(layer, "grid_size") and hasattr(layer, "spline_order")


def _kan_layers(model: nn.Module):
    """(name, layer, G, S) of the KAN layers our analytic estimate covers: spline layers (G, S), and layers with
    num_grids basis functions per input (G = num_grids, S = 0: our own substitution)."""
    for name, m in _kan_named(model):
        if _is_spline(m):
            yield name, m, m.grid_size, m.spline_order
        elif hasattr(m, "num_grids"):
            yield name, m, m.num_grids, 0


def impl_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every layer with a storage mode: an `impl` attribute that is "fast" or "reference"."""
    return [(name, m) for name, m in model.named_modules() if getattr(m, "impl", None) in IMPLS]


def set_kan_impl(model: nn.Module, impl: str) -> int:
    """Set `impl` on every layer `impl_layers` finds; returns how many. ValueError for an unknown mode, or for
    "fast" on a layer that says it cannot run it (`fast_supported` False: e.g. RSWAF with trainable centres or width,
    which its fast kernel treats as constants, so their gradients would silently be missing); nothing is changed
    then."""
    if impl not in IMPLS:
        raise ValueError(f"set_kan_impl: impl must be one of {IMPLS}, got {impl!r}")
    layers = impl_layers(model)
    if impl == "fast":
        trainable = [name for name, m in layers if not getattr(m, "fast_supported", True)]
        if trainable:
            raise ValueError(f"set_kan_impl: impl 'fast' needs fixed basis centres and width, but {trainable} train "
                             "them; only impl 'reference' supports that")
    for _, m in layers:
        m.impl = impl
    return len(layers)


def analytic_estimate(model: nn.Module, example: torch.Tensor, batch_size: int) -> dict[str, float]:
    """Sum of the per-layer estimate over every KAN layer (bytes), rows per image found by a forward hook."""
    layers = list(_kan_layers(model))
    rows = _rows_per_image(model, example, [(name, m) for name, m, _, _ in layers])
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


CUDA_METHOD = ("cuda allocator peak: torch.cuda.max_memory_allocated over forward + backward + SGD step, minus "
               "the memory allocated before the step; peak stats reset before each measured step, after one "
               "warm-up step")
CPU_METHOD = ("cpu saved-tensor accounting: params + grads + tensors saved for backward + the fast KAN kernels' "
              "scratch buffers (lower bound; not an allocator peak)")


def measure_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 loss_fn: Callable = F.cross_entropy) -> dict[str, float | str]:
    """Bytes of one SGD training step (see the module docstring for the method per device)."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: measure without changing the weights
    if x.is_cuda:
        # Statistics of x's device: the current device is another one for cuda:N unless it was set.
        device = x.device
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()  # warm-up: one-time allocations (compilation, cuBLAS) out of the peak
        opt.zero_grad(set_to_none=True)
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        loss_fn(model(x), y).backward()
        opt.step()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"bytes": peak - base, "allocator_peak_bytes": peak, "allocated_before_bytes": base,
                "method": CUDA_METHOD}
    opt.zero_grad(set_to_none=True)
    release_scratch()  # count this model's own scratch, not a larger earlier one's (or another mode's)
    try:
        saved, loss = saved_tensor_bytes(model, lambda: loss_fn(model(x), y))
        loss.backward()
        opt.step()
        scratch = scratch_bytes()
    finally:
        release_scratch()  # and leave none behind for the next measurement
    pbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"bytes": 2 * pbytes + saved + scratch, "activation_bytes": saved, "scratch_bytes": scratch,
            "method": CPU_METHOD}


def _impl_of(model: nn.Module) -> str:
    """The storage mode of the model's KAN layers: "fast", "reference", "mixed", or "n/a" (none)."""
    modes = {m.impl for _, m in impl_layers(model)}
    return "n/a" if not modes else modes.pop() if len(modes) == 1 else "mixed"


def memory_sweep(build: Callable[[], nn.Module], batch_sizes, input_shape, num_classes: int,
                 device="cpu", cap_bytes: float | None = None,
                 progress: Callable[[int], None] | None = None, impl: str | None = None) -> list[dict]:
    """One row per batch size; OOM (real, or above `cap_bytes` on CPU) is a row with bytes=None.

    `impl` ("fast" / "reference"): set on every KAN layer of each built model (`set_kan_impl`); None measures
    the model as built. Each row records the mode measured under "impl" ("n/a" for a model without KAN layers).
    `progress(batch_size)` is called after each batch size's row, skipped ones included.
    """
    rows, over = [], False
    for bs in sorted(batch_sizes):
        row = {"batch_size": bs}
        if over:  # a smaller batch already exceeded the cap: larger ones would too
            rows.append(dict(row, impl=rows[-1]["impl"], bytes=None, oom="skipped: smaller batch over the cap"))
            if progress is not None:
                progress(bs)
            continue
        model = build().to(device)
        if impl is not None:
            set_kan_impl(model, impl)
        row["impl"] = _impl_of(model)
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
        model.zero_grad(set_to_none=True)  # the step's gradients are not the next measurement's baseline
        del model, x, y
        release_scratch()
        if torch.device(device).type == "cuda":
            with torch.cuda.device(device):  # empty_cache acts on the current device
                torch.cuda.empty_cache()
        if progress is not None:
            progress(bs)
    return rows


def add_mlp_ratios(rows: list[dict]) -> str | None:
    """Set each row's "ratio_to_mlp": its bytes / the bytes of the MLP row of the same batch size (None where
    either is missing). The MLP is the first model whose label ends in ":none"; its label is returned (None
    when there is none, and then every ratio is None)."""
    mlp = next((r["model"] for r in rows if r["model"].endswith(":none")), None)
    mlp_bytes = {r["batch_size"]: r["bytes"] for r in rows if r["model"] == mlp}
    for r in rows:
        ref = mlp_bytes.get(r["batch_size"])
        r["ratio_to_mlp"] = r["bytes"] / ref if r["bytes"] is not None and ref else None
    return mlp


def memory_table(rows: list[dict], mlp: str | None) -> list[str]:
    """memory.md lines: the method(s), the units, what impl and "x MLP" mean, then one row per (model, impl,
    batch size); rows as memory_sweep returns them plus "model" and add_mlp_ratios' "ratio_to_mlp"."""
    mb = lambda b: "-" if b is None else f"{b / 2**20:.2f}"  # noqa: E731
    methods = list(dict.fromkeys(r["method"] for r in rows if "method" in r)) or ["see kanvision/analysis/memory.py"]
    lines = [f"method: {'; '.join(methods)}", "units: MiB (2^20 bytes)",
             "impl: fast = our kernels (basis recomputed in backward, reused scratch buffers); reference = plain "
             "autograd storing the expanded basis (efficient-kan style); n/a = no KAN layers",
             (f"x MLP: measured / measured of {mlp} at the same batch size" if mlp else
              "x MLP: no MLP model (label ending in ':none') among those measured"),
             "estimates: kanvision.analysis.memory.kan_layer_estimate, our per-layer count (not the paper's Eq. (1))",
             "",
             "| model | impl | batch | measured | x MLP | saved for backward | scratch | KAN fwd est. (ours) | "
             "KAN bwd est. (ours) | KAN params |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        measured = "OOM" if r["bytes"] is None else mb(r["bytes"])
        ratio = "-" if r.get("ratio_to_mlp") is None else f"{r['ratio_to_mlp']:.2f}"
        lines.append(f"| {r['model']} | {r['impl']} | {r['batch_size']} | {measured} | {ratio} | "
                     f"{mb(r.get('activation_bytes'))} | {mb(r.get('scratch_bytes'))} | "
                     f"{mb(r.get('estimate_forward_bytes'))} | {mb(r.get('estimate_backward_bytes'))} | "
                     f"{mb(r.get('estimate_kan_param_bytes'))} |")
    return lines
