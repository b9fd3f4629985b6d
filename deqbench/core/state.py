"""Flattening of solver states.

A state is a tensor of shape (B, ...) or a tuple/list of such tensors (the
multi-resolution branches of an MDEQ).  Solvers work on one (B, D) matrix; a
:class:`StateSpec` converts between the two without copying on the way in
(views) and with one concatenation on the way out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch
from torch import Tensor

State = Union[Tensor, tuple[Tensor, ...], list[Tensor]]


@dataclass(frozen=True)
class StateSpec:
    """Shapes of the parts of a state, enough to flatten and rebuild it."""

    shapes: tuple[torch.Size, ...]  # per-part shape without the batch dim
    kind: type  # Tensor, tuple or list

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(torch.Size(s).numel()) for s in self.shapes)

    @property
    def dim(self) -> int:
        return sum(self.sizes)

    def unflatten(self, flat: Tensor) -> State:
        """(B, D) -> state; the parts are views of ``flat``."""
        batch = flat.shape[0]
        if self.kind is Tensor:
            return flat.view(batch, *self.shapes[0])
        parts = torch.split(flat, self.sizes, dim=1)
        rebuilt = [p.reshape(batch, *s) for p, s in zip(parts, self.shapes)]
        return self.kind(rebuilt)

    def flatten(self, state: State) -> Tensor:
        """state -> (B, D)."""
        if isinstance(state, Tensor):
            if self.kind is not Tensor:
                raise TypeError("state is a tensor but the solver was started with a tuple/list state")
            return state.reshape(state.shape[0], -1)
        if len(state) != len(self.shapes):
            raise ValueError(f"state has {len(state)} parts, expected {len(self.shapes)}")
        return torch.cat([p.reshape(p.shape[0], -1) for p in state], dim=1)


def spec_of(state: State) -> StateSpec:
    """Describe ``state``; validates batch sizes, dtypes and devices agree."""
    if isinstance(state, Tensor):
        if state.dim() < 1:
            raise ValueError("a state tensor needs a leading batch dimension, got a scalar")
        return StateSpec((state.shape[1:],), Tensor)
    if not isinstance(state, (tuple, list)) or len(state) == 0:
        raise TypeError(f"state must be a tensor or a non-empty tuple/list of tensors, got {type(state).__name__}")
    first = state[0]
    for i, part in enumerate(state):
        if not isinstance(part, Tensor):
            raise TypeError(f"state part {i} is {type(part).__name__}, not a tensor")
        if part.shape[0] != first.shape[0]:
            raise ValueError(f"state part {i} has batch {part.shape[0]}, part 0 has {first.shape[0]}")
        if part.dtype != first.dtype or part.device != first.device:
            raise ValueError(f"state part {i} is {part.dtype} on {part.device}; part 0 is {first.dtype} on {first.device}")
    return StateSpec(tuple(p.shape[1:] for p in state), type(state))


def flat_map(fn: Callable[[State], State], spec: StateSpec) -> Callable[[Tensor], Tensor]:
    """Wrap a state -> state map as a (B, D) -> (B, D) map."""

    def mapped(flat: Tensor) -> Tensor:
        return spec.flatten(fn(spec.unflatten(flat)))

    return mapped


def detach_state(state: State) -> State:
    if isinstance(state, Tensor):
        return state.detach()
    return type(state)(p.detach() for p in state)


def zeros_like_state(state: State) -> State:
    if isinstance(state, Tensor):
        return torch.zeros_like(state)
    return type(state)(torch.zeros_like(p) for p in state)


def state_parts(state: State) -> Sequence[Tensor]:
    return (state,) if isinstance(state, Tensor) else tuple(state)
