"""params.yaml loading: profile inheritance and schema validation with errors that name the key."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).with_name("schemas") / "params.schema.yaml"


class ConfigError(ValueError):
    """A bad params.yaml, profile name or parameter; the message names the key."""


def load_schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _strip_required(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _strip_required(v) for k, v in schema.items() if k != "required"}
    if isinstance(schema, list):
        return [_strip_required(v) for v in schema]
    return schema


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def _validate(instance: Any, schema: dict[str, Any], where: str) -> None:
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{where}.{_key_path(e)}: {e.message}" for e in errors[:10]]
        raise ConfigError("invalid parameters:\n  " + "\n  ".join(lines))


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``override`` wins, lists and scalars are replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def validate_params(params: dict[str, Any]) -> None:
    """Check the raw params.yaml (profiles may be partial)."""
    schema = load_schema()
    loose = _strip_required(schema)
    loose["required"] = ["profile", "profiles"]
    _validate(params, loose, "params")


def resolve_profile(params: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """The fully merged, validated profile ``name`` (default: ``params['profile']``)."""
    validate_params(params)
    profiles = params["profiles"]
    name = name or params["profile"]
    if name not in profiles:
        raise ConfigError(f"unknown profile {name!r} (key 'profile'); known profiles: {sorted(profiles)}")
    chain: list[str] = []
    current: str | None = name
    while current is not None:
        if current in chain:
            raise ConfigError(f"profiles.{name}: inheritance cycle {' -> '.join(chain + [current])}")
        if current not in profiles:
            raise ConfigError(f"profiles.{chain[-1]}.inherits: unknown profile {current!r}")
        chain.append(current)
        current = profiles[current].get("inherits")
    resolved: dict[str, Any] = {}
    for member in reversed(chain):
        resolved = deep_merge(resolved, {k: v for k, v in profiles[member].items() if k != "inherits"})
    schema = load_schema()
    profile_schema = dict(schema["$defs"]["profile"])
    profile_schema["$defs"] = schema["$defs"]
    _validate(resolved, profile_schema, f"profiles.{name}")
    _check_cross_references(resolved, name)
    resolved["name"] = name
    return resolved


def _check_cross_references(profile: dict[str, Any], name: str) -> None:
    datasets = set(profile["datasets"])
    for exp, spec in profile["experiments"].items():
        for ds in spec["datasets"]:
            if ds not in datasets:
                raise ConfigError(f"profiles.{name}.experiments.{exp}.datasets: {ds!r} has no entry in profiles.{name}.datasets")
    for ds in datasets:
        for section, key in (("model", None), ("train", "epochs"), ("attack", "jio.alpha"), ("attack", "jio.alpha_x_late")):
            node: Any = profile[section]
            path = f"profiles.{name}.{section}"
            for part in (key.split(".") if key else []):
                node = node[part]
                path += f".{part}"
            if ds not in node:
                raise ConfigError(f"{path}: missing entry for dataset {ds!r}")
    if profile["timing"]["dataset"] not in datasets:
        raise ConfigError(f"profiles.{name}.timing.dataset: {profile['timing']['dataset']!r} is not in datasets")


def load_profile(params_path: str | Path = "params.yaml", name: str | None = None) -> dict[str, Any]:
    path = Path(params_path)
    if not path.exists():
        raise ConfigError(f"parameters file not found: {path}")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return resolve_profile(params, name)


def config_hash(profile: dict[str, Any]) -> str:
    """Stable short hash of a resolved profile (key order independent)."""
    blob = json.dumps(profile, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
