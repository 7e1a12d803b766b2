"""Matplotlib figures for the analyses (Agg backend: works headless)."""
from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_densities(densities: dict[str, dict], path: Path) -> None:
    """One panel per model, log-scale density (as PyHessian / the paper); shared y for comparison."""
    plt = _plt()
    n = len(densities)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.2), sharey=True, squeeze=False)
    for ax, (label, d) in zip(axes[0], densities.items()):
        ax.semilogy(d["grid"], [max(v, 1e-12) for v in d["density"]])
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("eigenvalue")
        ax.set_ylim(1e-8, None)
    axes[0][0].set_ylabel("density (SLQ)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_memory(rows: list[dict], path: Path) -> None:
    """Memory vs batch size, one line per model/kind; OOM points are missing (x marks on the axis)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label in dict.fromkeys(r["model"] for r in rows):
        pts = [r for r in rows if r["model"] == label]
        ok = [r for r in pts if r["bytes"] is not None]
        line, = ax.plot([r["batch_size"] for r in ok], [r["bytes"] / 2**20 for r in ok], "o-", label=label)
        oom = [r["batch_size"] for r in pts if r["bytes"] is None]
        if oom:
            ax.plot(oom, [0] * len(oom), "x", color=line.get_color())
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("training-step memory (MiB)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
