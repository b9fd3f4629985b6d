"""Input optimisation through equilibrium models: the JIIO augmented solver and the PGD / Adam baselines.

Imports only :mod:`deqbench.core`.
"""
