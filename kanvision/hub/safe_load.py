"""Checkpoint files from outside read without running their code: `torch.load(weights_only=True)` only.

A `.ckpt` is a pickle, and a full unpickle runs whatever callables the file names (a `__reduce__` returning
`os.system` is enough). torch's weights-only unpickler rebuilds tensors and plain data (dicts, lists, numbers,
strings) and refuses everything else; kanvision's own checkpoints need nothing more. Every checkpoint a user
hands to kanvision (export, predict, analyze --checkpoint, and, through check_checkpoint_file, fit/validate/test
--ckpt_path before Lightning loads it) goes through load_checkpoint_file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


__all__ = ["CheckpointError", "check_checkpoint_file", "load_checkpoint_file"]


# Plain-data classes a checkpoint may hold beyond what torch's weights-only unpickler allows by default: paths
# (a hyper-parameter given as a Path). Rebuilding one runs no code of the file's choosing; anything else a file
# names is refused. (Lightning writes hyper-parameters as a plain dict, so its AttributeDict is not needed.)

class CheckpointError(ValueError):
    """A checkpoint or export that cannot be used as asked: missing, corrupt, tampered or mismatched. (Defined here,
    the lowest module that raises it; kanvision.hub.checkpoints re-exports it.)"""

def _safe_globals() -> list:
    import pathlib
    return [pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath]


def _unsafe_globals(path: Path) -> list[str]:
    """The Python objects (module.name) a pickle in `path` asks for that weights-only loading refuses, found by
    scanning the pickle's opcodes (torch.serialization.get_unsafe_globals_in_checkpoint): nothing is run."""
    scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # torch >= 2.5
    if scan is None:
        return []
    try:
        allowed = {f"{g.__module__}.{g.__qualname__}" for g in _safe_globals()}
        return [g for g in scan(str(path)) if g not in allowed]
    except Exception:  # noqa: BLE001 - a name is a courtesy in the message; the refusal stands without it
        return []


def load_checkpoint_file(path: str | os.PathLike, mmap: bool = False) -> Any:
    """What torch.save wrote to `path`, unpickled with `torch.load(weights_only=True)`: tensors and plain data
    (dicts, lists, numbers, strings, the classes of _safe_globals) only, so a crafted file cannot run code here.

    CheckpointError (one line naming the file) when it asks for any other Python object, or is not a readable
    PyTorch file. kanvision's own checkpoints hold plain data only (tests/test_safe_loading.py checks a real one).
    """
    import contextlib
    import pickle

    path = Path(path)
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    try:
        with allow(_safe_globals()) if allow is not None else contextlib.nullcontext():
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            first = (str(e).strip().splitlines() or [""])[0]
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (corrupt pickle: {first})") from None
        names = _unsafe_globals(path)
        if not names and "GLOBAL" not in str(e):  # e.g. "Unsupported operand 103": bytes that are no pickle
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?)") from None
        named = f" ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})" if names else ""
        raise CheckpointError(
            f"{path}: refused: it holds Python objects other than tensors and plain data{named}, and unpickling "
            "them could run code from the file; kanvision reads checkpoints with torch.load(weights_only=True) only. "
            "Load it yourself only if you trust its source, or ask for a safetensors export (`kanvision export`)"
        ) from None
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: a directory, not a checkpoint file") from None
    except Exception as e:  # truncated zip, garbage bytes: all mean "not a usable file"
        if mmap and "mmap can only be used" in str(e):  # the legacy (non-zip) format, or not a torch file at all
            return load_checkpoint_file(path, mmap=False)
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def check_checkpoint_file(path: str | os.PathLike) -> None:
    """CheckpointError unless `path` loads with weights_only=True: the check to run on a user's file before a
    library that may unpickle it fully (Lightning's --ckpt_path loading leaves weights_only at None, which
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 turns into a full unpickle). mmap: tensors are not read into memory."""
    load_checkpoint_file(path, mmap=True)
