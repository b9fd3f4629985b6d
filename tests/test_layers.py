"""The package is layered: core < inputopt < models, meta, data, metrics < experiments < tasks < top-level entry points.

Lower layers never import upper ones (checked on every import statement of every module, including imports inside
functions), models never import data, metrics or task code, and every task package stays small.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "deqbench"
LAYERS = {"core": 0, "inputopt": 1, "models": 2, "meta": 2, "data": 2, "metrics": 2, "experiments": 3, "tasks": 4}
TOP = 5  # deqbench/__init__, __main__, demo and the README's alias modules


def layer_of(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], TOP) if len(parts) > 1 else TOP


def imports() -> list[tuple[str, str]]:
    """(importing module, imported deqbench module) for every import in the package."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        module = "deqbench." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            found += [(module, n) for n in names if n.startswith("deqbench")]
    return found


def test_no_layer_imports_a_layer_above_it():
    violations = [(a, b) for a, b in imports() if layer_of(b) > layer_of(a)]
    assert not violations, violations


def test_models_import_only_core_and_inputopt():
    violations = [(a, b) for a, b in imports() if a.startswith("deqbench.models") and layer_of(b) >= 2
                  and not b.startswith("deqbench.models")]
    assert not violations, violations


def test_task_modules_stay_small():
    sizes = {p.relative_to(PACKAGE).as_posix(): len(p.read_text().splitlines()) for p in (PACKAGE / "tasks").rglob("*.py")}
    assert max(sizes.values()) <= 420, sizes
