"""Public alias of :mod:`deqbench.inputopt.jiio` (the README's import path)."""

from deqbench.inputopt.jiio import JIIOResult, jiio

__all__ = ["JIIOResult", "jiio"]
