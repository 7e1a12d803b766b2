"""The shipped weights on the results page: a table with the mean and spread over seeds of each recipe x model
option, and two figures, test top-1 against parameters and against training images/s (kinds coloured, MLP
baselines hollow). Everything is read from checkpoints/manifest.json (written by scripts/ship_pretrained.py from each
run's own logs); scripts/results_doc.py calls `weights_section`.

    python scripts/weights_doc.py [--manifest checkpoints/manifest.json] [--figures docs/figures]
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def group_key(entry: dict) -> tuple[str, str]:
    """(architecture, model option) of a weight: its tag without the seed suffix."""
    arch, suffix = entry["tag"].split(".", 1)
    return arch, suffix.removesuffix(f"_seed{entry.get('seed', 0)}") if entry.get("seed") else suffix


def seed_groups(entries: list[dict]) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for e in entries:
        groups[group_key(e)].append(e)
    return dict(sorted(groups.items()))


def mean_spread(values: list[float]) -> tuple[float, float | None]:
    """Mean and half the range (None for one seed): with 2 seeds the half-range is |a - b| / 2."""
    if len(values) == 1:
        return values[0], None
    return statistics.fmean(values), (max(values) - min(values)) / 2


def _pct(values: list[float]) -> str:
    m, s = mean_spread(values)
    return f"{m:.2%}" if s is None else f"{m:.2%} ± {s:.2%}"


def weights_table(entries: list[dict]) -> list[str]:
    rows = ["| architecture | model | seeds | params | val top-1 | test top-1 | test top-5 | trained on |",
            "|---|---|---|---:|---|---|---|---|"]
    for (arch, option), es in seed_groups(entries).items():
        seeds = ", ".join(str(e.get("seed", 0)) for e in sorted(es, key=lambda e: e.get("seed", 0)))
        machines = "; ".join(sorted({e["trained_on"] for e in es}))
        rows.append(f"| {arch} | {option.removeprefix('cifar10_')} | {seeds} | {es[0]['params']:,} | "
                    f"{_pct([e['val_top1'] for e in es])} | {_pct([e['test_top1'] for e in es])} | "
                    f"{_pct([e['test_top5'] for e in es])} | {machines} |")
    return rows


def _kind_of(entry: dict) -> str:
    mk = entry.get("model_kwargs") or {}
    return f"none (matched to {mk['match_params']})" if mk.get("match_params") else entry["kan"]


def plot_weights(entries: list[dict], figures: Path) -> list[str]:
    """Two scatter plots; returns the file names written."""
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({_kind_of(e) for e in entries})
    colours = {k: f"C{i}" for i, k in enumerate(kinds)}
    archs = sorted({e["tag"].split(".", 1)[0] for e in entries})
    markers = dict(zip(archs, "osD^v<>"))
    written = []
    for key, xlabel, fname in (("params", "parameters", "weights_top1_vs_params.png"),
                               ("images_per_s", "training images/s (logged by the run, on the machine named)",
                                "weights_top1_vs_speed.png")):
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
        for e in entries:
            k = _kind_of(e)
            mlp = e["kan"] == "none"
            ax.scatter(e[key], e["test_top1"] * 100, s=48, marker=markers[e["tag"].split(".", 1)[0]],
                       facecolors="none" if mlp else colours[k], edgecolors=colours[k], linewidths=1.5)
        for k in kinds:
            ax.scatter([], [], color=colours[k], label=f"kan={k}" + (" (hollow: MLP)" if k.startswith("none") else ""))
        for a in archs:
            ax.scatter([], [], color="0.4", marker=markers[a], label=a)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap on one decade
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test top-1 (%)")
        if key == "images_per_s":
            ax.set_title("speed is each run's own machine and load (see the table): compare within a machine",
                         fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        fig.savefig(figures / fname, dpi=90, bbox_inches="tight")
        plt.close(fig)
        written.append(fname)
    return written


def weights_section(manifest: Path, figures: Path) -> list[str]:
    entries = json.loads(manifest.read_text())["entries"]
    groups = seed_groups(entries)
    two = sum(1 for es in groups.values() if len(es) >= 2)
    figs = plot_weights(entries, figures)
    return ["## Shipped weights", "",
            f"{len(entries)} weights of {len(groups)} recipe x model settings (checkpoints/manifest.json); "
            f"{two} of them have 2 seeds: mean ± half the range over seeds, else the one seed. JPEG copy of "
            "CIFAR-10 (not the official PNG/pickle images); the best epoch is chosen on 5,000 held-out training "
            "images, the test split scored once.", "", *weights_table(entries), "",
            *(f"![{f.removesuffix('.png')}](figures/{f})" for f in figs), ""]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", type=Path, default=ROOT / "checkpoints" / "manifest.json")
    p.add_argument("--figures", type=Path, default=ROOT / "docs" / "figures")
    args = p.parse_args()
    print("\n".join(weights_section(args.manifest, args.figures)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
