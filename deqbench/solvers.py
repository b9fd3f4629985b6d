"""Public alias of :mod:`deqbench.core.solvers` (the README's import path)."""

from deqbench.core.solvers import *  # noqa: F401,F403
from deqbench.core.solvers import __all__  # noqa: F401
