"""What the `kanvision analyze` subcommands share: the models to analyse (checkpoints or zoo models), their input
shape and evaluation batches, the progress reporter and the settings recorded with results."""
from __future__ import annotations

import json
from pathlib import Path

import torch


def _json_arg(flag: str, text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"kanvision analyze: {flag} is not valid JSON ({e.msg}): {text!r}; "
                         "e.g. '{\"compile\": true}'") from None
    if not isinstance(value, dict):
        raise SystemExit(f"kanvision analyze: {flag} must be a JSON object, got {text!r}")
    return value


def _run_label(path, config: dict) -> str:
    """'arch:kan', with the run's name when the file sits in a run's <name>/version_N/checkpoints/."""
    label = f"{config['architecture']}:{config['model_args'].get('kan') or 'none'}"
    parts = Path(path).parts
    if len(parts) >= 4 and parts[-2] == "checkpoints" and parts[-3].startswith("version_"):
        label += f" ({parts[-4]})"
    return label


def _check_model_flags(args, path, config: dict) -> None:
    """SystemExit (one line) when --model / --kan / --model-kwargs / --kan-kwargs ask for another model than the
    checkpoint holds: its weights fix the model, and the flags would otherwise be dropped without a word."""
    from kanvision.kinds import normalize_kan_kind

    problems = []
    if args.model and args.model != config["architecture"]:
        problems.append(f"--model {args.model}")
    have = config["model_args"].get("kan") or "none"
    for kind in args.kan or []:
        try:
            same = normalize_kan_kind(kind) == normalize_kan_kind(have)
        except ValueError:
            same = False
        if not same:
            problems.append(f"--kan {kind}")
    problems += [flag for flag, value in (("--model-kwargs", args.model_kwargs), ("--kan-kwargs", args.kan_kwargs))
                 if value]
    if problems:
        raise SystemExit(f"kanvision analyze: {', '.join(problems)} cannot apply to --checkpoint {path}, which holds "
                         f"{config['architecture']} kan={have}: the checkpoint fixes the model; drop those flags, or "
                         "analyse an untrained model with --model/--kan and no --checkpoint")


def _models(args) -> list[tuple[str, torch.nn.Module]]:
    import timm
    import kanvision  # noqa: F401  registers the zoo
    out = []
    if args.checkpoint:
        from kanvision.hub.checkpoints import CheckpointError, load_pretrained
        for path in args.checkpoint:
            try:
                model = load_pretrained(path)
            except (CheckpointError, FileNotFoundError) as e:
                raise SystemExit(f"kanvision analyze: {e}") from None
            config = model.kanvision_config
            _check_model_flags(args, path, config)
            # Label by what the weights are (runs all end in last.ckpt), the file only to break ties.
            label = Path(path).name if Path(path).is_dir() else _run_label(path, config)
            if any(label == seen for seen, _ in out):
                label = f"{label} ({path})"
            out.append((label, model.to(args.device)))
        return out
    if not args.model:
        raise SystemExit("kanvision analyze: give --checkpoint PATH or --model NAME (with --kan KIND ...)")
    extra = _json_arg("--model-kwargs", args.model_kwargs)
    kan_extra = _json_arg("--kan-kwargs", args.kan_kwargs)
    for kind in args.kan or [None]:
        kw = dict(extra, num_classes=args.num_classes)
        if kind is not None and args.model.startswith("kan_"):
            kw["kan"] = kind
            if kind != "none" and kan_extra:
                kw["kan_kwargs"] = {**kw.get("kan_kwargs", {}), **kan_extra}
        elif kind not in (None, "none"):
            # A plain timm model that takes `mlp_layer` (ViT, Mixer): swap in the KAN MLP drop-in.
            from kanvision.layers import kan_mlp_layer
            kw["mlp_layer"] = kan_mlp_layer(kind)
        torch.manual_seed(args.seed)
        try:
            model = timm.create_model(args.model, **kw)
        except Exception as e:  # unknown name, bad kan kind: timm / the factory name the problem
            raise SystemExit(f"kanvision analyze: cannot build {args.model!r} with {kw}: {e}") from None
        out.append((f"{args.model}:{kind or 'default'}", model.to(args.device)))
    return out


def _input_shape(model) -> tuple[int, ...]:
    shape = tuple((getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 32, 32)))
    img = getattr(getattr(model, "patch_embed", None), "img_size", None)  # img_size= overrides the cfg
    return (shape[0], *img) if img is not None else shape


def _batches(args, model) -> list[tuple[torch.Tensor, torch.Tensor]]:
    shape = _input_shape(model)
    g = torch.Generator().manual_seed(args.seed)
    if args.data == "synthetic":
        n = getattr(model, "num_classes", args.num_classes)
        return [(torch.randn(args.batch_size, *shape, generator=g),
                 torch.randint(0, n, (args.batch_size,), generator=g)) for _ in range(args.batches)]
    from torchvision import datasets
    root = Path(args.data_root or "")
    root = root / "test" if (root / "test").is_dir() else root
    if not root.is_dir():
        raise SystemExit(f"kanvision analyze: no image folder at {root}: pass --data-root DIR with "
                         "DIR/test/<class>/*.jpg, or --data synthetic")
    # kanvision's evaluation transform (whole image, bilinear, the model's mean/std) at the size the model runs at.
    from kanvision.data.transforms import eval_transform
    tf = eval_transform(model, img_size=shape[1:])
    from kanvision.data.images import open_rgb
    ds = datasets.ImageFolder(str(root), tf, loader=open_rgb)  # 16-bit, float, alpha files read as training reads them
    idx = torch.randperm(len(ds), generator=g)[:args.batch_size * args.batches].tolist()
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, idx), batch_size=args.batch_size)
    return list(loader)


def _reporter(args):
    from kanvision.analysis.progress import Reporter
    return Reporter(enabled=not args.no_progress)


def _settings(args) -> dict:
    """The settings recorded with the results: how the numbers were made (not how progress was shown)."""
    return {k: v for k, v in vars(args).items() if k != "no_progress"}
