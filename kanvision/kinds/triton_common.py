"""What the fused Triton kernels of the KAN kinds share, whatever their basis (bspline/triton.py, rswaf/triton.py):
the interpreter flag, the tl.dot wrapper, the autotune tile tables and the launch helpers.

Both kinds tile the same way (a feature tile evaluated in registers and consumed by tl.dot at once; the module
docstring of bspline/triton.py describes the three kernels), so they share the tile sizes and the way a kernel is
launched: autotuned on a GPU, at fixed blocks under the interpreter (TRITON_INTERPRET=1, the CPU tests).
"""
from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

__all__ = ["FORWARD_SIZES", "INPUT_GRAD_SIZES", "INTERPRETED", "INTERPRETER_BLOCKS", "WEIGHT_GRAD_SIZES", "autotuned",
           "autotuned_kernels", "configs", "dot", "dot_options", "launch", "row_splits"]


@triton.jit
def dot(a, b, acc, PREC: tl.constexpr, DOT_F32: tl.constexpr):
    # Triton's interpreter (triton/runtime/interpreter.py, create_dot) multiplies bf16 operands as their uint16
    # bit patterns; there the bf16 values go in as fp32, whose products of bf16 numbers are exact.
    if DOT_F32:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=PREC)
    else:
        out = tl.dot(a, b, acc, input_precision=PREC)
    return out


# Under TRITON_INTERPRET=1 (set before triton's import) triton.jit returns an interpreted function, not a JITFunction.
INTERPRETED = not isinstance(dot, JITFunction)


def autotuned(kernel, configs: list[dict], key: list[str]):
    """kernel under triton.autotune over `configs` ({constexpr: value, "num_warps": w, "num_stages": s}) on a GPU;
    the plain kernel under the interpreter (autotune times configs with CUDA events)."""
    if INTERPRETED:
        return kernel
    return triton.autotune([triton.Config({k: v for k, v in c.items() if k.isupper()}, num_warps=c["num_warps"],
                                          num_stages=c["num_stages"]) for c in configs], key=key)(kernel)


# Autotune candidates (tile rows, tile columns, K block, warps, stages), not timed on a GPU yet: chosen so that,
# compiled for sm_90 here (triton.compile to a cubin, registers read with cuobjdump), none spills more than 192 bytes
# per thread with bf16 operands; bigger input-gradient tiles spilled kilobytes (it holds x, dx and G_s at once).
FORWARD_SIZES = [(128, 128, 32, 8, 3), (128, 128, 32, 8, 4), (128, 64, 32, 8, 3), (64, 128, 32, 4, 3),
                 (64, 64, 32, 4, 4)]
INPUT_GRAD_SIZES = [(128, 64, 32, 8, 3), (64, 128, 32, 8, 3), (64, 64, 32, 8, 3), (64, 32, 64, 4, 3),
                    (32, 64, 64, 4, 3)]
WEIGHT_GRAD_SIZES = [(128, 128, 32, 8, 3), (128, 64, 32, 4, 3), (64, 128, 32, 4, 3), (64, 64, 64, 4, 2),
                     (64, 64, 32, 4, 4)]


def configs(names: tuple[str, str, str], sizes) -> list[dict]:
    return [{names[0]: m, names[1]: n, names[2]: k, "num_warps": w, "num_stages": s} for m, n, k, w, s in sizes]


def autotuned_kernels(forward, input_grad, weight_grad) -> tuple:
    """A kind's three kernels (forward, input gradient, weight gradient) under autotune over the shared tile tables,
    keyed on the layer's widths. Their block axes: forward (rows, outputs, inputs), input gradient (rows, inputs,
    outputs), weight gradient (outputs, inputs, rows)."""
    return (autotuned(forward, configs(("BLOCK_M", "BLOCK_O", "BLOCK_I"), FORWARD_SIZES), ["n_in", "n_out"]),
            autotuned(input_grad, configs(("BLOCK_M", "BLOCK_I", "BLOCK_O"), INPUT_GRAD_SIZES), ["n_in", "n_out"]),
            autotuned(weight_grad, configs(("BLOCK_O", "BLOCK_I", "BLOCK_N"), WEIGHT_GRAD_SIZES), ["n_in", "n_out"]))


INTERPRETER_BLOCKS = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_O": 32, "BLOCK_I": 32}  # fewer programs: faster


def launch(kernel, grid, args: tuple, consts: dict, blocks: dict | None):
    """Run kernel[grid](*args, **consts): with `blocks` (or under the interpreter) at those block sizes, else with
    the autotuner's choice. grid(meta) -> launch grid."""
    if blocks is None and INTERPRETED:
        blocks = INTERPRETER_BLOCKS
    if blocks is not None:
        meta = {k: v for k, v in blocks.items() if k in kernel.arg_names}
        if isinstance(kernel, triton.runtime.Autotuner):  # a fixed size bypasses the autotuner
            kernel = kernel.fn
        return kernel[grid(meta)](*args, **consts, **meta)
    return kernel[grid](*args, **consts)


def dot_options(dtype: torch.dtype) -> dict:
    """PREC (tl.dot input precision) and DOT_F32 for operands of `dtype`."""
    tf32 = dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 and not INTERPRETED
    return {"PREC": "tf32" if tf32 else "ieee", "DOT_F32": INTERPRETED and dtype == torch.bfloat16}


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def row_splits(device: torch.device, programs: int, n_rows: int, splits: int | None) -> int:
    """How many row ranges the weight gradient is split into: enough programs for two waves of the GPU's
    multiprocessors, ranges of at least 512 rows; 1 under the interpreter unless asked."""
    if splits is not None:
        return max(1, min(int(splits), n_rows))
    if device.type != "cuda":
        return 1
    wanted = math.ceil(2 * _sm_count(device.index or 0) / max(programs, 1))
    return max(1, min(wanted, math.ceil(n_rows / 512)))
