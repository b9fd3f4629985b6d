"""MOptEqs family (deqbench.models.moptqs): HH&D = gradient, stationarity of Eq. 5, adjoints, sizes, gradients, PE."""

from __future__ import annotations

import copy
import inspect
import json

import pytest
import torch
import torch.nn.functional as F

from deqbench.core.solvers import solve
from deqbench.models.moptqs import MOptEqs, MOptEqsConfig, OperatorConv, paper_config, resample

PAPER_SIZES = {"single_view_193k": 193_000, "poptqs_conv_276k": 276_000,
               "multi_scale_0.48m": 480_000, "multi_scale_1.9m": 1_900_000}


@pytest.fixture(autouse=True)
def _single_thread(single_thread):
    """Every test here uses tiny tensors (conftest.single_thread)."""


def tiny(layout: str = "single_view", **kw) -> MOptEqs:
    """A float64 tiny model in eval mode (no PE unless asked)."""
    base = dict(layout=layout, channels=4, image_size=8, pe_eps=0.0, head_pool=2, head_hidden=0,
                branches=3, lam=0.05)
    base.update(kw)
    return MOptEqs(MOptEqsConfig(**base)).double().eval()


def rand_state(model: MOptEqs, batch: int = 2) -> tuple[torch.Tensor, ...]:
    return tuple(torch.randn(batch, model.config.channels, r, r, dtype=torch.float64)
                 for r in model.config.resolutions)


def converge(model: MOptEqs, images: torch.Tensor, perturb: bool = False):
    inj = model.inject(images)
    res = solve(lambda z: model.layer(z, inj, perturb), model.z0(images), method="anderson", max_iter=200, tol=1e-13)
    return tuple(res.z), inj, res


# ----------------------------------------------------------------------------- HH&D = -1/2 grad of the pair terms


def naive_pair_terms(z, p_scale: str):
    """Eq. 3/4 by explicit loops over channels, independent of the model code."""
    L = len(z)
    d_tot = h_tot = 0.0
    for k in range(L):
        a, b = z[k], resample(z[(k + 1) % L], z[k].shape[-1], p_scale)
        c = a.shape[1]
        h_tot = h_tot + (a * b).flatten(1).sum(1)
        for k1 in range(c):
            for k2 in range(c):
                if k1 != k2:
                    d_tot = d_tot + (a[:, k1] * b[:, k2]).flatten(1).sum(1).abs()
    return d_tot, h_tot


@pytest.mark.parametrize("layout,branches,p_scale", [("single_view", 3, "adjoint"), ("single_view", 1, "adjoint"),
                                                     ("single_view", 2, "adjoint"), ("multi_scale", 3, "adjoint"),
                                                     ("multi_scale", 3, "isometric"), ("multi_scale", 4, "adjoint")])
@pytest.mark.parametrize("terms", ["full", "no_d", "no_h"])
def test_hhd_is_minus_half_gradient_of_pair_terms(layout, branches, p_scale, terms):
    model = tiny(layout, branches=branches, p_scale=p_scale, hhd_terms=terms, lam=0.3)
    z = tuple(t.requires_grad_() for t in rand_state(model))
    d, h = model.pair_terms(z)
    nd, nh = naive_pair_terms(z, p_scale)
    torch.testing.assert_close(d, nd)
    torch.testing.assert_close(h, nh)
    lam = model.config.lam
    # h = -grad Phi with Phi = 1/2 sum_k [lam D - H] (Eq. 14), and the A.4 ablation potentials
    sq = sum(t.pow(2).sum() for t in z)
    phi = {"full": 0.5 * (lam * d - h).sum(), "no_d": -0.5 * h.sum(), "no_h": 0.5 * lam * d.sum() - 0.5 * sq}[terms]
    grads = torch.autograd.grad(phi, z)
    hh = model.hhd(z)
    for g, hi in zip(grads, hh):
        torch.testing.assert_close(hi, -g, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model.potential(z).sum(), phi)
    # finite differences along random directions (no sign kink within +-t for random data)
    with torch.no_grad():
        for _ in range(2):
            v = tuple(torch.randn_like(t) for t in z)
            t = 1e-6
            plus = model.potential(tuple(a + t * b for a, b in zip(z, v))).sum()
            minus = model.potential(tuple(a - t * b for a, b in zip(z, v))).sum()
            fd = (plus - minus) / (2 * t)
            torch.testing.assert_close(fd, -sum((hi * b).sum() for hi, b in zip(hh, v)), rtol=1e-6, atol=1e-6)


def test_one_branch_hhd_is_self_feedback_plus_decorrelation():
    model = tiny(branches=1, lam=0.2)
    (z,) = rand_state(model)
    a = z.flatten(2)
    s = torch.sign(a @ a.transpose(1, 2))
    s.diagonal(dim1=1, dim2=2).zero_()
    torch.testing.assert_close(model.hhd((z,))[0], z - 0.2 * (s @ a).view_as(z))


# ----------------------------------------------------------------------------- stationarity of the hidden objective


@pytest.mark.parametrize("layout,coupling", [("single_view", "hhd"), ("multi_scale", "hhd"),
                                             ("single_view", "none"), ("multi_scale", "sum")])
def test_fixed_point_is_stationary_point_of_objective(layout, coupling):
    """At z* = W^T relu(W h(z*) + d) (Eq. 6), 0 is in the subdifferential of G (Eq. 5 / Eq. 11).

    With u = W^{-T} z (so z = W^T u), the indicator f gives grad_u G = r + N(u), r := grad_u G_smooth =
    W grad_z G_smooth = u - d - W h(z), and N(u) the normal cone of {u >= 0}: N_k = 0 where u_k > 0, N_k <= 0
    where u_k = 0.  So 0 in grad G  <=>  r_k = 0 where u_k > 0 and r_k >= 0 where u_k = 0.  We also check that
    u (dense inverse) equals the post-activation y* of the map.
    """
    model = tiny(layout, coupling=coupling, channels=3, image_size=8 if layout == "multi_scale" else 6)
    images = torch.randn(2, 3, model.config.image_size, model.config.image_size, dtype=torch.float64)
    with torch.no_grad():
        z, inj, res = converge(model, images)
    assert bool((res.residual < 1e-11).all())
    z = tuple(t.clone().requires_grad_() for t in z)
    grads = torch.autograd.grad(model.objective(z, inj).sum(), z)
    y = model.post_activation(z, inj)
    n_pos = n_zero = 0
    for i, (g, yi, zi) in enumerate(zip(grads, y, z)):
        w = inj.weights[i]
        u = torch.linalg.solve(model.dense_weight(i, w).t(), zi.detach().flatten(1).t()).t().view_as(zi)
        torch.testing.assert_close(u, yi.detach(), rtol=1e-9, atol=1e-9)
        r = model.w_convs[i].apply_op(g, w)
        pos = yi > 0
        assert r[pos].abs().max() < 1e-8
        assert r[~pos].min() > -1e-8
        n_pos, n_zero = n_pos + int(pos.sum()), n_zero + int((~pos).sum())
    assert n_pos > 0 and n_zero > 0  # both branches of the condition are exercised


# ----------------------------------------------------------------------------- adjoints


def test_exact_adjoints_of_u_w_p():
    model = tiny("multi_scale", branches=4, image_size=16)
    inj_w, fusion = model.normalized_weights()
    g = torch.randn(2, model.config.stem_channels, 16, 16, dtype=torch.float64)
    for i, r in enumerate(model.config.resolutions):
        y = torch.randn(2, 4, r, r, dtype=torch.float64)
        torch.testing.assert_close((model.u_apply(i, g) * y).sum(), (g * model.u_adjoint(i, y)).sum())
        a = torch.randn_like(y)
        conv = model.w_convs[i]
        torch.testing.assert_close((conv.apply_op(a, inj_w[i]) * y).sum(), (a * conv.adjoint(y, inj_w[i])).sum())
    sv = tiny()  # 3x3 W with zero padding
    w = sv.normalized_weights()[0][0]
    a, y = torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.randn(2, 4, 8, 8, dtype=torch.float64)
    torch.testing.assert_close((sv.w_convs[0].apply_op(a, w) * y).sum(), (a * sv.w_convs[0].adjoint(y, w)).sum())
    for mode in ("adjoint", "isometric"):
        for ri, rj in [(8, 4), (4, 8), (8, 1), (2, 8), (4, 4)]:
            a, b = torch.randn(2, 3, rj, rj, dtype=torch.float64), torch.randn(2, 3, ri, ri, dtype=torch.float64)
            torch.testing.assert_close((resample(a, ri, mode) * b).sum(), (a * resample(b, rj, mode)).sum())
    a, b = torch.randn(1, 3, 8, 8, dtype=torch.float64), torch.randn(1, 3, 4, 4, dtype=torch.float64)
    assert not torch.allclose((resample(a, 4, "unit") * b).sum(), (a * resample(b, 8, "unit")).sum())


def test_spectral_norm_is_conv_operator_norm():
    torch.manual_seed(1)
    conv = OperatorConv(4, 3, 6, "spectral", 0.9, 1).double()
    w = conv.weight(update=False)
    d = 4 * 36
    eye = torch.eye(d, dtype=torch.float64).view(d, 4, 6, 6)
    mat = conv.apply_op(eye, w).view(d, d)
    assert abs(torch.linalg.matrix_norm(mat, 2).item() - 0.9) < 1e-2  # 100 warm-up iterations
    assert abs(conv.operator_norm() - 0.9) < 1e-2
    wn = OperatorConv(4, 3, 6, "weight", 0.9, 1)
    assert abs(wn.operator_norm() - 0.9) < 1e-2


# ----------------------------------------------------------------------------- sizes and variants


@pytest.mark.parametrize("name", sorted(PAPER_SIZES))
def test_parameter_counts_match_paper(name):
    model = MOptEqs(paper_config(name))
    n = model.num_parameters()
    print(f"\n{name}: {n:,} parameters (paper {PAPER_SIZES[name]:,})")
    assert abs(n - PAPER_SIZES[name]) / PAPER_SIZES[name] < 0.10
    desc = json.loads(json.dumps(model.describe()))
    assert desc["num_parameters"] == n and MOptEqsConfig(**desc["config"]) == model.config


def test_variants_parameters_and_maps():
    cfg = paper_config("parallel_optqs_193k")
    sum_cfg = paper_config("poptqs_sum_193k")
    assert MOptEqs(cfg).num_parameters() == MOptEqs(sum_cfg).num_parameters()
    model = tiny(coupling="none")
    images = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    inj = model.inject(images)
    z = rand_state(model)
    out = model.layer(z, inj)
    for i, conv in enumerate(model.w_convs):  # Eq. 10: z_i = W_i^T relu(W_i z_i + U_i g + b_i)
        w = inj.weights[i]
        torch.testing.assert_close(out[i], conv.adjoint(F.relu(conv.apply_op(z[i], w) + inj.drive[i]), w))
    ablation = tiny(hhd_terms="no_d", lam=0.3)
    zero_lam = ablation.with_config(hhd_terms="full", lam=0.0)
    torch.testing.assert_close(ablation.layer(z, ablation.inject(images)), zero_lam.layer(z, zero_lam.inject(images)))
    conv = tiny(coupling="conv")
    assert len(conv.fusion_convs) == 9 and conv(images).shape == (2, 10)
    gs = model.with_config(update="gauss_seidel", coupling="sum")
    jac = model.with_config(coupling="sum")
    assert not torch.allclose(gs.layer(z, gs.inject(images))[1], jac.layer(z, jac.inject(images))[1])


def test_config_validation():
    with pytest.raises(ValueError):
        MOptEqsConfig(coupling="sum", hhd_terms="no_d")
    with pytest.raises(ValueError):
        MOptEqsConfig(layout="multi_scale", image_size=20)
    with pytest.raises(ValueError):
        MOptEqsConfig(wnorm="batch")
    with pytest.raises(ValueError):
        paper_config("nope")
    cfg = MOptEqsConfig(layout="multi_scale", channels=16)
    assert cfg.branches == 4 and cfg.resolutions == (32, 16, 8, 4) and cfg.stem_channels == 8
    assert cfg.fusion_scale == 0.25 and cfg.head_hidden == 0


# ----------------------------------------------------------------------------- gradients


def test_implicit_gradient_matches_unrolled_reference():
    model = tiny(channels=3, image_size=6, lam=0.05)
    images = torch.randn(3, 3, 6, 6, dtype=torch.float64)
    labels = torch.tensor([0, 3, 7])
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.cross_entropy(model(images, max_iter=100, tol=1e-12,
                                 backward_options={"method": "anderson", "max_iter": 100, "tol": 1e-12}), labels)
    g_ift = torch.autograd.grad(loss, params)
    inj = model.inject(images)
    z = model.z0(images)
    for _ in range(250):
        z = model.layer(z, inj)
    g_ref = torch.autograd.grad(F.cross_entropy(model.logits(z), labels), params)
    for a, b in zip(g_ift, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    with torch.no_grad():  # finite difference on one bias entry
        t = 1e-6
        vals = []
        for sgn in (1, -1):
            model.bias[0, 1] += sgn * t
            vals.append(F.cross_entropy(model(images, max_iter=100, tol=1e-13), labels))
            model.bias[0, 1] -= sgn * t
        fd = (vals[0] - vals[1]) / (2 * t)
    torch.testing.assert_close(fd, g_ift[params.index(model.bias)][0, 1], rtol=1e-5, atol=1e-8)


def test_one_step_gradient_runs_and_differs():
    model = tiny(channels=3, image_size=6)
    images = torch.randn(3, 3, 6, 6, dtype=torch.float64)
    params = [p for p in model.parameters() if p.requires_grad]
    stats: dict = {}
    out_1 = model(images, gradient="one_step", one_step_iterations=30, stats=stats)
    out_i = model(images, max_iter=60, tol=1e-10)
    torch.testing.assert_close(out_1, out_i, rtol=1e-4, atol=1e-6)  # same equilibrium, different gradient
    assert stats["one_step_residual"].shape == (3,)
    g1 = torch.autograd.grad(out_1.pow(2).sum(), params)
    gi = torch.autograd.grad(out_i.pow(2).sum(), params)
    assert all(torch.isfinite(g).all() for g in g1)
    assert not all(torch.allclose(a, b, rtol=1e-3) for a, b in zip(g1, gi))


def test_pe_active_in_training_only_unless_pe_at_eval():
    torch.manual_seed(0)
    pe = MOptEqs(MOptEqsConfig(channels=4, image_size=8, head_pool=2, pe_eps=0.1))
    no_pe = pe.with_config(pe_eps=0.0)
    at_eval = pe.with_config(pe_at_eval=True)
    images = torch.randn(4, 3, 8, 8)
    a, b = copy.deepcopy(pe).train(), copy.deepcopy(no_pe).train()
    with torch.no_grad():
        assert not torch.allclose(a(images), b(images))
        pe.eval(), no_pe.eval(), at_eval.eval()
        torch.testing.assert_close(pe(images), no_pe(images))
        assert not torch.allclose(at_eval(images), no_pe(images))


# ----------------------------------------------------------------------------- convergence, host sync, analysis


def test_narrow_single_view_converges_at_init():
    torch.manual_seed(0)
    model = MOptEqs(MOptEqsConfig(channels=8, lam=0.01)).eval()
    stats: dict = {}
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32), max_iter=50, tol=1e-3, stats=stats)
    assert bool((stats["forward"].residual < 1e-3).all())
    trace = model.residual_trace(torch.randn(2, 3, 32, 32), iterations=12)
    assert trace.shape == (2, 12) and bool((trace[:, -1] < trace[:, 0]).all())


def test_layer_has_no_host_sync(no_host_sync):
    for fn in (MOptEqs.layer, MOptEqs._hhd_branch, MOptEqs._feedback_branch, MOptEqs.hhd, MOptEqs.feedback):
        src = inspect.getsource(fn)
        assert ".item(" not in src and ".cpu(" not in src and ".tolist(" not in src
    model = tiny("multi_scale", pe_eps=0.1, update="gauss_seidel")
    images = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    inj = model.inject(images)
    z = rand_state(model)
    with no_host_sync():
        model.layer(z, inj, perturb=True)
        model.feedback(z, inj.fusion)


def test_analysis_helpers():
    model = tiny(lam=0.05)
    images = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    z, inj, _ = converge(model, images)
    avg_d, avg_h = model.average_dh(z)
    assert avg_d.shape == avg_h.shape == (3,)
    corr = model.channel_correlation(z, 1, 0)
    assert corr.shape == (3, 4, 4) and float(corr.max()) <= 1 + 1e-12
    delta = model.reconstructed_perturbation(images, 0.1)
    assert delta.shape == inj.features.shape and set(delta.unique().tolist()) <= {-0.1, 0.0, 0.1}
    assert not torch.allclose(model(images, feature_delta=-delta), model(images))
    assert len(model.operator_norms()) == 3


def test_few_sgd_steps_finite():
    torch.manual_seed(0)
    model = MOptEqs(MOptEqsConfig(channels=4, image_size=8, head_pool=2)).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    images, labels = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    for gradient in ("implicit", "one_step", "implicit"):
        opt.zero_grad()
        loss = F.cross_entropy(model(images, gradient=gradient), labels)
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
