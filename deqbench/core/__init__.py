"""The core layer: batched fixed-point solvers, differentiable equilibria, Jacobian regularisation, weight norms.

Nothing here imports from any other deqbench layer.
"""
