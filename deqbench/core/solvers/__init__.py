"""Batched fixed-point solvers: forward iteration, Anderson (Type-I/II), limited-memory Broyden."""

from deqbench.core.solvers.base import (
    SOLVERS,
    FixedPointSolver,
    ResidualTracker,
    SolverResult,
    make_solver,
    register_solver,
    solve,
)
from deqbench.core.solvers.forward import ForwardIteration
from deqbench.core.solvers.anderson import Anderson
from deqbench.core.solvers.broyden import Broyden

__all__ = [
    "SOLVERS",
    "Anderson",
    "Broyden",
    "FixedPointSolver",
    "ForwardIteration",
    "ResidualTracker",
    "SolverResult",
    "make_solver",
    "register_solver",
    "solve",
]
