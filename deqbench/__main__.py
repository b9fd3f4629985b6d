"""``python -m deqbench``: the command line of every task (see :mod:`deqbench.experiments.cli`)."""

import sys

from deqbench.experiments.cli import main

if __name__ == "__main__":
    sys.exit(main())
