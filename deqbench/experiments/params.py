"""params.yaml blocks that several tasks share: solver options and the MDEQ classifier/encoder architecture."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from deqbench.experiments.settings import Above, Max, Min, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from deqbench.models.mdeq import MDEQConfig

Fraction = Annotated[float, Above(0), Max(1)]


@dataclass(frozen=True)
class SolveParams:
    """One fixed-point solve (``deqbench.core.solvers``); ``tol: 0`` runs exactly ``max_iter`` iterations."""

    method: Literal["anderson", "broyden", "forward"]
    max_iter: PositiveInt
    tol: NonNegativeFloat
    memory: PositiveInt | None = None  # broyden
    m: PositiveInt | None = None  # anderson memory
    kind: Literal["I", "II"] | None = None  # anderson type
    beta: Fraction | None = None  # anderson mixing
    lam: NonNegativeFloat | None = None  # anderson Tikhonov term
    tau: Fraction | None = None  # forward damping

    def options(self) -> dict[str, Any]:
        """The method-specific options that are set."""
        return {k: getattr(self, k) for k in ("memory", "m", "kind", "beta", "lam", "tau") if getattr(self, k) is not None}


@dataclass(frozen=True)
class SolverParams:
    """Forward and backward (adjoint) solves of a DEQ layer."""

    forward: SolveParams
    backward: SolveParams

    def forward_kwargs(self, cuda_graph: str | None = None) -> dict[str, Any]:
        """Keyword arguments of :func:`deqbench.core.deq.fixed_point` for the forward solve (``cuda_graph=None``:
        leave it out, for model methods that take only the solver options)."""
        f = self.forward
        out = {"solver": f.method, "max_iter": f.max_iter, "tol": f.tol, "solver_options": f.options()}
        return out if cuda_graph is None else {**out, "cuda_graph": cuda_graph}

    def backward_options(self, cuda_graph: str) -> dict[str, Any]:
        """``backward_options`` of :func:`deqbench.core.deq.fixed_point` for the IFT adjoint solve."""
        b = self.backward
        return {"method": b.method, "max_iter": b.max_iter, "tol": b.tol, "cuda_graph": cuda_graph, **b.options()}

    def fixed_point_kwargs(self, cuda_graph: str) -> dict[str, Any]:
        """Forward solve plus IFT backward: everything :func:`fixed_point` needs."""
        return {**self.forward_kwargs(cuda_graph), "backward": "ift", "backward_options": self.backward_options(cuda_graph)}


@dataclass(frozen=True)
class MDEQParams:
    """An MDEQ classifier / encoder (JIIO paper Table 9, ``deqbench.models.mdeq``)."""

    channels: tuple[PositiveInt, ...]
    expansion: PositiveInt
    block_groups: PositiveInt
    fuse_groups: PositiveInt
    post_fuse_groups: PositiveInt
    head_channels: tuple[PositiveInt, ...]
    final_channels: PositiveInt
    weight_norm: bool
    init_std: PositiveFloat = 0.01  # N(0, std) init of the convs that are not weight-normalised (reference: 0.01)
    stem_downsample: Annotated[int, Min(0), Max(2)] = 0  # stride-2 stem convs (ImageNet-style inputs: 2)
    task_dim: NonNegativeInt = 0  # FiLM task-vector size (JIIO meta-learning, spec B.3); 0: no task input

    def config(self, in_channels: int, num_classes: int) -> MDEQConfig:
        return MDEQConfig(in_channels=in_channels, num_classes=num_classes, channels=self.channels,
                          expansion=self.expansion, block_groups=self.block_groups, fuse_groups=self.fuse_groups,
                          post_fuse_groups=self.post_fuse_groups, head_channels=self.head_channels,
                          final_channels=self.final_channels, weight_norm=self.weight_norm, init_std=self.init_std,
                          stem_downsample=self.stem_downsample, task_dim=self.task_dim)
