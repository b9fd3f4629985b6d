"""The experiments framework: typed config, provenance, atomic I/O, the trainer, task registry, tables, claims, CLI.

Imports the library layers below it (core, inputopt, models, data, metrics), never :mod:`deqbench.tasks`.
"""
