"""Messages from torch and Lightning that a kanvision user cannot act on, filtered in this one place.

Each filter drops one message, matched by its text, and nothing else: a warning that asks the user to change
something they control (log_every_n_steps, a missing test folder...) still shows.

    "No CUDA runtime is found, using CUDA_HOME=..."   torch.utils.cpp_extension's logger, printed on every
        compiled run on a CPU-only machine where a CUDA toolkit is installed: inductor's CPU backend probes for
        CUDA, and nothing is wrong (installed by quiet_compile(), which kinds/compile.py calls before compiling).
    "💡 Tip: ..."                                    Lightning advertising its cloud services (litlogger,
        litmodels) on every Trainer.
    "Loading `train_dataloader` to estimate number of stepping batches."   Lightning explaining why it builds
        the training loader early: kanvision's WarmupCosine asks for the run's step count.
    "`isinstance(treespec, LeafSpec)` is deprecated"   a FutureWarning torch raises inside Lightning's own
        pytree helper (lightning/pytorch/utilities/_pytree.py) at every logged step: Lightning's to fix.

`install()` (all of them) runs at the start of the `kanvision` command (kanvision/cli.py); a library user who
imports kanvision keeps torch's and Lightning's output untouched, except the CUDA_HOME line of compiled kernels.
"""
from __future__ import annotations

import logging
import warnings

__all__ = ["install", "quiet_compile"]

_DROPPED_LOG_PREFIXES = {
    "torch.utils.cpp_extension": ("No CUDA runtime is found",),
    # lightning_utilities' rank_zero_info logs through whichever of these two modules was imported last.
    "lightning.pytorch.utilities.rank_zero": ("💡 Tip:", "Loading `train_dataloader` to estimate number of stepping"),
    "lightning.fabric.utilities.rank_zero": ("💡 Tip:", "Loading `train_dataloader` to estimate number of stepping"),
}
_DROPPED_WARNINGS = (  # (message regex, category)
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
)


class _DropPrefixes(logging.Filter):
    """Drops records whose message starts with one of `prefixes`; marked so a second install adds no copy."""

    kanvision_quiet = True

    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a record that cannot format is not ours to drop
            return True
        return not message.startswith(self.prefixes)


def _add_filter(logger_name: str) -> None:
    logger = logging.getLogger(logger_name)
    if not any(getattr(f, "kanvision_quiet", False) for f in logger.filters):
        logger.addFilter(_DropPrefixes(_DROPPED_LOG_PREFIXES[logger_name]))


def quiet_compile() -> None:
    """Drop the CUDA_HOME line torch.utils.cpp_extension logs when inductor compiles on a CPU-only machine."""
    _add_filter("torch.utils.cpp_extension")


def install() -> None:
    """Every filter of the module docstring; idempotent."""
    for name in _DROPPED_LOG_PREFIXES:
        _add_filter(name)
    for message, category in _DROPPED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
