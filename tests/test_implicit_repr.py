"""(Implicit)^2 model layer (deqbench.models.implicit_repr): sizes, Neumann/IFT gradients, amortisation, filters."""

from __future__ import annotations

import math

import pytest
import torch

from deqbench.core.deq import fixed_point
from deqbench.models.implicit_repr import (
    EMBEDDED_SIZE_TAGS,
    IMAGE_SIZE_TAGS,
    VIDEO_SIZE_TAGS,
    AmortizedFixedPoint,
    ImplicitReprConfig,
    ImplicitRepresentation,
    paper_config,
    parse_size_tag,
    step_with_implicit_grad,
)

FILTERS = ("fourier", "gabor", "siren")
# Spec C.1 "Sizes" table (d_out = 3; d_in = 2 images, 3 video) and C.7's embedded Fourier counts.
SPEC_COUNTS = {
    "1L-256D": (68_099, 69_635), "1L-512D": (267_267, 270_339), "4L-256D": (267_779, 271_619),
    "1L-1024D": (1_060_867, 1_069_059), "1L-2048D": (4_218_883, 4_235_267), "4L-1024D": (4_221_955, 4_242_435),
}
SPEC_EMBEDDED_FOURIER = {"1L-64D": 4_739, "1L-128D": 17_667, "4L-64D": 17_795}
TIGHT = dict(tol=1e-12, max_iter=200, backward_tol=1e-12, backward_max_iter=200, check_every=1)


@pytest.fixture(autouse=True)
def _single_thread(single_thread):
    """Every test here uses tiny tensors (conftest.single_thread)."""


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tiny(filter: str = "fourier", size: str = "1L-6D", **kw) -> ImplicitRepresentation:
    """A float64 tiny model in eval mode (spectral-norm u frozen), input scale small enough for smooth FD."""
    base = dict(filter=filter, size=size, input_scale=3.0)
    base.update(kw)
    return ImplicitRepresentation(ImplicitReprConfig(**base)).double().eval()


def coords(n: int = 7, d_in: int = 2) -> torch.Tensor:
    return torch.rand(n, d_in, dtype=torch.float64) * 2 - 1


# ----------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("tag", IMAGE_SIZE_TAGS + VIDEO_SIZE_TAGS)
def test_parameter_counts_parity_and_spec_table(tag: str) -> None:
    task = "video" if tag in VIDEO_SIZE_TAGS else "image"
    counts = {}
    for filter in FILTERS:
        for implicit in (True, False):
            counts[filter, implicit] = n_params(ImplicitRepresentation(paper_config(task, filter, implicit, tag)))
        assert counts[filter, True] == counts[filter, False], (tag, filter)
    fourier_siren, gabor = SPEC_COUNTS[tag]
    print(f"{tag}: ours {counts}; spec Fourier/SIREN {fourier_siren}, Gabor {gabor}")
    # The spec derives its table from the reference's layer list: ours must match exactly.
    assert counts["fourier", True] == counts["siren", True] == fourier_siren
    assert counts["gabor", True] == gabor


def test_embedded_sizes_and_tag_parsing() -> None:
    for tag, expected in SPEC_EMBEDDED_FOURIER.items():
        assert tag in EMBEDDED_SIZE_TAGS
        assert n_params(ImplicitRepresentation(paper_config("image", "fourier", True, tag))) == expected
    assert parse_size_tag("4L-1024D") == (4, 1024)
    cfg = paper_config("video", "gabor", False, "4L-1024D")
    assert (cfg.n_layers, cfg.width, cfg.in_features, cfg.norm, cfg.label) == (4, 1024, 3, "none", "Gabor-MFN")


@pytest.mark.parametrize("tag", ["256D", "1L-256", "0L-256D", "1L-0D", "1l-256d", " 1L-256D", "1L-256D-x", 5])
def test_bad_size_tag_raises_naming_the_tag(tag: object) -> None:
    with pytest.raises(ValueError, match="bad size tag") as err:
        parse_size_tag(tag)  # type: ignore[arg-type]
    assert repr(tag) in str(err.value)
    with pytest.raises(ValueError, match=r"ImplicitReprConfig\.size: bad size tag"):
        ImplicitReprConfig(size=tag)  # type: ignore[arg-type]


@pytest.mark.parametrize("key, value", [
    ("filter", "wavelet"), ("norm", "weight"), ("backward", "phantom"), ("implicit", 1), ("in_features", 0),
    ("out_features", True), ("power_iterations", 0), ("max_iter", 2.5), ("check_every", 0),
    ("backward_max_iter", -1), ("neumann_order", -1), ("neumann_order", 1.0), ("amortize_iters", -2),
    ("amortize_iters", False), ("input_scale", 0.0),
    ("gabor_alpha", -3.0), ("gabor_alpha_injection", math.inf), ("target_norm", math.nan), ("tol", 0),
    ("backward_tol", "1e-2"), ("solver", "newton"), ("solver", 3),
])
def test_bad_config_raises_naming_the_key(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"ImplicitReprConfig\.{key}\b"):
        ImplicitReprConfig(**{key: value})


def test_bad_task_coordinates_and_amortizer_arguments() -> None:
    with pytest.raises(ValueError, match="task"):
        paper_config("audio", "fourier", True, "1L-256D")  # type: ignore[arg-type]
    model = tiny()
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        model(torch.zeros(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="implicit"):
        AmortizedFixedPoint(tiny(implicit=False))
    with pytest.raises(ValueError, match="amortize_iters"):
        AmortizedFixedPoint(model, iters=-1)


# ----------------------------------------------------------------------------- exact Neumann / IFT gradients


def _linear_problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    a = 0.6 * a / torch.linalg.matrix_norm(a, ord=2)
    b = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    c = torch.randn(3, 5, generator=gen, dtype=torch.float64)  # loss = sum(c * z): g = c per sample
    return a, b, c


def _closed_form(a: torch.Tensor, c: torch.Tensor, order: int | None) -> torch.Tensor:
    """dl/db = sum_i sum_{t<=T} (A^T)^t c_i, or sum_i (I - A^T)^{-1} c_i for T = infinity (None)."""
    if order is None:
        return torch.linalg.solve(torch.eye(5, dtype=a.dtype) - a.t(), c.t()).sum(1)
    total, term = c.t().clone(), c.t()
    for _ in range(order):
        term = a.t() @ term
        total = total + term
    return total.sum(1)


@pytest.mark.parametrize("order", [0, 1, 2, None])
def test_neumann_and_ift_gradients_exact_on_linear_map(order: int | None) -> None:
    a, b, c = _linear_problem()
    f = lambda z: z @ a.t() + b
    backward, options = ("ift", {"tol": 1e-13, "max_iter": 200}) if order is None else ("neumann", {"order": order})
    z = fixed_point(f, torch.zeros(3, 5, dtype=torch.float64), tol=1e-13, max_iter=200, check_every=1,
                    backward=backward, backward_options=options)
    (grad,) = torch.autograd.grad((c * z).sum(), b)
    torch.testing.assert_close(grad, _closed_form(a, c, order), rtol=1e-9, atol=1e-11)
    # The amortised step's backward: value F(z0) exactly, gradient the same series evaluated at z0.
    z0 = torch.randn(3, 5, dtype=torch.float64)
    out = step_with_implicit_grad(f, z0, backward, options)
    torch.testing.assert_close(out, f(z0))
    (grad,) = torch.autograd.grad((c * out).sum(), b)
    torch.testing.assert_close(grad, _closed_form(a, c, order), rtol=1e-9, atol=1e-11)


def _manual_gradients(model: ImplicitRepresentation, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor,
                      order: int | None, value: torch.Tensor | None = None) -> list[torch.Tensor]:
    """dl/dtheta = direct head term + u^T dF/dtheta at z, u from the explicit Jacobian J = dF/dz."""
    params = list(model.parameters())
    z = z.detach()
    values = model.filter_values(x)
    flat = lambda v: model.block(v.view_as(z), values).reshape(-1)
    jac = torch.autograd.functional.jacobian(flat, z.reshape(-1))
    out = z if value is None else value.detach()  # the point the loss is evaluated at
    zz = out.clone().requires_grad_()
    loss = ((model.head(zz, x.shape[:-1]) - y) ** 2).sum()
    direct = torch.autograd.grad(loss, params, allow_unused=True)
    (g,) = torch.autograd.grad(((model.head(zz, x.shape[:-1]) - y) ** 2).sum(), zz)
    g = g.reshape(-1)
    if order is None:
        u = torch.linalg.solve(torch.eye(g.numel(), dtype=g.dtype) - jac.t(), g)
    else:
        u, term = g.clone(), g
        for _ in range(order):
            term = jac.t() @ term
            u = u + term
    implicit = torch.autograd.grad(flat(z), params, u, allow_unused=True)
    return [sum(t for t in (d, i) if t is not None) for d, i in zip(direct, implicit)]


@pytest.mark.parametrize("filter", FILTERS)
@pytest.mark.parametrize("order", [1, 2, None])
def test_model_backward_equals_truncated_neumann_series(filter: str, order: int | None) -> None:
    backward = dict(backward="ift") if order is None else dict(backward="neumann", neumann_order=order)
    model = tiny(filter, size="2L-4D", **TIGHT, **backward)
    x, y = coords(5), torch.randn(5, 3, dtype=torch.float64)
    stats: dict = {}
    loss = ((model(x, stats=stats) - y) ** 2).sum()
    got = torch.autograd.grad(loss, list(model.parameters()))
    z_star = stats["forward"].z
    for g, e in zip(got, _manual_gradients(model, x, y, z_star, order)):
        torch.testing.assert_close(g, e, rtol=1e-7, atol=1e-9)
    # The amortised step (second call): value F(Z), gradient the order-T series at the cached Z.
    amort = AmortizedFixedPoint(model)
    amort(x)
    cached = amort.state.clone()
    pred = amort(x)
    got = torch.autograd.grad(((pred - y) ** 2).sum(), list(model.parameters()))
    for g, e in zip(got, _manual_gradients(model, x, y, cached, order, value=amort.state)):
        torch.testing.assert_close(g, e, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("filter", FILTERS)
def test_implicit_gradient_matches_finite_differences(filter: str) -> None:
    model = tiny(filter, size="2L-5D", backward="ift", **TIGHT)
    x, y = coords(6), torch.randn(6, 3, dtype=torch.float64)
    loss_fn = lambda: ((model(x) - y) ** 2).sum()
    grads = dict(zip([n for n, _ in model.named_parameters()], torch.autograd.grad(loss_fn(), model.parameters())))
    h = 1e-6
    checked = 0
    for name, p in model.named_parameters():
        for idx in [0, p.numel() - 1]:
            with torch.no_grad():
                flat = p.view(-1)
                flat[idx] += h
                up = loss_fn()
                flat[idx] -= 2 * h
                down = loss_fn()
                flat[idx] += h
            fd = (up - down) / (2 * h)
            assert grads[name].reshape(-1)[idx].item() == pytest.approx(fd.item(), rel=1e-5, abs=1e-7), name
            checked += 1
    assert checked >= 2 * len(grads)


# ----------------------------------------------------------------------------- fixed point, norms, filters


@pytest.mark.parametrize("filter", FILTERS)
def test_output_is_at_fixed_point_and_weights_normalised_to_target(filter: str) -> None:
    model = tiny(filter, size="2L-16D", **TIGHT)
    x = coords(20)
    values = model.filter_values(x)
    with torch.no_grad():
        z = model.solve(values)
        fz = model.block(z, values)
        assert (torch.linalg.vector_norm(fz - z) / torch.linalg.vector_norm(fz)).item() < 1e-8
        torch.testing.assert_close(model(x), model.head(z, (20,)))
        for layer in model.layers:
            sigma = torch.linalg.matrix_norm(model.gain * layer.linear.weight, ord=2).item()
            assert 0.97 * (1 - 1e-3) <= sigma <= 0.97 * (1 + 1e-4)  # rescaled to, not clamped at (AMBIG-C4)
        if filter != "siren":  # |phi| <= 1: Lip_z F <= 0.97^n (spec C.1)
            z1, z2 = torch.randn_like(z), torch.randn_like(z)
            ratio = torch.linalg.vector_norm(model.block(z1, values) - model.block(z2, values)) \
                / torch.linalg.vector_norm(z1 - z2)
            assert ratio.item() <= 0.97 ** 2 + 1e-9
    video = ImplicitRepresentation(paper_config("video", filter, True, "1L-8D"))
    assert video.gain == 1.0 and not hasattr(video.layers[0].linear, "weight_v")


def test_explicit_is_one_pass_from_zero_with_the_same_init() -> None:
    torch.manual_seed(3)
    implicit = tiny("gabor", size="2L-6D")
    torch.manual_seed(3)
    explicit = tiny("gabor", size="2L-6D", implicit=False)
    for (n1, p1), (n2, p2) in zip(implicit.state_dict().items(), explicit.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    x = coords(8)
    values = explicit.filter_values(x)
    with torch.no_grad():
        torch.testing.assert_close(explicit(x), explicit.head(explicit.block(None, values), (8,)))
        zero = torch.zeros(1, 8, 6, dtype=torch.float64)
        torch.testing.assert_close(explicit.block(None, values), explicit.block(zero, values)[0])


def _count_filter_calls(model: ImplicitRepresentation) -> list[int]:
    calls = [0] * (1 + len(model.filters))
    for i, module in enumerate([model.injection, *model.filters]):
        module.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


@pytest.mark.parametrize("filter", FILTERS)
def test_filters_computed_once_per_coordinate_batch(filter: str) -> None:
    model = tiny(filter, size="2L-6D", backward="ift", tol=1e-10, backward_tol=1e-10, check_every=1)
    calls = _count_filter_calls(model)
    stats: dict = {}
    model(coords(9), stats=stats).sum().backward()
    assert stats["forward"].nfe > 3 and stats["backward"].nfe > 3
    assert calls == [1, 1, 1]
    amort = AmortizedFixedPoint(model)
    x = coords(9)
    for step in range(3):
        amort(x).sum().backward()
        assert calls == [2 + step] * 3


# ----------------------------------------------------------------------------- amortised fixed point


def test_amortized_cache_reused_for_same_coordinates_and_reset_when_they_change() -> None:
    model = tiny("fourier", size="1L-6D")
    amort = AmortizedFixedPoint(model)
    x = coords(10)
    amort(x)
    assert (amort.full_solves, amort.resets) == (1, 0)
    z0 = amort.state.clone()
    with torch.no_grad():
        expected = model.block(z0, model.filter_values(x))
    amort(x)  # same tensor
    amort(x.clone())  # same values, another tensor
    assert (amort.full_solves, amort.resets) == (1, 0)
    with torch.no_grad():  # two more single applications of F from the cache
        expected = model.block(expected, model.filter_values(x))
    torch.testing.assert_close(amort.state, expected)
    assert amort.last_residual is not None and amort.last_residual.dim() == 0

    amort(x + 1e-3)  # changed values
    assert (amort.full_solves, amort.resets) == (2, 1)
    amort(coords(12))  # changed shape
    assert (amort.full_solves, amort.resets) == (3, 2)
    assert amort.state.shape == (1, 12, 6)
    y = coords(12)
    amort(y)
    y.add_(0.5)  # same tensor, modified in place
    amort(y)
    assert (amort.full_solves, amort.resets) == (5, 4)

    with torch.no_grad():
        fresh = model(y)
    before = amort.state.clone()
    torch.testing.assert_close(amort.evaluate(y), fresh)  # a full solve from zero
    torch.testing.assert_close(amort.state, before)  # ...that leaves the cache alone
    amort.reset()
    assert amort.state is None
    amort(y)
    assert (amort.full_solves, amort.resets) == (6, 4)

    every = AmortizedFixedPoint(tiny("fourier", size="1L-6D", amortize_iters=0))  # a plain DEQ
    assert every.iters == 0
    for _ in range(3):
        every(x)
    assert every.full_solves == 3 and AmortizedFixedPoint(model).iters == 1


def test_amortized_training_step_does_not_sync_with_host(no_host_sync) -> None:
    model = ImplicitRepresentation(ImplicitReprConfig(filter="gabor", size="2L-8D", input_scale=4.0))
    amort = AmortizedFixedPoint(model, iters=2)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.rand(16, 2) * 2 - 1, torch.rand(16, 3)
    amort(x)
    opt.step()
    with no_host_sync():
        for _ in range(2):
            loss = ((amort(x) - y) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert amort.full_solves == 1
