"""Multiscale deep equilibrium classifier (MDEQ, Bai et al. 2020) with GroupNorm only.

This is the 2-branch "MDEQ-SMALL" classifier of the JIIO paper's adversarial
experiments (appendix C.2, Table 9): every BatchNorm of the original MDEQ is a
GroupNorm, so each example's inner problem (forward solve, JIIO, PGD) is
independent of the rest of the batch, in training and in evaluation mode.

Structure
---------
The state ``z`` is a tuple of branch tensors ``(B, C_i, H_i, W_i)``; branch 0
has the input resolution and ``H_i = ceil(H_{i-1} / 2)`` (the output size of a
stride-2 3x3 convolution with padding 1), i.e. ``H / 2**i`` for sizes divisible
by ``2**i``.

* Injection (``stem``): conv3x3(in->C0)-GN-ReLU-conv3x3(C0->C0)-GN-ReLU into
  branch 0; the other branches receive zeros.  GN: ``fuse_groups``.
* DEQ layer ``f(z, injection)``:

  - per branch a residual block (``blocks[i]``), GN groups ``block_groups``::

        h = conv3x3(C->eC)(z_i) -> GN -> ReLU -> conv3x3(eC->C) -> + injection_i
        h = GN(h) + z_i -> ReLU -> GN

  - multiscale fusion (``fuse[j][i]`` brings branch i to branch j's scale):
    identity for i == j; for i < j a chain of (j - i) stride-2 conv3x3 + GN
    (ReLU between, not after the last; intermediate convs keep C_i channels,
    the last maps to C_j); for i > j conv1x1(C_i->C_j) + GN + nearest upsample
    to branch j's size (x 2**(i - j) when the sizes are powers of two apart).
    GN: ``fuse_groups``.  Output branch j is the sum over i.
  - post-fusion per branch (``post_fuse[j]``): ReLU -> conv1x1 -> GN with
    ``post_fuse_groups`` groups.

  Weight norm (``deqbench.core.norms``, dim 0) on the two block convolutions and the
  post-fusion convolution when ``config.weight_norm``, as in the reference.
* Classifier head (HRNet style, ``head``), GN ``fuse_groups`` everywhere:

  - per branch a bottleneck ``C_i -> 4 * head_channels[i]``:
    conv1x1(C_i->h)-GN-ReLU-conv3x3(h->h)-GN-ReLU-conv1x1(h->4h)-GN, plus a
    shortcut conv1x1(C_i->4h)-GN, then ReLU.  The three inner GNs have no affine
    parameters and the shortcut GN has them, mirroring the reference head's
    BatchNorm(affine=False) / nn.BatchNorm2d(default affine) pattern;
  - a downsampling chain: y = bottleneck_0(z_0); for i >= 1
    y = ReLU(GN(conv3x3 stride 2 (4h_{i-1}->4h_i, bias)(y))) + bottleneck_i(z_i);
  - conv1x1(4h_last -> final_channels, bias)-GN-ReLU, global average pool,
    Linear(final_channels -> num_classes).

Initialisation follows the reference MDEQ classifier: convolutions that are not
weight-normalised are drawn from N(0, 0.01) (weights and biases); the
weight-normalised ones keep PyTorch's default.

With the paper's MNIST configuration (channels (24, 24), expansion 5, 1x28x28
input) this has 158,554 trainable parameters, the count of the reference MNIST
classifier; with 3-channel input, 158,986 (reference CIFAR-small).

Variational dropout (``dropout``) is 0 in every experiment of the paper and is
not implemented: a non-zero value raises ``ValueError``.

Task conditioning (JIIO meta-learning, spec B.3)
------------------------------------------------
With ``task_dim > 0`` the layer also takes a task vector x (``B x task_dim``,
or one row per task, broadcast to the task's samples): x is split into one
equal chunk per branch, and block i maps its chunk through a Linear to
(gamma, beta) of its ``expansion * C_i`` channels, applied after the first
GroupNorm as ``GN1(u) * (1 + gamma) + beta`` (FiLM).  The Linear starts at
zero, so the initial model ignores x.  ``task_dim = 0`` (the default) builds
no FiLM layers and leaves every computation unchanged.

``pooled_norm = "task"`` (an option, not in the paper) standardises the head's
pooled features over each task's samples before the final Linear (per feature:
minus the task mean, over the task standard deviation; a BatchNorm1d without
affine whose batch is one task).  The reference head's BatchNorms normalise over
the batch, which per-example GroupNorm cannot: at initialisation the pooled
features of a GroupNorm head vary by only about 6 % over images, so no task
vector can make the logits tell a task's images apart.  The logits then need
the task grouping (``tasks``); samples of different tasks never interact.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deqbench.core.deq import fixed_point
from deqbench.core.norms import apply_weight_norm, reset_norms

__all__ = ["MDEQConfig", "MDEQClassifier", "DEFAULT_BACKWARD_OPTIONS", "build_fusion", "mdeq_layer", "branch_sizes"]

# Paper Table 9: backward quasi-Newton threshold T_b = 20 (run to the limit).
DEFAULT_BACKWARD_OPTIONS: dict[str, Any] = {"method": "broyden", "max_iter": 20, "tol": 0.0}

HEAD_EXPANSION = 4  # bottleneck expansion of the HRNet head


# ----------------------------------------------------------------------------- config


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _positive_int(name: str, value: Any) -> None:
    if not _is_int(value) or value < 1:
        raise ValueError(f"MDEQConfig.{name} must be a positive integer, got {value!r}")


def _int_tuple(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"MDEQConfig.{name} must be a non-empty sequence of positive integers, got {value!r}")
    value = tuple(value)
    if not value:
        raise ValueError(f"MDEQConfig.{name} must not be empty")
    if not all(_is_int(v) and v >= 1 for v in value):
        raise ValueError(f"MDEQConfig.{name} must contain positive integers only, got {value!r}")
    return value


POOLED_NORMS = ("none", "task")
POOLED_NORM_EPS = 1e-5  # as BatchNorm's


def standardize_per_task(features: Tensor, tasks: int, eps: float = POOLED_NORM_EPS) -> Tensor:
    """(B, F) features of a task-major batch (B = tasks * K) standardised per task and feature: minus the mean of
    the task's K samples, divided by sqrt(their biased variance + eps)."""
    if isinstance(tasks, bool) or not isinstance(tasks, int) or tasks < 1 or features.shape[0] % tasks:
        raise ValueError(f"{features.shape[0]} samples do not split into {tasks!r} tasks of equal size")
    if features.shape[0] // tasks < 2:
        raise ValueError(f"per-task standardisation needs at least 2 samples per task, got {features.shape[0]} "
                         f"samples in {tasks} tasks")
    grouped = features.view(tasks, features.shape[0] // tasks, *features.shape[1:])
    mean = grouped.mean(1, keepdim=True)
    var = grouped.var(1, unbiased=False, keepdim=True)
    return ((grouped - mean) / (var + eps).sqrt()).view_as(features)


@dataclass(frozen=True)
class MDEQConfig:
    """Hyper-parameters of :class:`MDEQClassifier` (defaults: the paper's MNIST model)."""

    in_channels: int = 1
    num_classes: int = 10
    channels: tuple[int, ...] = (24, 24)  # per branch; branch i has resolution H / 2**i
    expansion: int = 5  # width expansion inside the residual block
    block_groups: int = 4  # GN groups inside residual blocks (the reference code silently used 4)
    fuse_groups: int = 8  # GN groups in fusion / injection / head (paper Table 9: 8)
    post_fuse_groups: int = 4  # GN groups after the post-fusion 1x1 conv (reference: NUM_GROUPS / 2)
    head_channels: tuple[int, ...] = (8, 16)  # bottleneck width per branch (output 4x this)
    final_channels: int = 200
    weight_norm: bool = True
    dropout: float = 0.0  # variational dropout: only 0 is supported (as in the paper)
    init_std: float = 0.01  # std of the N(0, std) init of the non-weight-normalised convs (reference: 0.01)
    stem_downsample: int = 0  # how many of the two stem convs have stride 2 (ImageNet-style inputs: 2)
    task_dim: int = 0  # FiLM task-vector size (JIIO meta-learning, spec B.3: 400); 0 = no task input
    pooled_norm: str = "none"  # "task": standardise pooled head features over each task (module docstring)
    pooled_norm_eps: float = POOLED_NORM_EPS  # added to the per-task variance (caps the amplification at 1/sqrt(eps))

    def __post_init__(self) -> None:
        if self.pooled_norm not in POOLED_NORMS:
            raise ValueError(f"MDEQConfig.pooled_norm must be one of {POOLED_NORMS}, got {self.pooled_norm!r}")
        if isinstance(self.pooled_norm_eps, bool) or not isinstance(self.pooled_norm_eps, (int, float)) \
                or not self.pooled_norm_eps > 0:
            raise ValueError(f"MDEQConfig.pooled_norm_eps must be a number > 0, got {self.pooled_norm_eps!r}")
        if self.stem_downsample not in (0, 1, 2):
            raise ValueError(f"MDEQConfig.stem_downsample must be 0, 1 or 2, got {self.stem_downsample!r}")
        for name in ("in_channels", "num_classes", "expansion", "block_groups", "fuse_groups",
                     "post_fuse_groups", "final_channels"):
            _positive_int(name, getattr(self, name))
        channels = _int_tuple("channels", self.channels)
        head = _int_tuple("head_channels", self.head_channels)
        object.__setattr__(self, "channels", channels)
        object.__setattr__(self, "head_channels", head)
        if len(head) != len(channels):
            raise ValueError(f"MDEQConfig.head_channels needs one entry per branch ({len(channels)} branches, "
                             f"from channels={channels}), got {head}")
        for i, c in enumerate(channels):
            for gname in ("block_groups", "fuse_groups", "post_fuse_groups"):
                g = getattr(self, gname)
                if c % g:
                    raise ValueError(f"MDEQConfig.channels: branch {i} has {c} channels, "
                                     f"not divisible by {gname}={g}")
        for i, h in enumerate(head):
            if h % self.fuse_groups:
                raise ValueError(f"MDEQConfig.head_channels: branch {i} has {h} channels, "
                                 f"not divisible by fuse_groups={self.fuse_groups}")
        if self.final_channels % self.fuse_groups:
            raise ValueError(f"MDEQConfig.final_channels={self.final_channels} is not divisible by "
                             f"fuse_groups={self.fuse_groups}")
        if not _is_int(self.task_dim) or self.task_dim < 0:
            raise ValueError(f"MDEQConfig.task_dim must be a non-negative integer, got {self.task_dim!r}")
        if self.task_dim % len(channels):
            raise ValueError(f"MDEQConfig.task_dim={self.task_dim} must split evenly over the "
                             f"{len(channels)} branches")
        if not isinstance(self.weight_norm, bool):
            raise ValueError(f"MDEQConfig.weight_norm must be a bool, got {self.weight_norm!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"MDEQConfig.dropout must be a number in [0, 1), got {self.dropout!r}")
        if self.dropout != 0:
            raise ValueError(f"MDEQConfig.dropout={self.dropout!r}: variational dropout is not implemented "
                             "(the paper uses 0.0 in every experiment, Table 9)")

    @property
    def num_branches(self) -> int:
        return len(self.channels)


# ----------------------------------------------------------------------------- building blocks


class InjectedLayer:
    """f(z, x) = layer(z, inject(x)) that recomputes ``inject(x)`` only when ``x`` changes (another tensor, an
    in-place update, or another grad mode): a forward solve at fixed x computes it once, as a plain DEQ does, while
    JIIO, whose x moves every iteration, recomputes it every call.  The cache holds x itself, so its ``id`` cannot be
    reused by a new tensor while it is cached.  ``inject`` and ``layer`` stay visible, so a baseline can compute the
    injection itself and iterate ``layer`` on a static copy (CUDA-graph reuse, :class:`deqbench.core.graphs.GraphCache`;
    the protocol :class:`deqbench.inputopt.baselines.SplitLayerFn`)."""

    def __init__(self, inject: Callable[[Tensor], Any], layer: Callable[[Any, Any], Any]):
        self.inject, self.layer = inject, layer
        self._x: Tensor | None = None
        self._key: tuple[int, bool] | None = None
        self._injection: Any = None

    def __call__(self, z: Any, x: Tensor) -> Any:
        key = (x._version, torch.is_grad_enabled())
        if self._x is not x or self._key != key:
            self._x, self._key, self._injection = x, key, self.inject(x)
        return self.layer(z, self._injection)


def injection_cached(inject: Callable[[Tensor], Any], layer: Callable[[Any, Any], Any]) -> InjectedLayer:
    """f(z, x) = layer(z, inject(x)) computing the injection once per distinct x (:class:`InjectedLayer`)."""
    return InjectedLayer(inject, layer)


def _conv3x3(cin: int, cout: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)


def _conv1x1(cin: int, cout: int, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, bias=bias)


def _down_size(n: int) -> int:
    """Output size of a stride-2 3x3 convolution with padding 1."""
    return (n + 1) // 2


class ResidualBlock(nn.Module):
    """MDEQ branch block: conv-GN-[FiLM]-ReLU-conv, +injection, GN, +z, ReLU, GN.

    ``film_dim > 0`` adds the FiLM layer of spec B.3: a zero-initialised Linear from the
    block's task-vector chunk to (gamma, beta) of the expanded channels."""

    def __init__(self, channels: int, expansion: int, groups: int, film_dim: int = 0):
        super().__init__()
        hidden = channels * expansion
        self.conv1 = _conv3x3(channels, hidden)
        self.gn1 = nn.GroupNorm(groups, hidden)
        self.conv2 = _conv3x3(hidden, channels)
        self.gn2 = nn.GroupNorm(groups, channels)
        self.gn3 = nn.GroupNorm(groups, channels)
        self.film: nn.Linear | None = None
        if film_dim:
            self.film = nn.Linear(film_dim, 2 * hidden)
            with torch.no_grad():
                self.film.weight.zero_()
                self.film.bias.zero_()

    def modulate(self, h: Tensor, task: Tensor) -> Tensor:
        """FiLM after GN1 (spec B.3, form [I]): h * (1 + gamma) + beta, (gamma, beta) = Linear(task chunk)."""
        if self.film is None:
            raise ValueError("this block has no FiLM layer (MDEQConfig.task_dim = 0) but got a task vector")
        gamma, beta = self.film(task).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        return h * (1 + gamma) + beta

    def forward(self, z: Tensor, injection: Tensor, task: Tensor | None = None) -> Tensor:
        h = self.gn1(self.conv1(z))
        if task is not None:
            h = self.modulate(h, task)
        h = F.relu(h)
        h = self.conv2(h) + injection
        h = F.relu(self.gn2(h) + z)
        return self.gn3(h)


class Upsample(nn.Module):
    """Branch i -> lower-index (higher resolution) branch j: conv1x1 + GN + nearest upsampling."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.conv = _conv1x1(cin, cout)
        self.gn = nn.GroupNorm(groups, cout)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(self.gn(self.conv(x)), size=size, mode="nearest")


class Downsample(nn.Sequential):
    """Branch i -> higher-index (lower resolution) branch j: (j - i) stride-2 conv3x3 + GN, ReLU between."""

    def __init__(self, cin: int, cout: int, steps: int, groups: int):
        layers: list[nn.Module] = []
        for k in range(steps):
            last = k == steps - 1
            out = cout if last else cin
            layers += [_conv3x3(cin, out, stride=2), nn.GroupNorm(groups, out)]
            if not last:
                layers.append(nn.ReLU())
        super().__init__(*layers)


class PostFuse(nn.Module):
    """ReLU -> conv1x1 -> GN."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.conv = _conv1x1(channels, channels)
        self.gn = nn.GroupNorm(groups, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.gn(self.conv(F.relu(x)))


def build_fusion(channels: Sequence[int], groups: int) -> nn.ModuleList:
    """``fuse[j][i]`` brings branch i to branch j's scale (identity, Downsample or Upsample)."""
    n = len(channels)
    fuse = nn.ModuleList()
    for j in range(n):  # output branch
        row = nn.ModuleList()
        for i in range(n):  # input branch
            if i == j:
                row.append(nn.Identity())
            elif i < j:
                row.append(Downsample(channels[i], channels[j], j - i, groups))
            else:
                row.append(Upsample(channels[i], channels[j], groups))
        fuse.append(row)
    return fuse


def mdeq_layer(
    blocks: nn.ModuleList, fuse: nn.ModuleList, post_fuse: nn.ModuleList,
    z: Sequence[Tensor], injection: Sequence[Tensor], task: Tensor | None = None,
) -> tuple[Tensor, ...]:
    """The MDEQ map f(z, injection[, task]): per-branch residual blocks (FiLM-conditioned on one chunk of
    the per-sample task vector each when ``task`` is given, spec B.3), multiscale fusion, post-fusion."""
    n = len(blocks)
    if len(z) != n or len(injection) != n:
        raise ValueError(f"z and injection need {n} branches, got {len(z)} and {len(injection)}")
    chunks: Sequence[Tensor | None] = [None] * n if task is None else task.chunk(n, dim=1)
    x = [block(zi, inj, t) for block, zi, inj, t in zip(blocks, z, injection, chunks)]
    out = []
    for j in range(n):
        size = (x[j].shape[2], x[j].shape[3])
        y = x[j]
        for i in range(n):
            if i < j:
                y = y + fuse[j][i](x[i])
            elif i > j:
                y = y + fuse[j][i](x[i], size)
        out.append(post_fuse[j](y))
    return tuple(out)


def branch_sizes(height: int, width: int, branches: int) -> list[tuple[int, int]]:
    """Spatial size (H_i, W_i) of every branch for a ``height x width`` branch 0."""
    sizes = [(height, width)]
    for _ in range(1, branches):
        h, w = sizes[-1]
        sizes.append((_down_size(h), _down_size(w)))
    return sizes


class Bottleneck(nn.Module):
    """Head bottleneck C -> 4h with a projection shortcut (GroupNorm instead of BatchNorm)."""

    def __init__(self, cin: int, width: int, groups: int):
        super().__init__()
        out = width * HEAD_EXPANSION
        self.conv1 = _conv1x1(cin, width)
        self.gn1 = nn.GroupNorm(groups, width, affine=False)
        self.conv2 = _conv3x3(width, width)
        self.gn2 = nn.GroupNorm(groups, width, affine=False)
        self.conv3 = _conv1x1(width, out)
        self.gn3 = nn.GroupNorm(groups, out, affine=False)
        self.shortcut = nn.Sequential(_conv1x1(cin, out), nn.GroupNorm(groups, out))

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.gn1(self.conv1(x)))
        h = F.relu(self.gn2(self.conv2(h)))
        h = self.gn3(self.conv3(h))
        return F.relu(h + self.shortcut(x))


class ClassifierHead(nn.Module):
    """HRNet-style head: per-branch bottlenecks, stride-2 merging chain, conv1x1, pool, linear."""

    def __init__(self, config: MDEQConfig):
        super().__init__()
        g = config.fuse_groups
        widths = [h * HEAD_EXPANSION for h in config.head_channels]
        self.bottlenecks = nn.ModuleList(
            Bottleneck(c, h, g) for c, h in zip(config.channels, config.head_channels)
        )
        self.downsample = nn.ModuleList(
            nn.Sequential(_conv3x3(widths[i], widths[i + 1], stride=2, bias=True),
                          nn.GroupNorm(g, widths[i + 1]), nn.ReLU())
            for i in range(len(widths) - 1)
        )
        self.final = nn.Sequential(_conv1x1(widths[-1], config.final_channels, bias=True),
                                   nn.GroupNorm(g, config.final_channels), nn.ReLU())
        self.classifier = nn.Linear(config.final_channels, config.num_classes)
        self.pooled_norm, self.pooled_norm_eps = config.pooled_norm, float(config.pooled_norm_eps)

    def pooled(self, z: Sequence[Tensor]) -> Tensor:
        """The (B, final_channels) features the final Linear sees, before any ``pooled_norm``."""
        y = self.bottlenecks[0](z[0])
        for i, down in enumerate(self.downsample):
            y = down(y) + self.bottlenecks[i + 1](z[i + 1])
        return self.final(y).mean(dim=(2, 3))

    def forward(self, z: Sequence[Tensor], tasks: int | None = None) -> Tensor:
        features = self.pooled(z)
        if self.pooled_norm == "task":
            if tasks is None:
                raise ValueError("MDEQConfig.pooled_norm='task' needs the number of tasks in the batch (tasks=)")
            features = standardize_per_task(features, tasks, self.pooled_norm_eps)
        return self.classifier(features)


# ----------------------------------------------------------------------------- the model


class MDEQClassifier(nn.Module):
    """MDEQ classifier with GroupNorm only; see the module docstring for the architecture.

    ``forward(images)`` solves z* = f(z*, inject(images)) with
    :func:`deqbench.core.deq.fixed_point` (defaults: Broyden, 18 iterations, run to
    the limit; IFT backward with Broyden, 20 iterations -- paper Table 9) and
    returns the logits of z*.  For input optimisation (JIIO, PGD, Adam),
    ``layer_fn(images)`` is f(z, delta) for a perturbation delta of the images
    and ``cost_fn(labels)`` the per-sample inner cost -CE (JIIO eq. 26).
    """

    def __init__(self, config: MDEQConfig | None = None):
        super().__init__()
        config = MDEQConfig() if config is None else config
        if not isinstance(config, MDEQConfig):
            raise TypeError(f"config must be an MDEQConfig, got {type(config).__name__}")
        self.config = config
        c0, gf = config.channels[0], config.fuse_groups
        s1, s2 = (2 if config.stem_downsample > k else 1 for k in range(2))
        self.stem = nn.Sequential(
            _conv3x3(config.in_channels, c0, s1), nn.GroupNorm(gf, c0), nn.ReLU(),
            _conv3x3(c0, c0, s2), nn.GroupNorm(gf, c0), nn.ReLU(),
        )
        film_dim = config.task_dim // config.num_branches
        self.blocks = nn.ModuleList(
            ResidualBlock(c, config.expansion, config.block_groups, film_dim) for c in config.channels
        )
        self.fuse = build_fusion(config.channels, gf)
        self.post_fuse = nn.ModuleList(PostFuse(c, config.post_fuse_groups) for c in config.channels)
        self.head = ClassifierHead(config)
        normed = [conv for block in self.blocks for conv in (block.conv1, block.conv2)]
        normed += [post.conv for post in self.post_fuse]
        self._init_weights(exclude=normed if config.weight_norm else [])
        if config.weight_norm:
            for conv in normed:
                apply_weight_norm(conv, dim=0)

    def _init_weights(self, exclude: Sequence[nn.Module]) -> None:
        """Reference MDEQ initialisation: N(0, init_std = 0.01) for the weights and biases of every
        convolution that is not weight-normalised (those keep PyTorch's default init,
        as in the reference, whose init pass cannot reach weight-normed convolutions);
        GroupNorm affine = (1, 0) and the final Linear keep PyTorch's defaults."""
        skip = {id(m) for m in exclude}
        std = self.config.init_std
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Conv2d) and id(m) not in skip:
                    m.weight.normal_(0.0, std)
                    if m.bias is not None:
                        m.bias.normal_(0.0, std)

    # ---------------------------------------------------------------- shapes

    def branch_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """Spatial size (H_i, W_i) of every branch for a ``height x width`` input."""
        for _ in range(self.config.stem_downsample):
            height, width = _down_size(height), _down_size(width)
        return branch_sizes(height, width, self.config.num_branches)

    def _check_images(self, images: Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != self.config.in_channels:
            raise ValueError(f"images must have shape (B, {self.config.in_channels}, H, W), "
                             f"got {tuple(images.shape)}")

    def z0(self, images: Tensor) -> tuple[Tensor, ...]:
        """The zero initial state: one (B, C_i, H_i, W_i) tensor per branch."""
        self._check_images(images)
        b = images.shape[0]
        sizes = self.branch_sizes(images.shape[2], images.shape[3])
        return tuple(images.new_zeros(b, c, h, w) for c, (h, w) in zip(self.config.channels, sizes))

    # ---------------------------------------------------------------- pieces

    def inject(self, images: Tensor) -> tuple[Tensor, ...]:
        """Per-branch input injections: the stem output into branch 0, zeros elsewhere."""
        self._check_images(images)
        x0 = self.stem(images)
        b = images.shape[0]
        sizes = self.branch_sizes(images.shape[2], images.shape[3])
        rest = tuple(x0.new_zeros(b, c, h, w) for c, (h, w) in zip(self.config.channels[1:], sizes[1:]))
        return (x0,) + rest

    def layer(
        self, z: Sequence[Tensor], injection: Sequence[Tensor], task: Tensor | None = None
    ) -> tuple[Tensor, ...]:
        """The DEQ map f(z, injection[, task]): residual blocks, multiscale fusion, post-fusion.

        ``task`` (FiLM models only, spec B.3) is (B, task_dim) or one row per task, which
        :meth:`broadcast_task` spreads over the task-major batch."""
        if task is not None:
            task = self.broadcast_task(task, z[0].shape[0])
        return mdeq_layer(self.blocks, self.fuse, self.post_fuse, z, injection, task)

    def broadcast_task(self, task: Tensor, batch: int) -> Tensor:
        """Per-sample task vectors from (batch, task_dim) or (tasks, task_dim) with the batch laid out
        task-major (samples of task t at rows t*K .. t*K + K - 1, K = batch / tasks); spec B.2."""
        if self.config.task_dim == 0:
            raise ValueError("this MDEQ has no task input (MDEQConfig.task_dim = 0)")
        if task.dim() != 2 or task.shape[1] != self.config.task_dim:
            raise ValueError(f"task vectors must have shape (tasks, {self.config.task_dim}), got {tuple(task.shape)}")
        tasks = task.shape[0]
        if tasks == batch:
            return task
        if tasks == 0 or batch % tasks:
            raise ValueError(f"{tasks} task vectors do not divide a batch of {batch} samples")
        return task.repeat_interleave(batch // tasks, dim=0)

    def logits(self, z: Sequence[Tensor], tasks: int | None = None) -> Tensor:
        """Classifier head h(z) -> (B, num_classes); ``tasks``: how many tasks the task-major batch holds
        (needed with ``pooled_norm="task"`` only)."""
        return self.head(z, tasks)

    def layer_fn(self, images: Tensor) -> Callable[[tuple[Tensor, ...], Tensor], tuple[Tensor, ...]]:
        """f(z, delta) = layer(z, inject(images + delta)), for input optimisation of delta; the injection is computed
        once per distinct delta (:func:`injection_cached`), so a solve at fixed delta does not redo the stem."""
        return injection_cached(lambda delta: self.inject(images + delta), self.layer)

    def cost_fn(self, labels: Tensor) -> Callable[[Sequence[Tensor]], Tensor]:
        """Per-sample inner cost -CE(logits(z), labels), shape (B,) (JIIO eq. 26)."""
        return lambda z: -F.cross_entropy(self.logits(z), labels, reduction="none")

    def task_layer_fn(self, images: Tensor) -> Callable[[Sequence[Tensor], Tensor], tuple[Tensor, ...]]:
        """f(z, x) = layer(z, inject(images), x) for task-vector optimisation (JIIO meta-learning, spec B.2/B.3).

        The weight-normalised weights and the image injection are computed once, here, in the caller's grad
        mode; ``x`` is per sample or one row per task (see :meth:`broadcast_task`)."""
        if self.config.task_dim == 0:
            raise ValueError("task_layer_fn needs a FiLM model (MDEQConfig.task_dim > 0)")
        if self.config.weight_norm:
            reset_norms(self)
        injection = self.inject(images)
        return lambda z, x: self.layer(z, injection, x)

    def task_cost_fn(
        self, labels: Tensor, scale: float = 1.0, tasks: int | None = None
    ) -> Callable[[Sequence[Tensor]], Tensor]:
        """Per-sample inner cost scale * CE(logits(z), labels), shape (B,) (spec B.2: CE at the iterate z;
        the reference scales by n_cls); ``tasks`` as in :meth:`logits`."""
        return lambda z: scale * F.cross_entropy(self.logits(z, tasks), labels, reduction="none")

    # ---------------------------------------------------------------- forward

    def forward(
        self,
        images: Tensor,
        solver: str = "broyden",
        max_iter: int = 18,
        tol: float = 0.0,
        solver_options: dict[str, Any] | None = None,
        backward: str = "ift",
        backward_options: dict[str, Any] | None = None,
        stats: dict[str, Any] | None = None,
        task: Tensor | None = None,
    ) -> Tensor:
        """Logits at the equilibrium z* = f(z*, inject(images)).

        The weight-normalised weights are recomputed once here (in the
        caller's grad mode) and reused by every f evaluation of the solve.
        ``backward_options=None`` with ``backward="ift"`` means
        :data:`DEFAULT_BACKWARD_OPTIONS` (Broyden, 20 iterations).  ``stats``
        receives the solver results (see :func:`deqbench.core.deq.fixed_point`).
        ``task`` (FiLM models, spec B.2 query solve) is the task vector, held fixed during the solve; pass
        it detached for the meta outer loop (B.4: no gradient through x*).
        """
        if self.config.weight_norm:
            reset_norms(self)
        if backward_options is None and backward == "ift":
            backward_options = dict(DEFAULT_BACKWARD_OPTIONS)
        injection = self.inject(images)
        tasks = None if task is None else task.shape[0]
        if task is not None:
            task = self.broadcast_task(task, images.shape[0])
        z = fixed_point(
            lambda state: self.layer(state, injection, task),
            self.z0(images),
            solver=solver,
            max_iter=max_iter,
            tol=tol,
            solver_options=solver_options,
            backward=backward,  # type: ignore[arg-type]
            backward_options=backward_options,
            stats=stats,
        )
        return self.logits(z, tasks)

    # ---------------------------------------------------------------- provenance

    def num_parameters(self) -> int:
        """Number of trainable parameter elements (weight norm counts g and v)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def describe(self) -> dict[str, Any]:
        """Config plus the GroupNorm group counts actually built, per role (JSON-serialisable)."""
        cfg = asdict(self.config)
        cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
        roles = {"stem": "injection", "blocks": "block", "fuse": "fuse", "post_fuse": "post_fuse", "head": "head"}
        groups: dict[str, list[int]] = {}
        for name, module in self.named_modules():
            if isinstance(module, nn.GroupNorm):
                role = roles[name.split(".", 1)[0]]
                groups.setdefault(role, [])
                if module.num_groups not in groups[role]:
                    groups[role].append(module.num_groups)
        return {
            "model": type(self).__name__,
            "config": cfg,
            "groupnorm_groups": {role: sorted(v) for role, v in groups.items()},
            "num_groupnorm": sum(isinstance(m, nn.GroupNorm) for m in self.modules()),
            "num_batchnorm": sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.modules()),
            "weight_normed": [name for name, m in self.named_modules() if hasattr(m, "weight_g")],
            "num_parameters": self.num_parameters(),
        }
