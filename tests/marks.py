"""Which cases of a parametrized test run in the fast suite and which in the slow set only.

`pytest` (the README's test command) runs the fast suite: pyproject's addopts deselect `-m slow`. `pytest -m slow`
runs the slow set; CI (.ci/run) runs both, so nothing a slow case checks goes unchecked. A parametrized check
keeps its first case(s) in the fast suite, so every capability is exercised there, and its other cases (more
kinds, models, sizes) move to the slow set.
"""
import pytest

__all__ = ["slow_after"]


def slow_after(values, n: int = 1, unpack: bool = False):
    """`values` for pytest.mark.parametrize: the first `n` as they are (fast suite), the rest marked slow.
    unpack=True: each value is a tuple of several argnames' values."""
    return [v if i < n else pytest.param(*(v if unpack else (v,)), marks=pytest.mark.slow)
            for i, v in enumerate(values)]
