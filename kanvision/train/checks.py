"""Checks a `kanvision fit|validate|test` command passes before anything runs, each failing with one line.

A checkpoint's or shipped weights' model options against the command's flags (Lightning would drop a
contradicting `--model.kan` without a word), the data's input size against a fixed-input model, the classes
a checkpoint was trained on against the data's, and `--pretrained` (validate/test only) read and loaded.
Used by train/cli.py's KanvisionCLI hooks.
"""
from __future__ import annotations

__all__ = ["check_ckpt_classes", "check_ckpt_contradictions", "check_classes", "check_input_size",
           "load_pretrained_into", "pretrained_hparams", "read_pretrained"]


def _plain(value):
    return value.as_dict() if hasattr(value, "as_dict") else value


def check_ckpt_contradictions(given, from_ckpt, ckpt_path, flag: str = "--ckpt_path") -> None:
    """ConfigError when a model option set by a flag or config (not its default) differs from the checkpoint's."""
    import inspect

    from kanvision.train.module import ConfigError, ImageClassifier

    defaults = {name: p.default for name, p in inspect.signature(ImageClassifier.__init__).parameters.items()}
    problems = []
    for key, ckpt_value in _plain(from_ckpt).items():
        if key not in defaults or key == "num_classes":  # num_classes comes from the data (checked on load)
            continue
        value = _plain(given.get(key, defaults[key]))
        if value != defaults[key] and value != _plain(ckpt_value):
            problems.append(f"--model.{key} {value!r} but the checkpoint has {key}={_plain(ckpt_value)!r}")
    if problems:
        raise ConfigError(f"{'; '.join(problems)} ({ckpt_path}). With {flag} the model is the checkpoint's: "
                          "drop those --model options (or the config lines setting them), or give a checkpoint "
                          "trained with them")


def check_input_size(module, datamodule) -> None:
    """ConfigError when the model has a fixed input size (a strict patch embedding) and the data's differs."""
    from timm.layers import PatchEmbed

    from kanvision.train.errors import ConfigError

    size = getattr(getattr(datamodule, "hparams", None), "img_size", None)
    embed = next((m for m in module.modules() if isinstance(m, PatchEmbed)), None)
    if size is None or embed is None or not embed.strict_img_size or embed.img_size is None:
        return
    if tuple(embed.img_size) != (size, size):
        h, w = embed.img_size
        name = getattr(getattr(module, "hparams", None), "model", type(module).__name__)
        raise ConfigError(f"--data.img_size {size} but {name} takes {h}x{w} images only (fixed input size): set "
                          f"--data.img_size {h}, or build it for {size}x{size} with --model.model_kwargs.img_size {size}")


def check_ckpt_classes(ckpt_path, datamodule) -> None:
    """ConfigError when a checkpoint was trained on other classes than the data has."""
    from kanvision.hub.safe_load import load_checkpoint_file

    names = getattr(datamodule, "class_names", None)
    if not names:
        return
    ckpt = load_checkpoint_file(ckpt_path, mmap=True)  # CheckpointError (one line) for an unreadable file
    record = ckpt.get("kanvision") or {}
    n = record.get("num_classes") or (ckpt.get("hyper_parameters") or {}).get("num_classes")
    check_classes(ckpt_path, n, record.get("class_names"), names)


def check_classes(source, n, trained, names, flag: str = "--ckpt_path") -> None:
    """ConfigError when weights trained on `n` classes named `trained` meet data of other classes."""
    from kanvision.train.errors import ConfigError

    if n is not None and n != len(names):
        seen = f" ({_short(trained)})" if trained else ""
        raise ConfigError(f"{source} was trained on {n} classes{seen} but the data has {len(names)} "
                          f"({_short(names)}): give the data it was trained on (--data.dataset / --data.root), "
                          f"or fine-tune from its weights instead of {flag}")
    placeholder = list(names) == [str(i) for i in range(len(names))]  # CIFAR-100 names before its download
    if trained and not placeholder and list(trained) != list(names):
        diff = [f"{i}: {a} vs {b}" for i, (a, b) in enumerate(zip(trained, names)) if a != b]
        raise ConfigError(f"{source} was trained on other classes than the data has (index: checkpoint vs "
                          f"data: {_short(diff)}): give the data it was trained on (--data.dataset / --data.root)")


def read_pretrained(subcommand: str, config) -> tuple:
    """(state dict, export config, name) of --pretrained; ConfigError where the flag does not apply."""
    from kanvision.train.errors import ConfigError
    from kanvision.hub.pretrained import read_source

    if subcommand not in ("validate", "test"):
        raise ConfigError(f"--pretrained is for `kanvision validate` / `kanvision test`, not {subcommand}: "
                          "fit trains from scratch (or resumes with --ckpt_path)")
    if config.get("ckpt_path"):
        raise ConfigError("give --pretrained or --ckpt_path, not both: each says where the weights come from")
    return read_source(config["pretrained"])


def pretrained_hparams(config: dict) -> dict:
    """The ImageClassifier options an export's record fixes (num_classes comes from the data, checked on load)."""
    import inspect

    from kanvision.train.module import ImageClassifier

    params = inspect.signature(ImageClassifier.__init__).parameters
    record = config["kanvision"]
    return {k: v for k, v in record.items() if k in params and k != "num_classes"}


def load_pretrained_into(module, datamodule, state_dict, config, source) -> None:
    """--pretrained's weights into the built model, after the same class check as --ckpt_path."""
    from kanvision.hub.checkpoints import check_finite, check_state_dict

    names = getattr(datamodule, "class_names", None)
    if names:
        record = config["kanvision"]
        check_classes(source, record.get("num_classes"), record.get("class_names"), names, flag="--pretrained")
    check_state_dict(module.model, state_dict, source)
    check_finite(state_dict, source)
    module.model.load_state_dict(state_dict)


def _short(items, n: int = 4) -> str:
    items = list(items)
    return ", ".join(map(str, items[:n])) + (f", ... ({len(items)} in all)" if len(items) > n else "")
