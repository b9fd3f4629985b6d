"""params.yaml validation and typed settings: every error names the offending key, and profiles resolve."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Annotated, Literal, Mapping

import jsonschema
import pytest
import yaml

from deqbench.experiments.config import (
    ConfigError, load_profile, load_resolved, params_schema, resolve_profile, retype_override_strings, write_resolved,
)
from deqbench.experiments.registry import task_params, tasks
from deqbench.experiments.settings import Min, PositiveInt, from_mapping, schema_of, settings_hash

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.fixture
def params():
    return yaml.safe_load(PARAMS.read_text())


@pytest.mark.parametrize("name", ["paper", "embedded", "smoke", "paper-standin"])
def test_shipped_profiles_resolve_and_build_typed_settings(params, name):
    profile = resolve_profile(params, name)
    assert profile["name"] == name
    for task in tasks().values():
        settings = task.settings(profile)
        assert settings.info.name == name
    adversarial = tasks()["jiio_adversarial"].settings(profile)
    assert set(adversarial.params.tables) >= {"table5", "table8"}


def test_inheritance_overrides_nested_keys_only(params):
    paper, embedded = resolve_profile(params, "paper"), resolve_profile(params, "embedded")
    adv_p, adv_e = paper["jiio_adversarial"], embedded["jiio_adversarial"]
    assert adv_e["train"]["jac_probes"] == adv_p["train"]["jac_probes"]  # inherited
    assert adv_e["attack"]["jio"]["anderson_kind"] == adv_p["attack"]["jio"]["anderson_kind"]  # inherited
    assert adv_e["attack"]["jio"]["memory"] != adv_p["attack"]["jio"]["memory"]  # a sibling key overridden
    assert adv_e["attack"]["jio"]["alpha"]["mnist"] == adv_p["attack"]["jio"]["alpha"]["mnist"]  # one key overridden
    assert adv_e["train"]["batch_size"] != adv_p["train"]["batch_size"]  # overridden
    assert settings_hash(paper) != settings_hash(embedded)


def test_unknown_profile_is_named(params):
    with pytest.raises(ConfigError, match=r"unknown profile 'papr' \(key 'profile'\); known profiles"):
        resolve_profile(params, "papr")


def test_misspelled_key_is_named(params):
    bad = copy.deepcopy(params)
    bad["profiles"]["embedded"]["jiio_adversarial"]["train"]["lr_rate"] = 0.1
    with pytest.raises(ConfigError, match=r"profiles\.embedded\.jiio_adversarial\.train.*'lr_rate' was unexpected"):
        resolve_profile(bad, "embedded")


def test_bad_value_is_named(params):
    bad = copy.deepcopy(params)
    bad["profiles"]["paper"]["jiio_adversarial"]["attack"]["pgd"]["steps"] = 0
    with pytest.raises(ConfigError, match=r"profiles\.paper\.jiio_adversarial\.attack\.pgd\.steps"):
        resolve_profile(bad, "embedded")


def test_missing_key_after_inheritance_is_named(params):
    bad = copy.deepcopy(params)
    del bad["profiles"]["paper"]["jiio_adversarial"]["eval"]["limit"]
    with pytest.raises(ConfigError, match=r"profiles\.paper\.jiio_adversarial\.eval: 'limit' is a required property"):
        resolve_profile(bad, "paper")


def test_unknown_dataset_source_is_rejected_by_the_schema(params):
    bad = copy.deepcopy(params)
    bad["profiles"]["paper"]["jiio_adversarial"]["datasets"]["mnist"]["source"] = "mnits"
    with pytest.raises(ConfigError, match=r"jiio_adversarial\.datasets\.mnist\.source: 'mnits' is not one of"):
        resolve_profile(bad, "paper")


def test_dataset_cross_reference(params):
    bad = copy.deepcopy(params)
    bad["profiles"]["paper"]["jiio_adversarial"]["tables"]["table8"]["datasets"] = ["svhn"]
    profile = resolve_profile(bad, "paper")
    with pytest.raises(ConfigError, match=r"jiio_adversarial\.tables\.table8\.datasets: 'svhn' has no entry"):
        tasks()["jiio_adversarial"].settings(profile)


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


def test_generated_schema_is_valid_and_matches_params(params):
    schema = params_schema(task_params())
    jsonschema.Draft202012Validator.check_schema(schema)
    block = schema["properties"]["profiles"]["additionalProperties"]
    assert {"jiio_adversarial", "jiio_generative", "scale", "seeds"} <= set(block["required"])


def test_override_strings_are_retyped():
    """Snakemake hands nested --config values over as strings; they are turned back into the values they spell."""
    raw = {"smoke": {"seeds": ["0", "1"], "jiio_adversarial": {"train": {"max_steps": "0", "lr": "1e-3",
                                                                         "max": "null", "flag": "true"}},
                     "cuda_graph": "off", "description": "a text"}}
    typed = retype_override_strings(raw)["smoke"]
    assert typed["seeds"] == [0, 1]
    assert typed["jiio_adversarial"]["train"] == {"max_steps": 0, "lr": 1e-3, "max": None, "flag": True}
    assert typed["cuda_graph"] == "off" and typed["description"] == "a text"  # YAML 1.1 would turn "off" into False


def test_resolved_profile_round_trips(tmp_path):
    profile = load_profile(PARAMS, "smoke")
    path = write_resolved(profile, tmp_path)
    assert path.name.startswith("smoke-") and load_resolved(path) == profile
    assert write_resolved(profile, tmp_path) == path  # content-addressed: same content, same file
    path.write_text(json.dumps({**profile, "seeds": "x"}))
    with pytest.raises(ConfigError, match=r"profiles\.smoke\.seeds"):
        load_resolved(path)


# ----------------------------------------------------------------------------- typed settings


@dataclasses.dataclass(frozen=True)
class Inner:
    size: PositiveInt
    kind: Literal["a", "b"] = "a"


@dataclasses.dataclass(frozen=True)
class Outer:
    inner: Inner
    sizes: tuple[PositiveInt, ...]
    table: Mapping[str, Inner]
    rate: Annotated[float, Min(0)] | None


def test_typed_settings_from_a_mapping():
    outer = from_mapping(Outer, {"inner": {"size": 3}, "sizes": [1, 2], "table": {"x": {"size": 1, "kind": "b"}},
                                 "rate": 1})
    assert outer.inner == Inner(3, "a") and outer.sizes == (1, 2) and outer.table["x"].kind == "b"
    assert outer.rate == 1.0 and isinstance(outer.rate, float)
    with pytest.raises(ConfigError, match=r"inner: unknown key\(s\) \['sise'\]"):
        from_mapping(Outer, {"inner": {"sise": 3}, "sizes": [], "table": {}, "rate": None})
    with pytest.raises(ConfigError, match=r"table\.x\.kind: 'c' is not one of"):
        from_mapping(Outer, {"inner": {"size": 3}, "sizes": [], "table": {"x": {"size": 1, "kind": "c"}}, "rate": None})
    with pytest.raises(ConfigError, match="sizes: missing required setting"):
        from_mapping(Outer, {"inner": {"size": 3}, "table": {}, "rate": None})


def test_schema_of_declares_constraints_and_required_keys():
    schema = schema_of(Outer)
    assert schema["required"] == ["inner", "sizes", "table", "rate"]
    assert schema["properties"]["inner"]["required"] == ["size"]  # defaults are optional
    assert schema["properties"]["sizes"] == {"type": "array", "items": {"type": "integer", "minimum": 1}}
    assert schema["properties"]["rate"] == {"anyOf": [{"type": "null"}, {"type": "number", "minimum": 0}]}
    validator = jsonschema.Draft202012Validator(schema)
    assert not list(validator.iter_errors({"inner": {"size": 1}, "sizes": [1], "table": {}, "rate": None}))
    errors = list(validator.iter_errors({"inner": {"size": 0}, "sizes": [1], "table": {}, "rate": None}))
    assert [list(e.absolute_path) for e in errors] == [["inner", "size"]]


def test_settings_hash_is_order_independent_and_sensitive():
    a = from_mapping(Inner, {"size": 2, "kind": "b"})
    assert settings_hash(a) == settings_hash({"kind": "b", "size": 2})
    assert settings_hash(a) != settings_hash(Inner(3, "b"))
