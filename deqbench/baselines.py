"""Public alias of :mod:`deqbench.inputopt.baselines` (the README's import path)."""

from deqbench.inputopt.baselines import InputOptResult, adam, pgd

__all__ = ["InputOptResult", "adam", "pgd"]
