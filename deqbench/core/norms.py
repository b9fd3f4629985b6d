"""Weight and spectral normalisation computed once per optimisation step.

A DEQ layer ``f`` is evaluated tens of times inside one fixed-point solve.
``torch.nn.utils.parametrizations`` recomputes a normalised weight on *every*
access, i.e. on every ``f`` call.  Here the effective weight is computed once
and cached as a plain tensor attribute ``module.<name>`` (not a Parameter and
not a buffer, so it never appears in ``state_dict``); ``nn.Linear`` /
``nn.Conv*d`` forwards use it unchanged.

Formulas
--------
* Weight norm (Salimans & Kingma, 2016): ``w = g * v / ||v||``, the norm taken
  over every dimension except ``dim`` (over all dimensions if ``dim`` is None).
  A slice with ``||v|| = 0`` gives a zero weight slice instead of NaN.
* Spectral norm (Miyato et al., 2018): ``w = v / sigma(v)`` with ``sigma``
  the largest singular value of ``V``, the weight reshaped to
  ``(v.shape[dim], -1)``.  ``sigma`` is estimated from a persistent left
  singular vector buffer ``<name>_u``: ``r = normalize(V^T u)`` (no grad),
  ``sigma = u^T V r`` (differentiable in ``V``; ``u`` and ``r`` are constants).

Parameters created by :func:`apply_weight_norm`: ``<name>_g`` (shape 1 in every
dimension but ``dim``) and ``<name>_v``; by :func:`apply_spectral_norm`:
``<name>_v`` plus the buffer ``<name>_u``.  Apply the norms *before* building
the optimiser, which must see the new parameters.

When the weight is recomputed
-----------------------------
A forward pre-hook on each normed module recomputes the weight when the cached
one is stale, which it detects without any host synchronisation:

* a parameter changed: its ``_version`` counter (bumped by every in-place
  update: ``optimizer.step()``, ``load_state_dict``), ``data_ptr``, identity,
  device, dtype or ``requires_grad``;
* a parameter tensor was swapped for another one (``torch.func.functional_call``);
* grad mode: the cached weight was computed under ``no_grad`` (it has no
  graph) and grad is now enabled.  A weight computed *with* grad is reused
  under ``no_grad``: its values are the same;
* inference mode was entered or left;
* a backward pass went through the cached weight (a tensor hook marks it),
  which freed its graph -- e.g. gradient accumulation without an optimiser
  step in between.

When the hook recomputes in training mode and some parameter requires grad,
it builds the weight's graph even under ``no_grad`` (not in inference mode), so
the DEQ pattern -- solve under ``no_grad``, then one ``f`` call with grad --
costs one computation per step.  In eval mode under ``no_grad`` no graph is
built.

Not detected: writes through ``param.data`` in place (``.data`` has its own
version counter) and reads of ``module.weight`` outside ``module.forward``.
Call :func:`reset_norms` after such changes; calling it at the start of every
model forward, with grad enabled, is the recommended pattern and costs one
weight computation per normed module.

Power iteration (spectral norm)
-------------------------------
``<name>_u`` advances by ``n_power_iterations`` steps, under ``no_grad``, only
when the module is in training mode and either :func:`reset_norms` is called
or the pre-hook recomputes because a parameter changed.  Recomputations
triggered only by grad mode or a consumed graph reuse ``u`` as it is, so every
``f`` call of one step sees numerically the same operator; in eval mode ``u``
is frozen, so evaluation is deterministic.

Copying: a cached weight computed with grad is a non-leaf tensor, which
``copy.deepcopy`` refuses; run ``reset_norms(model)`` under ``torch.no_grad()``
first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Literal

import torch
from torch import Tensor, nn

__all__ = [
    "DEFAULT_TYPES",
    "apply_weight_norm",
    "apply_spectral_norm",
    "reset_norms",
    "remove_norms",
    "norm_computations",
]

DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)

_STATE_ATTR = "_deq_norm_state"
_INIT_POWER_ITERATIONS = 15  # warm-up power iterations when spectral norm is applied
_INIT_SEED = 0  # u is initialised from a private generator: the global RNG is left untouched

Kind = Literal["weight", "spectral"]


@dataclass
class _Entry:
    """How one weight of a module is normalised."""

    name: str
    kind: Kind
    dim: int | None  # weight norm: None = norm over the whole tensor; spectral: always an int
    requires_grad: bool  # of the original weight, restored by remove_norms
    n_power_iterations: int = 0
    eps: float = 0.0

    def param_names(self) -> tuple[str, ...]:
        return (f"{self.name}_g", f"{self.name}_v") if self.kind == "weight" else (f"{self.name}_v",)


@dataclass
class _State:
    """Per-module cache bookkeeping (kept in the module's ``__dict__``)."""

    entries: dict[str, _Entry] = field(default_factory=dict)
    param_names: tuple[str, ...] = ()  # of all entries, in order
    key: tuple | None = None  # parameter key of the cached weights
    tensors: tuple[Tensor, ...] = ()  # the parameter tensors they were computed from
    with_grad: bool = False  # cached weights computed with grad enabled
    consumed: bool = False  # a backward pass went through the cached weights
    generation: int = 0  # bumped at each computation
    computations: int = 0  # number of computations, for tests and profiling


# ----------------------------------------------------------------------------- formulas


def _norm_except(v: Tensor, dim: int | None) -> Tensor:
    """||v|| over all dims except ``dim`` (all dims if None), keepdim."""
    if dim is None:
        return torch.linalg.vector_norm(v).reshape([1] * v.dim())
    dims = [d for d in range(v.dim()) if d != dim]
    if not dims:  # 1-D weight normalised per element
        return v.abs()
    return torch.linalg.vector_norm(v, dim=dims, keepdim=True)


def _weight_norm(g: Tensor, v: Tensor, dim: int | None) -> Tensor:
    """w = g * v / ||v||; zero slices of v give zero slices of w."""
    norm = _norm_except(v, dim)
    norm = torch.where(norm > 0, norm, torch.ones_like(norm))
    return v * (g / norm)


def _as_matrix(v: Tensor, dim: int) -> Tensor:
    """The weight as a (v.shape[dim], -1) matrix."""
    if dim != 0:
        v = v.movedim(dim, 0)
    return v.reshape(v.shape[0], -1)


def _unit(x: Tensor, eps: float) -> Tensor:
    return x / torch.linalg.vector_norm(x).clamp_min(eps)


@torch.no_grad()
def _power_iteration(v: Tensor, u_buf: Tensor, dim: int, n: int, eps: float) -> None:
    """Advance the left singular vector estimate in place: r = V^T u / ||.||, u = V r / ||.||."""
    mat = _as_matrix(v.detach(), dim)
    u = u_buf.to(mat.dtype)
    for _ in range(n):
        r = _unit(mat.t().mv(u), eps)
        u = _unit(mat.mv(r), eps)
    u_buf.copy_(u)


def _spectral_norm(v: Tensor, u_buf: Tensor, dim: int, eps: float) -> Tensor:
    """w = v / sigma, sigma = u^T V r with r = V^T u / ||V^T u|| (u, r constants)."""
    mat = _as_matrix(v, dim)
    with torch.no_grad():
        # clone: u is saved for backward and the buffer is later updated in place
        u = u_buf.to(mat.dtype).clone()
        r = _unit(mat.detach().t().mv(u), eps)
    sigma = torch.dot(u, mat.mv(r)).clamp_min(eps)
    return v / sigma


# ----------------------------------------------------------------------------- cache machinery


def _params(module: nn.Module, state: _State) -> tuple[Tensor, ...]:
    """The current g/v tensors (runs on every forward: kept lean)."""
    registered = module._parameters
    out = []
    for pname in state.param_names:
        p = registered.get(pname)
        out.append(p if p is not None else getattr(module, pname))  # swapped-in plain tensors
    return tuple(out)


def _key(params: tuple[Tensor, ...]) -> tuple:
    """Python-side reads only (version counter, pointer, metadata): no host/device sync."""
    key: list[Any] = [torch.is_inference_mode_enabled()]
    for p in params:
        try:
            ptr = p.data_ptr()
        except RuntimeError:  # tensors without storage (functorch wrappers): rely on the rest
            ptr = None
        key += (p._version, ptr, p.device, p.dtype, p.requires_grad)
    return tuple(key)


def _same_tensors(a: tuple[Tensor, ...], b: tuple[Tensor, ...]) -> bool:
    # identity, not ==; the cache holds references, so ids cannot be recycled
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


def _mark_consumed(state: _State, generation: int) -> None:
    if state.generation == generation:
        state.consumed = True


def _compute(module: nn.Module, state: _State, update_u: bool) -> None:
    """Recompute every normalised weight of ``module`` and store it as a plain attribute.

    ``update_u``: advance the spectral-norm power iteration first.  Runs in
    the caller's grad mode.
    """
    params = _params(module, state)
    key = _key(params)
    state.generation += 1
    generation = state.generation
    for entry in state.entries.values():
        v = getattr(module, f"{entry.name}_v")
        if entry.kind == "weight":
            w = _weight_norm(getattr(module, f"{entry.name}_g"), v, entry.dim)
        else:
            u = getattr(module, f"{entry.name}_u")
            assert entry.dim is not None
            if update_u:
                _power_iteration(v, u, entry.dim, entry.n_power_iterations, entry.eps)
            w = _spectral_norm(v, u, entry.dim, entry.eps)
        if w.requires_grad:
            w.register_hook(lambda grad, s=state, gen=generation: _mark_consumed(s, gen))
        module.__dict__[entry.name] = w  # plain attribute: not in _parameters/_buffers
    state.key = key
    state.tensors = params
    state.with_grad = torch.is_grad_enabled()
    state.consumed = False
    state.computations += 1


def _pre_hook(module: nn.Module, args: Any) -> None:
    """Forward pre-hook: recompute the cached weights if stale (see module docstring)."""
    state: _State = module.__dict__[_STATE_ATTR]  # looked up on the module so deepcopy works
    params = _params(module, state)
    key = _key(params)
    changed = key != state.key or not _same_tensors(params, state.tensors)
    if changed or state.consumed or (torch.is_grad_enabled() and not state.with_grad):
        # Recompute.  In training mode with trainable parameters the weight is
        # built with a graph even under no_grad: the DEQ solve (no_grad) and
        # the following f call with grad then share one computation.
        update_u = module.training and changed
        track = torch.is_grad_enabled() or (
            module.training
            and not torch.is_inference_mode_enabled()
            and any(p.requires_grad for p in params)
        )
        with torch.set_grad_enabled(track):
            _compute(module, state, update_u)


def _normed_modules(model: nn.Module) -> Iterator[tuple[nn.Module, _State]]:
    for m in model.modules():
        state = m.__dict__.get(_STATE_ATTR)
        if state is not None:
            yield m, state


# ----------------------------------------------------------------------------- validation


def _check_module(fn: str, module: Any) -> None:
    if not isinstance(module, nn.Module):
        raise TypeError(f"{fn}: module must be a torch.nn.Module, got {type(module).__name__}")


def _check_names(fn: str, names: Any) -> tuple[str, ...]:
    if isinstance(names, str):
        names = (names,)
    try:
        names = tuple(names)
    except TypeError:
        raise ValueError(f"{fn}: names must be a string or a sequence of strings, got {names!r}") from None
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{fn}: names must be a non-empty sequence of non-empty strings, got {names!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"{fn}: names contains duplicates: {names!r}")
    return names


def _check_types(fn: str, types: Any) -> tuple[type[nn.Module], ...]:
    if isinstance(types, type):
        types = (types,)
    try:
        types = tuple(types)
    except TypeError:
        raise ValueError(f"{fn}: types must be a tuple of nn.Module subclasses, got {types!r}") from None
    if not types or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in types):
        raise ValueError(f"{fn}: types must be a non-empty tuple of nn.Module subclasses, got {types!r}")
    return types


def _check_dim(fn: str, dim: Any, ndim: int, where: str, allow_none: bool) -> int | None:
    if dim is None and allow_none:
        return None
    if not isinstance(dim, int) or isinstance(dim, bool) or not -ndim <= dim < ndim:
        allowed = f"an int in [{-ndim}, {ndim - 1}]" + (" or None" if allow_none else "")
        raise ValueError(f"{fn}: dim must be {allowed} for {where} ({ndim}-D), got {dim!r}")
    return dim % ndim


def _targets(
    fn: str, module: nn.Module, names: tuple[str, ...], types: tuple[type[nn.Module], ...]
) -> list[tuple[str, nn.Module, str, nn.Parameter]]:
    """(description, submodule, name, parameter) for every weight to normalise; validates all first."""
    found = [(path, m) for path, m in module.named_modules() if isinstance(m, types)]
    if not found:
        kinds = ", ".join(t.__name__ for t in types)
        raise ValueError(f"{fn}: module ({type(module).__name__}) has no submodule of types ({kinds})")
    targets = []
    seen: dict[int, str] = {}
    for path, m in found:
        where = f"{type(m).__name__} at {path!r}" if path else type(m).__name__
        for name in names:
            state = m.__dict__.get(_STATE_ATTR)
            if state is not None and name in state.entries:
                raise ValueError(f"{fn}: names: {name!r} of {where} is already normalised "
                                 f"({state.entries[name].kind} norm); call remove_norms first")
            p = m._parameters.get(name)
            if p is None:
                have = [n for n, q in m._parameters.items() if q is not None]
                raise ValueError(f"{fn}: names: {where} has no parameter {name!r} (its parameters: {have})")
            if p.dim() == 0:
                raise ValueError(f"{fn}: names: parameter {name!r} of {where} is a scalar; nothing to normalise")
            for suffix in ("_g", "_v", "_u"):
                if hasattr(m, name + suffix):
                    raise ValueError(f"{fn}: names: {where} already has an attribute {name + suffix!r}")
            other = seen.get(id(p))
            if other is not None:
                raise ValueError(f"{fn}: names: parameter {name!r} of {where} is shared with {other}; "
                                 "tied weights are not supported")
            seen[id(p)] = f"{where}.{name}"
            targets.append((where, m, name, p))
    return targets


def _add_entry(module: nn.Module, entry: _Entry) -> None:
    """Record a normalised weight; the first one also installs the forward pre-hook."""
    state = module.__dict__.get(_STATE_ATTR)
    if state is None:
        state = _State()
        module.__dict__[_STATE_ATTR] = state
        module.register_forward_pre_hook(_pre_hook, prepend=True)
    state.entries[entry.name] = entry
    state.param_names += entry.param_names()


# ----------------------------------------------------------------------------- public API


def apply_weight_norm(
    module: nn.Module,
    names: tuple[str, ...] | str = ("weight",),
    dim: int | None = 0,
    types: tuple[type[nn.Module], ...] = DEFAULT_TYPES,
) -> nn.Module:
    """Weight-normalise every submodule of ``types`` (``module`` included): w = g * v / ||v||.

    Each Parameter ``name`` becomes ``name_g`` = ||w|| over all dims except
    ``dim`` (shape 1 elsewhere; ``dim=None``: one norm for the whole tensor)
    and ``name_v`` = w, so the effective weight equals the old one.  Returns
    ``module``, modified in place.
    """
    fn = "apply_weight_norm"
    _check_module(fn, module)
    names = _check_names(fn, names)
    types = _check_types(fn, types)
    targets = _targets(fn, module, names, types)
    dims = [_check_dim(fn, dim, p.dim(), f"{where}.{name}", allow_none=True) for where, _, name, p in targets]
    for (_, m, name, p), d in zip(targets, dims):
        with torch.no_grad():
            g = _norm_except(p.detach(), d).clone()
            v = p.detach().clone()
        del m._parameters[name]
        m.register_parameter(f"{name}_g", nn.Parameter(g, requires_grad=p.requires_grad))
        m.register_parameter(f"{name}_v", nn.Parameter(v, requires_grad=p.requires_grad))
        _add_entry(m, _Entry(name, "weight", d, p.requires_grad))
    _initialise({id(m): m for _, m, _, _ in targets}.values())
    return module


def apply_spectral_norm(
    module: nn.Module,
    n_power_iterations: int = 1,
    eps: float = 1e-12,
    types: tuple[type[nn.Module], ...] = DEFAULT_TYPES,
    names: tuple[str, ...] | str = ("weight",),
    dim: int | None = None,
) -> nn.Module:
    """Spectrally normalise every submodule of ``types`` (``module`` included): w = v / sigma(v).

    ``sigma`` is the power-iteration estimate of the largest singular value of
    v reshaped to ``(v.shape[dim], -1)``; ``dim=None`` means 1 for transposed
    convolutions (their output-channel dim) and 0 otherwise.  The Parameter
    ``name`` becomes ``name_v`` plus the buffer ``name_u`` (left singular
    vector, warmed up with a few iterations now).  ``u`` advances by
    ``n_power_iterations`` per parameter update in training mode (see the
    module docstring).  ``eps`` guards the normalisations and lower-bounds
    sigma.  Returns ``module``, modified in place.
    """
    fn = "apply_spectral_norm"
    _check_module(fn, module)
    if not isinstance(n_power_iterations, int) or isinstance(n_power_iterations, bool) or n_power_iterations < 1:
        raise ValueError(f"{fn}: n_power_iterations must be a positive integer, got {n_power_iterations!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < float("inf"):
        raise ValueError(f"{fn}: eps must be a positive finite float, got {eps!r}")
    eps = float(eps)
    names = _check_names(fn, names)
    types = _check_types(fn, types)
    targets = _targets(fn, module, names, types)
    dims = []
    for where, m, name, p in targets:
        d = dim
        if d is None:
            d = 1 if isinstance(m, nn.modules.conv._ConvTransposeNd) and p.dim() > 1 else 0
        dims.append(_check_dim(fn, d, p.dim(), f"{where}.{name}", allow_none=False))
    gen = torch.Generator().manual_seed(_INIT_SEED)
    for (_, m, name, p), d in zip(targets, dims):
        assert d is not None
        with torch.no_grad():
            v = p.detach().clone()
            u = torch.randn(p.shape[d], generator=gen, dtype=torch.float64)
            u = _unit(u, eps).to(device=p.device, dtype=p.dtype)
            _power_iteration(v, u, d, _INIT_POWER_ITERATIONS, eps)
        del m._parameters[name]
        m.register_parameter(f"{name}_v", nn.Parameter(v, requires_grad=p.requires_grad))
        m.register_buffer(f"{name}_u", u)
        _add_entry(m, _Entry(name, "spectral", d, p.requires_grad, n_power_iterations, eps))
    _initialise({id(m): m for _, m, _, _ in targets}.values())
    return module


def _initialise(modules: Any) -> None:
    """First computation, graph-free, so ``module.weight`` exists right after apply."""
    with torch.no_grad():
        for m in modules:
            state = m.__dict__[_STATE_ATTR]
            _compute(m, state, update_u=False)


def reset_norms(model: nn.Module) -> int:
    """Recompute every normalised weight in ``model`` once; returns how many modules.

    Call at the start of each optimisation step / model forward, in the grad
    mode of that forward.  In training mode each call also advances the
    spectral-norm power iteration by ``n_power_iterations``.  A model without
    normalised modules is a no-op.
    """
    _check_module("reset_norms", model)
    n = 0
    for m, state in _normed_modules(model):
        _compute(m, state, update_u=m.training)
        n += 1
    return n


def remove_norms(model: nn.Module) -> nn.Module:
    """Fold every normalisation in ``model`` back into a plain Parameter ``weight``.

    The new Parameter equals the effective weight for the current parameters
    (spectral norm: the current ``u``, not advanced).  Returns ``model``; a
    model without normalised modules is returned unchanged.
    """
    _check_module("remove_norms", model)
    for m, state in list(_normed_modules(model)):
        with torch.no_grad():
            _compute(m, state, update_u=False)
        for entry in state.entries.values():
            w = m.__dict__.pop(entry.name)
            for pname in entry.param_names():
                delattr(m, pname)
            if entry.kind == "spectral":
                delattr(m, f"{entry.name}_u")
            m.register_parameter(entry.name, nn.Parameter(w.detach().clone(), requires_grad=entry.requires_grad))
        del m.__dict__[_STATE_ATTR]
        for hid in [h for h, hook in m._forward_pre_hooks.items() if hook is _pre_hook]:
            del m._forward_pre_hooks[hid]
            m._forward_pre_hooks_with_kwargs.pop(hid, None)
            getattr(m, "_forward_pre_hooks_always_called", {}).pop(hid, None)
    return model


def norm_computations(model: nn.Module) -> int:
    """Total number of weight computations so far over the normalised modules of ``model``."""
    _check_module("norm_computations", model)
    return sum(state.computations for _, state in _normed_modules(model))
