"""params.yaml validation: every error names the offending key, and profiles resolve."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from deqbench.experiments.config import ConfigError, config_hash, load_profile, resolve_profile

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.fixture
def params():
    return yaml.safe_load(PARAMS.read_text())


@pytest.mark.parametrize("name", ["paper", "embedded", "smoke"])
def test_shipped_profiles_resolve(params, name):
    profile = resolve_profile(params, name)
    assert profile["name"] == name
    assert set(profile["experiments"]) >= {"table5", "table8"}


def test_inheritance_overrides_nested_keys_only(params):
    paper, embedded = resolve_profile(params, "paper"), resolve_profile(params, "embedded")
    assert embedded["train"]["jac_probes"] == paper["train"]["jac_probes"]  # inherited
    assert embedded["attack"]["jio"]["alpha"] == paper["attack"]["jio"]["alpha"]  # inherited
    assert embedded["train"]["batch_size"] != paper["train"]["batch_size"]  # overridden
    assert config_hash(paper) != config_hash(embedded)


def test_unknown_profile_is_named(params):
    with pytest.raises(ConfigError, match=r"unknown profile 'papr' \(key 'profile'\); known profiles"):
        resolve_profile(params, "papr")


def test_misspelled_key_is_named(params):
    bad = copy.deepcopy(params)
    bad["profiles"]["embedded"]["train"]["lr_rate"] = 0.1
    with pytest.raises(ConfigError, match=r"profiles\.embedded\.train.*'lr_rate' was unexpected"):
        resolve_profile(bad, "embedded")


def test_bad_value_is_named(params):
    bad = copy.deepcopy(params)
    bad["profiles"]["paper"]["attack"]["pgd"]["steps"] = 0
    with pytest.raises(ConfigError, match=r"profiles\.paper\.attack\.pgd\.steps"):
        resolve_profile(bad, "embedded")


def test_missing_key_after_inheritance_is_named(params):
    bad = copy.deepcopy(params)
    del bad["profiles"]["paper"]["eval"]["limit"]
    with pytest.raises(ConfigError, match=r"profiles\.paper\.eval: 'limit' is a required property"):
        resolve_profile(bad, "paper")


def test_dataset_cross_reference(params):
    bad = copy.deepcopy(params)
    bad["profiles"]["paper"]["experiments"]["table8"]["datasets"] = ["mnist"]
    del bad["profiles"]["paper"]["datasets"]["mnist"]
    del bad["profiles"]["embedded"]["datasets"]["mnist"]
    with pytest.raises(ConfigError, match="has no entry in profiles.paper.datasets"):
        resolve_profile(bad, "paper")


def test_inheritance_cycle_and_missing_parent(params):
    bad = copy.deepcopy(params)
    bad["profiles"]["paper"]["inherits"] = "smoke"
    with pytest.raises(ConfigError, match="inheritance cycle"):
        resolve_profile(bad, "smoke")
    bad = copy.deepcopy(params)
    bad["profiles"]["embedded"]["inherits"] = "papers"
    with pytest.raises(ConfigError, match="inherits: unknown profile 'papers'"):
        resolve_profile(bad, "embedded")


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="parameters file not found"):
        load_profile(tmp_path / "nope.yaml")
