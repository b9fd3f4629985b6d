"""JIIO meta-learning layers (spec B.2, B.3): the FiLM-conditioned MDEQ and the task-grouped JIIO inner loop."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from deqbench.inputopt.jiio import JIIOResult, jiio
from deqbench.models.mdeq import MDEQClassifier, MDEQConfig
from tests.conftest import forbid_host_sync
from tests.linear_problems import random_contraction, relative_error

DT = torch.float64
PAPER_PARAMS = 2_510_000  # spec B.3: "~2.51M in the released config [N]"


# ----------------------------------------------------------------------------- FiLM MDEQ (spec B.3)


def tiny_config(task_dim: int = 0) -> MDEQConfig:
    """A 2-branch MDEQ small enough for a 1-thread test (spec B.3 layout, tiny widths)."""
    return MDEQConfig(channels=(4, 8), expansion=2, block_groups=2, fuse_groups=2, post_fuse_groups=2,
                      head_channels=(2, 4), final_channels=8, num_classes=5, task_dim=task_dim)


def perturb_film(model: MDEQClassifier) -> None:
    """Move every FiLM Linear off its zero initialisation."""
    with torch.no_grad():
        for block in model.blocks:
            assert block.film is not None
            block.film.weight.normal_(0.0, 0.5)
            block.film.bias.normal_(0.0, 0.5)


def test_film_is_zero_initialised_and_ignored_at_init() -> None:
    """B.3: the FiLM Linear starts at zero, so f(z, x) and the logits do not depend on x; perturbed, they do."""
    model = MDEQClassifier(tiny_config(task_dim=6))
    images = torch.rand(4, 1, 8, 8)
    assert all(b.film is not None and not b.film.weight.any() and not b.film.bias.any() for b in model.blocks)
    z = tuple(torch.randn_like(t) for t in model.z0(images))
    x1, x2 = torch.randn(2, 6), torch.randn(2, 6)  # one row per task, 2 tasks x 2 samples
    f = model.task_layer_fn(images)
    with torch.no_grad():
        for a, b in zip(f(z, x1), f(z, x2)):
            assert torch.equal(a, b)
        assert torch.equal(model(images, max_iter=4, task=x1), model(images, max_iter=4, task=x2))
        perturb_film(model)
        f = model.task_layer_fn(images)
        assert not torch.allclose(f(z, x1)[0], f(z, x2)[0])
        assert not torch.allclose(f(z, x1)[1], f(z, x2)[1])  # both branches are conditioned
        assert not torch.allclose(model(images, max_iter=4, task=x1), model(images, max_iter=4, task=x2))


def test_film_task_vector_is_broadcast_per_task() -> None:
    """B.2: one task vector per task, shared by the task's samples (task-major batch layout)."""
    model = MDEQClassifier(tiny_config(task_dim=6))
    perturb_film(model)
    images = torch.rand(4, 1, 8, 8)
    z = model.z0(images)
    inj = model.inject(images)
    x = torch.randn(2, 6)
    with torch.no_grad():
        per_task = model.layer(z, inj, x)
        per_sample = model.layer(z, inj, x.repeat_interleave(2, dim=0))
    for a, b in zip(per_task, per_sample):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="do not divide"):
        model.layer(z, inj, torch.randn(3, 6))
    with pytest.raises(ValueError, match="task_dim = 0"):
        MDEQClassifier(tiny_config()).layer(z, inj, x)


def test_film_off_equals_plain_mdeq() -> None:
    """B.3 option off: the FiLM model without x (or at zero FiLM) computes the plain MDEQ with the same weights."""
    plain = MDEQClassifier(tiny_config())
    film = MDEQClassifier(tiny_config(task_dim=6))
    missing, unexpected = film.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".film." in k for k in missing)
    assert not any("film" in name for name, _ in plain.named_parameters())
    images = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        ref = plain(images, max_iter=5)
        assert torch.equal(film(images, max_iter=5), ref)
        assert torch.equal(film(images, max_iter=5, task=torch.randn(3, 6)), ref)


def paper_config(task_dim: int) -> MDEQConfig:
    """Spec B.3 / Table 9: channels [64, 128], expansion 5, GN(8), weight norm, head [32, 64] -> 512 -> 5."""
    return MDEQConfig(in_channels=1, num_classes=5, channels=(64, 128), expansion=5, block_groups=8, fuse_groups=8,
                      post_fuse_groups=4, head_channels=(32, 64), final_channels=512, task_dim=task_dim)


def test_paper_size_parameter_count() -> None:
    """B.3: report our count against the released ~2.51M.  The FiLM-free trunk matches it within 15 %; the
    FiLM Linears (400 -> 2 x 5C per branch, as the spec describes them) add exactly sum_i (200 + 1) 10 C_i."""
    base = MDEQClassifier(paper_config(0)).num_parameters()
    full = MDEQClassifier(paper_config(400)).num_parameters()
    film = sum((200 + 1) * 2 * 5 * c for c in (64, 128))
    print(f"\nJIIO-DEQ paper size: {full:,} parameters ({base:,} without FiLM, FiLM {film:,}); spec ~{PAPER_PARAMS:,}")
    assert full - base == film
    assert abs(base - PAPER_PARAMS) <= 0.15 * PAPER_PARAMS


# ----------------------------------------------------------------------------- grouped JIIO (spec B.2)


@dataclass
class GroupedLinearProblem:
    """f(z_k, x_t) = A z_k + B x_t + b with contractive A; l_k(z) = 0.5 ||C z_k - t_k||^2 (+ task_l2 mean x^2).

    Samples k = t K .. t K + K - 1 belong to task t and share x_t, so the KKT point is closed form: with
    z(x) = M x + m, x_t* solves (K G^T G + 2 K lam / Dx I) x = G^T sum_k (t_k - C m), G = C M."""

    A: Tensor
    B: Tensor
    b: Tensor
    C: Tensor
    t: Tensor
    k: int

    def f(self, z: Tensor, x: Tensor) -> Tensor:
        return z @ self.A.T + x @ self.B.T + self.b

    def cost(self, z: Tensor) -> Tensor:
        return 0.5 * (z @ self.C.T - self.t).pow(2).sum(1)

    def kkt(self, lam: float) -> tuple[Tensor, Tensor, Tensor]:
        """Closed-form (x* per task, z* per sample, mu* per sample), spec B.2 / JIIO eq. (14)."""
        eye = torch.eye(self.A.shape[0], dtype=DT)
        M = torch.linalg.solve(eye - self.A, self.B)
        m = torch.linalg.solve(eye - self.A, self.b)
        G = self.C @ M
        dx = self.B.shape[1]
        rhs = ((self.t - m @ self.C.T).view(-1, self.k, self.C.shape[0]).sum(1)) @ G
        lhs = self.k * (G.T @ G) + (2 * self.k * lam / dx) * torch.eye(dx, dtype=DT)
        x = torch.linalg.solve(lhs, rhs.T).T
        z = x.repeat_interleave(self.k, 0) @ M.T + m
        mu = torch.linalg.solve(eye - self.A.T, ((z @ self.C.T - self.t) @ self.C).T).T
        return x, z, mu


def grouped_problem(tasks: int = 3, k: int = 2, dz: int = 10, dx: int = 3, dc: int = 6) -> GroupedLinearProblem:
    """A random instance of :class:`GroupedLinearProblem` (spectral norm of A: 0.5)."""
    return GroupedLinearProblem(A=random_contraction(1, dz, 0.5, DT)[0], B=torch.randn(dz, dx, dtype=DT),
                                b=torch.randn(dz, dtype=DT), C=torch.randn(dc, dz, dtype=DT),
                                t=torch.randn(tasks * k, dc, dtype=DT), k=k)


def solve_grouped(p: GroupedLinearProblem, group_size: int | None, **kw) -> JIIOResult:
    """JIIO from zeros on ``p`` with x one row per task (``group_size``) or per sample (None)."""
    rows = p.t.shape[0] // (group_size or 1)
    options = dict(max_iter=300, alpha=(0.8, 0.6, 0.05), solver_options={"m": 20, "kind": "I"}, backward="none")
    options.update(kw)
    z0 = torch.zeros(p.t.shape[0], p.A.shape[0], dtype=DT)
    return jiio(p.f, p.cost, z0, torch.zeros(rows, p.B.shape[1], dtype=DT), group_size=group_size, **options)


@pytest.mark.parametrize("kind", ["I", "II"])
@pytest.mark.parametrize("task_l2", [0.0, 0.7])
def test_grouped_jiio_reaches_the_closed_form_kkt_point(kind: str, task_l2: float) -> None:
    """B.2: with x shared per task (J_x^T mu summed) and the task-vector L2 term, JIIO converges to the KKT point."""
    p = grouped_problem()
    with torch.no_grad():
        res = solve_grouped(p, 2, task_l2=task_l2, solver_options={"m": 20, "kind": kind})
    x, z, mu = p.kkt(task_l2)
    assert res.x.shape == (3, 3) and res.z.shape == (6, 10) and res.mu.shape == (6, 10)
    assert res.cost.shape == (3,) and res.trace_cost.shape == (3, 300)
    assert relative_error(res.x, x) < 1e-4
    assert relative_error(res.z, z) < 1e-4
    assert relative_error(res.mu, mu) < 1e-4
    # The per-task cost is the sum over the task's samples of the sample cost plus the L2 term.
    per_sample = p.cost(res.z) + task_l2 * res.x.repeat_interleave(2, 0).pow(2).mean(1)
    torch.testing.assert_close(res.cost, per_sample.view(3, 2).sum(1))


def test_grouped_differs_from_per_sample_x() -> None:
    """Sharing x is a real constraint: per-sample x reaches a different (lower-cost) optimum."""
    p = grouped_problem()
    with torch.no_grad():
        shared = solve_grouped(p, 2)
        free = solve_grouped(p, None)
    assert relative_error(free.x.view(3, 2, 3)[:, 0], shared.x) > 1e-2
    assert float(free.cost.sum()) < float(shared.cost.sum())


@pytest.mark.parametrize("method", ["anderson", "none"])
def test_one_sample_per_group_equals_ungrouped(method: str) -> None:
    """B.2 reduces to the plain JIIO (eq. 11) with K = 1: bit-identical iterates, selection and traces."""
    p = grouped_problem(tasks=4, k=1)
    with torch.no_grad():
        a = solve_grouped(p, None, max_iter=40, method=method, task_l2=0.3)
        b = solve_grouped(p, 1, max_iter=40, method=method, task_l2=0.3)
    for name in ("x", "z", "mu", "cost", "residual", "best_iteration", "trace_residual", "trace_cost"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize("task_l2", [0.0, 0.5])
def test_x_update_is_the_summed_vjp(task_l2: float) -> None:
    """B.2 / eq. (11): one damped step with two samples in one task moves x by -a_x (sum_k J_x^T mu_k + grad_x l),
    z by a_z (f - z) and mu by a_mu (J_z^T mu + dl/dz - mu), per sample; checked against torch.autograd."""
    dz, dx = 5, 3
    W = random_contraction(1, dz, 0.6, DT)[0]
    U, c, T = torch.randn(dz, dx, dtype=DT), torch.randn(dz, dtype=DT), torch.randn(2, dz, dtype=DT)

    def f(z: Tensor, x: Tensor) -> Tensor:
        return torch.tanh(z @ W.T + x @ U.T + c)

    def cost(z: Tensor) -> Tensor:
        return 0.5 * (z - T).pow(2).sum(1)

    z0, mu0, x0 = torch.randn(2, dz, dtype=DT), torch.randn(2, dz, dtype=DT), torch.randn(1, dx, dtype=DT)
    a_z, a_mu, a_x = 0.8, 0.6, 0.1
    with torch.no_grad():  # two iterations, keep the last: the result is the iterate after one update
        res = jiio(f, cost, z0, x0, max_iter=2, alpha=(a_z, a_mu, a_x), method="none", selection="last",
                   mu0=mu0, group_size=2, task_l2=task_l2, backward="none")
    z, x = z0.clone().requires_grad_(), x0.clone().requires_grad_()
    xs = x.expand(2, dx)
    fz = f(z, xs)
    ell = cost(z).sum() + task_l2 * xs.pow(2).mean(1).sum()
    g_z, g_x = torch.autograd.grad((fz * mu0).sum() + ell, (z, x))
    # J_x^T mu of each sample on its own; the shared-x gradient must be their sum
    vjps = []
    for k in range(2):
        xk = x0.clone().requires_grad_()
        (gk,) = torch.autograd.grad((f(z0[k : k + 1], xk) * mu0[k : k + 1]).sum(), xk)
        vjps.append(gk)
    l2_grad = task_l2 * 2 * 2 * x0 / dx  # two samples, each d/dx mean(x^2) = 2 x / Dx
    torch.testing.assert_close(g_x, vjps[0] + vjps[1] + l2_grad)
    torch.testing.assert_close(res.x, x0 - a_x * g_x)
    torch.testing.assert_close(res.z, z0 + a_z * (fz.detach() - z0))
    torch.testing.assert_close(res.mu, mu0 + a_mu * (g_z - mu0))


def test_grouped_jiio_has_no_host_sync() -> None:
    """The no-host-sync rule of the JIIO loop holds with grouping, the L2 term and the a_x switch (B.2)."""
    p = grouped_problem()
    with forbid_host_sync(), torch.no_grad():
        solve_grouped(p, 2, max_iter=20, task_l2=1.0, alpha=(0.8, 0.6, 0.04), alpha_x_late=0.01, alpha_x_switch=10)


def test_grouped_jiio_on_the_film_mdeq() -> None:
    """B.2 + B.3 end to end at toy size: 2 tasks x 2 support images, x one 6-d row per task, CE inner cost,
    paper damping with the a_x switch; x moves, z/mu stay per sample, the logits at x* are finite."""
    model = MDEQClassifier(tiny_config(task_dim=6))
    perturb_film(model)
    images, labels = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 0, 1])
    with torch.no_grad():
        res = jiio(model.task_layer_fn(images), model.task_cost_fn(labels, scale=5.0), model.z0(images),
                   torch.zeros(2, 6), max_iter=8, alpha=(0.8, 0.6, 0.04), alpha_x_late=0.01, alpha_x_switch=5,
                   solver_options={"m": 5, "kind": "I"}, group_size=2, task_l2=5.0, backward="none")
        assert res.x.shape == (2, 6) and res.x.abs().sum() > 0
        assert [t.shape[0] for t in res.z] == [4, 4] and res.cost.shape == (2,)
        logits = model(images, max_iter=4, task=res.x)
    assert torch.isfinite(logits).all() and torch.isfinite(res.cost).all()


def test_grouped_shape_mismatch_is_named() -> None:
    """z0 must hold group_size samples per row of x0."""
    p = grouped_problem()
    with pytest.raises(ValueError, match="group_size samples per row"):
        solve_grouped(p, 4)
    with pytest.raises(ValueError, match="group_size must be"):
        solve_grouped(p, 0)
    with pytest.raises(ValueError, match="task_l2 must be"):
        solve_grouped(p, 2, task_l2=-1.0)
