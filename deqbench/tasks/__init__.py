"""One package per paper experiment; importing this package registers them all.

* :mod:`deqbench.tasks.jiio_adversarial`: JIIO paper Tables 2, 5, 8 (adversarial training of MDEQs);
* :mod:`deqbench.tasks.jiio_generative`: JIIO paper Tables 1, 3, 4, Figure 3 and the memory comparison;
* :mod:`deqbench.tasks.jiio_meta`: JIIO paper Tables 6, 7 (meta-learning: JIIO-DEQ, MAML, Reptile, iMAML);
* :mod:`deqbench.tasks.moptqs`: MOptEqs paper Tables 1(a), 3 and Figure 4;
* :mod:`deqbench.tasks.implicit2`: (Implicit)^2 image-generalisation and video tables, gradient-order, cost and
  amortisation figures.

``claims.yaml`` beside this file is the claims ledger: every quantitative claim of the three papers, checked
against these tasks' tables by :mod:`deqbench.experiments.claims`.
"""

from deqbench.tasks import implicit2, jiio_adversarial, jiio_generative, jiio_meta, moptqs  # noqa: F401  (registers the tasks)
