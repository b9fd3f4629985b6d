"""The typed settings each job of the ``implicit2`` task reads, from the validated block (:mod:`.params`).

:class:`Implicit2Settings` hands each stage exactly the slice it reads (the job's rerun hash covers it), and
:func:`build_settings` checks the block's cross-references, naming the offending key (spec section C).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deqbench.data.implicit2 import NATURAL_SOURCES, TEXT_CROPS
from deqbench.experiments.config import ConfigError, ProfileInfo
from deqbench.models.implicit_repr import IMAGE_SIZE_TAGS, VIDEO_SIZE_TAGS, ImplicitReprConfig, parse_size_tag
from deqbench.tasks.implicit2.params import (
    CostParams, GradientOrderParams, ImageDataParams, Implicit2Params, ModelParams, Order,
    SolverParams, TrainParams, VideoParams,
)

__all__ = ["FitJob", "VideoJob", "GradientOrderJob", "CostJob", "AmortizationJob", "TableJob", "Implicit2Settings",
           "build_settings", "model_config", "order_label", "EMBEDDED_IMAGES", "TABLE_NAMES", "Order"]

#: Images per set of the embedded stand-ins (spec C.7): 5 natural photos, 5 text crops.
EMBEDDED_IMAGES = {"natural": len(NATURAL_SOURCES), "text": len(TEXT_CROPS)}
TABLE_NAMES = ("implicit2_generalization", "implicit2_video", "implicit2_gradient_order", "implicit2_cost",
               "implicit2_amortization", "implicit2_pictures")


def order_label(order: Order) -> str:
    """T as the tables print it: '0', '1', ... or 'inf' (the IFT solve; spec C.2)."""
    return str(order)


def model_config(model: ModelParams, solver: SolverParams, filter: str, size: str, implicit: bool, *,
                 amortize_iters: int = 1, in_features: int = 2, input_scale: float | None = None,
                 norm: str | None = None, order: Order | None = None) -> ImplicitReprConfig:
    """The library config of one model (spec C.1-C.2): the block's shared hyper-parameters, this filter and size,
    and optionally another input scale, norm (video) or backward order T (the Fig. 4 sweep; "inf": IFT)."""
    backward, neumann_order = solver.backward, solver.neumann_order
    if order is not None:
        backward, neumann_order = ("ift", 1) if order == "inf" else ("neumann", int(order))
    return ImplicitReprConfig(
        filter=filter, implicit=implicit, size=size, in_features=in_features, out_features=3,
        input_scale=model.input_scale if input_scale is None else input_scale,
        gabor_alpha=model.gabor_alpha, gabor_alpha_injection=model.gabor_alpha_injection,
        norm=model.norm if norm is None else norm, target_norm=model.target_norm,
        power_iterations=model.power_iterations, solver=solver.method, max_iter=solver.max_iter, tol=solver.tol,
        check_every=solver.check_every, backward=backward, neumann_order=neumann_order,
        backward_max_iter=solver.backward_max_iter, backward_tol=solver.backward_tol, amortize_iters=amortize_iters)


# ----------------------------------------------------------------------------- what each job reads


@dataclass(frozen=True)
class FitJob:
    """One image of the generalisation table: every size x {explicit, implicit} of one filter (spec C.3)."""

    set_name: str
    image: int
    filter: str
    sizes: tuple[tuple[str, str], ...]  # (paper tag, our tag)
    data: ImageDataParams
    data_root: str
    model: ModelParams
    solver: SolverParams
    train: TrainParams
    seed: int
    reconstruct: tuple[str, ...]  # our tags whose test-pixel reconstructions are kept (the pictures)
    device: str


@dataclass(frozen=True)
class VideoJob:
    """One filter of the video table: every size x {explicit, implicit} (spec C.4 / C.7)."""

    filter: str
    video: VideoParams
    model: ModelParams
    solver: SolverParams
    data_root: str
    device: str


@dataclass(frozen=True)
class GradientOrderJob:
    sweep: GradientOrderParams
    data: ImageDataParams
    data_root: str
    model: ModelParams
    solver: SolverParams
    train: TrainParams
    device: str


@dataclass(frozen=True)
class CostJob:
    cost: CostParams
    data: ImageDataParams
    data_root: str
    model: ModelParams
    solver: SolverParams
    train: TrainParams
    device: str


@dataclass(frozen=True)
class AmortizationJob:
    """One image of the amortisation check: amortised vs full solve every step, same init (spec C.2)."""

    set_name: str
    image: int
    filter: str
    size: str  # our tag
    paper_size: str
    warmup_steps: int
    seed: int
    data: ImageDataParams
    data_root: str
    model: ModelParams
    solver: SolverParams
    train: TrainParams
    device: str


@dataclass(frozen=True)
class TableJob:
    """What a table reads: its name, the profile, and the slice of the block that says which runs it holds."""

    table: str
    profile: str
    scale: str
    block: Any  # the experiment's params (GeneralizationParams, VideoParams, ...)
    data: ImageDataParams


@dataclass(frozen=True)
class Implicit2Settings:
    """The validated block plus the profile's common keys; its methods give each job its settings."""

    info: ProfileInfo
    params: Implicit2Params

    @property
    def where(self) -> str:
        """The block's dotted path in params.yaml, for error messages."""
        return f"profiles.{self.info.name}.implicit2"

    def image_indices(self, set_name: str) -> tuple[int, ...]:
        """Indices of the images of a set the generalisation table trains on (spec C.3: a new model per image)."""
        return tuple(range(self.params.data.images))

    def fit(self, set_name: str, image: int, filter: str) -> FitJob:
        """The generalisation job of one (set, image, filter) (spec C.3); keeps reconstructions for the pictures."""
        p = self.params
        g = p.generalization
        if set_name not in g.sets:
            raise ConfigError(f"set {set_name!r} is not in {self.where}.generalization.sets {list(g.sets)}")
        if filter not in g.filters:
            raise ConfigError(f"filter {filter!r} is not in {self.where}.generalization.filters {list(g.filters)}")
        self._check_image(image, "image")
        pictures = p.pictures
        keep = (g.sizes[pictures.size],) if filter == pictures.filter and (set_name, image) in pictures.images else ()
        return FitJob(set_name, image, filter, tuple(g.sizes.items()), p.data, self.info.data_root, p.model,
                      p.solver, p.train, g.seed, keep, self.info.device)

    def video(self, filter: str) -> VideoJob:
        """The video job of one filter (spec C.4 / C.7)."""
        p = self.params
        if filter not in p.video.filters:
            raise ConfigError(f"filter {filter!r} is not in {self.where}.video.filters {list(p.video.filters)}")
        return VideoJob(filter, p.video, p.model, p.solver, self.info.data_root, self.info.device)

    def gradient_order(self) -> GradientOrderJob:
        """The Fig. 4 job (spec C.2): its own image source and resolution."""
        p = self.params
        go = p.gradient_order
        data = ImageDataParams(go.source, go.resolution, go.image + 1)
        return GradientOrderJob(go, data, self.info.data_root, p.model, p.solver, p.train, self.info.device)

    def cost(self) -> CostJob:
        """The cost-figure job (spec C.6)."""
        p = self.params
        return CostJob(p.cost, p.data, self.info.data_root, p.model, p.solver, p.train, self.info.device)

    def amortization(self, image: int) -> AmortizationJob:
        """The amortisation-check job of one image (spec C.2, IMP2-10)."""
        p = self.params
        a = p.amortization
        if image not in a.images:
            raise ConfigError(f"image {image} is not in {self.where}.amortization.images {list(a.images)}")
        return AmortizationJob(a.set, image, a.filter, p.generalization.sizes[a.size], a.size, a.warmup_steps, a.seed,
                               p.data, self.info.data_root, p.model, p.solver, p.train, self.info.device)

    def table(self, name: str) -> TableJob:
        """What a table or figure reads: its block of the settings (spec C.5)."""
        p = self.params
        blocks = {"implicit2_generalization": p.generalization, "implicit2_video": p.video,
                  "implicit2_gradient_order": p.gradient_order, "implicit2_cost": p.cost,
                  "implicit2_amortization": p.amortization, "implicit2_pictures": p.pictures}
        if name not in blocks:
            raise ConfigError(f"unknown (Implicit)^2 table {name!r}; known: {list(blocks)}")
        return TableJob(name, self.info.name, self.info.scale, blocks[name], p.data)

    def _check_image(self, image: int, key: str) -> None:
        """An image index within data.images (spec C.4 / C.7), else a ConfigError naming the key."""
        if not 0 <= image < self.params.data.images:
            raise ConfigError(f"{key} {image} is outside {self.where}.data.images ({self.params.data.images} per "
                              f"set: indices 0..{self.params.data.images - 1})")


# ----------------------------------------------------------------------------- validation


def _check_sizes(where: str, sizes: Any, paper_tags: tuple[str, ...]) -> None:
    """Size mappings are keyed by the paper's tags and map to valid 'nL-dD' tags (spec C.3-C.7)."""
    if tuple(sorted(sizes)) != tuple(sorted(paper_tags)):
        raise ConfigError(f"{where}: keys must be the paper's tags {list(paper_tags)}, got {list(sizes)}")
    for paper_tag, tag in sizes.items():
        try:
            parse_size_tag(tag)
        except ValueError as err:
            raise ConfigError(f"{where}.{paper_tag}: {err}") from None


def _check_tag(where: str, tag: str) -> None:
    """A valid 'nL-dD' tag (spec C.1 'Sizes'), else a ConfigError naming ``where``."""
    try:
        parse_size_tag(tag)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None


def build_settings(info: ProfileInfo, params: Implicit2Params) -> Implicit2Settings:
    """Check the block: an even R, image indices within the sets, size mappings keyed by the paper's tags, and
    every experiment's filter / size / set among the generalisation grid's (spec C.3-C.7)."""
    where = f"profiles.{info.name}.implicit2"
    d, g, v = params.data, params.generalization, params.video
    if d.resolution % 2:
        raise ConfigError(f"{where}.data.resolution: R must be even for the [::2, ::2] / [1::2, 1::2] split, "
                          f"got {d.resolution}")
    if d.source == "embedded" and d.images > min(EMBEDDED_IMAGES.values()):
        raise ConfigError(f"{where}.data.images: the embedded stand-ins have {EMBEDDED_IMAGES} images per set, "
                          f"got {d.images}")
    for key, values in (("generalization.sets", g.sets), ("generalization.filters", g.filters),
                        ("video.filters", v.filters), ("gradient_order.orders", params.gradient_order.orders),
                        ("cost.layers", params.cost.layers), ("cost.solver_iterations", params.cost.solver_iterations),
                        ("amortization.images", params.amortization.images), ("pictures.images", params.pictures.images)):
        if not values or len(set(values)) != len(values):
            raise ConfigError(f"{where}.{key}: must be a non-empty list without repeats, got {list(values)}")
    _check_sizes(f"{where}.generalization.sizes", g.sizes, IMAGE_SIZE_TAGS)
    _check_sizes(f"{where}.video.sizes", v.sizes, VIDEO_SIZE_TAGS)
    go = params.gradient_order
    _check_tag(f"{where}.gradient_order.size", go.size)
    if go.resolution % 2:
        raise ConfigError(f"{where}.gradient_order.resolution: R must be even, got {go.resolution}")
    if go.source == "embedded" and go.image >= EMBEDDED_IMAGES[go.set]:
        raise ConfigError(f"{where}.gradient_order.image: the embedded {go.set} set has {EMBEDDED_IMAGES[go.set]} "
                          f"images, got index {go.image}")
    a = params.amortization
    for key, block in (("amortization", a), ("pictures", params.pictures)):
        if block.size not in g.sizes:
            raise ConfigError(f"{where}.{key}.size: {block.size!r} is not a paper tag of generalization.sizes "
                              f"{list(g.sizes)}")
    if a.set not in g.sets:
        raise ConfigError(f"{where}.amortization.set: {a.set!r} is not in generalization.sets {list(g.sets)}")
    if any(i >= d.images for i in a.images):
        raise ConfigError(f"{where}.amortization.images: indices must be below data.images ({d.images}), got "
                          f"{list(a.images)}")
    pictures = params.pictures
    if pictures.filter not in g.filters:
        raise ConfigError(f"{where}.pictures.filter: {pictures.filter!r} is not in generalization.filters")
    for set_name, index in pictures.images:
        if set_name not in g.sets or index >= d.images:
            raise ConfigError(f"{where}.pictures.images: ({set_name}, {index}) is not an image of the generalisation "
                              f"grid (sets {list(g.sets)}, indices below {d.images})")
    if v.source == "embedded" and v.frame_size + v.pan_step * (v.frames - 1) > v.pan_downscale:
        raise ConfigError(f"{where}.video: {v.frames} frames of {v.frame_size} px moving {v.pan_step} px do not fit "
                          f"in pan_downscale {v.pan_downscale} px")
    if params.train.amortize_iters < 1:
        raise ConfigError(f"{where}.train.amortize_iters: the generalisation runs amortise (>= 1 F application per "
                          f"step, spec C.2); the full-solve comparison is the amortization experiment")
    return Implicit2Settings(info, params)
