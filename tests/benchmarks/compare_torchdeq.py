#!/usr/bin/env python
"""Wall-clock comparison of deqbench's Anderson solver with torchdeq's (torchdeq==0.1.0).

Standalone script, not a pytest module::

    python tests/benchmarks/compare_torchdeq.py --device cuda --out results.json
    python tests/benchmarks/compare_torchdeq.py --device cpu --quick --out quick.json

For every case (an MLP cell and a small conv cell, see ``CASES``) it times,
with warm-up rounds and the median of ``--repeats`` timed calls (each call
bracketed by ``torch.cuda.synchronize()`` on CUDA):

* ``f x N``: N chained evaluations of the bare map, the floor for any solver;
* ``ours``: ``deqbench.core.solvers.solve(method="anderson", m, lam, beta=1, kind="II",
  max_iter=N, tol=0)``: exactly N evaluations of f, no host sync;
* ``torchdeq``: ``torchdeq.solver.get_solver("anderson")(f, z0, max_iter=N,
  tol=0.0, stop_mode="rel", m, lam, tau=1.0)``: also exactly N evaluations of f
  (two plain steps, then N-2 mixed ones); its stop test is a strict
  ``residual.max() < tol``, so ``tol=0.0`` never fires and all N are run;
* time to a common target: the target is the looser (larger) of the two
  solvers' batch-max relative residuals after N evaluations, so both reach it;
  each solver's residual trace gives the fewest f evaluations it needs, and it
  is timed again with ``max_iter`` set to that count (``tol=0``);
* early stop: both solvers given ``tol=target`` (ours checks every
  ``check_every=8`` evaluations, torchdeq every evaluation).

Residuals are relative, ``|f(z) - z| / (|f(z)| + 1e-9)``, the same formula in
both libraries, and the reported value is each solver's own per-sample lowest
residual (``SolverResult.residual`` / ``info["rel_lowest"]``).  The residual of
the point each solver returns is also recomputed outside the timed region
(torchdeq returns ``f(z)`` of its best iterate, deqbench returns the iterate
itself, so these differ by about one contraction factor).

Note on ``lam``: deqbench scales its Tikhonov term by the mean |G_i|^2 of the
memory, torchdeq adds ``lam * I`` unscaled; with the same ``lam`` the two are
not the same regularisation: once |G|^2 falls well below ``lam`` torchdeq's
weights flatten out and its convergence slows to linear.  ``--td-lam`` sets
torchdeq's value separately, ``--target`` fixes the time-to-target residual, and
``--threads`` sets the CPU thread count.

TF32 is switched off for matmul and cuDNN.  Everything runs under
``torch.no_grad()``.  If torchdeq cannot be imported (neither installed nor a
``torchdeq-*.whl`` in ``<repo>/.whl`` to import from), only deqbench is measured
and the script exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[2]

try:
    from deqbench.core.solvers import solve
except ImportError:  # run from a checkout without an installed package
    sys.path.insert(0, str(REPO))
    from deqbench.core.solvers import solve


def import_torchdeq() -> tuple[Callable[..., Any] | None, str]:
    """Return (torchdeq's anderson solver, where it came from), or (None, reason)."""
    try:
        import torchdeq  # noqa: F401
        from torchdeq.solver import get_solver

        return get_solver("anderson"), f"installed: {os.path.dirname(torchdeq.__file__)}"
    except ImportError as exc:
        reason = f"import failed: {exc}"
    # A pure-python wheel can be imported straight from the zip file.
    wheels = sorted((REPO / ".whl").glob("torchdeq-*-py3-none-any.whl"))
    if wheels:
        sys.path.insert(0, str(wheels[-1]))
        try:
            from torchdeq.solver import get_solver

            return get_solver("anderson"), f"zipimport: {wheels[-1]}"
        except ImportError as exc:
            sys.path.remove(str(wheels[-1]))
            reason += f"; zipimport of {wheels[-1].name} failed: {exc}"
    return None, reason


# --------------------------------------------------------------------------- cases


def build_mlp(batch: int, dim: int, device: torch.device, dtype: torch.dtype, seed: int):
    """f(z) = tanh(W z + U x + b) with |W|_2 = 0.9; U x + b is computed once (as a DEQ does)."""
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    W *= 0.9 / torch.linalg.matrix_norm(W, ord=2)
    U = torch.randn(dim, dim, generator=gen, dtype=torch.float64) / math.sqrt(dim)
    b = 0.1 * torch.randn(dim, generator=gen, dtype=torch.float64)
    x = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    inj = (x @ U.T + b).to(device=device, dtype=dtype)
    Wt = W.T.contiguous().to(device=device, dtype=dtype)

    def f(z: Tensor) -> Tensor:
        return torch.tanh(torch.addmm(inj, z, Wt))

    z0 = torch.zeros(batch, dim, device=device, dtype=dtype)
    return f, z0


def conv_opnorm(weight: Tensor, shape: tuple[int, int, int], iters: int = 50) -> float:
    """Operator 2-norm of a stride-1, padding-1 conv on inputs of ``shape`` (C, H, W), by power iteration."""
    v = torch.randn(1, *shape, dtype=weight.dtype, generator=torch.Generator().manual_seed(0))
    sigma = 0.0
    for _ in range(iters):
        v = v / v.norm()
        u = F.conv2d(v, weight, padding=1)
        sigma = float(u.norm())
        v = F.conv_transpose2d(u, weight, padding=1)
    return sigma


def build_conv(batch: int, channels: int, size: int, device: torch.device, dtype: torch.dtype, seed: int):
    """f(z) = GroupNorm(relu(conv3x3(z)) + inj) with the conv scaled to operator norm 0.9."""
    torch.manual_seed(seed)
    conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
    groups = 8 if channels % 8 == 0 else 1
    norm = nn.GroupNorm(groups, channels)
    with torch.no_grad():
        w = conv.weight.double()
        conv.weight.copy_((w * (0.9 / conv_opnorm(w, (channels, size, size)))).float())
    conv = conv.to(device=device, dtype=dtype).eval().requires_grad_(False)
    norm = norm.to(device=device, dtype=dtype).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(seed + 1)
    inj = torch.randn(batch, channels, size, size, generator=gen).to(device=device, dtype=dtype)

    def f(z: Tensor) -> Tensor:
        return norm(F.relu(conv(z)) + inj)

    z0 = torch.zeros(batch, channels, size, size, device=device, dtype=dtype)
    return f, z0


# name -> (builder, args)
CASES = {
    "mlp_B64_D256": (build_mlp, (64, 256)),
    "mlp_B256_D1024": (build_mlp, (256, 1024)),
    "conv_B32_C64_32x32": (build_conv, (32, 64, 32)),
    "conv_B96_C48_16x16": (build_conv, (96, 48, 16)),
}
QUICK_CASES = {
    "mlp_B8_D64": (build_mlp, (8, 64)),
    "mlp_B16_D128": (build_mlp, (16, 128)),
    "conv_B4_C16_8x8": (build_conv, (4, 16, 8)),
}


# --------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> dict[str, Any]:
    """Median (and spread) of ``repeats`` synchronised wall-clock timings of ``fn``, in milliseconds."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return {"median_ms": statistics.median(times), "min_ms": min(times), "q1_ms": q[0], "q3_ms": q[2], "times_ms": times}


def rel_residual(f: Callable[[Tensor], Tensor], z: Tensor) -> Tensor:
    """Per-sample |f(z) - z| / (|f(z)| + 1e-9), computed in float64 from a float32 f."""
    fz = f(z)
    g = (fz - z).flatten(1).double()
    return g.norm(dim=1) / (fz.flatten(1).double().norm(dim=1) + 1e-9)


def first_nfe_reaching(curve: list[float], target: float, offset: int) -> int | None:
    """Fewest f evaluations after which ``curve`` (batch-max best-so-far residual) is <= target.

    ``curve[j]`` is the value after ``j + offset`` evaluations.
    """
    for j, value in enumerate(curve):
        if value <= target:
            return j + offset
    return None


def batch_max_running_min(trace: Tensor) -> list[float]:
    """(B, T) residual trace -> per step the batch max of each sample's best-so-far residual."""
    t = trace.double().nan_to_num(nan=math.inf)
    return torch.cummin(t, dim=1).values.max(dim=0).values.tolist()


# --------------------------------------------------------------------------- one case


def run_case(name: str, builder, args: tuple, opts: argparse.Namespace, device: torch.device, td_solver) -> dict[str, Any]:
    dtype = getattr(torch, opts.dtype)
    f, z0 = builder(*args, device=device, dtype=dtype, seed=opts.seed)
    N, m, lam = opts.iters, opts.m, opts.lam
    td_lam = lam if opts.td_lam is None else opts.td_lam
    bench_kw = dict(device=device, warmup=opts.warmup, repeats=opts.repeats)
    out: dict[str, Any] = {"case": name, "shape": list(z0.shape), "dim": z0[0].numel()}

    def bare() -> Tensor:
        z = z0
        for _ in range(N):
            z = f(z)
        return z

    def ours(max_iter: int, tol: float = 0.0):
        return solve(f, z0, method="anderson", m=m, lam=lam, beta=1.0, kind="II",
                     max_iter=max_iter, tol=tol, stop_mode="rel")

    def theirs(max_iter: int, tol: float = 0.0):
        return td_solver(f, z0, max_iter=max_iter, tol=tol, stop_mode="rel", indexing=None,
                         m=m, lam=td_lam, tau=1.0)

    out["bare_f"] = bench(bare, **bench_kw)

    # --- fixed N evaluations -------------------------------------------------------
    r = ours(N)
    ours_curve = batch_max_running_min(r.trace)  # entry j: after j+1 evaluations
    out["ours"] = {
        "nfe": r.nfe,
        "rel_residual_max": float(r.residual.max()),
        "rel_residual_mean": float(r.residual.double().mean()),
        "returned_point_rel_residual_max": float(rel_residual(f, r.z).max()),
        "curve_batchmax": ours_curve,
        "time": bench(lambda: ours(N), **bench_kw),
    }
    if td_solver is None:
        return out

    counter = [0]

    def counted(z: Tensor) -> Tensor:
        counter[0] += 1
        return f(z)

    z_td, _, info = td_solver(counted, z0, max_iter=N, tol=0.0, stop_mode="rel", indexing=None, m=m, lam=td_lam, tau=1.0)
    # rel_trace[:, 0] is a 1e8 placeholder; rel_trace[:, j] (j >= 1) is the residual after j + 2 evaluations.
    td_curve = batch_max_running_min(info["rel_trace"][:, 1:])  # entry j: after j+3 evaluations
    out["torchdeq"] = {
        "lam": td_lam,
        "nfe": counter[0],
        "rel_residual_max": float(info["rel_lowest"].max()),
        "rel_residual_mean": float(info["rel_lowest"].double().mean()),
        "returned_point_rel_residual_max": float(rel_residual(f, z_td).max()),
        "curve_batchmax": td_curve,
        "time": bench(lambda: theirs(N), **bench_kw),
    }
    out["ratio_torchdeq_over_ours"] = out["torchdeq"]["time"]["median_ms"] / out["ours"]["time"]["median_ms"]

    # --- time to a common target -------------------------------------------------
    if opts.target is not None:
        target, rule = opts.target, "fixed by --target"
    else:
        target = max(out["ours"]["rel_residual_max"], out["torchdeq"]["rel_residual_max"])
        rule = "max(ours, torchdeq) batch-max residual after N evals"
    nfe_ours = first_nfe_reaching(ours_curve, target, offset=1)
    nfe_td = first_nfe_reaching(td_curve, target, offset=3)
    ttt: dict[str, Any] = {"target_rel_residual": target, "target_rule": rule}
    if nfe_ours is not None:
        r_t = ours(nfe_ours)
        ttt["ours"] = {"nfe": nfe_ours, "rel_residual_max": float(r_t.residual.max()),
                       "time": bench(lambda: ours(nfe_ours), **bench_kw)}
    if nfe_td is not None:
        nfe_td = max(nfe_td, 3)
        _, _, info_t = theirs(nfe_td)
        ttt["torchdeq"] = {"nfe": nfe_td, "rel_residual_max": float(info_t["rel_lowest"].max()),
                           "time": bench(lambda: theirs(nfe_td), **bench_kw)}
    if "ours" in ttt and "torchdeq" in ttt:
        ttt["ratio_torchdeq_over_ours"] = ttt["torchdeq"]["time"]["median_ms"] / ttt["ours"]["time"]["median_ms"]
    out["time_to_target"] = ttt

    # --- early stop with tol = target ----------------------------------------------
    tol = target * (1.0 + 1e-6)  # torchdeq's test is strict '<'
    r_e = ours(N, tol)
    counter[0] = 0
    _, _, info_e = td_solver(counted, z0, max_iter=N, tol=tol, stop_mode="rel", indexing=None, m=m, lam=td_lam, tau=1.0)
    early = {
        "tol": tol,
        "ours": {"nfe": r_e.nfe, "check_every": 8, "rel_residual_max": float(r_e.residual.max()),
                 "time": bench(lambda: ours(N, tol), **bench_kw)},
        "torchdeq": {"nfe": counter[0], "rel_residual_max": float(info_e["rel_lowest"].max()),
                     "time": bench(lambda: theirs(N, tol), **bench_kw)},
    }
    early["ratio_torchdeq_over_ours"] = early["torchdeq"]["time"]["median_ms"] / early["ours"]["time"]["median_ms"]
    out["early_stop"] = early
    return out


# --------------------------------------------------------------------------- report


def _fmt_ms(d: dict | None) -> str:
    return "-" if d is None else f"{d['time']['median_ms']:.3f}"


def _fmt_res(d: dict | None) -> str:
    return "-" if d is None else f"{d['rel_residual_max']:.2e}"


def print_tables(results: list[dict[str, Any]], N: int, have_td: bool) -> None:
    w = max(len(r["case"]) for r in results) + 2
    print(f"\n== fixed {N} f evaluations (median ms; residual = batch max of each sample's lowest relative residual)")
    head = f"{'case':<{w}}{'f x' + str(N):>10}{'ours':>10}{'torchdeq':>10}{'td/ours':>9}{'ours res':>11}{'td res':>11}{'ours/f':>8}{'td/f':>8}"
    print(head)
    print("-" * len(head))
    for r in results:
        bare = r["bare_f"]["median_ms"]
        o = r["ours"]
        t = r.get("torchdeq")
        line = f"{r['case']:<{w}}{bare:>10.3f}{o['time']['median_ms']:>10.3f}"
        if t:
            line += (f"{t['time']['median_ms']:>10.3f}{r['ratio_torchdeq_over_ours']:>9.2f}"
                     f"{o['rel_residual_max']:>11.2e}{t['rel_residual_max']:>11.2e}"
                     f"{o['time']['median_ms'] / bare:>8.2f}{t['time']['median_ms'] / bare:>8.2f}")
        else:
            line += f"{'-':>10}{'-':>9}{o['rel_residual_max']:>11.2e}{'-':>11}{o['time']['median_ms'] / bare:>8.2f}{'-':>8}"
        print(line)
    if not have_td:
        return
    print("\n== time to a common target (target = looser of the two residuals above; max_iter = fewest evals reaching it, tol=0)")
    head = f"{'case':<{w}}{'target':>10}{'nfe ours':>9}{'nfe td':>8}{'ours ms':>10}{'td ms':>10}{'td/ours':>9}{'ours res':>11}{'td res':>11}"
    print(head)
    print("-" * len(head))
    for r in results:
        t = r["time_to_target"]
        o, d = t.get("ours"), t.get("torchdeq")
        ratio = t.get("ratio_torchdeq_over_ours")
        print(f"{r['case']:<{w}}{t['target_rel_residual']:>10.2e}"
              f"{(o['nfe'] if o else '-'):>9}{(d['nfe'] if d else '-'):>8}"
              f"{_fmt_ms(o):>10}{_fmt_ms(d):>10}{(f'{ratio:.2f}' if ratio else '-'):>9}"
              f"{_fmt_res(o):>11}{_fmt_res(d):>11}")
    print("\n== early stop, both with tol = target (ours checks every 8 evals, torchdeq every eval)")
    head = f"{'case':<{w}}{'nfe ours':>9}{'nfe td':>8}{'ours ms':>10}{'td ms':>10}{'td/ours':>9}"
    print(head)
    print("-" * len(head))
    for r in results:
        e = r["early_stop"]
        print(f"{r['case']:<{w}}{e['ours']['nfe']:>9}{e['torchdeq']['nfe']:>8}{_fmt_ms(e['ours']):>10}"
              f"{_fmt_ms(e['torchdeq']):>10}{e['ratio_torchdeq_over_ours']:>9.2f}")


def environment(device: torch.device, td_where: str) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "torchdeq": td_where,
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    try:
        import torchdeq  # noqa: F401
        from importlib.metadata import version

        env["torchdeq_version"] = version("torchdeq")
    except Exception:
        pass
    try:
        env["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                           text=True, timeout=10).stdout.strip() or None
    except Exception:
        env["git_commit"] = None
    return env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats (a smoke test)")
    p.add_argument("--cases", nargs="*", default=None, help="subset of case names to run")
    p.add_argument("--iters", type=int, default=30, help="f evaluations per solve (default 30)")
    p.add_argument("--m", type=int, default=6)
    p.add_argument("--lam", type=float, default=1e-4)
    p.add_argument("--td-lam", type=float, default=None,
                   help="lam passed to torchdeq (default: --lam); its lam is absolute, ours is relative to mean |G|^2")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default 20, quick 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 5, quick 2)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", type=float, default=None,
                   help="fixed relative-residual target for the time-to-target rows (default: the looser of the "
                        "two solvers' residuals after --iters evals, often at the float32 floor)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op CPU threads (default: torch's choice); 1 gives stable CPU timings on small shared machines")
    opts = p.parse_args(argv)
    opts.repeats = opts.repeats or (5 if opts.quick else 20)
    opts.warmup = opts.warmup if opts.warmup is not None else (2 if opts.quick else 5)
    if opts.iters < 3:
        p.error("--iters must be >= 3 (torchdeq's Anderson records residuals from its third evaluation)")

    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    device = torch.device(opts.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda requested but CUDA is not available")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    td_solver, td_where = import_torchdeq()
    if td_solver is None:
        print(f"torchdeq is not importable ({td_where}); measuring deqbench only.\n"
              f"Install it with: pip install --no-index {REPO / '.whl' / 'torchdeq-0.1.0-py3-none-any.whl'}")
    else:
        print(f"torchdeq anderson from {td_where}")

    cases = QUICK_CASES if opts.quick else CASES
    if opts.cases:
        known = {**CASES, **QUICK_CASES}
        unknown = [c for c in opts.cases if c not in known]
        if unknown:
            p.error(f"unknown case(s) {unknown}; known: {sorted(known)}")
        cases = {c: known[c] for c in opts.cases}

    env = environment(device, td_where)
    print(f"device={device} torch={env['torch']} dtype={opts.dtype} iters={opts.iters} m={opts.m} lam={opts.lam} "
          f"td_lam={opts.lam if opts.td_lam is None else opts.td_lam} "
          f"repeats={opts.repeats} warmup={opts.warmup}" + (f" gpu={env.get('gpu')}" if device.type == "cuda" else
                                                              f" threads={env['cpu_threads']}"))
    results = []
    with torch.no_grad():
        for name, (builder, args) in cases.items():
            print(f"running {name} ...", flush=True)
            results.append(run_case(name, builder, args, opts, device, td_solver))

    print_tables(results, opts.iters, td_solver is not None)
    if opts.out is not None:
        payload = {
            "environment": env,
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
            "notes": [
                "times are medians in ms of synchronised wall-clock calls",
                "both solvers run exactly `iters` f evaluations in the fixed-N rows (tol=0)",
                "residuals: relative |f(z)-z|/(|f(z)|+1e-9), per-sample lowest, batch max unless named _mean",
                "curve_batchmax: ours entry j is after j+1 evals; torchdeq entry j is after j+3 evals",
                "lam: deqbench scales it by mean |G_i|^2, torchdeq adds lam*I unscaled",
            ],
            "torchdeq_available": td_solver is not None,
            "results": results,
        }
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        opts.out.write_text(json.dumps(payload, indent=2))
        print(f"\nwrote {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
