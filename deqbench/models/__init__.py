"""Equilibrium models."""
