"""`kanvision analyze hessian`: the Hessian study of the limitations paper (Figure 3) for checkpoints or zoo models.

For each model: the training loss's Hessian on a fixed set of un-augmented training images (`--split train`,
the default for image folders: a seeded subset of the images the model was trained on, the validation
hold-out excluded exactly as `kanvision fit` makes it), its top-k eigenpairs by ARPACK with residuals, the
SLQ density, a Hutchinson trace, and the paper's statistic: the count of eigenvalues above a fraction of the
largest one (`--fractions`), per model and per parameter. Beside it the train-vs-validation gap measured in
the same run: top-1 and loss on those training images and on the hold-out, both un-augmented, eval mode.

Results are written to OUT/hessian.json after every model, so a run stopped part-way keeps the models
already done; `--resume` skips the models already in that file.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["add_arguments", "hessian_main"]

FRACTIONS = (0.1, 0.01, 0.001)


def add_arguments(h) -> None:
    h.add_argument("--top-k", type=int, default=5)
    h.add_argument("--bottom-k", type=int, default=None,
                   help="smallest eigenvalues to compute (default: --top-k; 0 skips ARPACK's negative end)")
    h.add_argument("--tol", type=float, default=1e-4)
    h.add_argument("--maxiter", type=int, default=None,
                   help="ARPACK restarts per end (bounds the HVPs; an unconverged end is marked converged=false)")
    h.add_argument("--steps", type=int, default=40, help="Lanczos steps per SLQ probe")
    h.add_argument("--probes", type=int, default=3, help="SLQ probe vectors")
    h.add_argument("--slq-block", type=int, default=None,
                   help="SLQ probes run in lockstep, sharing each batch's gradient graph (default: all; memory "
                        "for the Lanczos vectors: block x steps x params x 8 bytes)")
    h.add_argument("--trace-probes", type=int, default=30, help="Hutchinson Rademacher probes (0: skip)")
    h.add_argument("--threshold", type=float, default=1.0, help="|eigenvalue| above this counts as large")
    h.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS),
                   help="the paper's statistic: count eigenvalues above each fraction of the largest")
    h.add_argument("--split", choices=("train", "test"), default="train",
                   help="imagefolder: the images the Hessian is taken on (train: a seeded subset of the trained "
                        "images, the hold-out excluded)")
    h.add_argument("--val-split", type=float, default=0.1,
                   help="--split train: the hold-out the model was validated on (as `--data.val_split`; "
                        "a count if >= 1); it is excluded from the Hessian images and scored for the gap")
    h.add_argument("--data-seed", type=int, default=0, help="--split train: the run's `--data.seed`")
    h.add_argument("--resume", action="store_true", help="keep the models already in OUT/hessian.json")


def _train_split(args, model):
    """(Hessian batches, hold-out batches) from the training folder, split as `kanvision fit` split it."""
    from kanvision.data.datamodule import DataError, ImageDataModule
    from kanvision.analysis.inputs import _input_shape

    if not args.data_root:
        raise SystemExit("kanvision analyze hessian: --data imagefolder needs --data-root DIR with "
                         "DIR/train/<class>/*.jpg (or pass --split test, or --data synthetic)")
    cfg = getattr(model, "pretrained_cfg", None) or {}
    n = args.batch_size * args.batches
    val = int(args.val_split) if args.val_split >= 1 else args.val_split
    try:
        dm = ImageDataModule(dataset="imagefolder", root=str(args.data_root), download=False,
                             batch_size=args.batch_size, num_workers=0, img_size=_input_shape(model)[-1],
                             augment="none", val_split=val, train_eval_size=n, seed=args.data_seed,
                             mean=cfg.get("mean"), std=cfg.get("std"))
        dm.setup("fit")
    except DataError as e:
        raise SystemExit(f"kanvision analyze hessian: {str(e).replace('--data.root', '--data-root')}") from None
    if dm.train_eval_set is None or len(dm.train_eval_set) < n:
        have = 0 if dm.train_eval_set is None else len(dm.train_eval_set)
        raise SystemExit(f"kanvision analyze hessian: asked for {n} training images (--batch-size x --batches) "
                         f"but only {have} are outside the hold-out: ask for fewer")

    def batches(ds):
        return list(torch.utils.data.DataLoader(ds, batch_size=args.batch_size))
    return batches(dm.train_eval_set), batches(dm.val_set)


@torch.no_grad()
def _score(model, batches, device) -> dict:
    loss = correct = count = 0.0
    for x, y in batches:
        out = model(x.to(device))
        y = y.to(device)
        loss += float(F.cross_entropy(out, y, reduction="sum"))
        correct += float((out.argmax(-1) == y).sum())
        count += len(y)
    return {"images": int(count), "loss": loss / count, "top1": correct / count}


def _hessian_estimate(name: str, first: float, second: float, fixed: int, arpack: tuple[int, int | None]) -> str:
    """The up-front estimate, at the measured rate of the second HVP (the first one pays one-time setup)."""
    from kanvision.analysis.progress import format_duration as fmt
    low, high = arpack
    arpack_text = f"{low}-{high}" if high is not None else f"at least {low} (no --maxiter bound)"
    span = (f"between {fmt(second * (fixed + low))} and {fmt(second * (fixed + high))}" if high is not None
            else f"at least {fmt(second * (fixed + low))}")
    return (f"{name}: HVPs took {fmt(first)} (first, with setup) then {fmt(second)}; {fixed} HVPs for "
            f"SLQ, Hutchinson and residuals and {arpack_text} for ARPACK -> {span} at that rate")


def _slq_position(done: int, probes: int, steps: int, block: int | None) -> str:
    """Where SLQ is after `done` HVPs: the block of probes running in lockstep and its Lanczos step."""
    block = probes if block is None else max(1, min(block, probes))
    per_block = block * max(steps, 1)
    first = (done - 1) // per_block * block
    width = min(block, probes - first)
    step = ((done - 1) - first * max(steps, 1)) // width + 1
    which = f"probe {first + 1}" if width == 1 else f"probes {first + 1}-{first + width}"
    return f"{which}/{probes}, step {min(step, steps)}/{steps}"


def _hessian_model(args, H, op, label: str, rep, index: str) -> tuple:
    """One model's HVP phases, each reported as it runs; returns (top, bottom, slq runs, trace)."""
    bottom_k = args.top_k if args.bottom_k is None else args.bottom_k
    ends = [H.arpack_hvp_bounds(op.size, k, args.maxiter) for k in (args.top_k, bottom_k) if k > 0]
    arpack = (sum(lo for lo, _ in ends),
              None if any(hi is None for _, hi in ends) else sum(hi for _, hi in ends))
    name = f"hessian {label}{index}"
    state = {"phase": None, "detail": lambda done: None, "ends": [rep.clock()]}
    fixed = args.probes * args.steps + args.trace_probes + args.top_k + bottom_k

    def after_hvp():
        phase = state["phase"]
        phase.advance(detail=state["detail"](phase.done + 1))
        stamps = state["ends"]
        if len(stamps) < 3:
            stamps.append(rep.clock())
            if len(stamps) == 3:
                rep.note(_hessian_estimate(name, stamps[1] - stamps[0], stamps[2] - stamps[1], fixed, arpack))

    op.after_matvec = after_hvp

    def run(what, total, fn, detail=lambda done: None, bound=False):
        with rep.phase(f"{name}: {what}", total=total, unit="HVP", bound=bound) as phase:
            state["phase"], state["detail"] = phase, detail
            return fn()

    def pairs(k, which, what):
        if k <= 0:
            return {"values": [], "residuals": [], "converged": None, "requested": 0}
        lo, hi = H.arpack_hvp_bounds(op.size, k, args.maxiter)
        return run(what, None if hi is None else hi + k, lambda: H.extreme_eigenpairs(
            op, k, which, tol=args.tol, maxiter=args.maxiter, seed=args.seed), bound=True)

    try:
        top = pairs(args.top_k, "LA", "ARPACK largest + residuals")
        bottom = pairs(bottom_k, "SA", "ARPACK smallest + residuals")
        runs = run("SLQ", args.probes * args.steps, lambda: H.slq(op, args.steps, args.probes, seed=args.seed,
                                                                     block=args.slq_block),
                   lambda done: _slq_position(done, args.probes, args.steps, args.slq_block))
        trace = (run("Hutchinson trace", args.trace_probes,
                     lambda: H.hutchinson_trace(op, args.trace_probes, seed=args.seed),
                     lambda done: f"probe {done}/{args.trace_probes}") if args.trace_probes > 0 else None)
    finally:
        op.after_matvec = None
    return top, bottom, runs, trace


def hessian_main(args) -> dict:
    from kanvision.analysis import hessian as H
    from kanvision.analysis.inputs import _batches, _input_shape, _models, _reporter, _settings
    from kanvision.analysis.plots import plot_densities
    from kanvision.device import synchronize

    # TF32 convolutions (cuDNN's default) would add ~1e-3 relative error to every HVP, the size of the
    # smallest eigenvalue fraction counted; the Hessian is taken in full float32.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "hessian.json"
    settings = _settings(args) | {"model_mode": "eval (BatchNorm running stats, Dropout/DropPath off)",
                                  "precision": "float32, TF32 off",
                                  "threads": torch.get_num_threads(), "device_name": _device_name(args.device)}
    results = {"settings": settings, "models": {}}
    if args.resume and path.is_file():
        kept = json.loads(path.read_text())
        _check_resumable(kept.get("settings", {}), settings, path)
        results["models"] = kept.get("models", {})
    train_split = args.data == "imagefolder" and args.split == "train"
    splits = {}
    models = _models(args)
    with _reporter(args) as rep:
        for i, (label, model) in enumerate(models):
            if label in results["models"]:
                print(f"{label}: kept from {path} (--resume)")
                continue
            t0 = time.time()
            index = f" (model {i + 1}/{len(models)})" if len(models) > 1 else ""
            if train_split:
                # Decoded once per preprocessing: models that share it share the same images.
                cfg = getattr(model, "pretrained_cfg", None) or {}
                key = (_input_shape(model), tuple(cfg.get("mean") or ()), tuple(cfg.get("std") or ()))
                if key not in splits:
                    splits[key] = _train_split(args, model)
                batches, held_out = splits[key]
            else:
                batches, held_out = _batches(args, model), []
            op = H.HessianOperator(model, batches, device=args.device)
            top, bottom, runs, trace = _hessian_model(args, H, op, label, rep, index)
            synchronize(args.device)
            dens = H.density_from_slq(runs)
            scores = {"hessian_images": _score(model, op.batches, args.device)}
            if held_out:
                scores["held_out"] = _score(model, held_out, args.device)
                scores["gap_top1"] = scores["hessian_images"]["top1"] - scores["held_out"]["top1"]
            results["models"][label] = {
                "num_params": op.size, "images": op.num_samples,
                "images_from": "training split minus hold-out" if train_split else args.data,
                "loss": op.loss(), "scores": scores,
                "top": top, "bottom": bottom, "top_eigenvalues": top["values"],
                "bottom_eigenvalues": bottom["values"], "trace": trace, "slq": runs, "density": dens,
                "counts": H.large_eigenvalue_counts(args.threshold, op.size, runs, top["values"],
                                                    bottom["values"]),
                "relative_counts": H.relative_counts(top["values"], op.size, runs, args.fractions, args.top_k),
                "hvp_calls": op.calls, "seconds": time.time() - t0,
                # per model: a resumed file may hold models computed on another machine
                "device_name": settings["device_name"], "threads": settings["threads"]}
            path.write_text(json.dumps(results, indent=1, default=str))
    path.write_text(json.dumps(results, indent=1, default=str))
    try:
        plot_densities({k: v["density"] for k, v in results["models"].items()}, out / "hessian_density.png")
    except ImportError as e:  # a bare GPU image: the densities are in the JSON, plot them elsewhere
        print(f"no {out / 'hessian_density.png'}: {e}")
    for label, r in results["models"].items():
        rel = ", ".join(f">{c['fraction']:g}*max: {c['exact_topk']}{'+' if c['saturated'] else ''} exact, "
                        f"{c.get('slq', float('nan')):.3g} SLQ" for c in r["relative_counts"])
        gap = r["scores"].get("gap_top1")
        print(f"{label}: params={r['num_params']} images={r['images']} loss={r['loss']:.4f} "
              f"top={[round(v, 4) for v in r['top']['values']]} residuals={[f'{e:.1e}' for e in r['top']['residuals']]} "
              f"converged={r['top']['converged']} | {rel}"
              + (f" | train-vs-val top-1 gap {gap:+.4f}" if gap is not None else ""))
    print(f"wrote {path} and {out / 'hessian_density.png'}")
    return results


# Settings that change the numbers: a file resumed under other values would mix two studies under one header.
RESULT_SETTINGS = ("data", "split", "val_split", "data_seed", "seed", "num_classes", "batch_size", "batches",
                   "top_k", "bottom_k", "tol", "maxiter", "steps", "probes", "trace_probes", "threshold",
                   "fractions", "precision")


def _check_resumable(kept: dict, now: dict, path: Path) -> None:
    differ = [f"{k} {kept.get(k)!r} there, {now.get(k)!r} now" for k in RESULT_SETTINGS if kept.get(k) != now.get(k)]
    if differ:
        raise SystemExit(f"kanvision analyze hessian: --resume with other settings than {path} was made with ("
                         + "; ".join(differ) + "): rerun with its settings, or give another --out")


def _device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"
