"""Hessian of the training loss w.r.t. the parameters: HVPs, top eigenvalues, SLQ density, Hutchinson trace.

The Hessian is never formed: every quantity is built from Hessian-vector products (double backward
through the loss averaged over a fixed list of batches). The model is put in eval mode for the whole
analysis, so BatchNorm uses its running statistics and Dropout / DropPath are off: the loss is then a
deterministic function of the parameters, which HVP-based methods need (the same choice as PyHessian).

- top eigenvalues: ARPACK Lanczos (`scipy.sparse.linalg.eigsh`) on a float64 LinearOperator of HVPs;
  both ends of the spectrum are requested separately (`which="LA"` and `which="SA"`).
- density: stochastic Lanczos quadrature (Ghorbani, Krishnan & Xiao 2019, "An Investigation into Neural
  Net Optimization via Hessian Eigenvalue Density"): m Lanczos steps from each of several Gaussian probes;
  Ritz values theta_j with weights tau_j = (first component of the j-th Ritz vector)^2, averaged over
  probes and broadened by a Gaussian kernel. The weights of one probe sum to 1, so the density integrates
  to 1 (the grid is padded by 6 sigma each side so no mass is cut off).
- trace: Hutchinson's estimator E[v^T H v] with Rademacher probes v.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kanvision.kinds import kind_of_layer
from kanvision.models import kan_modules

__all__ = ["HessianOperator", "top_eigenvalues", "extreme_eigenpairs", "lanczos", "lanczos_block", "slq", "density_from_slq",
           "hutchinson_trace", "large_eigenvalue_counts", "relative_counts", "arpack_hvp_bounds"]


class HessianOperator:
    """v -> H v for the mean loss of `model` over `batches` (a list of (x, y) pairs, kept in memory)."""

    def __init__(self, model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
                 device: torch.device | str | None = None):
        if not batches:
            raise ValueError("HessianOperator: need at least one (inputs, targets) batch")
        self.model = model.eval()
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.batches = [(x.to(self.device), y.to(self.device)) for x, y in batches]
        self.loss_fn = loss_fn
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("HessianOperator: the model has no trainable parameters")
        self.size = sum(p.numel() for p in self.params)
        self.dtype = self.params[0].dtype
        self.num_samples = sum(len(y) for _, y in self.batches)
        self.calls = 0
        # Called with no arguments after every HVP (progress reporting); must not touch the tensors.
        self.after_matvec: Callable[[], None] | None = None

    def loss(self) -> float:
        with torch.no_grad():
            total = sum(float(self.loss_fn(self.model(x), y)) * len(y) for x, y in self.batches)
        return total / self.num_samples

    def _split(self, v: torch.Tensor) -> list[torch.Tensor]:
        out, start = [], 0
        for p in self.params:
            out.append(v[start:start + p.numel()].view_as(p))
            start += p.numel()
        return out

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat vector v (any dtype; computed in the model's dtype, returned flat in it)."""
        return self.matmat(v.reshape(-1, 1))[:, 0].to(self.dtype)

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """H V for the columns of V (size, p), returned (size, p) in float64 on the operator's device.

        Each batch's gradient graph is built once and reused for all p vectors (retain_graph), so p HVPs cost
        one forward and first backward per batch plus p second backwards instead of p of each: measured 1.5x
        fewer seconds per HVP for 10 SLQ probes on the MLP Mixer (CPU, 128 images). Memory: one batch's graph
        at a time.
        Counts p calls; `after_matvec` is called once per vector.
        """
        p = V.size(1)
        self.calls += p
        cols = [self._split(V[:, i].to(self.device, self.dtype)) for i in range(p)]
        acc = [[torch.zeros_like(q) for q in self.params] for _ in range(p)]
        with self._hvp_mode():
            for x, y in self.batches:
                # Weighted by batch size so unequal batches give the mean loss over all samples.
                loss = self.loss_fn(self.model(x), y) * (len(y) / self.num_samples)
                grads = torch.autograd.grad(loss, self.params, create_graph=True)
                for i, vs in enumerate(cols):
                    dot = sum((g * u).sum() for g, u in zip(grads, vs))
                    hv = torch.autograd.grad(dot, self.params, retain_graph=i < p - 1, allow_unused=True)
                    for a, h in zip(acc[i], hv):
                        if h is not None:
                            a.add_(h.detach())
                del grads, loss
        out = torch.stack([torch.cat([a.reshape(-1) for a in col]) for col in acc], 1).double()
        if self.after_matvec is not None:
            for _ in range(p):
                self.after_matvec()
        return out

    @contextmanager
    def _hvp_mode(self):
        """Double-backward-friendly paths, same function (tested equal): each KAN layer on its kind's `hvp_impl`
        (B-spline: the local polynomial form, whose double backward is ~3x cheaper than the recursion's; RSWAF: its
        autograd reference), depthwise convs on depthwise_conv2d (PyTorch's double backward loops over the groups),
        attention on the math kernel (fused kernels have no double backward)."""
        from torch.nn.attention import SDPBackend, sdpa_kernel

        from kanvision.analysis.depthwise import depthwise_hvp_path

        saved = [(m, m.impl, kind.hvp_impl) for m in kan_modules(self.model)
                 if (kind := kind_of_layer(m)).hvp_impl is not None]
        for m, _, hvp_impl in saved:
            m.impl = hvp_impl
        try:
            with sdpa_kernel(SDPBackend.MATH), depthwise_hvp_path(self.model):
                yield
        finally:
            for m, impl, _ in saved:
                m.impl = impl

    def linear_operator(self):
        from scipy.sparse.linalg import LinearOperator

        def mv(v):
            return self.matvec(torch.from_numpy(np.asarray(v, dtype=np.float64).reshape(-1))).double().cpu().numpy()

        return LinearOperator((self.size, self.size), matvec=mv, dtype=np.float64)


def _arpack(op: HessianOperator, k: int, which: str, tol: float, maxiter: int | None, seed: int,
            vectors: bool) -> tuple[np.ndarray, np.ndarray | None, bool, int]:
    """(values, vectors or None, converged, k) from eigsh; on ArpackNoConvergence the values (and vectors) that
    converged within maxiter, with converged False."""
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    if which not in ("LA", "SA", "LM"):
        raise ValueError(f"which must be LA, SA or LM, got {which!r}")
    k = min(k, op.size - 1)
    v0 = np.random.default_rng(seed).standard_normal(op.size)
    try:
        out = eigsh(op.linear_operator(), k=k, which=which, tol=tol, maxiter=maxiter, v0=v0,
                    return_eigenvectors=vectors)
    except ArpackNoConvergence as e:
        # Clustered ends (often the negative end at a minimum) can take ARPACK thousands of HVPs: keep what
        # converged within maxiter rather than run unbounded.
        return (np.asarray(e.eigenvalues), np.asarray(e.eigenvectors) if vectors else None, False, k)
    vals, vecs = out if vectors else (out, None)
    return vals, vecs, True, k


def top_eigenvalues(op: HessianOperator, k: int = 5, which: str = "LA", tol: float = 1e-6,
                    maxiter: int | None = None, seed: int = 0) -> np.ndarray:
    """k extreme eigenvalues by ARPACK: which="LA" largest algebraic, "SA" smallest, "LM" largest |.|.

    Unconverged values are left out (callers see fewer than k); `extreme_eigenpairs` reports them instead."""
    vals = _arpack(op, k, which, tol, maxiter, seed, vectors=False)[0]
    return np.sort(vals)[::-1] if which != "SA" else np.sort(vals)


def extreme_eigenpairs(op: HessianOperator, k: int = 5, which: str = "LA", tol: float = 1e-6,
                       maxiter: int | None = None, seed: int = 0) -> dict:
    """k extreme eigenvalues with their residuals ||H v - lambda v|| / |lambda| and ARPACK's verdict.

    Unlike `top_eigenvalues`, nothing is dropped quietly: on ArpackNoConvergence the values that did converge
    are kept and `converged` is False. Each residual costs one more HVP (computed from the returned vector, so
    it checks the pair itself, not ARPACK's own estimate); a residual near `tol` or below means the pair is
    an eigenpair to that accuracy.
    """
    start = op.calls
    vals, vecs, converged, k = _arpack(op, k, which, tol, maxiter, seed, vectors=True)
    arpack_hvps = op.calls - start
    order = np.argsort(vals) if which == "SA" else np.argsort(vals)[::-1]
    vals, vecs = vals[order], vecs[:, order]
    residuals = []
    for lam, v in zip(vals, vecs.T):
        hv = op.matvec(torch.from_numpy(np.ascontiguousarray(v))).double().cpu().numpy()
        residuals.append(float(np.linalg.norm(hv - lam * v) / max(abs(lam), 1e-30)))
    return {"values": vals.tolist(), "residuals": residuals, "converged": converged, "requested": k,
            "tol": tol, "arpack_hvps": arpack_hvps}


def relative_counts(top: Sequence[float], size: int, runs: list[dict] | None, fractions: Iterable[float],
                    k_requested: int | None = None) -> list[dict]:
    """The limitations paper's statistic: how many eigenvalues exceed a fraction r of the largest one.

    For each r: `exact` counts the computed top eigenvalues above r * lambda_max (a lower bound; `saturated`
    when all k_requested of them are above, so more may be); `slq` is size x the SLQ spectral mass above
    r * lambda_max (its estimate, including the part beyond the top-k); both also per parameter.
    """
    top = list(top)
    if not top:
        return []
    lam = max(top)
    k = len(top) if k_requested is None else k_requested
    out = []
    for r in fractions:
        cut = r * lam
        exact = int(sum(v > cut for v in top))
        row = {"fraction": float(r), "threshold": float(cut), "exact_topk": exact, "saturated": exact >= k,
               "exact_per_param": exact / size}
        if runs:
            nodes = np.concatenate([q["nodes"] for q in runs])
            weights = np.concatenate([q["weights"] for q in runs]) / len(runs)
            est = float(size * weights[nodes > cut].sum())
            row |= {"slq": est, "slq_per_param": est / size}
        out.append(row)
    return out


def arpack_hvp_bounds(size: int, k: int, maxiter: int | None) -> tuple[int, int | None]:
    """(fewest, most) HVPs one `top_eigenvalues` call can take; most is None without maxiter.

    scipy's eigsh uses ncv = min(n, max(2k+1, 20)) Lanczos vectors: ARPACK first builds all ncv of them,
    then each of at most maxiter restarts adds at most ncv - k.
    """
    k = min(k, size - 1)
    ncv = min(size, max(2 * k + 1, 20))
    return ncv, (ncv + maxiter * (ncv - k) if maxiter is not None else None)


def lanczos(matvec: Callable[[np.ndarray], np.ndarray], v0: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Tridiagonal (alpha, beta) of `steps` Lanczos iterations from v0, full reorthogonalisation (float64)."""
    n = v0.size
    steps = min(steps, n)
    V = np.zeros((steps, n))
    alpha, beta = np.zeros(steps), np.zeros(max(steps - 1, 0))
    v = v0 / np.linalg.norm(v0)
    for j in range(steps):
        V[j] = v
        w = matvec(v)
        alpha[j] = w @ v
        # Twice-iterated Gram-Schmidt against all previous vectors: float32 HVPs lose orthogonality fast.
        for _ in range(2):
            w = w - V[:j + 1].T @ (V[:j + 1] @ w)
        if j == steps - 1:
            break
        b = np.linalg.norm(w)
        if b < 1e-10 * max(1.0, abs(alpha[j])):  # invariant subspace found: the spectrum is exhausted
            return alpha[:j + 1], beta[:j]
        beta[j] = b
        v = w / b
    return alpha, beta


def lanczos_block(matmat: Callable[[torch.Tensor], torch.Tensor], V0: torch.Tensor,
                  steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """`lanczos` run for each column of V0 (size, p) in lockstep: one matmat of the still-active columns per step.

    Each column is its own Lanczos recurrence with full (twice-iterated) reorthogonalisation against its own
    vectors, exactly as `lanczos`, so the tridiagonals equal those of p separate runs from the same starts.
    Float64 on V0's device (the basis is steps x size x p: 1.7 GB per probe for 2.7M parameters x 80 steps).
    """
    n, p = V0.shape
    steps = min(steps, n)
    V = torch.zeros(p, steps, n, dtype=torch.float64, device=V0.device)
    alpha = [[] for _ in range(p)]
    beta = [[] for _ in range(p)]
    v = (V0 / V0.norm(dim=0)).t().contiguous()  # (p, n)
    active = list(range(p))
    for j in range(steps):
        for i in active:
            V[i, j] = v[i]
        W = matmat(v[active].t().contiguous()).t().to(torch.float64)  # (len(active), n)
        still = []
        for row, i in enumerate(active):
            w = W[row]
            a = float(w @ v[i])
            alpha[i].append(a)
            basis = V[i, :j + 1]
            for _ in range(2):
                w = w - basis.t() @ (basis @ w)
            if j == steps - 1:
                continue
            b = float(w.norm())
            if b < 1e-10 * max(1.0, abs(a)):  # invariant subspace: this probe's spectrum is exhausted
                continue
            beta[i].append(b)
            v[i] = w / b
            still.append(i)
        active = still
        if not active:
            break
    return [(np.array(alpha[i]), np.array(beta[i][:len(alpha[i]) - 1])) for i in range(p)]


def slq(op: HessianOperator, steps: int = 80, probes: int = 3, seed: int = 0,
        progress: Callable[[], None] | None = None, block: int | None = None) -> list[dict[str, list[float]]]:
    """Ritz values and quadrature weights per probe: [{"nodes": [...], "weights": [...]}, ...].

    block: probes run in lockstep (`lanczos_block` over `op.matmat`, which reuses each batch's gradient graph
    for all of them); default all probes at once, 1 = one after another. The probes are the same seeded
    Gaussian vectors either way, so the result does not depend on `block` beyond float rounding.
    """
    from scipy.linalg import eigh_tridiagonal

    rng = np.random.default_rng(seed)
    starts = [rng.standard_normal(op.size) for _ in range(probes)]
    block = probes if block is None else max(1, min(block, probes))

    def mm(V):
        out = op.matmat(V)
        if progress is not None:
            for _ in range(V.size(1)):
                progress()
        return out

    runs = []
    for first in range(0, probes, block):
        V0 = torch.from_numpy(np.stack(starts[first:first + block], 1)).to(op.device)
        for alpha, beta in lanczos_block(mm, V0, steps):
            nodes, vecs = eigh_tridiagonal(alpha, beta) if len(alpha) > 1 else (alpha, np.ones((1, 1)))
            runs.append({"nodes": nodes.tolist(), "weights": (vecs[0] ** 2).tolist()})
    return runs


def density_from_slq(runs: list[dict], num_points: int = 1000, sigma: float | None = None,
                     sigma_rel: float = 0.01) -> dict[str, list[float] | float]:
    """Gaussian-broadened spectral density on a grid; sigma defaults to sigma_rel x the spectral width."""
    nodes = np.concatenate([r["nodes"] for r in runs])
    weights = np.concatenate([r["weights"] for r in runs]) / len(runs)
    lo, hi = float(nodes.min()), float(nodes.max())
    if sigma is None:
        sigma = sigma_rel * max(hi - lo, 1e-12)
    grid = np.linspace(lo - 6 * sigma, hi + 6 * sigma, num_points)
    dens = (weights[None, :] * np.exp(-0.5 * ((grid[:, None] - nodes[None, :]) / sigma) ** 2)).sum(1)
    dens /= sigma * math.sqrt(2 * math.pi)
    return {"grid": grid.tolist(), "density": dens.tolist(), "sigma": float(sigma),
            "integral": float(np.trapezoid(dens, grid))}


def hutchinson_trace(op: HessianOperator, probes: int = 100, seed: int = 0,
                     progress: Callable[[], None] | None = None) -> dict[str, float]:
    """Trace estimate with Rademacher probes; returns mean, standard error and the probe count."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(probes):
        v = (torch.randint(0, 2, (op.size,), generator=g) * 2 - 1).double()
        samples.append(float(v @ op.matvec(v).double().cpu()))
        if progress is not None:
            progress()
    s = np.asarray(samples)
    stderr = float(s.std(ddof=1) / math.sqrt(len(s))) if len(s) > 1 else float("nan")
    return {"trace": float(s.mean()), "stderr": stderr, "probes": probes}


def large_eigenvalue_counts(threshold: float, size: int, runs: list[dict] | None = None,
                            top: Iterable[float] = (), bottom: Iterable[float] = ()) -> dict[str, float]:
    """How many eigenvalues exceed +threshold / lie below -threshold.

    `*_topk`: exact counts among the computed extreme eigenvalues (a lower bound, saturated when equal
    to k). `*_slq`: the SLQ estimate size x (spectral mass beyond the threshold), unbiased in expectation.
    """
    out = {"threshold": float(threshold),
           "positive_topk": int(sum(v > threshold for v in top)),
           "negative_topk": int(sum(v < -threshold for v in bottom))}
    if runs:
        nodes = np.concatenate([r["nodes"] for r in runs])
        weights = np.concatenate([r["weights"] for r in runs]) / len(runs)
        out["positive_slq"] = float(size * weights[nodes > threshold].sum())
        out["negative_slq"] = float(size * weights[nodes < -threshold].sum())
    return out
