"""params.yaml: profiles, inheritance, validation and the resolved profile every job reads.

A profile has a few common keys (:class:`CommonParams`) and one block per registered task, declared by that task
as a frozen dataclass (``Task.params``).  The JSON schema is generated from those declarations
(:func:`params_schema`), so a misspelt key or a bad value is reported by its dotted path
(``profiles.embedded.jiio_adversarial.train: Additional properties are not allowed ('lr_rate' was unexpected)``)
before any job starts.

Snakemake resolves the profile once (with ``--configfile`` and ``--config`` overrides applied), writes it to a
content-addressed JSON file (:func:`write_resolved`) and hands that file to every job, so a job reads exactly the
settings its DAG was built from.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

import jsonschema
import yaml

from deqbench.experiments.io import atomic_write_text
from deqbench.experiments.settings import (
    ConfigError, NonNegativeInt, PositiveInt, constraint, from_mapping, schema_of, to_plain,
)

__all__ = ["CommonParams", "ConfigError", "DistributedParams", "ProfileInfo", "load_profile", "load_resolved",
           "params_schema", "resolve_profile", "retype_override_strings", "write_resolved"]


@dataclass(frozen=True)
class DistributedParams:
    """Data-parallel training (``deqbench.experiments.distributed``): a training stage that supports it runs as
    ``processes`` processes under torchrun, each on its share of every batch (``train.batch_size`` stays the batch
    of one optimiser step, over all processes); 1 trains in the job's own process, as without the key."""

    processes: PositiveInt = 1
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on CUDA, gloo on the CPU


@dataclass(frozen=True)
class CommonParams:
    """The keys every profile has besides the task blocks (``distributed`` may be left out: one process)."""

    description: str
    scale: Literal["paper", "reduced"]  # paper: the papers' model sizes and training lengths; reduced: scaled down
    device: Literal["auto", "cpu", "cuda"]
    cuda_graph: Literal["auto", "full", "off"]  # CUDA-graph replay of solver iterations (deqbench.core.graphs)
    seeds: Annotated[tuple[NonNegativeInt, ...], constraint(minItems=1, uniqueItems=True)]
    data_root: str
    distributed: DistributedParams = DistributedParams()


@dataclass(frozen=True)
class ProfileInfo(CommonParams):
    """The common keys of a resolved profile, with its name."""

    name: str = ""

    @classmethod
    def of(cls, profile: Mapping[str, Any]) -> ProfileInfo:
        common = {k: profile[k] for k in CommonParams.__dataclass_fields__ if k in profile}
        return from_mapping(cls, {**common, "name": profile["name"]}, f"profiles.{profile['name']}")


def params_schema(blocks: Mapping[str, type]) -> dict[str, Any]:
    """JSON schema of params.yaml: ``profile``, and ``profiles`` whose members hold the common keys, an optional
    ``inherits`` and one block per task (``blocks``: task name -> its params dataclass)."""
    profile = schema_of(CommonParams)
    profile["properties"]["inherits"] = {"type": "string", "description": "profile whose settings this one overrides"}
    for name, block in blocks.items():
        profile["properties"][name] = schema_of(block)
        profile["required"].append(name)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "deqbench params.yaml",
        "type": "object",
        "additionalProperties": False,
        "required": ["profile", "profiles"],
        "properties": {
            "profile": {"type": "string", "description": "name of the profile to run"},
            "profiles": {"type": "object", "minProperties": 1, "additionalProperties": profile},
        },
    }


def _strip_required(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _strip_required(v) for k, v in schema.items() if k != "required"}
    if isinstance(schema, list):
        return [_strip_required(v) for v in schema]
    return schema


def _validate(instance: Any, schema: dict[str, Any], where: str) -> None:
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{where}.{'.'.join(str(p) for p in e.absolute_path) or '<top level>'}: {e.message}"
                 for e in errors[:10]]
        raise ConfigError("invalid parameters:\n  " + "\n  ".join(lines))


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge; ``override`` wins, lists and scalars are replaced."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _default_blocks() -> Mapping[str, type]:
    from deqbench.experiments.registry import task_params

    return task_params()


def resolve_profile(params: Mapping[str, Any], name: str | None = None,
                    blocks: Mapping[str, type] | None = None) -> dict[str, Any]:
    """The fully merged, validated profile ``name`` (default ``params['profile']``) as a plain dict with ``name``."""
    schema = params_schema(_default_blocks() if blocks is None else blocks)
    loose = _strip_required(schema)
    loose["required"] = ["profile", "profiles"]
    _validate(params, loose, "params")
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
    _validate(resolved, schema["properties"]["profiles"]["additionalProperties"], f"profiles.{name}")
    # Defaults spelt out, so every reader of the resolved profile (the Snakefile included) finds the key.
    resolved["distributed"] = to_plain(from_mapping(DistributedParams, resolved.get("distributed", {}),
                                                    f"profiles.{name}.distributed"))
    resolved["name"] = name
    return resolved


def load_params(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"parameters file not found: {path}")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return params


def load_profile(params_path: str | os.PathLike = "params.yaml", name: str | None = None) -> dict[str, Any]:
    return resolve_profile(load_params(params_path), name)


def _typed_leaf(text: str) -> Any:
    """A ``--config`` string leaf as the value it spells: int, float, true/false, null, else the string itself."""
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "null": None, "none": None}.get(text.lower(), text)


def retype_override_strings(value: Any) -> Any:
    """Snakemake parses nested ``--config`` values with YAML's BaseLoader, so every leaf arrives as a string
    (``'0' is not of type 'integer'``); turn the leaves back into the values they spell.  Top-level values are
    already typed by Snakemake and are left alone by the caller."""
    if isinstance(value, Mapping):
        return {k: retype_override_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [retype_override_strings(v) for v in value]
    return _typed_leaf(value) if isinstance(value, str) else value


def write_resolved(profile: Mapping[str, Any], directory: str | os.PathLike) -> Path:
    """Write the resolved profile to ``directory/<name>-<hash>.json`` (content-addressed: never rewritten with
    different content, so a running job's file cannot change under it) and return the path."""
    text = json.dumps(profile, indent=2) + "\n"  # key order kept: settings built from mappings follow it
    path = Path(directory) / f"{profile['name']}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
    if not path.exists():
        atomic_write_text(path, text)
    return path


def load_resolved(path: str | os.PathLike) -> dict[str, Any]:
    """A resolved profile written by :func:`write_resolved`, re-validated against the current schema."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"resolved profile not found: {path}")
    try:
        profile = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not a resolved profile (invalid JSON: {err})") from None
    if not isinstance(profile, dict) or "name" not in profile:
        raise ConfigError(f"{path}: not a resolved profile (no 'name')")
    name = profile["name"]
    return resolve_profile({"profile": name, "profiles": {name: {k: v for k, v in profile.items() if k != "name"}}})
