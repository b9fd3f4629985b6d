"""A documented example solve on real embedded data (scikit-learn's digits).

Run with ``python -m deqbench.demo``.  It builds a small convolutional DEQ
(untrained, random weights) on the 8x8 digit images that ship with
scikit-learn, then

1. solves its fixed point with forward iteration, Anderson and Broyden and
   prints residuals and f-evaluation counts;
2. checks the IFT gradient of the equilibrium against finite differences;
3. attacks it with JIIO-80 and with PGD-20 (L2, eps = 1, the paper's
   adversarial settings) and prints the inner costs and wall-clock times.

Everything runs on the CPU in seconds; the numbers describe this random
model, not any paper table.
"""

from __future__ import annotations

import argparse
import time

import torch
from sklearn.datasets import load_digits

from deqbench.inputopt.baselines import pgd
from deqbench.core.deq import fixed_point
from deqbench.inputopt.jiio import jiio
from deqbench.models.small import SmallDEQClassifier
from deqbench.core.solvers import solve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    digits = load_digits()
    images = torch.tensor(digits.images[: args.batch], dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target[: args.batch])
    print(f"data: scikit-learn load_digits, first {len(labels)} images (8x8, [0,1]); model: random SmallDEQClassifier; seed {args.seed}")

    model = SmallDEQClassifier(in_channels=1, channels=16)
    layer = model.layer_fn(images)
    delta0 = torch.zeros_like(images)
    z0 = model.z0(images)
    print("\n1. fixed point of f(z) = layer(z, x), 40 iterations max, tol 1e-5")
    for method, options in [("forward", {}), ("anderson", {"m": 6}), ("broyden", {"memory": 20})]:
        result = solve(lambda z: layer(z, delta0), z0, method=method, max_iter=40, tol=1e-5, **options)
        print(f"   {method:9s} nfe={result.nfe:3d}  max residual={float(result.residual.max()):.2e}  converged={int(result.converged.sum())}/{len(labels)}")

    print("\n2. IFT gradient vs central finite difference (one weight, float64)")
    model64 = model.double()
    images64 = images.double()
    weight = model64.layer.conv2.weight

    def loss() -> torch.Tensor:
        z = fixed_point(lambda z: model64.layer(z, model64.inject(images64)), model64.z0(images64), max_iter=60, tol=1e-12,
                        backward_options={"max_iter": 60, "tol": 1e-12})
        return model64.logits(z).square().sum()

    (grad,) = torch.autograd.grad(loss(), weight)
    h = 1e-6
    with torch.no_grad():
        weight[0, 0, 1, 1] += h
        up = loss()
        weight[0, 0, 1, 1] -= 2 * h
        down = loss()
        weight[0, 0, 1, 1] += h
    fd = float((up - down) / (2 * h))
    print(f"   autograd {float(grad[0, 0, 1, 1]):+.6e}   finite difference {fd:+.6e}")
    model = model64.float()

    print("\n3. adversarial input optimisation, L2 eps=1 (paper Table 9 / appendix C.3 settings)")
    cost = model.cost_fn(labels)
    start = time.perf_counter()
    with torch.no_grad():
        attack = jiio(layer, cost, z0, delta0, max_iter=80, alpha=(0.8, 0.6, 0.6), alpha_x_late=0.2, alpha_x_switch=65,
                      solver_options={"m": 20, "kind": "I"}, projection="l2", eps=1.0, normalized_step=True)
    jiio_s = time.perf_counter() - start
    start = time.perf_counter()
    baseline = pgd(layer, cost, z0, delta0, steps=20, step_size=0.2, eps=1.0)
    pgd_s = time.perf_counter() - start
    print(f"   JIIO-80: mean inner cost (-CE) {float(attack.cost.mean()):+.4f}   {jiio_s * 1e3:8.1f} ms")
    print(f"   PGD-20 : mean inner cost (-CE) {float(baseline.cost.mean()):+.4f}   {pgd_s * 1e3:8.1f} ms")
    print(f"   PGD-20 / JIIO-80 wall-clock ratio on this CPU: {pgd_s / jiio_s:.2f}x (timed once; see `pytest --benchmark-only` for medians)")


if __name__ == "__main__":
    main()
