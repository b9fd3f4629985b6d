"""MOptEqs: optimization-inspired multi-branch equilibrium models (Li, Wang, Xie, Lin, ICLR 2022).

Every variant of the paper is the map (Eq. 6 / Eq. 12, in the W^T sigma(.) form of spec A.2)

    z_i = W_i^T relu(W_i h_i(z) + U_i (g(x) - delta_{i-1}) + b_i),   i = 1..L,

with the feedback h_i chosen by ``coupling`` (spec A.3/A.4):

* ``none``: h_i = z_i, Parallel-OptEqs (Eq. 10); with one branch it is OptEqs (Eq. 1);
* ``sum`` / ``conv``: h_i = s * sum_j P_{i:j} z_j (or a learned conv per ordered pair), POptEqs(sum/conv);
* ``hhd``: the HH&D module h_i = -1/2 grad_{z_i} sum_k [lam D(z_k, z_{k+1}) - H(z_k, z_{k+1})] (Eq. 14), MOptEqs.

delta is the Perturbation-Enhanced strategy (PE, Algorithm 2): delta_i = eps * sign(U_i^T y_i) from branch i's
post-activation y_i, fed to branch i+1.  Branch 1 is the finest; in the multi-scale layout branch i has resolution
(image_size / 2**stem_downsample) / 2**(i-1).  Layer shapes, parameter counts and the [I] guesses follow spec A.7;
each guess is a field of :class:`MOptEqsConfig`.  The state is a tuple of (B, C, H_i, W_i) tensors.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deqbench.core.deq import fixed_point
from deqbench.core.solvers import solve

__all__ = ["MOptEqsConfig", "MOptEqs", "MOptEqsInjection", "PAPER_CONFIGS", "paper_config", "resample"]

State = tuple[Tensor, ...]
_WARMUP_POWER_ITERATIONS = 100  # at construction, so the first step already sees an accurate ||V||_op
_CHOICES = {"layout": ("single_view", "multi_scale"), "coupling": ("none", "sum", "conv", "hhd"),
            "hhd_terms": ("full", "no_d", "no_h"), "p_scale": ("adjoint", "isometric", "unit"),
            "wnorm": ("spectral", "weight", "none"), "update": ("jacobi", "gauss_seidel")}


@dataclass(frozen=True)
class MOptEqsConfig:
    """Hyper-parameters of :class:`MOptEqs`; ``None`` fields resolve to the spec's layout-dependent default."""

    in_channels: int = 3
    num_classes: int = 10
    image_size: int = 32
    layout: Literal["single_view", "multi_scale"] = "single_view"
    branches: int | None = None  # 3 single view, 4 multi-scale
    channels: int = 32  # C, equal in every branch
    coupling: Literal["none", "sum", "conv", "hhd"] = "hhd"
    hhd_terms: Literal["full", "no_d", "no_h"] = "full"  # Table 3 ablations ("-D,H" is coupling="none")
    lam: float = 0.01
    pe_eps: float = 0.1  # 0 disables PE
    pe_at_eval: bool = False  # AMBIG-A6
    p_scale: Literal["adjoint", "isometric", "unit"] = "adjoint"  # AMBIG-A1
    wnorm: Literal["spectral", "weight", "none"] = "spectral"  # AMBIG-A3
    zeta: float = 0.9  # target ||W_i||_2
    power_iterations: int = 1  # per training forward
    update: Literal["jacobi", "gauss_seidel"] = "jacobi"  # AMBIG-A5
    fusion_scale: float | None = None  # s of sum/conv fusion; None = 1/L (A.3 last bullet)
    fusion_norm: bool = True  # conv fusion: normalise each fusion conv like W_i, with gain 1 (A.3 "as in A.6")
    head_hidden: int | None = None  # hidden Linear width before the classifier; None = 22 single view, 0 multi-scale
    head_pool: int = 8  # single-view head: adaptive avg-pool to head_pool x head_pool
    stem_channels: int | None = None  # width of g(x); None = C single view, C/2 multi-scale
    stem_downsample: int = 0  # stride-2 conv3x3+BN+ReLU layers before the stem (ImageNette: 2)

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"MOptEqsConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        multi = self.layout == "multi_scale"
        defaults = {"branches": 4 if multi else 3, "head_hidden": 0 if multi else 22,
                    "stem_channels": self.channels // 2 if multi else self.channels}
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.fusion_scale is None:
            object.__setattr__(self, "fusion_scale", 1.0 / self.branches)
        for name in ("in_channels", "num_classes", "image_size", "branches", "channels", "power_iterations",
                     "head_pool", "stem_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"MOptEqsConfig.{name} must be a positive integer, got {value!r}")
        for name in ("head_hidden", "stem_downsample"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"MOptEqsConfig.{name} must be an integer >= 0, got {value!r}")
        for name, low_open in (("lam", False), ("pe_eps", False), ("zeta", True), ("fusion_scale", True)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (low_open and value == 0):
                raise ValueError(f"MOptEqsConfig.{name} must be a finite number {'>' if low_open else '>='} 0, "
                                 f"got {value!r}")
        if not isinstance(self.pe_at_eval, bool) or not isinstance(self.fusion_norm, bool):
            raise ValueError("MOptEqsConfig.pe_at_eval and fusion_norm must be bools")
        if self.coupling != "hhd" and self.hhd_terms != "full":
            raise ValueError(f"hhd_terms={self.hhd_terms!r} needs coupling='hhd' (the '-D,H' ablation is coupling='none')")
        top = self.image_size // 2 ** self.stem_downsample
        if top * 2 ** self.stem_downsample != self.image_size:
            raise ValueError(f"image_size={self.image_size} is not divisible by 2**stem_downsample")
        if multi and top % 2 ** (self.branches - 1):
            raise ValueError(f"multi-scale: resolution {top} is not divisible by 2**(branches-1)")

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Branch resolutions H_i = W_i, finest first."""
        top = self.image_size // 2 ** self.stem_downsample
        return tuple(top // 2 ** i if self.layout == "multi_scale" else top for i in range(self.branches))

    @property
    def variant(self) -> str:
        """The paper's name of this model (Table 1 / Table 3)."""
        if self.coupling == "none":
            return "OptEqs" if self.branches == 1 else "Parallel-OptEqs"
        if self.coupling in ("sum", "conv"):
            return f"POptEqs({self.coupling})"
        suffix = {"full": "", "no_d": " -D", "no_h": " -H"}[self.hhd_terms]
        return "MOptEqs" + suffix + ("" if self.pe_eps > 0 else " (w/o PE)")


_SV, _MS = dict(layout="single_view", channels=32), dict(layout="multi_scale", lam=0.001, pe_eps=0.1)
PAPER_CONFIGS: dict[str, dict[str, Any]] = {
    "single_view_193k": dict(_SV, lam=0.01, pe_eps=0.1),  # Table 1a MOptEqs
    "single_view_no_pe_193k": dict(_SV, lam=0.01, pe_eps=0.0),
    "parallel_optqs_193k": dict(_SV, coupling="none", pe_eps=0.0),
    "poptqs_sum_193k": dict(_SV, coupling="sum", pe_eps=0.0),
    "poptqs_conv_276k": dict(_SV, coupling="conv", pe_eps=0.0),
    "ablation_full": dict(_SV, lam=0.02, pe_eps=0.0),  # Table 3 (AMBIG-A4); "-D,H" = parallel_optqs_193k
    "ablation_no_d": dict(_SV, lam=0.02, pe_eps=0.0, hhd_terms="no_d"),
    "ablation_no_h": dict(_SV, lam=0.02, pe_eps=0.0, hhd_terms="no_h"),
    "fig2_moptqs_c16": dict(_SV, channels=16, lam=0.01, pe_eps=0.1),
    "fig2_poptqs_c16": dict(_SV, channels=16, coupling="none", pe_eps=0.0),
    "multi_scale_0.48m": dict(_MS, channels=128),
    "multi_scale_1.9m": dict(_MS, channels=256),
    "multi_scale_8.1m": dict(_MS, channels=512),  # GUESS: C from the ~29 C^2 law
    "imagenette_1.9m": dict(_MS, channels=256, image_size=256, stem_downsample=2),
}


def paper_config(name: str, num_classes: int = 10) -> MOptEqsConfig:
    """A named configuration of the paper (Tables 1-3, Fig. 2; spec A.7).  ``multi_scale_8.1m`` is a guess."""
    if name not in PAPER_CONFIGS:
        raise ValueError(f"unknown MOptEqs paper config {name!r}; known: {sorted(PAPER_CONFIGS)}")
    return MOptEqsConfig(num_classes=num_classes, **PAPER_CONFIGS[name])


# ----------------------------------------------------------------------------- linear operators


def resample(x: Tensor, size: int, p_scale: str = "adjoint") -> Tensor:
    """P_{i:j} x (spec A.1, AMBIG-A1): brings a per-channel map x on grid j to grid i of side ``size``.

    Fine -> coarse by factor s: avg-pool (x s when isometric); coarse -> fine: nearest upsample / s^2 (adjoint),
    / s (isometric) or / 1 (unit).  In the adjoint and isometric modes resample(., j->i) is the exact adjoint of
    resample(., i->j), so P_{i-1:i}^T z_{i-1} is also ``resample(z_{i-1}, size_i)``; in the unit mode it is not.
    """
    src = x.shape[-1]
    if src == size:
        return x
    if src > size:
        s = src // size
        out = F.avg_pool2d(x, s)
        return out * s if p_scale == "isometric" else out
    s = size // src
    out = F.interpolate(x, scale_factor=s, mode="nearest")
    return out / {"adjoint": s * s, "isometric": s, "unit": 1}[p_scale]


def _offdiag_sign(gram: Tensor) -> Tensor:
    """sign[M - diag(M)] (Eq. 14): sign with the diagonal zeroed; gram is detached, so zero_ is safe."""
    s = torch.sign(gram)
    s.diagonal(dim1=-2, dim2=-1).zero_()
    return s


class OperatorConv(nn.Module):
    """Square stride-1 'same' convolution C->C whose weight is normalised once per solve (spec A.6).

    spectral: W = gain * V / ||V||_op, ||.||_op the spectral norm of the *convolution operator* on a
    ``grid`` x ``grid`` map, estimated by power iteration on conv / conv_transpose with the persistent buffer
    ``u`` (a right singular vector estimate).  weight: W = g * V / ||V||_row (weight norm, dim 0), with g
    initialised so that ||W||_op = gain at init.  none: W = V, rescaled at init to ||W||_op = gain.
    """

    def __init__(self, channels: int, kernel: int, grid: int, mode: str, gain: float, power_iterations: int):
        super().__init__()
        self.mode, self.gain, self.padding, self.power_iterations = mode, gain, kernel // 2, power_iterations
        self.v = nn.Parameter(nn.Conv2d(channels, channels, kernel, bias=False).weight.detach().clone())
        side = grid if kernel > 1 else 1  # a 1x1 conv's operator norm is its matrix norm, on any grid
        gen = torch.Generator().manual_seed(0)
        self.register_buffer("u", F.normalize(torch.randn(1, channels, side, side, generator=gen).flatten(), dim=0)
                             .view(1, channels, side, side))
        with torch.no_grad():
            self._power(self.v, _WARMUP_POWER_ITERATIONS)
            sigma = self.apply_op(self.u, self.v).norm()
            if mode == "weight":
                self.g = nn.Parameter(self.v.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * gain / sigma)
            elif mode == "none":
                self.v.mul_(gain / sigma)

    def apply_op(self, x: Tensor, w: Tensor) -> Tensor:
        """W x."""
        return F.conv2d(x, w, padding=self.padding)

    def adjoint(self, y: Tensor, w: Tensor) -> Tensor:
        """W^T y, the exact adjoint at stride 1: a convolution with the channel-transposed, spatially flipped kernel
        (the same operator as conv_transpose2d, which is about 1.6x slower on the CPU at these sizes)."""
        return F.conv2d(y, w.transpose(0, 1).flip(2, 3), padding=self.padding)

    @torch.no_grad()
    def _power(self, w: Tensor, n: int) -> None:
        x = self.u.to(w.dtype, copy=True)
        for _ in range(n):
            x = self.adjoint(self.apply_op(x, w), w)
            x = x / x.norm().clamp_min(1e-12)
        self.u.copy_(x)

    def weight(self, update: bool) -> Tensor:
        """The effective weight (A.6); ``update`` advances the power iteration (training steps only)."""
        if self.mode == "none":
            return self.v
        if self.mode == "weight":
            return self.g * self.v / self.v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        if update:
            self._power(self.v.detach(), self.power_iterations)
        # copy: u is saved for backward and the next training forward updates it in place
        sigma = self.apply_op(self.u.to(self.v.dtype, copy=True), self.v).norm()  # = u_out^T V u, u constant
        return self.gain * self.v / sigma

    @torch.no_grad()
    def operator_norm(self, iterations: int = 30) -> float:
        """Power-iteration estimate of ||W||_op of the current effective weight (logging; syncs)."""
        w = self.weight(update=False)
        x = self.u.to(w.dtype).clone()
        for _ in range(iterations):
            x = self.adjoint(self.apply_op(x, w), w)
            x = x / x.norm().clamp_min(1e-12)
        return float(self.apply_op(x, w).norm())


@dataclass
class MOptEqsInjection:
    """Everything fixed during one solve: g(x) (+ feature_delta), U_i g + b_i, and the normalised weights."""

    features: Tensor  # g(x) + feature_delta, (B, C_g, H_0, W_0)
    drive: State  # U_i g + b_i per branch
    weights: State  # W_i per branch
    fusion: State  # conv fusion weights, row-major (i, j); empty otherwise


# ----------------------------------------------------------------------------- the model


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class MOptEqs(nn.Module):
    """MOptEqs / POptEqs / OptEqs classifier (module docstring).  BatchNorm only in the stem and the head."""

    def __init__(self, config: MOptEqsConfig | None = None):
        super().__init__()
        config = MOptEqsConfig() if config is None else config
        if not isinstance(config, MOptEqsConfig):
            raise TypeError(f"config must be an MOptEqsConfig, got {type(config).__name__}")
        self.config = cfg = config
        c, s, res, L = cfg.channels, cfg.stem_channels, cfg.resolutions, cfg.branches
        multi = cfg.layout == "multi_scale"
        stem: list[nn.Module] = []
        cin = cfg.in_channels
        for _ in range(cfg.stem_downsample):
            stem += _conv_bn_relu(cin, s, stride=2)
            cin = s
        stem += _conv_bn_relu(cin, s) + (_conv_bn_relu(s, s) if multi else [])
        self.stem = nn.Sequential(*stem)
        self.u_convs = nn.ModuleList(nn.Conv2d(s, c, 3, padding=1, bias=False) for _ in range(L))
        self.bias = nn.Parameter(torch.zeros(L, c))
        kernel = 1 if multi else 3
        self.w_convs = nn.ModuleList(OperatorConv(c, kernel, r, cfg.wnorm, cfg.zeta, cfg.power_iterations)
                                     for r in res)
        self.fusion_convs = nn.ModuleList(
            OperatorConv(c, 3, res[i], cfg.wnorm if cfg.fusion_norm else "none", 1.0, cfg.power_iterations)
            for i in range(L) for _ in range(L)) if cfg.coupling == "conv" else nn.ModuleList()
        if cfg.coupling == "conv" and not cfg.fusion_norm:
            for m in self.fusion_convs:  # plain learned convs with PyTorch's default init
                nn.init.kaiming_uniform_(m.v, a=math.sqrt(5))
        if multi:
            self.branch_heads = nn.ModuleList(nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c),
                                                            nn.ReLU()) for _ in range(L))
            flat = L * c
        else:
            self.head_norm = nn.BatchNorm2d(L * c)
            flat = L * c * cfg.head_pool ** 2
        h = cfg.head_hidden
        self.classifier = nn.Sequential(nn.Linear(flat, h), nn.ReLU(), nn.Linear(h, cfg.num_classes)) if h \
            else nn.Linear(flat, cfg.num_classes)

    # ---------------------------------------------------------------- linear pieces

    def pool_factor(self, i: int) -> int:
        """Average-pool factor 2^(i-1) in front of U_i (0-based i)."""
        return self.config.image_size // 2 ** self.config.stem_downsample // self.config.resolutions[i]

    def u_apply(self, i: int, g: Tensor) -> Tensor:
        """U_i g (no bias): avg_pool2d(2^(i-1)) then conv3x3 (spec A.1)."""
        s = self.pool_factor(i)
        return self.u_convs[i](F.avg_pool2d(g, s) if s > 1 else g)

    def u_adjoint(self, i: int, y: Tensor) -> Tensor:
        """U_i^T y: conv_transpose2d, then the avg-pool adjoint (nearest upsample / s^2)."""
        out = F.conv2d(y, self.u_convs[i].weight.transpose(0, 1).flip(2, 3), padding=1)  # = conv_transpose2d
        s = self.pool_factor(i)
        return F.interpolate(out, scale_factor=s, mode="nearest") / (s * s) if s > 1 else out

    def normalized_weights(self, update: bool = False) -> tuple[State, State]:
        """(W_i per branch, fusion weights) after normalisation (A.6)."""
        return (tuple(m.weight(update) for m in self.w_convs), tuple(m.weight(update) for m in self.fusion_convs))

    def inject(self, images: Tensor, feature_delta: Tensor | None = None) -> MOptEqsInjection:
        """g(x) (+ feature_delta, Fig. 3a), U_i g + b_i and the normalised weights, once per solve.

        In training mode the spectral-norm power iteration advances here, once per call (i.e. per forward).
        """
        if images.dim() != 4 or images.shape[1] != self.config.in_channels:
            raise ValueError(f"images must be (B, {self.config.in_channels}, H, W), got {tuple(images.shape)}")
        g = self.stem(images)
        if feature_delta is not None:
            g = g + feature_delta
        drive = tuple(self.u_apply(i, g) + self.bias[i].view(1, -1, 1, 1) for i in range(self.config.branches))
        weights, fusion = self.normalized_weights(update=self.training)
        return MOptEqsInjection(g, drive, weights, fusion)

    def z0(self, images: Tensor) -> State:
        """Zero initial state, one (B, C, H_i, W_i) tensor per branch."""
        b, c = images.shape[0], self.config.channels
        return tuple(images.new_zeros(b, c, r, r) for r in self.config.resolutions)

    # ---------------------------------------------------------------- feedback h_i

    def _hhd_branch(self, i: int, z: Sequence[Tensor]) -> Tensor:
        """h_i of Eq. 14 (spec A.4 tensor recipe, in (B, C, N) layout: S^T B there is B S in (B, N, C))."""
        cfg, L, zi = self.config, len(z), z[i]
        size = zi.shape[-1]
        nxt = resample(z[(i + 1) % L], size, cfg.p_scale)  # P_{i:i+1} z_{i+1}
        prv = resample(z[(i - 1) % L], size, cfg.p_scale)  # P_{i-1:i}^T z_{i-1}
        if cfg.hhd_terms == "no_d" or cfg.lam == 0:
            return 0.5 * (nxt + prv)
        a, bn, cp = zi.flatten(2), nxt.flatten(2), prv.flatten(2)
        # sign(.) has zero derivative a.e. (spec A.4): the sign patterns are constants, so detach them.
        s1 = _offdiag_sign(a.detach() @ bn.detach().transpose(1, 2))
        s2 = _offdiag_sign(a.detach() @ cp.detach().transpose(1, 2))
        decor = (s1 @ bn + s2 @ cp).view_as(zi)
        base = zi if cfg.hhd_terms == "no_h" else 0.5 * (nxt + prv)
        return base - 0.5 * cfg.lam * decor

    def _feedback_branch(self, i: int, z: Sequence[Tensor], fusion: Sequence[Tensor]) -> Tensor:
        """Feedback for branch i: z_i (none), fused state (sum/conv, A.3) or HH&D (A.4)."""
        cfg = self.config
        if cfg.coupling == "none":
            return z[i]
        if cfg.coupling == "hhd":
            return self._hhd_branch(i, z)
        size, L = z[i].shape[-1], len(z)
        parts = [resample(z[j], size, cfg.p_scale) for j in range(L)]
        if cfg.coupling == "conv":
            parts = [F.conv2d(p, fusion[i * L + j], padding=1) for j, p in enumerate(parts)]
        return cfg.fusion_scale * torch.stack(parts).sum(0)

    def hhd(self, z: Sequence[Tensor]) -> State:
        """The HH&D module h_i for every branch (Eq. 12-14), honouring ``hhd_terms``."""
        return tuple(self._hhd_branch(i, z) for i in range(len(z)))

    def feedback(self, z: Sequence[Tensor], fusion: Sequence[Tensor] | None = None) -> State:
        """h_i(z) for the configured coupling (Jacobi); ``fusion`` = conv fusion weights (default: current)."""
        fusion = self.normalized_weights()[1] if fusion is None else fusion
        return tuple(self._feedback_branch(i, z, fusion) for i in range(len(z)))

    # ---------------------------------------------------------------- the map T_theta

    def layer(self, z: Sequence[Tensor], injection: MOptEqsInjection, perturb: bool = False) -> State:
        """T_theta of Algorithm 2 / Eq. 6: z_i <- W_i^T relu(W_i h_i + U_i (g - delta_{i-1}) + b_i).

        PE (``perturb``): delta_i = eps * sign(U_i^T y_i), sequential over branches, detached.  Jacobi by default
        (all h_i from the input z); Gauss-Seidel uses the already updated branches (AMBIG-A5).  No host sync.
        """
        cfg = self.config
        current = list(z)
        delta: Tensor | None = None
        out = []
        for i, conv in enumerate(self.w_convs):
            w = injection.weights[i]
            source = current if cfg.update == "gauss_seidel" else z
            pre = conv.apply_op(self._feedback_branch(i, source, injection.fusion), w) + injection.drive[i]
            if delta is not None:
                pre = pre - self.u_apply(i, delta)
            y = F.relu(pre)
            if perturb and i + 1 < cfg.branches:
                delta = cfg.pe_eps * torch.sign(self.u_adjoint(i, y.detach()))
            new = conv.adjoint(y, w)
            out.append(new)
            current[i] = new
        return tuple(out)

    def post_activation(self, z: Sequence[Tensor], injection: MOptEqsInjection) -> State:
        """y_i = relu(W_i h_i(z) + U_i g + b_i) without PE (Jacobi); at a fixed point y_i = W_i^{-T} z_i."""
        fb = self.feedback(z, injection.fusion)
        return tuple(F.relu(conv.apply_op(h, w) + d)
                     for conv, h, w, d in zip(self.w_convs, fb, injection.weights, injection.drive))

    def logits(self, z: Sequence[Tensor]) -> Tensor:
        """Classifier head W_c (spec A.7)."""
        if self.config.layout == "multi_scale":
            feats = torch.cat([head(zi).mean(dim=(2, 3)) for head, zi in zip(self.branch_heads, z)], dim=1)
        else:
            x = F.relu(self.head_norm(torch.cat(list(z), dim=1)))
            feats = F.adaptive_avg_pool2d(x, self.config.head_pool).flatten(1)
        return self.classifier(feats)

    def pe_active(self) -> bool:
        """PE applies in training (pe_eps > 0), and at evaluation only with ``pe_at_eval`` (AMBIG-A6)."""
        return self.config.pe_eps > 0 and (self.training or self.config.pe_at_eval)

    def forward(self, images: Tensor, **solve: Any) -> Tensor:
        """Logits at the equilibrium of T_theta (Alg. 1/2; backward Eqs. 8-9 or the one-step gradient of A.11);
        ``solve`` holds :meth:`equilibrium`'s keyword arguments."""
        return self.logits(self.equilibrium(images, **solve))

    def equilibrium(
        self,
        images: Tensor,
        solver: str = "anderson",
        max_iter: int = 30,
        tol: float = 1e-3,
        solver_options: dict[str, Any] | None = None,
        backward: str = "ift",
        backward_options: dict[str, Any] | None = None,
        stats: dict[str, Any] | None = None,
        gradient: Literal["implicit", "one_step"] = "implicit",
        one_step_iterations: int = 30,
        feature_delta: Tensor | None = None,
    ) -> State:
        """z* of T_theta, differentiable by the implicit function theorem (Eqs. 8-9) or the one-step gradient (A.11).

        ``gradient="implicit"``: :func:`fixed_point` (``backward_options=None`` with ift: the forward's solver, 30
        iterations, spec A.6).  ``"one_step"``: K = ``one_step_iterations`` plain iterations, the first K-1 without
        grad, back-propagating through the last one only; ``stats["one_step_residual"]`` gets its (B,) relative
        residual.  ``feature_delta`` is added to g(x) (Fig. 3a).
        """
        injection = self.inject(images, feature_delta)
        perturb = self.pe_active()

        def f(state: Sequence[Tensor]) -> State:
            return self.layer(state, injection, perturb)

        if gradient == "implicit":
            if backward_options is None and backward == "ift":
                backward_options = {"method": solver, "max_iter": 30}
            return tuple(fixed_point(f, self.z0(images), solver=solver, max_iter=max_iter, tol=tol,
                                     solver_options=solver_options, backward=backward,  # type: ignore[arg-type]
                                     backward_options=backward_options, stats=stats))
        if gradient != "one_step":
            raise ValueError(f"gradient must be 'implicit' or 'one_step', got {gradient!r}")
        if not isinstance(one_step_iterations, int) or one_step_iterations < 1:
            raise ValueError(f"one_step_iterations must be a positive integer, got {one_step_iterations!r}")
        z = self.z0(images)
        with torch.no_grad():
            for _ in range(one_step_iterations - 1):
                z = f(z)
        prev = tuple(t.detach() for t in z)
        z = f(prev)
        if stats is not None:
            num = sum((a.detach() - b).flatten(1).pow(2).sum(1) for a, b in zip(z, prev))
            den = sum(a.detach().flatten(1).pow(2).sum(1) for a in z)
            stats["one_step_residual"] = num.sqrt() / (den.sqrt() + 1e-9)
        return z

    # ---------------------------------------------------------------- analysis (Figs. 2-4, Eq. 5)

    @torch.no_grad()
    def solve_equilibrium(self, images: Tensor, perturb: bool = False, max_iter: int = 50, tol: float = 1e-3,
                          solver: str = "anderson", feature_delta: Tensor | None = None,
                          stats: dict[str, Any] | None = None) -> tuple[State, MOptEqsInjection]:
        """(z*, injection) without gradients; ``stats["forward"]`` gets the :class:`SolverResult`."""
        injection = self.inject(images, feature_delta)
        result = solve(lambda s: self.layer(s, injection, perturb), self.z0(images), method=solver,
                       max_iter=max_iter, tol=tol)
        if stats is not None:
            stats["forward"] = result
        return tuple(result.z), injection

    def residual_trace(self, images: Tensor, iterations: int = 50, solver: str = "anderson",
                       perturb: bool = False) -> Tensor:
        """(B, iterations) relative residual ||T(z^j) - z^j|| / ||T(z^j)|| per solver iteration (Fig. 4).

        Taken from :attr:`SolverResult.trace` with tol = 0; for plain forward iteration this is exactly the
        paper's ||T^{j+1} - T^j|| / ||T^j||.
        """
        stats: dict[str, Any] = {}
        self.solve_equilibrium(images, perturb=perturb, max_iter=iterations, tol=0.0, solver=solver, stats=stats)
        return stats["forward"].trace

    @torch.no_grad()
    def reconstructed_perturbation(self, images: Tensor, eps: float, max_iter: int = 50,
                                   tol: float = 1e-3) -> Tensor:
        """delta = eps * sign(U_1^T y_1*) in feature space (Fig. 3a, spec A.5), from z* solved without PE.

        Re-solve on g(x) - delta with ``forward(images, feature_delta=-delta)``.
        """
        z, injection = self.solve_equilibrium(images, perturb=False, max_iter=max_iter, tol=tol)
        return eps * torch.sign(self.u_adjoint(0, self.post_activation(z, injection)[0]))

    def heritage(self, zi: Tensor, zj: Tensor) -> Tensor:
        """H(z_i, z_j) = z_i^T P_{i:j} z_j per sample (Eq. 3)."""
        return (zi * resample(zj, zi.shape[-1], self.config.p_scale)).flatten(1).sum(1)

    def diversity(self, zi: Tensor, zj: Tensor) -> Tensor:
        """D(z_i, z_j) = sum_{k1 != k2} |<z_i^(k1), (P_{i:j} z_j)^(k2)>| per sample (Eq. 4)."""
        gram = zi.flatten(2) @ resample(zj, zi.shape[-1], self.config.p_scale).flatten(2).transpose(1, 2)
        return gram.abs().sum((1, 2)) - gram.diagonal(dim1=1, dim2=2).abs().sum(1)

    def pair_terms(self, z: Sequence[Tensor], normalize: bool = False) -> tuple[Tensor, Tensor]:
        """(sum_k D(z_k, z_{k+1}), sum_k H(z_k, z_{k+1})) over the cyclic pairs, per sample (Eq. 5).

        ``normalize``: of channel vectors scaled to unit L2 norm first (sums of |cosines| and cosines, as Fig. 2).
        """
        L = len(z)
        if normalize:
            z = [F.normalize(t.flatten(2), dim=2).view_as(t) for t in z]
        d = sum(self.diversity(z[k], z[(k + 1) % L]) for k in range(L))
        h = sum(self.heritage(z[k], z[(k + 1) % L]) for k in range(L))
        return d, h  # type: ignore[return-value]

    def potential(self, z: Sequence[Tensor]) -> Tensor:
        """Phi(z) per sample with h = -grad Phi: the coupling part of G (Eq. 5; Eq. 11 for none; A.4 ablations).

        Not defined for conv fusion (not a gradient); exact for sum only with adjoint/isometric P.
        """
        cfg, L = self.config, len(z)
        sq = sum(t.flatten(1).pow(2).sum(1) for t in z)
        if cfg.coupling == "none":
            return -0.5 * sq
        if cfg.coupling == "sum":
            return -0.5 * cfg.fusion_scale * sum(self.heritage(z[i], z[j]) for i in range(L) for j in range(L))
        if cfg.coupling == "conv":
            raise NotImplementedError("conv fusion has no hidden objective (spec A.3 caveat)")
        d, h = self.pair_terms(z)
        lam = 0.0 if cfg.hhd_terms == "no_d" else cfg.lam
        return 0.5 * lam * d - (0.5 * sq if cfg.hhd_terms == "no_h" else 0.5 * h)

    def dense_weight(self, i: int, weight: Tensor) -> Tensor:
        """The (d_i, d_i) matrix of the conv operator W_i on branch i's grid (test scale only: d_i^2 memory)."""
        r, c = self.config.resolutions[i], self.config.channels
        d = c * r * r
        eye = torch.eye(d, dtype=weight.dtype, device=weight.device).view(d, c, r, r)
        return self.w_convs[i].apply_op(eye, weight).view(d, d).t()

    def objective(self, z: Sequence[Tensor], injection: MOptEqsInjection) -> Tensor:
        """Smooth part of G (Eq. 5; Eq. 11 for coupling none), per sample (B,): the indicator 1^T f is left out.

        sum_i [-<U_i g + b_i, W_i^{-T} z_i> + 1/2 ||W_i^{-T} z_i||^2] + Phi(z).  W_i^{-T} uses the dense operator
        matrix, so this is for tiny test-scale models only.
        """
        total = self.potential(z)
        for i, (zi, w, d) in enumerate(zip(z, injection.weights, injection.drive)):
            mat = self.dense_weight(i, w)
            u = torch.linalg.solve(mat.t(), zi.flatten(1).t()).t()  # W_i^{-T} z_i
            total = total - (d.flatten(1) * u).sum(1) + 0.5 * u.pow(2).sum(1)
        return total

    def average_dh(self, z: Sequence[Tensor], normalize: bool = True) -> tuple[Tensor, Tensor]:
        """(Average D, Average H) per sample (Fig. 2a/b, AMBIG-A7).

        Sum over branches i and neighbours j in N(i) = {i-1, i+1} (cyclic, as a set) of D(z_i, z_j) / (L C^2)
        and H(z_i, z_j) / (L C), H with a positive sign.  ``normalize`` L2-normalises every channel vector
        (of z_i and of P_{i:j} z_j) first, so D and H are sums of |cosines| and cosines.
        """
        L, c = len(z), self.config.channels
        d_tot = h_tot = z[0].new_zeros(z[0].shape[0])
        for i in range(L):
            for j in sorted({(i - 1) % L, (i + 1) % L}):
                a = z[i].flatten(2)
                b = resample(z[j], z[i].shape[-1], self.config.p_scale).flatten(2)
                if normalize:
                    a, b = F.normalize(a, dim=2), F.normalize(b, dim=2)
                gram = a @ b.transpose(1, 2)
                diag = gram.diagonal(dim1=1, dim2=2)
                d_tot = d_tot + gram.abs().sum((1, 2)) - diag.abs().sum(1)
                h_tot = h_tot + diag.sum(1)
        return d_tot / (L * c * c), h_tot / (L * c)

    def channel_correlation(self, z: Sequence[Tensor], i: int = 1, j: int = 0, normalize: bool = True) -> Tensor:
        """(B, C, C) |<z_i^(k1), (P_{i:j} z_j)^(k2)>| (Fig. 2c/d heatmap; 0-based branches, default z_2 vs z_1)."""
        a = z[i].flatten(2)
        b = resample(z[j], z[i].shape[-1], self.config.p_scale).flatten(2)
        if normalize:
            a, b = F.normalize(a, dim=2), F.normalize(b, dim=2)
        return (a @ b.transpose(1, 2)).abs()

    # ---------------------------------------------------------------- provenance

    def operator_norms(self) -> list[float]:
        """Estimated ||W_i||_2 per branch (logging; host sync)."""
        return [m.operator_norm() for m in self.w_convs]

    def num_parameters(self) -> int:
        """Number of trainable parameter elements."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def describe(self) -> dict[str, Any]:
        """Config, variant name, branch resolutions and parameter count (JSON-serialisable)."""
        return {"model": type(self).__name__, "variant": self.config.variant, "config": asdict(self.config),
                "resolutions": list(self.config.resolutions), "num_parameters": self.num_parameters(),
                "num_batchnorm": sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.modules())}

    def with_config(self, **changes: Any) -> "MOptEqs":
        """A new model with ``changes`` applied to the config and this model's state (same shapes required)."""
        known = {f.name for f in fields(MOptEqsConfig)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown MOptEqsConfig field(s) {sorted(unknown)}")
        other = MOptEqs(replace(self.config, **changes)).to(next(self.parameters()))
        other.load_state_dict(self.state_dict())
        return other.train(self.training)
