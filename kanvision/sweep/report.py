"""The results of a `kanvision sweep`, read back from its run directories (nothing is re-run).

One row per run: its grid values and seed, status, parameter counts, best validation top-1 (and top-5 at that
validation), top-1 on un-augmented training images (`train_eval/acc1`, logged at every validation by
ImageClassifier) at the best validation and at the last one, the gap between them, the after-fit test score
of the best checkpoint, wall time, and the efficiency column.

Efficiency: "On Training of Kolmogorov-Arnold Networks" (Sohail, arXiv 2411.05296) compares KANs and MLPs with
an efficiency metric. Its text past the abstract was not available to us; the definition is the one of the
study's own analysis code (github.com/ShairozS/HSIC_Bottleneck-Pytorch, Notebooks/analyze_results.ipynb, the
commit of 2024-11-12, four days after the paper; checked against the values that notebook prints):

    efficiency = best accuracy / (epoch of the best accuracy + 1) / ln(1 + parameters - ID)

with epochs counted from 0 and ID the dataset's "intrinsic dimension" (its code: 750 for MNIST, 9000 for CIFAR;
--intrinsic-dim, default 9000). It rewards accuracy reached early, and (weakly, through the log) few
parameters. The study's accuracy is the best *test* accuracy; here it is the best validation top-1 (held-out
training images: the test split is not selected on), and the epoch is that validation's. An earlier version
of the same code used (best / (epoch + 1)) * sqrt(1e9 - parameters) instead. `top1_per_Mparam` (best val
top-1 / (parameters / 1e6)) is a plainer extra column, not the study's.

Sources: <run>/version_N (the newest) metrics.csv (val/*, train_eval/* rows), status.json (outcome, error, the
test score), hparams.yaml (params/total, params/kan); <run>/wall_s (the sweep's wall clock, summed over resumes).
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path

from kanvision.train.atomic import atomic_write, atomic_write_text

__all__ = ["COLUMNS", "read_run", "write_report"]

# The fixed columns, after the run name and the grid's own keys.
COLUMNS = ["seed", "status", "params", "kan_params", "val_top1", "val_top5", "best_epoch", "train_top1_at_best",
           "train_top1_last", "gap", "test_top1", "diverged", "wall_s", "efficiency", "top1_per_Mparam", "error"]
INTRINSIC_DIM = 9000  # the study's value for CIFAR (MNIST: 750), in its efficiency metric
EFFICIENCY_NOTE = ("efficiency: the training-scheme study's metric (arXiv 2411.05296; the definition of its analysis "
                   "code, github.com/ShairozS/HSIC_Bottleneck-Pytorch Notebooks/analyze_results.ipynb): val_top1 / "
                   "(best_epoch + 1) / ln(1 + params - ID), ID = {id} (the study's 'intrinsic dimension': 9000 for "
                   "CIFAR, 750 for MNIST); the study used its best test accuracy, this table the best validation "
                   "top-1. top1_per_Mparam: val_top1 / (params / 1e6), accuracy per million parameters (not the "
                   "study's).")


def _float(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _validation_rows(metrics: Path) -> list[dict]:
    try:
        with open(metrics, newline="") as f:
            # A validation whose loss is not finite (the run diverged there) is no result: its top-1 is that of
            # NaN outputs, and it must not be the "best".
            return [r for r in csv.DictReader(f) if _float(r.get("val/acc1")) is not None
                    and (not r.get("val/loss") or _float(r["val/loss"]) is not None)]
    except OSError:
        return []


def _param_counts(version: Path) -> tuple[int | None, int | None]:
    try:
        text = (version / "hparams.yaml").read_text()
    except OSError:
        return None, None
    found = [re.search(rf"^params/{k}: (\d+)\s*$", text, re.M) for k in ("total", "kan")]
    return tuple(int(m.group(1)) if m else None for m in found)


def efficiency(top1: float, best_epoch: int, params: int, intrinsic_dim: int = INTRINSIC_DIM) -> float | None:
    """The study's efficiency metric (module docstring): top1 / (best_epoch + 1) / ln(1 + params - ID)."""
    if params - intrinsic_dim <= 0:
        return None
    return top1 / (best_epoch + 1) / math.log(1 + params - intrinsic_dim)


def read_run(run_root: Path, intrinsic_dim: int = INTRINSIC_DIM) -> dict:
    """The measured columns of one run directory (DIR/runs/<name>)."""
    from kanvision.train.runs import read_status
    from kanvision.sweep.grid import first_current_version
    from kanvision.train.runs import error_line, latest_version, version_number

    row = dict.fromkeys(COLUMNS)
    version = latest_version(run_root)
    changed = version is not None and version_number(version) < first_current_version(run_root)
    if changed:  # its versions ran with other options (a SLURM task not run yet since they changed): no result
        version = None
    status = (read_status(version) if version is not None else None) or {}
    row["status"] = status.get("status") or (
        "not run with its current options" if changed else "failed" if (run_root / "fit.log").is_file() else "not run")
    row["diverged"] = row["status"] == "diverged"
    if row["status"] == "failed":
        row["error"] = status.get("error") or error_line(run_root / "fit.log")
    elif row["diverged"]:
        row["error"] = (f"val/loss {status.get('loss')} after step {status.get('step')} (lr {status.get('lr')})"
                        if status.get("stage") == "validation" else
                        f"loss {status.get('loss')} at step {status.get('step')} (lr {status.get('lr')})")
    if version is not None:
        row["params"], row["kan_params"] = _param_counts(version)
        vals = _validation_rows(version / "metrics.csv")
        if vals:
            best = max(vals, key=lambda r: _float(r["val/acc1"]))  # the first of equal maxima, as ModelCheckpoint
            row["val_top1"], row["val_top5"] = _float(best["val/acc1"]), _float(best.get("val/acc5"))
            row["best_epoch"] = int(float(best["epoch"])) if best.get("epoch") else None
            row["train_top1_at_best"] = _float(best.get("train_eval/acc1"))
            row["train_top1_last"] = _float(vals[-1].get("train_eval/acc1"))
            if row["train_top1_at_best"] is not None:
                row["gap"] = row["train_top1_at_best"] - row["val_top1"]
        test = status.get("test") or {}
        row["test_top1"] = _float(test.get("acc1"))
    wall = _float((run_root / "wall_s").read_text()) if (run_root / "wall_s").is_file() else None
    row["wall_s"] = round(wall, 1) if wall is not None else None
    if row["val_top1"] is not None and row["params"]:
        row["top1_per_Mparam"] = row["val_top1"] / (row["params"] / 1e6)
        if row["best_epoch"] is not None:
            row["efficiency"] = efficiency(row["val_top1"], row["best_epoch"], row["params"], intrinsic_dim)
    return row


def _cell(key: str, value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key == "wall_s":
        return f"{value:.0f}"
    if isinstance(value, float) and key in COLUMNS:  # measured; grid values are shown as given
        return f"{value:.4f}"
    return str(value)


def write_report(runs, out: Path, intrinsic_dim: int = INTRINSIC_DIM) -> list[dict]:
    """DIR/results.csv, DIR/results.md and DIR/results.png for the planned runs (sweep.Run), in plan order."""
    from kanvision.sweep.grid import value_label

    out.mkdir(parents=True, exist_ok=True)
    keys = list(runs[0].values) if runs else []
    rows = []
    for run in runs:
        row = {"run": run.name, **run.values, **read_run(out / "runs" / run.name, intrinsic_dim)}
        row["seed"] = run.seed
        rows.append(row)
    header = ["run", *keys, *COLUMNS]
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=header)
    writer.writeheader()
    # Data: a grid value that is a dict (a class with init_args) as JSON; the markdown shows it short.
    writer.writerows({k: "" if r.get(k) is None else json.dumps(r[k]) if isinstance(r[k], (dict, list)) else r[k]
                      for k in header} for r in rows)
    # Written under a temporary name and renamed (train/atomic.py): a full disk keeps the previous table.
    atomic_write_text(out / "results.csv", table.getvalue())
    shown = [{**r, **{k: value_label(k, r[k], r) for k in keys if isinstance(r.get(k), dict)}} for r in rows]
    lines = [f"# Sweep results ({len(rows)} runs)", "",
             "val_top1 / val_top5: best validation (held-out images) and top-5 at that validation; "
             "train_top1_at_best / train_top1_last: top-1 on un-augmented training images (train_eval/acc1) at that "
             "validation / at the last one; gap = train_top1_at_best - val_top1; test_top1: the test split on the "
             "best checkpoint, after fit; wall_s summed over resumes. A diverged run's columns are of its "
             "validations before the divergence.", "", EFFICIENCY_NOTE.format(id=intrinsic_dim), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(k, r.get(k)).replace("|", "/") for k in header) + " |" for r in shown]
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
    plot(shown, keys, out / "results.png")
    return rows


def plot(rows: list[dict], keys: list[str], path: Path) -> None:
    """Best val top-1 per scheme (the grid values other than model.kan), one bar per KAN kind (mean over seeds);
    dots: top-1 on un-augmented training images at that validation; x: diverged."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kind_key = "model.kan" if "model.kan" in keys else None
    scheme_keys = [k for k in keys if k != kind_key]
    kinds = list(dict.fromkeys(str(r.get(kind_key)) for r in rows)) if kind_key else ["all runs"]
    schemes = list(dict.fromkeys(", ".join(f"{k.split('.')[-1]}={r.get(k)}" for k in scheme_keys) or "base"
                                 for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(schemes) * max(1, len(kinds)) + 2), 4.5))
    width = 0.8 / max(1, len(kinds))
    for j, kind in enumerate(kinds):
        for i, scheme in enumerate(schemes):
            group = [r for r in rows
                     if (", ".join(f"{k.split('.')[-1]}={r.get(k)}" for k in scheme_keys) or "base") == scheme
                     and (kind_key is None or str(r.get(kind_key)) == kind)]
            x = i - 0.4 + width * (j + 0.5)
            vals = [r["val_top1"] for r in group if r["val_top1"] is not None and not r["diverged"]]
            trains = [r["train_top1_at_best"] for r in group
                      if r["train_top1_at_best"] is not None and not r["diverged"]]
            if vals:
                ax.bar(x, sum(vals) / len(vals), width, color=f"C{j}")
            if trains:
                ax.plot([x], [sum(trains) / len(trains)], "o", color="black", ms=4)
            if any(r["diverged"] for r in group):
                ax.plot([x], [0.02], "x", color="red", ms=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=f"C{j}") for j in range(len(kinds))]
    handles += [plt.Line2D([], [], marker="o", ls="", color="black"), plt.Line2D([], [], marker="x", ls="", color="red")]
    ax.legend(handles, [f"kan={k}" if kind_key else k for k in kinds] + ["train top-1 (no augmentation)", "diverged"],
              fontsize=8)
    ax.set_xticks(range(len(schemes)))
    ax.set_xticklabels(schemes, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("best val top-1 (mean over seeds)")
    ax.set_ylim(0, 1)
    ax.set_title("accuracy per training scheme")
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, dpi=120, format="png"))
    finally:
        plt.close(fig)
