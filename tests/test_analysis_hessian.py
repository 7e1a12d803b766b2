"""HVP-based Hessian analysis vs the exact Hessian of a tiny float64 MLP (~50 parameters)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kanvision.analysis.hessian import (HessianOperator, density_from_slq, hutchinson_trace, lanczos,
                                        large_eigenvalue_counts, slq, top_eigenvalues)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()  # 51 parameters
    batches = [(torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))) for _ in range(2)]
    op = HessianOperator(model, batches)
    params = [p.detach().clone() for p in model.parameters()]
    shapes = [p.shape for p in params]

    def loss_of(flat):
        chunks, start = [], 0
        for s in shapes:
            n = int(np.prod(s))
            chunks.append(flat[start:start + n].view(s))
            start += n
        total = 0.0
        for x, y in batches:
            h = torch.tanh(F.linear(x, chunks[0], chunks[1]))
            total = total + F.cross_entropy(F.linear(h, chunks[2], chunks[3]), y) * len(y) / 32
        return total

    flat = torch.cat([p.reshape(-1) for p in params])
    H = torch.autograd.functional.hessian(loss_of, flat)
    return op, H, torch.linalg.eigvalsh(H).numpy()


def test_hvp_matches_exact(setup):
    op, H, _ = setup
    v = torch.randn(op.size, dtype=torch.float64)
    assert torch.allclose(op.matvec(v), H @ v, rtol=1e-9, atol=1e-12)


def test_top_and_bottom_eigenvalues(setup):
    op, _, exact = setup
    top = top_eigenvalues(op, k=3, which="LA", tol=1e-10)
    bottom = top_eigenvalues(op, k=3, which="SA", tol=1e-10)
    np.testing.assert_allclose(top, exact[::-1][:3], rtol=1e-4)
    np.testing.assert_allclose(bottom, exact[:3], rtol=1e-4, atol=1e-8)


def test_slq_density_and_ritz_extremes(setup):
    op, _, exact = setup
    runs = slq(op, steps=op.size, probes=2, seed=1)
    for r in runs:
        assert abs(sum(r["weights"]) - 1) < 1e-8
        # With as many steps as dimensions, the extreme Ritz values are the exact extremes.
        assert max(r["nodes"]) == pytest.approx(exact[-1], rel=1e-6)
        assert min(r["nodes"]) == pytest.approx(exact[0], rel=1e-4, abs=1e-8)
    dens = density_from_slq(runs, num_points=4000)
    assert dens["integral"] == pytest.approx(1.0, abs=1e-3)  # not renormalised: a real check


def test_hutchinson_trace(setup):
    op, H, _ = setup
    est = hutchinson_trace(op, probes=400, seed=0)
    exact = float(torch.trace(H))
    # Tolerance: 4 standard errors of the estimate (computed from the probes themselves).
    assert abs(est["trace"] - exact) < 4 * est["stderr"] + 1e-9


def test_large_counts(setup):
    op, _, exact = setup
    thr = float(np.abs(exact).max()) / 4
    top, bottom = exact[::-1][:5], exact[:5]
    c = large_eigenvalue_counts(thr, op.size, runs=slq(op, steps=op.size, probes=3), top=top, bottom=bottom)
    assert c["positive_topk"] == min(5, int((exact > thr).sum()))
    assert c["negative_topk"] == min(5, int((exact < -thr).sum()))


# A loss whose Hessian is known exactly: L(theta) = 1/2 theta^T A theta with A = Q diag(lam) Q^T, Q a seeded
# random rotation. lam: three isolated large eigenvalues, two negative ones, and a bulk of 35 in [-0.5, 0.5].
LAM = np.concatenate([[50.0, 20.0, 10.0], [-8.0, -3.0], np.linspace(-0.5, 0.5, 35)])


class _Theta(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.theta = nn.Parameter(torch.randn(d, dtype=torch.float64))

    def forward(self, x):
        return self.theta


@pytest.fixture(scope="module")
def quadratic():
    d = LAM.size
    q, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((d, d)))
    A = torch.from_numpy(q @ np.diag(LAM) @ q.T)
    op = HessianOperator(_Theta(d), [(torch.zeros(1), torch.zeros(1))], loss_fn=lambda t, _y: 0.5 * t @ A @ t)
    return op


def test_quadratic_top_k_are_the_known_eigenvalues(quadratic):
    np.testing.assert_allclose(top_eigenvalues(quadratic, k=3, which="LA", tol=1e-12), [50, 20, 10], rtol=1e-9)
    np.testing.assert_allclose(top_eigenvalues(quadratic, k=2, which="SA", tol=1e-12), [-8, -3], rtol=1e-9)


@pytest.mark.parametrize("steps", [40, 15])
def test_quadratic_slq_puts_the_mass_on_the_known_eigenvalues(quadratic, steps):
    # Each Gaussian probe v gives eigenvalue lam_i the weight (q_i . v)^2 / |v|^2, mean 1/d, so size x (mass above
    # +5) estimates the 3 eigenvalues above 5 and size x (mass below -5) the 1 below -5; 40 steps = full Lanczos
    # (nodes are the eigenvalues), 15 steps resolve the isolated ones. Per-probe spread gives the tolerance.
    d = quadratic.size
    runs = slq(quadratic, steps=steps, probes=60, seed=0)
    per_probe = [large_eigenvalue_counts(5.0, d, runs=[r]) for r in runs]
    for key, expected in (("positive_slq", 3), ("negative_slq", 1)):
        vals = np.array([c[key] for c in per_probe])
        pooled = large_eigenvalue_counts(5.0, d, runs=runs)[key]
        assert pooled == pytest.approx(vals.mean(), rel=1e-12)
        assert abs(pooled - expected) < 4 * vals.std(ddof=1) / np.sqrt(len(vals))
    # Where the mass sits: Ritz values near 50, 20 and 10 in every run, carrying 3/d of the mass between them.
    for r in runs:
        for lam in (50, 20, 10):
            assert min(abs(np.array(r["nodes"]) - lam)) < 1e-6 * lam
    dens = density_from_slq(runs, num_points=20000, sigma=0.05)
    grid, rho = np.array(dens["grid"]), np.array(dens["density"])
    for lam in (50, 20, 10, -8, -3):
        window = np.abs(grid - lam) < 0.5
        mass = np.trapezoid(rho[window], grid[window])
        assert mass == pytest.approx(1 / d, rel=0.5), lam
    bulk = np.abs(grid) < 1.0
    assert np.trapezoid(rho[bulk], grid[bulk]) == pytest.approx(35 / d, rel=0.2)


def test_empty_batches_error():
    with pytest.raises(ValueError, match="at least one"):
        HessianOperator(nn.Linear(2, 2), [])


def test_eigenpairs_come_with_residuals_of_the_returned_pairs(quadratic):
    from kanvision.analysis.hessian import extreme_eigenpairs
    r = extreme_eigenpairs(quadratic, k=3, which="LA", tol=1e-12)
    np.testing.assert_allclose(r["values"], [50, 20, 10], rtol=1e-9)
    assert r["converged"] and r["requested"] == 3 and len(r["residuals"]) == 3
    assert max(r["residuals"]) < 1e-8
    # Loose ARPACK tolerance: still converged by ARPACK's own test, and the residual we compute from the returned
    # vectors (not ARPACK's estimate) is what says how close each pair is; it may not undercut float64 noise.
    loose = extreme_eigenpairs(quadratic, k=2, which="SA", tol=1e-2)
    assert loose["values"][0] == pytest.approx(-8, rel=1e-2) and min(loose["residuals"]) > 1e-16


def test_unconverged_arpack_is_reported_not_dropped(quadratic):
    from kanvision.analysis.hessian import extreme_eigenpairs
    # The bulk's 35 eigenvalues are packed in [-0.5, 0.5]: asking for 12 largest with one restart cannot converge.
    r = extreme_eigenpairs(quadratic, k=12, which="LA", tol=1e-14, maxiter=1)
    assert r["converged"] is False and r["requested"] == 12
    assert len(r["values"]) == len(r["residuals"]) < 12


def test_relative_counts_are_the_papers_statistic(quadratic):
    from kanvision.analysis.hessian import relative_counts
    d = quadratic.size
    top = [50.0, 20.0, 10.0]
    runs = slq(quadratic, steps=d, probes=60, seed=1)
    rows = relative_counts(top, d, runs, fractions=(0.3, 0.15, 0.05), k_requested=3)
    # above 15: {50, 20}; above 7.5: {50, 20, 10} (saturated: all 3 computed are above); above 2.5: the same 3
    assert [r["exact_topk"] for r in rows] == [2, 3, 3]
    assert [r["saturated"] for r in rows] == [False, True, True]
    assert [r["threshold"] for r in rows] == pytest.approx([15.0, 7.5, 2.5])
    assert rows[0]["exact_per_param"] == pytest.approx(2 / d)
    per_probe = [relative_counts(top, d, [q], (0.3,))[0]["slq"] for q in runs]
    spread = np.std(per_probe, ddof=1) / np.sqrt(len(per_probe))
    assert abs(rows[0]["slq"] - 2) < 4 * spread and rows[0]["slq_per_param"] == pytest.approx(rows[0]["slq"] / d)
    assert abs(rows[2]["slq"] - 3) < 4 * np.std([relative_counts(top, d, [q], (0.05,))[0]["slq"] for q in runs],
                                                ddof=1) / np.sqrt(len(runs))


def test_matmat_equals_matvec_column_by_column(setup):
    op, H, _ = setup  # two batches: each batch's retained graph serves all columns
    V = torch.randn(op.size, 3, dtype=torch.float64)
    calls = op.calls
    HV = op.matmat(V)
    assert op.calls == calls + 3
    torch.testing.assert_close(HV, H @ V, rtol=1e-9, atol=1e-12)
    for i in range(3):
        torch.testing.assert_close(HV[:, i], op.matvec(V[:, i]), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("block", [1, 2, None])
def test_lockstep_slq_equals_probe_by_probe_lanczos(setup, block):
    """The lockstep runs are the per-probe recurrences: same starts, same tridiagonals, whatever the block."""
    from scipy.linalg import eigh_tridiagonal

    op, _, _ = setup
    runs = slq(op, steps=12, probes=3, seed=4, block=block)
    rng = np.random.default_rng(4)
    mv = lambda v: op.matvec(torch.from_numpy(v)).double().numpy()  # noqa: E731
    for r in runs:
        alpha, beta = lanczos(mv, rng.standard_normal(op.size), 12)
        nodes, vecs = eigh_tridiagonal(alpha, beta)
        np.testing.assert_allclose(r["nodes"], nodes, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(r["weights"], vecs[0] ** 2, rtol=1e-6, atol=1e-10)
