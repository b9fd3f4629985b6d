"""Tests for deqbench.core.norms: once-per-step weight and spectral normalisation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from deqbench.core.norms import (
    apply_spectral_norm,
    apply_weight_norm,
    norm_computations,
    remove_norms,
    reset_norms,
)


def _layers() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    return {
        "linear": (nn.Linear(5, 4), torch.randn(3, 5)),
        "conv1d": (nn.Conv1d(3, 4, 3, padding=1), torch.randn(2, 3, 7)),
        "conv2d": (nn.Conv2d(3, 4, 3, padding=1), torch.randn(2, 3, 6, 6)),
        "convT2d": (nn.ConvTranspose2d(3, 4, 3), torch.randn(2, 3, 5, 5)),
    }


def _norm_except(v: torch.Tensor, dim: int) -> torch.Tensor:
    dims = [d for d in range(v.dim()) if d != dim]
    return v.pow(2).sum(dim=dims, keepdim=True).sqrt()


def _explicit_weight_norm(g: torch.Tensor, v: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return g * v / _norm_except(v, dim)


def _spectral_dim(m: nn.Module) -> int:
    return 1 if isinstance(m, nn.ConvTranspose2d) else 0


def _matrix(w: torch.Tensor, dim: int) -> torch.Tensor:
    return w.movedim(dim, 0).reshape(w.shape[dim], -1)


class _DEQCell(nn.Module):
    """z -> tanh(W2 tanh(W1 z) + x): two normed layers called once per f."""

    def __init__(self, d: int = 6) -> None:
        super().__init__()
        self.l1 = nn.Linear(d, d)
        self.l2 = nn.Linear(d, d, bias=False)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.l2(torch.tanh(self.l1(z))) + x)


def _deq_forward(cell: _DEQCell, x: torch.Tensor, iters: int = 20) -> torch.Tensor:
    """Solve under no_grad, then one f call with grad (the usual DEQ pattern)."""
    z = torch.zeros_like(x)
    with torch.no_grad():
        for _ in range(iters):
            z = cell(z, x)
    return cell(z, x)


# --------------------------------------------------------------------------- weight norm


@pytest.mark.parametrize("kind", ["linear", "conv1d", "conv2d", "convT2d"])
def test_weight_norm_init_and_output_unchanged(kind: str) -> None:
    m, x = _layers()[kind]
    w0 = m.weight.detach().clone()
    y0 = m(x).detach()
    assert apply_weight_norm(m) is m
    assert "weight" not in m._parameters and "weight" not in m._buffers
    assert isinstance(m.weight_g, nn.Parameter) and isinstance(m.weight_v, nn.Parameter)
    assert not isinstance(m.weight, nn.Parameter)
    assert m.weight_g.shape == (w0.shape[0],) + (1,) * (w0.dim() - 1)
    torch.testing.assert_close(m.weight, w0)
    torch.testing.assert_close(m(x), y0)


def test_weight_norm_dim_none_and_negative() -> None:
    m, _ = _layers()["conv2d"]
    w0 = m.weight.detach().clone()
    apply_weight_norm(m, dim=None)
    assert m.weight_g.shape == (1, 1, 1, 1)
    torch.testing.assert_close(m.weight, w0)
    m2, _ = _layers()["conv2d"]
    apply_weight_norm(m2, dim=-3)  # = dim 1
    assert m2.weight_g.shape == (1, 3, 1, 1)
    torch.testing.assert_close(m2.weight, w0)


def test_weight_norm_zero_slice_gives_zero_not_nan() -> None:
    m = nn.Linear(3, 4)
    with torch.no_grad():
        m.weight[1].zero_()
    apply_weight_norm(m)
    assert torch.isfinite(m.weight).all()
    assert (m.weight[1] == 0).all()


@pytest.mark.parametrize("kind", ["linear", "conv2d"])
def test_weight_norm_gradient_matches_explicit_formula(kind: str) -> None:
    m, x = _layers()[kind]
    apply_weight_norm(m)
    with torch.no_grad():  # move away from the init point so g != ||v||
        m.weight_g.mul_(1.7)
        m.weight_v.add_(0.3 * torch.randn_like(m.weight_v))
    gy = torch.randn_like(m(x))
    (m(x) * gy).sum().backward()

    g = m.weight_g.detach().clone().requires_grad_()
    v = m.weight_v.detach().clone().requires_grad_()
    ref = copy.deepcopy(nn.Linear(5, 4) if kind == "linear" else nn.Conv2d(3, 4, 3, padding=1))
    del ref.weight
    ref.weight = _explicit_weight_norm(g, v)
    ref.bias = m.bias
    (ref(x) * gy).sum().backward()
    torch.testing.assert_close(m.weight_g.grad, g.grad)
    torch.testing.assert_close(m.weight_v.grad, v.grad)


def test_weight_norm_gradcheck_through_functional_call() -> None:
    """Finite differences in float64, parameters swapped in with functional_call."""
    torch.manual_seed(1)
    m = nn.Linear(4, 3).double()
    apply_weight_norm(m)
    x = torch.randn(2, 4, dtype=torch.float64)
    g0 = m.weight_g.detach().clone().mul_(1.3)
    v0 = m.weight_v.detach().clone()

    def f(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # gradcheck perturbs its inputs through ``.data`` (a blind spot of the
        # version counter); fresh clones make every call a new tensor.
        return torch.func.functional_call(m, {"weight_g": g.clone(), "weight_v": v.clone()}, (x,))

    assert torch.autograd.gradcheck(f, (g0.requires_grad_(), v0.requires_grad_()))


# --------------------------------------------------------------------------- caching


@pytest.mark.parametrize("apply", [apply_weight_norm, apply_spectral_norm])
def test_weight_computed_once_per_step(apply) -> None:
    torch.manual_seed(0)
    cell = apply(_DEQCell())
    x = torch.randn(4, 6)
    reset_norms(cell)
    n0 = norm_computations(cell)
    w1 = cell.l1.weight
    out = _deq_forward(cell, x, iters=30)  # 31 calls of each layer
    assert norm_computations(cell) == n0
    assert cell.l1.weight is w1
    out.pow(2).sum().backward()
    assert cell.l1.weight_v.grad is not None and cell.l2.weight_v.grad is not None


@pytest.mark.parametrize("apply", [apply_weight_norm, apply_spectral_norm])
@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.Adam])
@pytest.mark.parametrize("foreach", [False, True])
def test_optimizer_step_triggers_recompute(apply, opt_cls, foreach: bool) -> None:
    torch.manual_seed(0)
    cell = apply(_DEQCell())
    opt = opt_cls(cell.parameters(), lr=0.1, foreach=foreach)
    x = torch.randn(4, 6)
    for _ in range(3):
        n0 = norm_computations(cell)
        out = _deq_forward(cell, x)
        # first f call of the step: one recompute per module (params changed or grad mode)
        assert norm_computations(cell) == n0 + 2
        opt.zero_grad()
        out.pow(2).sum().backward()
        opt.step()
    # the weight in use after the step is the formula applied to the new parameters
    cell(torch.zeros_like(x), x)
    if apply is apply_weight_norm:
        ref = _explicit_weight_norm(cell.l1.weight_g, cell.l1.weight_v)
        torch.testing.assert_close(cell.l1.weight, ref)
    else:
        v = cell.l1.weight_v.detach()
        sigma = torch.linalg.matrix_norm(v, ord=2)
        torch.testing.assert_close(cell.l1.weight, v / sigma, rtol=0.05, atol=1e-3)


def test_reset_with_grad_avoids_recompute_in_forward() -> None:
    torch.manual_seed(0)
    cell = apply_weight_norm(_DEQCell())
    opt = torch.optim.SGD(cell.parameters(), lr=0.1)
    x = torch.randn(4, 6)
    for _ in range(3):
        assert reset_norms(cell) == 2
        n0 = norm_computations(cell)
        out = _deq_forward(cell, x)
        assert norm_computations(cell) == n0
        opt.zero_grad()
        out.pow(2).sum().backward()
        opt.step()


def test_no_grad_weight_recomputed_when_grad_enabled() -> None:
    m, x = _layers()["linear"]
    apply_weight_norm(m)
    m.eval()
    with torch.no_grad():
        m.weight_v.mul_(2)  # stale: recomputed in the next forward, without graph (eval)
        m(x)
    with torch.no_grad():
        m(x)
    assert m.weight.grad_fn is None
    n0 = norm_computations(m)
    with torch.no_grad():
        m(x)
    assert norm_computations(m) == n0  # still fresh
    y = m(x)
    assert norm_computations(m) == n0 + 1
    assert m.weight.grad_fn is not None
    y.sum().backward()
    assert m.weight_g.grad is not None


def test_training_mode_no_grad_recompute_builds_graph() -> None:
    """Train mode: the stale weight recomputed inside a no_grad solve serves the grad call too."""
    m, x = _layers()["linear"]
    apply_weight_norm(m)
    with torch.no_grad():
        m.weight_g.mul_(2)
        n0 = norm_computations(m)
        m(x)
    assert m.weight.grad_fn is not None
    m(x).sum().backward()
    assert norm_computations(m) == n0 + 1
    torch.testing.assert_close(m.weight_g.grad, _explicit_weight_norm(torch.ones_like(m.weight_g), m.weight_v)
                               .mul(x.sum(0)).sum(1, keepdim=True))
    with torch.no_grad():  # frozen parameters: no graph even in train mode
        for p in m.parameters():
            p.requires_grad_(False)
        m(x)
    assert m.weight.grad_fn is None


def test_gradient_accumulation_without_step() -> None:
    """The cached weight's graph is freed by backward; the next forward must rebuild it."""
    torch.manual_seed(0)
    for apply in (apply_weight_norm, apply_spectral_norm):
        cell = apply(_DEQCell())
        x = torch.randn(4, 6)
        _deq_forward(cell, x).pow(2).sum().backward()
        g1 = cell.l1.weight_v.grad.clone()
        w_first = cell.l1.weight.detach().clone()
        _deq_forward(cell, x).pow(2).sum().backward()  # would raise on a freed graph
        torch.testing.assert_close(cell.l1.weight, w_first, rtol=0, atol=0)  # same operator
        torch.testing.assert_close(cell.l1.weight_v.grad, 2 * g1)


def test_dtype_change_and_load_state_dict_trigger_recompute() -> None:
    m, x = _layers()["linear"]
    apply_weight_norm(m)
    m(x)
    n0 = norm_computations(m)
    m.double()
    y = m(x.double())
    assert y.dtype == torch.float64 and m.weight.dtype == torch.float64
    assert norm_computations(m) == n0 + 1
    sd = {k: v * 2 for k, v in m.state_dict().items()}
    m.load_state_dict(sd)  # in-place copies bump _version
    m(x.double())
    assert norm_computations(m) == n0 + 2
    torch.testing.assert_close(m.weight, _explicit_weight_norm(m.weight_g, m.weight_v))


def test_data_reassignment_detected() -> None:
    m, x = _layers()["linear"]
    apply_weight_norm(m)
    m(x)
    m.weight_v.data = torch.randn_like(m.weight_v)  # new storage, same version
    m(x)
    torch.testing.assert_close(m.weight, _explicit_weight_norm(m.weight_g, m.weight_v))


# --------------------------------------------------------------------------- spectral norm


@pytest.mark.parametrize("kind", ["linear", "conv1d", "conv2d", "convT2d"])
def test_spectral_norm_sigma_close_to_one(kind: str) -> None:
    m, x = _layers()[kind]
    apply_spectral_norm(m)
    assert "weight_u" in m.state_dict() and "weight_v" in m.state_dict()
    for _ in range(50):
        reset_norms(m)
    sigma = torch.linalg.matrix_norm(_matrix(m.weight.detach(), _spectral_dim(m)), ord=2)
    assert abs(sigma.item() - 1.0) < 1e-4
    m(x)  # forward works with the cached weight


def test_spectral_norm_gradient_matches_explicit_formula() -> None:
    m, x = _layers()["conv2d"]
    apply_spectral_norm(m)
    m.eval()  # freeze u so the reference uses the same u
    y = m(x)
    gy = torch.randn_like(y)
    (y * gy).sum().backward()

    v = m.weight_v.detach().clone().requires_grad_()
    u = m.weight_u.detach()
    mat = v.reshape(v.shape[0], -1)
    r = mat.detach().t() @ u
    r = r / r.norm()
    w = v / (u @ mat @ r)
    ref = torch.nn.functional.conv2d(x, w, m.bias, padding=1)
    (ref * gy).sum().backward()
    torch.testing.assert_close(m.weight_v.grad, v.grad)


def test_spectral_u_update_policy() -> None:
    m, x = _layers()["linear"]
    apply_spectral_norm(m, n_power_iterations=2)
    u0 = m.weight_u.clone()
    m.eval()
    reset_norms(m)
    m(x)
    torch.testing.assert_close(m.weight_u, u0, rtol=0, atol=0)  # frozen in eval
    m.train()
    with torch.no_grad():
        m.weight_v.mul_(torch.rand_like(m.weight_v))  # new direction: u must move
    m(x)  # params changed -> recompute with u update
    u1 = m.weight_u.clone()
    assert not torch.equal(u1, u0)
    with torch.no_grad():
        m(x)  # grad-mode-only recomputations keep u
    m(x)
    torch.testing.assert_close(m.weight_u, u1, rtol=0, atol=0)


# --------------------------------------------------------------------------- state_dict / remove


@pytest.mark.parametrize("apply", [apply_weight_norm, apply_spectral_norm])
def test_state_dict_round_trip(apply) -> None:
    torch.manual_seed(0)
    src = apply(_DEQCell())
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.1 * torch.randn_like(p))
    src.eval()
    x = torch.randn(4, 6)
    sd = src.state_dict()
    assert not any(k.endswith(".weight") for k in sd)
    assert {"l1.weight_v", "l2.weight_v"} <= set(sd)
    dst = apply(_DEQCell())
    dst.eval()
    dst.load_state_dict(sd)
    torch.testing.assert_close(dst(x, x), src(x, x))
    torch.testing.assert_close(dst.l1.weight, src.l1.weight)


@pytest.mark.parametrize("apply", [apply_weight_norm, apply_spectral_norm])
def test_remove_norms_restores_plain_weight(apply) -> None:
    torch.manual_seed(0)
    cell = apply(_DEQCell())
    cell.eval()
    x = torch.randn(4, 6)
    with torch.no_grad():
        cell.l1.weight_v.add_(0.2)
    y = cell(x, x).detach()
    w_eff = cell.l1.weight.detach().clone()
    assert remove_norms(cell) is cell
    assert isinstance(cell.l1.weight, nn.Parameter)
    torch.testing.assert_close(cell.l1.weight, w_eff)
    assert set(cell.state_dict()) == {"l1.weight", "l1.bias", "l2.weight"}
    assert len(cell.l1._forward_pre_hooks) == 0
    torch.testing.assert_close(cell(x, x), y)
    n = norm_computations(cell)
    assert n == 0 and reset_norms(cell) == 0
    apply(cell)  # can be re-applied after removal
    assert remove_norms(remove_norms(cell)) is cell


def test_deepcopy_after_no_grad_reset() -> None:
    cell = apply_weight_norm(_DEQCell())
    x = torch.randn(4, 6)
    cell(x, x).sum().backward()
    with torch.no_grad():
        reset_norms(cell)
    twin = copy.deepcopy(cell)
    with torch.no_grad():
        twin.l1.weight_g.mul_(2)
    twin(x, x)
    torch.testing.assert_close(twin.l1.weight, 2 * cell.l1.weight)  # twin has its own cache


def test_nested_model_only_matching_types() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Sequential(nn.Conv1d(1, 1, 1)))
    apply_weight_norm(model)
    assert "weight" in model[1]._parameters
    assert "weight_g" in model[0]._parameters and "weight_g" in model[2][0]._parameters
    assert reset_norms(model) == 2


# --------------------------------------------------------------------------- argument validation


def test_bad_name_error() -> None:
    m = nn.Linear(3, 4)
    with pytest.raises(ValueError, match=r"names: .*no parameter 'wieght'"):
        apply_weight_norm(m, names=("wieght",))
    with pytest.raises(ValueError, match=r"names: .*no parameter 'wieght'"):
        apply_spectral_norm(m, names="wieght")
    assert isinstance(m.weight, nn.Parameter)  # nothing was modified


def test_other_argument_errors() -> None:
    with pytest.raises(ValueError, match="already normalised"):
        apply_spectral_norm(apply_weight_norm(nn.Linear(3, 4)))
    with pytest.raises(ValueError, match="no submodule of types"):
        apply_weight_norm(nn.LayerNorm(3))
    with pytest.raises(ValueError, match="dim"):
        apply_weight_norm(nn.Linear(3, 4), dim=2)
    with pytest.raises(ValueError, match="n_power_iterations"):
        apply_spectral_norm(nn.Linear(3, 4), n_power_iterations=0)
    with pytest.raises(ValueError, match="eps"):
        apply_spectral_norm(nn.Linear(3, 4), eps=-1.0)
    with pytest.raises(ValueError, match="types"):
        apply_weight_norm(nn.Linear(3, 4), types=(int,))
    with pytest.raises(ValueError, match="tied"):
        a = nn.Linear(3, 3)
        b = nn.Linear(3, 3)
        b.weight = a.weight
        apply_weight_norm(nn.Sequential(a, b))
    with pytest.raises(TypeError, match="module"):
        reset_norms("not a module")  # type: ignore[arg-type]


def test_two_norms_on_one_module_and_removal() -> None:
    m, x = _layers()["linear"]
    w0, b0 = m.weight.detach().clone(), m.bias.detach().clone()
    apply_weight_norm(m)
    apply_spectral_norm(m, names="bias")  # 1-D: w = b / ||b||
    torch.testing.assert_close(m.weight, w0)
    torch.testing.assert_close(m.bias, b0 / b0.norm())
    with torch.no_grad():
        m.weight_g.mul_(3)
    m(x)
    torch.testing.assert_close(m.weight, 3 * w0)
    remove_norms(m)
    assert set(m.state_dict()) == {"weight", "bias"}
    torch.testing.assert_close(m.bias, b0 / b0.norm())
