"""Public alias of :mod:`deqbench.core.deq` (the README's import path)."""

from deqbench.core.deq import fixed_point

__all__ = ["fixed_point"]
