"""Ship one finished training run as a pretrained entry: export its best checkpoint to
checkpoints/<tag>/ (model.safetensors + config.json), record it in checkpoints/manifest.json and rewrite the
table in checkpoints/README.md from the manifest.

Every number in the entry is read from the run: the validation curve and the best epoch from its
metrics.csv, the test score from its status.json (`kanvision fit` scores the test split once, on the best
checkpoint) or, for a run tested by a separate `kanvision test`, from that run's metrics.csv
(--test-metrics). Wall time and the command are given by whoever ran it (the driver's log).

    python scripts/ship_pretrained.py ~/kanvision-runs/runs/cifar10_bspline/version_0 \
        --tag kan_mixer_tiny_p4_32.cifar10_bspline --wall-s 6120 --command "kanvision fit ..."
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import yaml

from kanvision.hub.checkpoints import export, load_pretrained
from kanvision.hub.pretrained import RECIPES, TAGS
from kanvision.train.atomic import atomic_write_text  # a full disk keeps the previous manifest and tables whole

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the fixed-subset scorer is the shipped-weights test's own fixture
from cifar_jpeg import default_archive, score_test_subset  # noqa: E402
DATASET = ("CIFAR-10, JPEG copy of the 50,000 training / 10,000 test images (../shared/data/cifar10-jpeg.tar.gz); "
           "5,000 training images held out (val_split 0.1, seed 0) for validation")


def _rows(metrics_csv: Path) -> list[dict]:
    with open(metrics_csv, newline="") as f:
        return list(csv.DictReader(f))


def _num(row: dict, key: str) -> float | None:
    value = row.get(key)
    return float(value) if value not in (None, "") else None


def curves(rows: list[dict]) -> dict:
    """Per epoch: val top-1/top-5 and the epoch's mean training top-1 (on augmented batches)."""
    val, train = {}, {}
    for r in rows:
        if r.get("epoch") in (None, ""):
            continue
        epoch = int(float(r["epoch"]))
        if _num(r, "val/acc1") is not None:
            val[epoch] = (_num(r, "val/acc1"), _num(r, "val/acc5"))
        if _num(r, "train/acc1") is not None:
            train[epoch] = _num(r, "train/acc1")
    speeds = [_num(r, "train/images_per_s") for r in rows if _num(r, "train/images_per_s") is not None]
    return dict(val=val, train=train, images_per_s=sum(speeds) / len(speeds) if speeds else None)


def test_score(run: Path, test_metrics: Path | None) -> tuple[float, float, str]:
    if test_metrics is not None:
        rows = [r for r in _rows(test_metrics) if _num(r, "test/acc1") is not None]
        if len(rows) != 1:
            raise SystemExit(f"{test_metrics}: expected exactly one test row, found {len(rows)}")
        return _num(rows[0], "test/acc1"), _num(rows[0], "test/acc5"), str(test_metrics)
    status = json.loads((run / "status.json").read_text())
    if status.get("status") != "finished" or "test" not in status:
        raise SystemExit(f"{run}: status.json has no test score ({status.get('status')}); finish the run first")
    return status["test"]["acc1"], status["test"]["acc5"], status["test"]["checkpoint"]


def best_checkpoint(run: Path, best_epoch: int) -> Path:
    found = sorted((run / "checkpoints").glob(f"epoch{best_epoch:03d}-top1_*.ckpt"))
    if len(found) != 1:
        raise SystemExit(f"{run}: no single checkpoint of the best validation epoch {best_epoch} ({found})")
    return found[0]


def table_rows(manifest: dict) -> list[str]:
    rows = ["| tag | kan | params | epochs (best) | val top-1 | test top-1 | test top-5 | train top-1 (aug.) - val | "
            "trained on | images/s | wall |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in manifest["entries"]:
        rows.append(
            f"| `{e['tag']}` | {e['kan']} | {e['params']:,} | {e['epochs']} ({e['best_epoch'] + 1}) | "
            f"{e['val_top1']:.2%} | {e['test_top1']:.2%} | {e['test_top5']:.2%} | "
            f"{e['train_val_gap']:+.2%} | {e['trained_on']} | {e['images_per_s']:.0f} | {e['wall_s'] / 60:.0f} min |")
    return rows


def readme_table_rows(manifest: dict) -> list[str]:
    """The README's short form of the table: what a newcomer compares (the docs' checkpoints page has every column)."""
    rows = ["| tag | kan | params | val top-1 | test top-1 |", "|---|---|---:|---:|---:|"]
    for e in manifest["entries"]:
        rows.append(f"| `{e['tag']}` | {e['kan']} | {e['params']:,} | {e['val_top1']:.2%} | {e['test_top1']:.2%} |")
    return rows


def write_readme_table(manifest: dict, readme: Path) -> None:
    """The short table in the main README, between its pretrained-table markers."""
    start, end = "<!-- pretrained-table -->", "<!-- /pretrained-table -->"
    text = readme.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{readme}: no {start} ... {end} block for the table")
    head, rest = text.split(start, 1)
    atomic_write_text(readme, head + start + "\n" + "\n".join(readme_table_rows(manifest)) + "\n" + end + rest.split(end, 1)[1])


def write_table(manifest: dict, path: Path) -> None:
    lines = [
        "# Pretrained weights",
        "",
        "Trained by this repository's commands on the JPEG copy of CIFAR-10 (`../shared/data/`; JPEG re-encoding",
        "changes the pixels, so these are not numbers on the original PNG/pickle CIFAR-10). One recipe per",
        "architecture, with the same optimizer, schedule, augmentation and epochs; the tags of an architecture",
        "differ only in the model options:",
        "",
        *(f"- `{a}`: `{r}`" for a, r in RECIPES.items()),
        "",
        "The best epoch is chosen on 5,000 held-out",
        "training images (val); the 10,000 test images are scored once, on that epoch. `manifest.json` holds the",
        "same numbers (accuracies as fractions), the sha256 of each file and the exact command; written by",
        "`scripts/ship_pretrained.py` from each run's own logs. images/s: the mean of the logged training rate;",
        "wall: the training command's wall time, both on the machine in 'trained on' (the entry's `command` says what",
        "else ran beside it), in float32 on either. Train top-1 is the epoch's mean over augmented training batches, so the gap column",
        "typically understates the gap to un-augmented training images.",
        "",
        *table_rows(manifest),
    ]
    missing = sorted(set(TAGS) - {e["tag"] for e in manifest["entries"]})
    if missing:
        lines += ["", "Registered but not trained yet (loading them says so): " + ", ".join(f"`{t}`" for t in missing)
                  + ". `bash scripts/train_pretrained.sh` trains and ships them one at a time, resuming where it stopped."]
    lines += ["", "Validation top-1 per epoch:", ""]
    for e in manifest["entries"]:
        lines.append(f"- `{e['tag']}`: " + ", ".join(f"{v:.1%}" for v in e["val_curve"]))
    lines += ["", "Load: `timm.create_model(\"<tag>\", pretrained=True)` (README; docs/checkpoints.md).", ""]
    atomic_write_text(path, "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="the run directory runs/<name>/version_N")
    p.add_argument("--tag", required=True, help="<model>.<pretrained tag>, e.g. kan_mixer_tiny_p4_32.cifar10_bspline")
    p.add_argument("--wall-s", type=float, required=True, help="wall time of the training command, seconds")
    p.add_argument("--command", required=True, help="the exact training command")
    p.add_argument("--test-metrics", type=Path, help="metrics.csv of a separate `kanvision test` run")
    p.add_argument("--trained-on", required=True,
                   help="the machine, and what shared it, e.g. '2-core CPU' or 'NVIDIA H100 80GB HBM3 (3 runs at once)'")
    p.add_argument("--seed", type=int, required=True, help="the run's seed_everything (0: first weight, 1: _seed1 tag)")
    p.add_argument("--out", type=Path, default=ROOT / "checkpoints")
    args = p.parse_args()

    run = args.run.expanduser()
    c = curves(_rows(run / "metrics.csv"))
    epochs = max(c["val"]) + 1
    best_epoch = max(c["val"], key=lambda e: (c["val"][e][0], -e))  # ModelCheckpoint keeps the first best
    ckpt = best_checkpoint(run, best_epoch)
    test1, test5, tested = test_score(run, args.test_metrics)
    hparams = yaml.safe_load((run / "hparams.yaml").read_text())

    folder = args.out / args.tag
    config = export(ckpt, folder, force=True)
    entry = dict(
        tag=args.tag, seed=args.seed, file=f"{args.tag}/model.safetensors", sha256=config["kanvision"]["sha256"], dataset=DATASET,
        kan=hparams["kan"], model_kwargs=hparams.get("model_kwargs"), params=int(hparams["params/total"]),
        params_kan=int(hparams["params/kan"]),
        val_top1=c["val"][best_epoch][0], val_top5=c["val"][best_epoch][1], test_top1=test1, test_top5=test5,
        epochs=epochs, best_epoch=best_epoch, train_top1_augmented=c["train"].get(best_epoch),
        train_val_gap=(c["train"][best_epoch] - c["val"][best_epoch][0]) if best_epoch in c["train"] else math.nan,
        val_curve=[c["val"][e][0] for e in sorted(c["val"])], images_per_s=c["images_per_s"], wall_s=args.wall_s,
        command=args.command, trained_on=args.trained_on, checkpoint=str(ckpt), tested=tested,
        shipped_at_commit=subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
    )
    archive = default_archive()
    if archive is None:
        raise SystemExit("no CIFAR-10 JPEG archive for the fixed-subset check: set KANVISION_CIFAR10_JPEG")
    # The fixed 500 test images (50 per class) that tests/test_pretrained_shipped.py re-scores from a clone.
    entry["subset_check"] = dict(archive=archive.name, files="test/<class>/0000.jpg ... 0049.jpg",
                                 **score_test_subset(load_pretrained(folder), archive, per_class=50))
    manifest_path = args.out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"entries": []}
    manifest["entries"] = [e for e in manifest["entries"] if e["tag"] != args.tag] + [entry]
    manifest["entries"].sort(key=lambda e: e["tag"])
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
    write_table(manifest, args.out / "README.md")
    write_readme_table(manifest, ROOT / "README.md")
    print(json.dumps({k: v for k, v in entry.items() if k not in ("dataset",)}, indent=2))


if __name__ == "__main__":
    main()
