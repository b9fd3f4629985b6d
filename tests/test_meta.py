"""deqbench.meta (MAML, Reptile, iMAML on torch.func) and deqbench.models.conv4 on tiny problems. CPU, float64."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from deqbench.meta import (
    IMAMLConfig,
    MAMLConfig,
    ReptileConfig,
    conjugate_gradient,
    imaml_adapt,
    imaml_meta_gradient,
    imaml_meta_gradient_batch,
    maml_adapt,
    maml_meta_gradient,
    maml_meta_gradient_batch,
    module_loss,
    module_params,
    reptile_adapt,
    reptile_meta_gradient,
    reptile_meta_step,
    reptile_outer_step_size,
    reptile_task_update,
)
from deqbench.models.conv4 import Conv4

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    # torch.func.jvp scripts a helper inside torch on first use; the deprecation is torch-internal
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning"),
]


def _mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4)).double()


def _task(seed: int, n: int = 8, classes: int = 4) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * n, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (2 * n,), generator=g)
    return (x[:n], y[:n]), (x[n:], y[n:])


def _unrolled_maml_grad(model: nn.Module, support, query, steps: int, lr: float, second_order: bool) -> dict:
    """Reference: plain torch.autograd through an explicitly written inner loop."""
    theta = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    ce = nn.functional.cross_entropy
    phi = theta
    for _ in range(steps):
        loss = ce(functional_call(model, phi, (support[0],)), support[1])
        grads = torch.autograd.grad(loss, list(phi.values()), create_graph=second_order)
        phi = {k: p - lr * g for (k, p), g in zip(phi.items(), grads)}
    if not second_order:
        phi = {k: p.detach().requires_grad_(True) for k, p in phi.items()}
        wrt = list(phi.values())
    else:
        wrt = list(theta.values())
    query_loss = ce(functional_call(model, phi, (query[0],)), query[1])
    return dict(zip(theta, torch.autograd.grad(query_loss, wrt)))


# --------------------------------------------------------------------------- MAML


@pytest.mark.parametrize("steps", [1, 3])
def test_maml_second_order_matches_unrolled_autograd(steps):
    model = _mlp()
    support, query = _task(0)
    config = MAMLConfig(inner_steps=steps, inner_lr=0.4)
    out = maml_meta_gradient(module_loss(model), module_params(model), support, query, config)
    ref = _unrolled_maml_grad(model, support, query, steps, 0.4, second_order=True)
    for k in ref:
        torch.testing.assert_close(out.grads[k], ref[k], rtol=1e-10, atol=1e-12)
    # the second-order terms matter here: first-order MAML is a different (and also correct) number
    fo = maml_meta_gradient(module_loss(model), module_params(model), support, query,
                            replace(config, first_order=True))
    fo_ref = _unrolled_maml_grad(model, support, query, steps, 0.4, second_order=False)
    gap = 0.0
    for k in ref:
        torch.testing.assert_close(fo.grads[k], fo_ref[k], rtol=1e-10, atol=1e-12)
        gap = max(gap, float((fo.grads[k] - out.grads[k]).abs().max()))
    assert gap > 1e-4
    # the returned loss is the query loss after adaptation, and nothing keeps a graph
    phi = maml_adapt(module_loss(model), module_params(model), support, steps=steps, lr=0.4)
    torch.testing.assert_close(out.loss, module_loss(model)(phi, *query))
    assert all(not g.requires_grad for g in out.grads.values())


def test_maml_defaults_are_finn_omniglot_5way_1shot():
    c = MAMLConfig()
    assert (c.inner_steps, c.inner_lr, c.meta_batch_size, c.outer_lr, c.meta_iterations, c.first_order) == (
        1, 0.4, 32, 1e-3, 60_000, False)
    assert c.eval_inner_steps == 3


def test_maml_batch_is_the_mean_over_tasks_vmapped_or_looped():
    model = _mlp()
    tasks = [_task(s) for s in range(3)]
    support = (torch.stack([t[0][0] for t in tasks]), torch.stack([t[0][1] for t in tasks]))
    query = (torch.stack([t[1][0] for t in tasks]), torch.stack([t[1][1] for t in tasks]))
    loss_fn, params, config = module_loss(model), module_params(model), MAMLConfig(inner_steps=2)
    singles = [maml_meta_gradient(loss_fn, params, s, q, config) for s, q in tasks]
    for vectorize in (True, False):
        out = maml_meta_gradient_batch(loss_fn, params, support, query, config, vectorize=vectorize)
        torch.testing.assert_close(out.loss, torch.stack([o.loss for o in singles]).mean())
        for k in params:
            torch.testing.assert_close(out.grads[k], torch.stack([o.grads[k] for o in singles]).mean(0))


# --------------------------------------------------------------------------- iMAML


def _quadratic(dim: int = 6, seed: int = 0):
    """L(w; M, t) = 1/2 w^T M w - t^T w: support (A, b), query (Q, c) with A, Q symmetric positive definite."""
    g = torch.Generator().manual_seed(seed)

    def spd(scale: float) -> Tensor:
        r = torch.randn(dim, dim, generator=g, dtype=torch.float64)
        return r @ r.T / dim * scale + 0.3 * torch.eye(dim, dtype=torch.float64)

    def loss(params, m: Tensor, t: Tensor) -> Tensor:
        w = params["w"]
        return 0.5 * w @ m @ w - t @ w

    a, q = spd(1.5), spd(1.0)
    b, c = (torch.randn(dim, generator=g, dtype=torch.float64) for _ in range(2))
    theta = {"w": torch.randn(dim, generator=g, dtype=torch.float64)}
    return loss, theta, (a, b), (q, c)


def test_imaml_cg_meta_gradient_matches_closed_form_implicit_gradient():
    loss, theta, (a, b), (q, c) = _quadratic()
    lam, dim = 2.0, 6
    eye = torch.eye(dim, dtype=torch.float64)
    # closed form: phi* = (A + lam I)^{-1} (b + lam theta), d phi*/d theta = lam (A + lam I)^{-1} = (I + A/lam)^{-1}
    phi_star = torch.linalg.solve(a + lam * eye, b + lam * theta["w"])
    jac = torch.linalg.solve(eye + a / lam, eye)
    expected = jac.T @ (q @ phi_star - c)
    lmax = float(torch.linalg.eigvalsh(a).max())
    config = IMAMLConfig(lam=lam, inner_steps=400, inner_lr=1.0 / (lmax + lam), cg_steps=dim)
    phi = imaml_adapt(loss, theta, (a, b), lam=lam, steps=config.inner_steps, lr=config.inner_lr)
    torch.testing.assert_close(phi["w"], phi_star, rtol=1e-12, atol=1e-12)
    out = imaml_meta_gradient(loss, theta, (a, b), (q, c), config)
    torch.testing.assert_close(out.grads["w"], expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.loss, loss({"w": phi_star}, q, c), rtol=1e-12, atol=1e-12)
    # fewer CG steps than dimensions: an approximation, and not the plain query gradient either
    rough = imaml_meta_gradient(loss, theta, (a, b), (q, c), replace(config, cg_steps=2)).grads["w"]
    err = float((rough - expected).norm() / expected.norm())
    assert 1e-8 < err < 0.5


def test_conjugate_gradient_solves_spd_system_in_n_steps():
    g = torch.Generator().manual_seed(3)
    r = torch.randn(5, 5, generator=g, dtype=torch.float64)
    a = r @ r.T + 0.5 * torch.eye(5, dtype=torch.float64)
    b = {"u": torch.randn(2, generator=g, dtype=torch.float64), "v": torch.randn(3, generator=g, dtype=torch.float64)}

    def matvec(p):
        flat = a @ torch.cat([p["u"], p["v"]])
        return {"u": flat[:2], "v": flat[2:]}

    x = conjugate_gradient(matvec, b, steps=5)
    torch.testing.assert_close(torch.cat([x["u"], x["v"]]), torch.linalg.solve(a, torch.cat([b["u"], b["v"]])),
                               rtol=1e-10, atol=1e-12)
    # extra steps after convergence stay finite (no 0/0)
    x_more = conjugate_gradient(matvec, b, steps=12)
    assert all(torch.isfinite(t).all() for t in x_more.values())
    torch.testing.assert_close(x_more["v"], x["v"], rtol=1e-8, atol=1e-10)


def test_imaml_defaults_and_batch_vmap_matches_loop():
    c = IMAMLConfig()
    assert (c.lam, c.inner_steps, c.inner_lr, c.cg_steps, c.meta_batch_size, c.outer_lr, c.meta_steps) == (
        2.0, 16, 0.1, 5, 32, 1e-3, 20_000)
    model = _mlp()
    tasks = [_task(s) for s in range(3)]
    support = (torch.stack([t[0][0] for t in tasks]), torch.stack([t[0][1] for t in tasks]))
    query = (torch.stack([t[1][0] for t in tasks]), torch.stack([t[1][1] for t in tasks]))
    loss_fn, params = module_loss(model), module_params(model)
    looped = imaml_meta_gradient_batch(loss_fn, params, support, query, c, vectorize=False)
    vmapped = imaml_meta_gradient_batch(loss_fn, params, support, query, c, vectorize=True)
    single = imaml_meta_gradient(loss_fn, params, *tasks[0], c)
    for k in params:
        torch.testing.assert_close(vmapped.grads[k], looped.grads[k], rtol=1e-9, atol=1e-12)
        assert torch.isfinite(single.grads[k]).all()
    torch.testing.assert_close(vmapped.loss, looped.loss)


# --------------------------------------------------------------------------- Reptile


def test_reptile_one_task_one_step_is_adapted_minus_initial():
    model = _mlp()
    support, _ = _task(0)
    loss_fn, params = module_loss(model), module_params(model)
    lr, eps = 1e-3, 1e-8
    phi = reptile_adapt(loss_fn, params, support, steps=1, lr=lr, betas=(0.0, 0.999), eps=eps)
    # one Adam step from zero moments with bias correction: phi = theta - lr * g / (|g| + eps)
    g = torch.func.grad(loss_fn)({k: v.detach() for k, v in params.items()}, *support)
    for k in params:
        torch.testing.assert_close(phi[k], params[k].detach() - lr * g[k] / (g[k].abs() + eps))
    update = reptile_task_update(params, phi)
    new = reptile_meta_step(params, [phi], step_size=1.0)
    config = ReptileConfig(inner_steps=1, inner_batch_size=None)
    pseudo = reptile_meta_gradient(loss_fn, params, support, config).grads
    for k in params:
        torch.testing.assert_close(update[k], phi[k] - params[k].detach())
        torch.testing.assert_close(new[k], phi[k])  # outer step 1: theta + (phi - theta) = phi
        torch.testing.assert_close(pseudo[k], -update[k])  # SGD with lr eps on it is the Reptile step


def test_reptile_several_tasks_average_and_outer_step():
    model = _mlp()
    loss_fn, params = module_loss(model), module_params(model)
    adapted = [reptile_adapt(loss_fn, params, _task(s)[0], steps=3, lr=1e-2, batch_size=5,
                             generator=torch.Generator().manual_seed(s)) for s in range(4)]
    eps = 0.37
    new = reptile_meta_step(params, adapted, step_size=eps)
    for k in params:
        mean_diff = sum(phi[k] - params[k].detach() for phi in adapted) / len(adapted)
        torch.testing.assert_close(new[k], params[k].detach() + eps * mean_diff)
    # mini-batches are seeded: the same generator seed gives the same adaptation, another seed another one
    again = reptile_adapt(loss_fn, params, _task(0)[0], steps=3, lr=1e-2, batch_size=5,
                          generator=torch.Generator().manual_seed(0))
    other = reptile_adapt(loss_fn, params, _task(0)[0], steps=3, lr=1e-2, batch_size=5,
                          generator=torch.Generator().manual_seed(99))
    assert all(torch.equal(again[k], adapted[0][k]) for k in params)
    assert any(not torch.equal(other[k], adapted[0][k]) for k in params)


def test_reptile_defaults_and_linear_annealing():
    c = ReptileConfig()
    assert (c.inner_steps, c.inner_lr, c.inner_betas, c.inner_batch_size, c.meta_batch_size, c.meta_iterations,
            c.eval_inner_steps, c.eval_inner_batch_size, c.transductive) == (
        5, 1e-3, (0.0, 0.999), 10, 5, 100_000, 50, 5, True)
    assert reptile_outer_step_size(c, 0) == 1.0
    assert reptile_outer_step_size(c, 50_000) == pytest.approx(0.5)
    assert reptile_outer_step_size(c, 100_000) == 0.0


# --------------------------------------------------------------------------- Conv4


@pytest.mark.parametrize("downsample", ["stride", "maxpool"])
def test_conv4_shape_and_functional_call_reproduces_module(downsample):
    model = Conv4(n_way=5, downsample=downsample)
    x = torch.rand(10, 1, 28, 28)
    out = model(x)
    assert out.shape == (10, 5)
    assert list(model.buffers()) == []  # BatchNorm without running statistics: functional_call writes no state
    torch.testing.assert_close(functional_call(model, dict(model.named_parameters()), (x,)), out)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 and all(m.out_channels == 64 and m.kernel_size == (3, 3) for m in convs)
    assert all(m.stride == ((2, 2) if downsample == "stride" else (1, 1)) for m in convs)
    # transductive BatchNorm: an image's logits depend on the rest of the batch, in eval mode too
    model.eval()
    assert not torch.allclose(model(x)[:1], model(x[:1]))
    assert Conv4(n_way=5, norm="group")(x[:2]).shape == (2, 5)


def test_conv4_maml_and_imaml_meta_batches_vmap_through_batchnorm():
    """The real backbone (transductive BatchNorm) under vmap over tasks gives the per-task loop's numbers."""
    torch.manual_seed(0)
    model = Conv4(n_way=3, hidden=8)
    loss_fn, params = module_loss(model), module_params(model)
    x, y = torch.rand(2, 6, 1, 28, 28), (torch.arange(6) % 3).repeat(2, 1)
    support, query = (x[:, :3], y[:, :3]), (x[:, 3:], y[:, 3:])
    for fn, config in ((maml_meta_gradient_batch, MAMLConfig()),
                       (imaml_meta_gradient_batch, IMAMLConfig(inner_steps=2, cg_steps=2))):
        vmapped = fn(loss_fn, params, support, query, config, vectorize=True)
        looped = fn(loss_fn, params, support, query, config, vectorize=False)
        assert set(vmapped.grads) == set(params)
        for k in params:
            assert vmapped.grads[k].shape == params[k].shape and torch.isfinite(vmapped.grads[k]).all()
            torch.testing.assert_close(vmapped.grads[k], looped.grads[k], rtol=1e-4, atol=1e-5)


def test_meta_layer_imports_no_upper_layer():
    code = ("import sys, deqbench.meta, deqbench.models.conv4, deqbench.data.omniglot; "
            "bad = [m for m in sys.modules if m.startswith(('deqbench.experiments', 'deqbench.tasks'))]; "
            "print(bad); assert not bad")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
