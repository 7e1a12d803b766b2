"""`kanvision analyze hessian | memory | splines | throughput`: JSON / markdown / PNG outputs for checkpoints or zoo models.

Models: `--checkpoint PATH` (repeatable; kanvision.load_pretrained) or `--model NAME --kan KIND ...`
(repeatable kinds; untrained, built with timm.create_model). Data for the Hessian: `--data synthetic`
(seeded Gaussian images, random labels) or `--data imagefolder --data-root DIR` (DIR/test/<class>/*.jpg,
resized to the model's input size and normalised with its mean/std; the Hessian reads training images, see
kanvision.analysis.hessian_cli). `--device` (every subcommand; default
cuda when available, else cpu): models and data are moved there and timings synchronize that device.
Results go to stdout and files; progress and measured time estimates to stderr (kanvision.analysis.progress),
off with `--no-progress`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from kanvision.analysis.inputs import _batches, _input_shape, _models, _reporter, _settings
from kanvision.device import DeviceError, default_device, resolve_device

SUBCOMMANDS = ("hessian", "memory", "splines", "throughput")


def memory_main(args) -> list[dict]:
    from kanvision.analysis.memory import add_mlp_ratios, impl_layers, memory_sweep, memory_table, set_kan_impl
    from kanvision.analysis.plots import plot_memory

    rows = []
    models = _models(args)
    impls = list(dict.fromkeys(args.impl))
    with _reporter(args) as rep:
        for i, (label, model) in enumerate(models):
            shape = _input_shape(model)
            state = {k: v.clone() for k, v in model.state_dict().items()}
            as_built = {name: m.impl for name, m in impl_layers(model)}
            # A model without KAN layers has no storage mode: measured once, impl "n/a".
            modes = impls if as_built else [None]
            for mode in modes:
                if mode is not None:
                    try:
                        set_kan_impl(model, mode)
                    except ValueError as e:
                        raise SystemExit(f"kanvision analyze memory: {label}: {e}; pass --impl reference") from None

                def build(model=model, state=state):
                    model.load_state_dict(state)
                    return model
                cap = args.max_memory_gb * 2**30 if args.max_memory_gb else None
                index = f" (model {i + 1}/{len(models)})" if len(models) > 1 else ""
                name = f"memory {label} impl={mode}{index}" if mode else f"memory {label}{index}"
                # Counted in images, not batch sizes: a step's cost grows with its batch, so the estimate holds.
                with rep.phase(name, total=sum(args.batch_sizes), unit="image") as phase:
                    for r in memory_sweep(build, args.batch_sizes, shape,
                                          getattr(model, "num_classes", args.num_classes), device=args.device,
                                          cap_bytes=cap, progress=lambda bs: phase.advance(bs, f"batch {bs} done"),
                                          impl=mode):
                        rows.append(dict(r, model=label))
            for name, m in impl_layers(model):  # the model as it was built
                m.impl = as_built[name]
    mlp = add_mlp_ratios(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.json").write_text(json.dumps({"settings": _settings(args), "mlp_reference": mlp, "rows": rows},
                                                indent=1, default=str))
    lines = memory_table(rows, mlp)
    (out / "memory.md").write_text("\n".join(lines) + "\n")
    plot_memory(rows, out / "memory.png")
    print("\n".join(lines))
    return rows


def splines_main(args) -> list[dict]:
    from kanvision.analysis.splines import capture_inputs, kan_layers, plot_edges

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {}
    with _reporter(args) as rep:
        for label, model in _models(args):
            layers = kan_layers(model)
            if not layers:
                from kanvision.kinds import get_kind, kind_names
                able = [k for k in kind_names() if hasattr(get_kind(k).layer, "edge_values")]
                raise SystemExit(f"kanvision analyze splines: {label} has no KAN layer with edge functions "
                                 f"(build it with --kan {' or --kan '.join(able)})")
            if not -len(layers) <= args.layer < len(layers):
                raise SystemExit(f"kanvision analyze splines: --layer {args.layer} out of range: "
                                 f"{label} has {len(layers)} KAN layers")
            name, layer = layers[args.layer]
            with rep.phase(f"splines {label}", total=1, unit="plot") as phase:
                x = torch.cat([b[0] for b in _batches(args, model)]).to(args.device)
                png = out / f"splines_{label.replace(':', '_')}.png"
                result[label] = {"layer": name, "edges": plot_edges(layer, capture_inputs(model, layer, x), png,
                                                                    top=args.top, title=f"{label} {name}")}
                phase.advance()
            print(f"{label} layer {name}: top edges {result[label]['edges'][:3]} -> {png}")
    (out / "splines.json").write_text(json.dumps({"settings": _settings(args), "models": result}, indent=1,
                                                 default=str))
    return result


def throughput_main(args) -> list[dict]:
    from kanvision.analysis.throughput import throughput

    rows = []
    models = _models(args)
    with _reporter(args) as rep:
        for i, (label, model) in enumerate(models):
            index = f" (model {i + 1}/{len(models)})" if len(models) > 1 else ""
            with rep.phase(f"throughput {label}{index}", total=2 * (args.warmup + args.repeats),
                           unit="call") as phase:
                row = throughput(model, _input_shape(model), getattr(model, "num_classes", args.num_classes),
                                 args.batch_size, args.warmup, args.repeats, args.device,
                                 progress=lambda detail: phase.advance(detail=detail))
                rows.append(dict(row, model=label))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.json").write_text(json.dumps({"settings": _settings(args), "rows": rows}, indent=1, default=str))
    lines = [f"device {rows[0]['device']}, {rows[0]['threads']} threads, batch {args.batch_size}, "
             f"{args.warmup} warm-up + median of {args.repeats}", "",
             "| model | train img/s | inference img/s |", "|---|---|---|"]
    lines += [f"| {r['model']} | {r['train_images_per_s']:.1f} | {r['inference_images_per_s']:.1f} |" for r in rows]
    (out / "throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kanvision analyze")
    sub = p.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        s = sub.add_parser(name)
        s.add_argument("--checkpoint", action="append")
        s.add_argument("--model")
        s.add_argument("--kan", action="append", help="none or a KAN kind (`kanvision kinds`); repeat to compare")
        s.add_argument("--model-kwargs", help='JSON, e.g. \'{"img_size": 32}\'')
        s.add_argument("--kan-kwargs", help='JSON for the KAN layers of zoo models only (not kan none), e.g. '
                                            '\'{"compile": true}\'')
        s.add_argument("--num-classes", type=int, default=10)
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--out", default=f"analysis_out/{name}")
        s.add_argument("--device", default=default_device(), help="cpu, cuda or cuda:N (default: %(default)s)")
        s.add_argument("--no-progress", action="store_true",
                       help="no progress or time estimates on stderr (results on stdout are the same)")
    from kanvision.analysis.hessian_cli import add_arguments
    add_arguments(sub.choices["hessian"])
    sp = sub.choices["splines"]
    sp.add_argument("--layer", type=int, default=0, help="index among the model's KAN layers, in module order")
    sp.add_argument("--top", type=int, default=9, help="edges to plot, most important first")
    for h in (sub.choices["hessian"], sp):
        h.add_argument("--data", choices=("synthetic", "imagefolder"), default="synthetic")
        h.add_argument("--data-root")
        h.add_argument("--batch-size", type=int, default=64)
        h.add_argument("--batches", type=int, default=1)
    t = sub.choices["throughput"]
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--warmup", type=int, default=2)
    t.add_argument("--repeats", type=int, default=5)
    m = sub.choices["memory"]
    m.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 128])
    m.add_argument("--max-memory-gb", type=float, help="CPU cap: points measured above it are shown as OOM")
    m.add_argument("--impl", nargs="+", choices=("fast", "reference"), default=["fast", "reference"],
                   help="storage modes to measure every KAN model in: fast = our recomputing kernels, reference = "
                        "plain autograd storing the basis (efficient-kan style); models without KAN layers are "
                        "measured once (impl n/a) (default: %(default)s)")
    return p


def main(argv: list[str] | None = None):
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        args.device = resolve_device(args.device)
    except DeviceError as e:
        raise SystemExit(f"kanvision analyze {args.command}: {e}") from None
    from kanvision.analysis.hessian_cli import hessian_main
    return {"hessian": hessian_main, "memory": memory_main, "splines": splines_main, "throughput": throughput_main}[args.command](args)
