"""The JIIO-DEQ meta step (deqbench.meta.jiio_deq; spec B.2 inner loop, B.4 outer loss, B.7 Adam baseline).

Toy model: a tiny 2-branch FiLM-MDEQ whose trunk GroupNorms have eps = 1, so the layer is a contraction and the
solves converge to 1e-12 (at paper settings the MDEQ is not a contraction at initialisation, see test_mdeq).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from deqbench.meta.jiio_deq import (
    JIIODEQConfig,
    adam_task_vectors,
    adapt_task_vectors,
    inner_loop,
    meta_loss,
    query_logits,
    query_loss,
)
from deqbench.models.mdeq import MDEQClassifier, MDEQConfig

TASK_DIM, N_WAY = 6, 5


def toy_config(task_dim: int = TASK_DIM, pooled_norm: str = "none") -> MDEQConfig:
    return MDEQConfig(channels=(4, 8), expansion=2, block_groups=2, fuse_groups=2, post_fuse_groups=2,
                      head_channels=(2, 4), final_channels=8, num_classes=N_WAY, task_dim=task_dim,
                      pooled_norm=pooled_norm)


def toy_model(dtype: torch.dtype = torch.float32, seed: int = 0, film_std: float = 0.5, head_gain: float = 1.0,
              pooled_norm: str = "none") -> MDEQClassifier:
    """Contractive toy FiLM-MDEQ (trunk GN eps = 1) with the FiLM Linears moved off zero so x matters;
    ``head_gain`` scales the final Linear (sharper logits, so the support cost reacts to x)."""
    torch.manual_seed(seed)
    model = MDEQClassifier(toy_config(pooled_norm=pooled_norm)).to(dtype)
    with torch.no_grad():
        for part in (model.blocks, model.fuse, model.post_fuse):
            for mod in part.modules():
                if isinstance(mod, nn.GroupNorm):
                    mod.eps = 1.0
        for block in model.blocks:
            assert block.film is not None
            block.film.weight.normal_(0.0, film_std)
            block.film.bias.normal_(0.0, 0.1)
        model.head.classifier.weight.mul_(head_gain)
    return model


def toy_tasks(n_tasks: int, dtype: torch.dtype = torch.float32, seed: int = 1) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """(support, query) in the stack_tasks layout: 5-way 1-shot, 1 query per class, 8x8 random images."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(N_WAY).repeat(n_tasks, 1)
    support = torch.rand(n_tasks, N_WAY, 1, 8, 8, generator=g, dtype=dtype)
    query = torch.rand(n_tasks, N_WAY, 1, 8, 8, generator=g, dtype=dtype)
    return (support, labels), (query, labels.clone())


def tight_config(**overrides) -> JIIODEQConfig:
    """Converged query solve and adjoint (float64 FD check), a short inner loop."""
    base = dict(inner_iters=12, alpha_x_switch=8, query_solver="anderson", query_max_iter=80, query_tol=1e-12,
                backward_method="anderson", backward_max_iter=80, backward_tol=1e-12, jac_reg=0.0)
    base.update(overrides)
    return JIIODEQConfig(**base)


def flat(images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    return images.reshape(-1, *images.shape[2:]), labels.reshape(-1)


def support_cost(model: MDEQClassifier, images: Tensor, labels: Tensor, x: Tensor, config: JIIODEQConfig) -> Tensor:
    """Per-task inner cost (B.2) at the converged support equilibrium for task vectors x."""
    with torch.no_grad():
        logits = query_logits(model, images, x, config)
        scale = config.scale_for(model)
        per = scale * nn.functional.cross_entropy(logits, labels, reduction="none")
        per = per + scale * config.task_l2 * model.broadcast_task(x, images.shape[0]).pow(2).mean(1)
        return per.view(x.shape[0], -1).sum(1)


# ----------------------------------------------------------------------------- config


def test_config_defaults_are_the_paper_settings() -> None:
    """B.2/B.4/Table 9: 100 iterations, Anderson-I memory 10, damping (0.8, 0.6, 0.04) -> 0.01 after 65,
    task_l2 1, query and backward thresholds 18, jac_reg 0.5 with 2 probes from iteration 15."""
    c = JIIODEQConfig()
    assert (c.inner_iters, c.anderson_memory, c.anderson_type) == (100, 10, "I")
    assert c.alpha == (0.8, 0.6, 0.04) and (c.alpha_x_late, c.alpha_x_switch) == (0.01, 65)
    assert c.task_l2 == 1.0 and (c.query_max_iter, c.backward_max_iter) == (18, 18)
    assert (c.jac_reg, c.jac_reg_probes, c.jac_reg_start) == (0.5, 2, 15)
    with pytest.raises(ValueError, match="inner_iters"):
        JIIODEQConfig(inner_iters=0)
    with pytest.raises(ValueError, match="anderson_type"):
        JIIODEQConfig(anderson_type="III")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- outer gradient (B.4)


@pytest.mark.parametrize("pooled_norm", ["none", "task"])
def test_meta_gradient_matches_finite_differences_at_fixed_x_star(pooled_norm: str) -> None:
    """B.4: the outer gradient is the IFT through the query equilibria with x* detached, so it equals central
    finite differences of the query CE at that fixed x* w.r.t. the model parameters (float64, jac_reg 0); also
    with the per-task standardised head, which couples a task's query images."""
    model = toy_model(torch.float64, pooled_norm=pooled_norm)
    support, query = toy_tasks(2, torch.float64)
    config = tight_config()
    loss, stats = meta_loss(model, support, query, config)
    assert stats.x_star.shape == (2, TASK_DIM) and not stats.x_star.requires_grad and stats.x_star.abs().sum() > 0
    assert stats.jac_loss is None
    model.zero_grad()
    loss.backward()
    q_img, q_lab = flat(*query)
    x_star = stats.x_star
    with torch.no_grad():
        assert torch.allclose(loss, query_loss(model, q_img, q_lab, x_star, config), atol=1e-12, rtol=0)
    params = dict(model.named_parameters())
    picks = [("blocks.0.film.weight", (3, 1)), ("blocks.1.film.bias", (5,)), ("blocks.0.conv1.weight_v", (1, 0, 1, 1)),
             ("post_fuse.1.gn.weight", (2,)), ("stem.0.weight", (2, 0, 1, 1)), ("head.classifier.weight", (1, 2))]
    h = 1e-6
    for name, idx in picks:
        p = params[name]
        assert p.grad is not None, name
        with torch.no_grad():
            old = p[idx].item()
            p[idx] = old + h
            up = query_loss(model, q_img, q_lab, x_star, config)
            p[idx] = old - h
            down = query_loss(model, q_img, q_lab, x_star, config)
            p[idx] = old
        fd = (up - down).item() / (2 * h)
        assert p.grad[idx].item() == pytest.approx(fd, rel=1e-5, abs=1e-8), name


def test_meta_loss_jacobian_term_is_added_and_differentiable() -> None:
    """B.4: with jac_reg > 0 the loss is query CE + jac_reg * Hutchinson term (support trajectory), and its
    gradient reaches the trunk; jac_reg_query adds the term at the query equilibria too."""
    model = toy_model()
    support, query = toy_tasks(2)
    torch.manual_seed(3)
    loss, stats = meta_loss(model, support, query, tight_config(jac_reg=0.5, inner_iters=20, query_max_iter=18,
                                                                  query_tol=0.0, backward_max_iter=18))
    assert stats.jac_loss is not None and stats.jac_loss > 0
    assert loss.item() == pytest.approx(stats.query_ce.item() + 0.5 * stats.jac_loss.item(), rel=1e-6)
    loss.backward()
    assert model.blocks[0].conv1.weight_v.grad is not None and model.blocks[0].conv1.weight_v.grad.abs().sum() > 0
    _, stats_q = meta_loss(model, support, query, tight_config(jac_reg=0.5, jac_reg_query=True, inner_iters=20))
    assert stats_q.jac_loss is not None and stats_q.jac_loss > 0
    assert stats.inner_f_evals == stats.inner_vjps == 20


# ----------------------------------------------------------------------------- inner loop (B.2)


@pytest.mark.parametrize("pooled_norm, head_gain, alpha_x, iterations",
                         [("none", 10.0, 0.04, 30), ("task", 1.0, 0.01, 200)])
def test_inner_loop_lowers_the_support_cost(pooled_norm: str, head_gain: float, alpha_x: float,
                                            iterations: int) -> None:
    """B.2 sanity: x* from JIIO (30 iterations at the paper's damping) has a lower support cost (converged
    equilibria) than x = 0.  Standardised pooled features give logits of order 1 without a sharper classifier, but
    on these noise images their cost is rough in x (Adam does not descend monotonically either): smaller x steps,
    more iterations."""
    model = toy_model(head_gain=head_gain, pooled_norm=pooled_norm)
    (s_img, s_lab), _ = toy_tasks(3)
    images, labels = flat(s_img, s_lab)
    config = tight_config(inner_iters=iterations, alpha_x_switch=min(20, iterations), alpha=(0.8, 0.6, alpha_x),
                          alpha_x_late=alpha_x)
    x_star = adapt_task_vectors(model, images, labels, 3, config)
    assert x_star.shape == (3, TASK_DIM) and not x_star.requires_grad
    before = support_cost(model, images, labels, torch.zeros_like(x_star), config)
    after = support_cost(model, images, labels, x_star, config)
    print(f"\nsupport cost per task: x=0 {before.tolist()} -> x* {after.tolist()}")
    assert (after < before).all()


def test_per_task_standardised_head_keeps_tasks_independent() -> None:
    """pooled_norm="task": a task's x* and query logits do not depend on which other tasks share the batch, and
    its logits need the task count."""
    model = toy_model(pooled_norm="task")
    (s_img, s_lab), (q_img, _) = toy_tasks(3)
    config = tight_config()
    outcomes = []
    for pick in ([0, 1], [0, 2]):
        images, labels = flat(s_img[pick], s_lab[pick])
        x_star = adapt_task_vectors(model, images, labels, 2, config)
        with torch.no_grad():
            logits = query_logits(model, q_img[pick].reshape(-1, *q_img.shape[2:]), x_star, config)
        outcomes.append((x_star[0], logits[:N_WAY]))
    torch.testing.assert_close(outcomes[0][0], outcomes[1][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outcomes[0][1], outcomes[1][1], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="pooled_norm='task' needs the number of tasks"):
        model.logits(model.z0(q_img[0]))


def test_query_logits_at_zero_with_zero_film_equal_the_plain_mdeq() -> None:
    """B.3 + B.2: FiLM zero-initialised and x = 0, the query solve is the plain MDEQ forward (same weights,
    same Broyden-18 solve)."""
    torch.manual_seed(0)
    film = MDEQClassifier(toy_config(TASK_DIM))
    torch.manual_seed(0)
    plain = MDEQClassifier(toy_config(0))
    missing, unexpected = plain.load_state_dict(film.state_dict(), strict=False)
    assert not missing and all(".film." in k for k in unexpected)
    images = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        got = query_logits(film, images, torch.zeros(3, TASK_DIM))
        want = plain(images, solver="broyden", max_iter=18, tol=0.0)
    assert got.shape == (6, N_WAY)
    assert torch.allclose(got, want, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- Adam baseline (B.7)


def test_adam_task_vectors_one_x_per_task_and_lowers_the_cost() -> None:
    """B.7: Adam on the task vector, each step a forward solve + IFT backward; one x per task; the kept x has a
    lower support cost than the first step (x = 0); f-evaluation and VJP counts are reported."""
    model = toy_model(head_gain=10.0)
    (s_img, s_lab), _ = toy_tasks(3)
    images, labels = flat(s_img, s_lab)
    res = adam_task_vectors(model, images, labels, 3, tight_config(), steps=6, lr=0.1, forward_max_iter=30,
                            backward_max_iter=30)
    assert res.x.shape == (3, TASK_DIM) and res.trace_cost.shape == (3, 6)
    print(f"\nAdam support cost trace: {res.trace_cost.tolist()}")
    assert (res.cost < res.trace_cost[:, 0]).all()
    assert res.f_evals == 6 * (30 + 1) and res.vjps >= 6


# ----------------------------------------------------------------------------- shapes and errors


def test_shapes_and_mismatch_errors() -> None:
    model = toy_model()
    (s_img, s_lab), (q_img, q_lab) = toy_tasks(2)
    images, labels = flat(s_img, s_lab)
    config = tight_config(inner_iters=3)
    res = inner_loop(model, images, labels, 2, config)
    assert res.x.shape == (2, TASK_DIM) and [t.shape[0] for t in res.jiio.z] == [10, 10]
    assert query_logits(model, flat(q_img, q_lab)[0], res.x, config).shape == (10, N_WAY)
    with pytest.raises(ValueError, match="do not split into 3 tasks"):
        adapt_task_vectors(model, images, labels, 3, config)
    with pytest.raises(ValueError, match="labels must have shape"):
        adapt_task_vectors(model, images, labels[:-1], 2, config)
    with pytest.raises(ValueError, match="n_tasks must be a positive integer"):
        adam_task_vectors(model, images, labels, 0, config)
    with pytest.raises(ValueError, match="query images do not split into 3 tasks"):
        query_logits(model, images, torch.zeros(3, TASK_DIM), config)
    with pytest.raises(ValueError, match="x_star must have shape"):
        query_logits(model, images, torch.zeros(2, TASK_DIM + 1), config)
    with pytest.raises(ValueError, match="support has 2 tasks but query has 1"):
        meta_loss(model, (s_img, s_lab), (q_img[:1], q_lab[:1]), config)
    with pytest.raises(ValueError, match="support must be images"):
        meta_loss(model, (images, labels), (q_img, q_lab), config)
    with pytest.raises(ValueError, match="FiLM task input"):
        adapt_task_vectors(MDEQClassifier(toy_config(0)), images, labels, 2, config)
