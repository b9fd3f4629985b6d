"""Shared helpers of the MOptEqs task tests: settings of a profile with overrides, and a small prepared dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deqbench.experiments.config import deep_merge, load_profile
from deqbench.experiments.prepared import prepare_classification
from deqbench.tasks.moptqs import TASK

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def settings(profile_name: str = "smoke", **block: Any):
    """The moptqs settings of ``profile_name`` with ``block`` merged into its moptqs block."""
    return TASK.settings(deep_merge(load_profile(PARAMS, profile_name), {"moptqs": block}))


def prepared(mopt, dataset: str, n: int) -> dict[str, Any]:
    """The prepared ``dataset`` of these settings, both splits cut to their first ``n`` examples."""
    j = mopt.prepare(dataset)
    data = prepare_classification(j.dataset, j.data.source, j.data.image_size, j.data_root)
    for split in ("train", "test"):
        data[split] = {**data[split], "images": data[split]["images"][:n], "labels": data[split]["labels"][:n]}
    return data
