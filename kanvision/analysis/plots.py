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


def plot_memory(rows: list[dict], path: Path, estimates: dict[str, list[tuple[int, float]]] | None = None,
                estimate_label: str = "paper's Eq. (1): memory beyond FC layers") -> None:
    """Memory vs batch size on log-log axes: one colour per model, solid for impl "fast" (and for models without
    KAN layers, "n/a"), dotted for "reference"; OOM points are x marks along the bottom edge.

    `estimates`: model label -> [(batch size, bytes)], an analytic count drawn dashed in that model's colour
    (the paper's Eq. (1) summed over the model's KAN layers, from kanvision.analysis.memory.paper_model_estimate),
    in the same MiB as the measurements."""
    plt = _plt()
    styles = {"fast": ("-", "o"), "reference": (":", "s"), "n/a": ("-", "o")}
    names = {"fast": "fast (recomputes basis)", "reference": "reference (stores basis)", "n/a": "no KAN layers"}
    fig, ax = plt.subplots(figsize=(6, 4))
    colours = {}
    for label, impl in dict.fromkeys((r["model"], r.get("impl", "n/a")) for r in rows):
        pts = [r for r in rows if r["model"] == label and r.get("impl", "n/a") == impl]
        ok = [r for r in pts if r["bytes"] is not None]
        colour = colours.setdefault(label, f"C{len(colours) % 10}")
        style, marker = styles.get(impl, ("-.", "^"))
        ax.plot([r["batch_size"] for r in ok], [r["bytes"] / 2**20 for r in ok], marker=marker,
                linestyle=style, color=colour, label=f"{label}, {names.get(impl, impl)}")
        oom = [r["batch_size"] for r in pts if r["bytes"] is None]
        if oom:  # log axes have no 0: mark at the bottom edge (x in data, y in axes coordinates)
            ax.plot(oom, [0.02] * len(oom), "x", color=colour, transform=ax.get_xaxis_transform(), clip_on=False)
    for label, pts in (estimates or {}).items():
        colour = colours.setdefault(label, f"C{len(colours) % 10}")
        ax.plot([b for b, _ in pts], [v / 2**20 for _, v in pts], linestyle="--", linewidth=1.5, color=colour,
                label=f"{label}, {estimate_label}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size (images)")
    ax.set_ylabel("training-step memory (MiB)")
    methods = list(dict.fromkeys(r["method"].split(":")[0] for r in rows if "method" in r))
    if methods:  # "cpu saved-tensor accounting" or "cuda allocator peak"
        ax.set_title("; ".join(methods), fontsize=8)
    title = "solid: fast, dotted: reference" + (", dashed: analytic estimate" if estimates else "")
    # Beside the axes, not on them: the lines span the whole plot.
    ax.legend(fontsize=7, title=title, title_fontsize=7, loc="upper left",
              bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
