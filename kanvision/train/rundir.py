"""A run directory has one owner, and a run is resumed by name.

One owner: the process that writes a run directory (`<root>/<name>/version_N`: checkpoints, metrics.csv,
status.json) holds an advisory lock on its `run.lock` (fcntl.flock) for its whole life; a second process that
would write there (a second resume of the same checkpoint, a second sweep on the same directory) is refused in
one line naming the holder. The kernel drops the lock when its holder exits, killed or not, so a stale lock
file never blocks anyone. Under DDP only global rank 0 takes it (the other ranks write nothing there).

Resume by name: `newest_resumable` finds the checkpoint `kanvision fit --ckpt_path last` continues from:
the highest version_N of the run that holds an `interrupted-step*.ckpt` (a SIGINT/SIGTERM stop),
`stopped-step*.ckpt` (a max_steps stop in mid-epoch) or `last.ckpt` (the newest epoch), and in it the file of
the highest training step. Steps and version numbers, not file times: a copied run directory has the times of
the copy.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from pathlib import Path

__all__ = ["LOCK_NAME", "RUN_VERSION_ENV", "RESUMABLE", "RunInUse", "checkpoint_step", "lock_run_dir", "newest_resumable",
           "no_resumable_message", "relocate_checkpoint_states", "release_locks", "resolve_last", "resumable_checkpoints",
           "resume_hint"]

# The run version rank 0 numbered, for the ranks it starts (train/cli.py default_loggers sets it, train/ranks.py
# agrees it among ranks started separately).
RUN_VERSION_ENV = "KANVISION_RUN_VERSION"

LOCK_NAME = "run.lock"
RESUMABLE = ("interrupted-step*.ckpt", "stopped-step*.ckpt", "last.ckpt")


class RunInUse(RuntimeError):
    """Another live process holds the directory's lock; the message names it and what to do."""


_HELD: dict[str, int] = {}  # lock path -> open descriptor (the lock lives as long as the descriptor)


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError):
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if text:
            return text.splitlines()[0]
    return "a process that did not say who it is"


def lock_run_dir(directory, advice: str = "") -> Path | None:
    """Take `directory`/run.lock for this process, or raise RunInUse. Taking it again in the same process is a
    no-op. None where the file system has no locks (a warning says the directory is then unguarded)."""
    path = Path(directory) / LOCK_NAME
    key = str(path.resolve())
    if key in _HELD:
        return path
    try:
        import fcntl
    except ImportError:  # Windows: no flock
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        from kanvision.train.atomic import disk_error
        raise (disk_error(e, path) or e) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise RunInUse(f"{Path(directory)} is in use by another process ({holder}): two processes writing one "
                       f"run directory would mix their checkpoints and metrics; wait for that one to end (or stop "
                       f"it){advice}") from None
    except OSError as e:  # ENOLCK / EOPNOTSUPP: some network file systems
        os.close(fd)
        print(f"kanvision: warning: cannot lock {path} ({os.strerror(e.errno)}): nothing stops a second process "
              "from writing into this run directory at the same time", file=sys.stderr)
        return None
    # Who holds it, for the refusal above; on a full disk the lock holds without the note.
    note = (f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
            f"{' '.join(sys.argv)[:300]}\n").encode()
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, note, 0)
    _HELD[key] = fd
    return path


def release_locks() -> None:
    """Give up every lock this process took (the end of a command; in-process callers such as tests)."""
    import fcntl

    while _HELD:
        _, fd = _HELD.popitem()
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            os.close(fd)


def _version_number(path: Path) -> int | None:
    tail = path.name[len("version_"):]
    return int(tail) if path.name.startswith("version_") and tail.isdigit() else None


def checkpoint_step(path) -> int | None:
    """The training step a Lightning checkpoint was saved at; None when it cannot be read (truncated, foreign).
    Read memory-mapped and with weights_only=True: only its counters are looked at, and no code runs."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(ckpt["global_step"])
    except Exception:  # noqa: BLE001 - any unreadable file is "not resumable", listed by the caller
        return None


def resumable_checkpoints(run_root, min_version: int = 0) -> tuple[list[tuple[int, int, float, Path]], list[Path]]:
    """([(version, step, mtime, path)] sorted oldest first, [unreadable files]) of the run `run_root`
    (`<root>/<name>`), versions >= min_version."""
    found, unreadable = [], []
    for version_dir in Path(run_root).glob("version_*"):
        n = _version_number(version_dir)
        if n is None or n < min_version:
            continue
        for pattern in RESUMABLE:
            for p in (version_dir / "checkpoints").glob(pattern):
                try:
                    mtime = p.stat().st_mtime  # follows last.ckpt's link; a dangling one is skipped
                except OSError:
                    continue
                step = checkpoint_step(p)
                if step is None:
                    unreadable.append(p)
                else:
                    found.append((n, step, mtime, p))
    return sorted(found, key=lambda t: t[:3]), unreadable


def newest_resumable(run_root, min_version: int = 0) -> Path | None:
    found, _ = resumable_checkpoints(run_root, min_version)
    return found[-1][3] if found else None


def no_resumable_message(run_root, flag: str = "--ckpt_path last") -> str:
    found, unreadable = resumable_checkpoints(run_root)
    where = f"{Path(run_root)}/version_*/checkpoints/{{{','.join(RESUMABLE)}}}"
    bad = f"; unreadable (truncated or not a checkpoint): {', '.join(map(str, unreadable[:3]))}" if unreadable else ""
    return (f"{flag}: no resumable checkpoint of this run (looked for {where}{bad}): start it without --ckpt_path, "
            "or give the --name and --trainer.default_root_dir it ran with")


def resolve_last(root, name: str | None) -> Path:
    """`--ckpt_path last`: the newest resumable checkpoint of run `name` under `root`, or ConfigError saying
    where it looked. (Lightning's own "last" looks in the new version folder of this command only, finds
    nothing there, and starts the run over.)"""
    from lightning.pytorch.utilities import rank_zero_only

    from kanvision.train.module import ConfigError

    run_root = Path(root) / (name or "kanvision")
    found = newest_resumable(run_root)
    if found is None:
        raise ConfigError(no_resumable_message(run_root))
    if rank_zero_only.rank == 0:
        print(f"kanvision: --ckpt_path last: {found}", file=sys.stderr)
    return found


def resume_hint(run_dir) -> str:
    """What a stopped run can be resumed from: a checkpoint that exists, or that there is none."""
    found = newest_resumable(Path(run_dir).parent) if run_dir is not None else None
    if found is None:
        return "no checkpoint of the run was saved: run it again from the start"
    return (f"the checkpoints saved so far are kept: resume with the same command plus --ckpt_path {found} "
            "(or --ckpt_path last)")


def relocate_checkpoint_states(checkpoint: dict, checkpoint_callbacks) -> None:
    """A run moved or copied elsewhere resumes where it now is: each ModelCheckpoint record in `checkpoint` that
    names another folder than its callback's (resolved for this run) is rewritten to that folder.

    Lightning (ModelCheckpoint.load_state_dict) otherwise drops the best score and top-k list but keeps
    best_model_path, a file of the old place: the first validation after the resume is then "best" whatever
    its score, and the after-fit test would score (or miss) a checkpoint of the old place. Files found under
    the same names in the new folder keep their records; when the best is not there, the record starts over."""
    states = checkpoint.get("callbacks") or {}
    for cb in checkpoint_callbacks:
        state = states.get(cb.state_key)
        new = getattr(cb, "dirpath", None)
        if not isinstance(state, dict) or not new or not state.get("dirpath") or state["dirpath"] == new:
            continue
        old = Path(state["dirpath"])

        def here(p):
            if not p or Path(p).parent != old:
                return None
            moved = Path(new) / Path(p).name
            return str(moved) if moved.exists() else None

        best = here(state.get("best_model_path"))
        kept = {here(k): v for k, v in (state.get("best_k_models") or {}).items()}
        if best and None not in kept:
            state.update(dirpath=new, best_model_path=best, best_k_models=kept,
                         kth_best_model_path=here(state.get("kth_best_model_path")) or "",
                         last_model_path=here(state.get("last_model_path")) or "")
        else:  # as a new callback: nothing of the old place is named
            state.update(dirpath=new, best_model_path="", best_k_models={}, kth_best_model_path="",
                         last_model_path="", best_model_score=cb.best_model_score, kth_value=cb.kth_value)
