"""Writes that cannot corrupt: a file is written under a temporary name in its own directory, flushed to disk
and renamed over the old one, so a reader sees the old file or the new one, never half of one.

A full disk (ENOSPC), a file size limit (EFBIG), a read-only file system (EROFS), an exhausted quota (EDQUOT)
or a permission error becomes a `WriteError` whose message is one line naming the path and the fix; the
temporary file is removed and the file under the normal name stays as it was.

`AtomicCheckpointIO` does the same for Lightning's checkpoints: it is a `CheckpointIO` plugin (Lightning's
public extension point for how checkpoints are written, lightning.pytorch.plugins.io.TorchCheckpointIO), which
the `kanvision fit` CLI hands to its Trainer. Lightning's own `_atomic_save` serialises into memory and then
writes the target path in place: a full disk leaves a truncated file under the checkpoint's own name.
"""
from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

__all__ = ["DISK_ERRNOS", "WriteError", "atomic_write", "atomic_write_bytes", "atomic_write_path", "atomic_write_text",
           "checkpoint_io_class", "disk_error", "tmp_name", "with_atomic_checkpoints", "write_error_line"]

# The errors a user fixes outside the program: room, limits, permissions. Others (EIO...) stay as they are.
DISK_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
               getattr(errno, "EDQUOT", errno.ENOSPC)}

_FIX = {
    errno.ENOSPC: "no space left on the device: free space there, or write the run elsewhere "
                  "(--trainer.default_root_dir DIR, or --out DIR for export/sweep)",
    errno.EFBIG: "file too large for this process's file size limit (ulimit -f) or file system: raise the limit, "
                 "or write the run elsewhere (--trainer.default_root_dir DIR)",
    errno.EROFS: "read-only file system: write the run elsewhere (--trainer.default_root_dir DIR, or --out DIR)",
    errno.EACCES: "permission denied: make the directory writable for this user (chmod/chown), or write the run "
                  "elsewhere (--trainer.default_root_dir DIR, or --out DIR)",
    errno.EPERM: "operation not permitted: make the directory writable for this user, or write the run elsewhere "
                 "(--trainer.default_root_dir DIR, or --out DIR)",
}
if hasattr(errno, "EDQUOT"):
    _FIX[errno.EDQUOT] = ("disk quota exceeded: free space in your quota, or write the run elsewhere "
                          "(--trainer.default_root_dir DIR)")


class WriteError(OSError):
    """A file could not be written for a reason the user fixes (see DISK_ERRNOS); str() is one line."""

    def __str__(self) -> str:
        return self.args[1] if len(self.args) > 1 else super().__str__()


def write_error_line(path, error: OSError) -> str:
    """`cannot write PATH: <what> (<ERRNO name>): <fix>` for an error of DISK_ERRNOS."""
    code = error.errno
    name = errno.errorcode.get(code, str(code))
    return f"cannot write {path}: {_FIX.get(code, os.strerror(code) if code else str(error))} ({name})"


def disk_error(error: BaseException, path=None) -> WriteError | None:
    """The WriteError for `error` (or any exception in its chain) when it is a disk error, else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, WriteError):
            return error
        if isinstance(error, OSError) and error.errno in DISK_ERRNOS:
            where = path or error.filename or "a file of the run"
            return WriteError(error.errno, write_error_line(where, error))
        error = error.__cause__ or error.__context__
    return None


def tmp_name(path: Path) -> Path:
    """The temporary name beside `path` that a write goes to before its rename (hidden, per process)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _fsync_dir(directory: Path) -> None:
    # The rename itself reaches the disk only when the directory is synced; not every system allows it.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _Recording:
    """A file object that remembers the OSError of a failed write (torch's zip writer replaces it)."""

    def __init__(self, f):
        self._f, self.error = f, None

    def write(self, data):
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name):
        return getattr(self._f, name)


def atomic_write_path(path, write_to) -> Path:
    """`write_to(tmp)` writes the temporary file beside `path` by its name (for a library that opens the file
    itself), then fsync and rename over `path`.

    On any error the temporary file is removed and `path` is untouched; disk errors become WriteError."""
    path = Path(path)
    tmp = tmp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_to(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        found = disk_error(e, path)
        if found is not None:
            raise found from None
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write(path, write) -> Path:
    """`write(f)` into a temporary file beside `path` (a binary file object), fsync, rename over `path`
    (atomic_write_path, with the same guarantees)."""
    def write_to(tmp: Path) -> None:
        with open(tmp, "wb") as raw:
            f = _Recording(raw)
            try:
                write(f)
            except BaseException as e:
                # torch.save reports a failed write as a RuntimeError of its own: the OSError under it says why.
                found = disk_error(e, path) or (disk_error(f.error, path) if f.error else None)
                if found is not None:
                    raise found from None
                raise

    return atomic_write_path(path, write_to)


def atomic_write_bytes(path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write(path, lambda f: f.write(text.encode(encoding)))


def checkpoint_io_class():
    """AtomicCheckpointIO, built on first use: importing Lightning costs seconds the sweep tools need not pay."""
    global _CHECKPOINT_IO
    if _CHECKPOINT_IO is None:
        import torch
        from lightning.pytorch.plugins.io import TorchCheckpointIO

        class AtomicCheckpointIO(TorchCheckpointIO):
            """TorchCheckpointIO whose save goes through atomic_write (a temporary name, fsync, rename)."""

            def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
                if storage_options is not None or "://" in str(path):  # remote storage: Lightning's own writer
                    return super().save_checkpoint(checkpoint, path, storage_options)
                # Streamed into the temporary file (no second copy in memory, as Lightning's BytesIO makes).
                atomic_write(path, lambda f: torch.save(checkpoint, f))

        AtomicCheckpointIO.__module__, AtomicCheckpointIO.__qualname__ = __name__, "AtomicCheckpointIO"
        _CHECKPOINT_IO = AtomicCheckpointIO
    return _CHECKPOINT_IO


_CHECKPOINT_IO = None


def __getattr__(name: str):
    # `kanvision.train.atomic.AtomicCheckpointIO` resolves (built on first use): pickle finds the class by that
    # name when a spawned DDP process receives the Trainer.
    if name == "AtomicCheckpointIO":
        return checkpoint_io_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def with_atomic_checkpoints(plugins) -> list:
    """A Trainer's plugins plus AtomicCheckpointIO, unless one of them already says how checkpoints are written."""
    from lightning.pytorch.plugins.io import CheckpointIO

    plugins = list(plugins) if isinstance(plugins, (list, tuple)) else ([] if plugins is None else [plugins])
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(checkpoint_io_class()())
    return plugins
