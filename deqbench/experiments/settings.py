"""Typed settings: frozen dataclasses that declare a params.yaml block once, and its JSON schema derived from them.

A task declares its ``params.yaml`` block as nested frozen dataclasses.  Field types carry the constraints
(``Annotated[int, Min(1)]``, ``Literal[...]``, ``X | None``, ``tuple[X, ...]``, ``Mapping[str, X]``), so the same
declaration gives

* :func:`schema_of`: the JSON schema that validates a profile before any job starts (errors name the key), and
* :func:`from_mapping`: the typed, immutable object that jobs receive instead of a raw ``dict``.

:func:`settings_hash` is what Snakemake and the jobs use to decide whether an output is stale: it covers exactly the
fields of the object a job is given.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Mapping, TypeVar, Union

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad params.yaml, profile name or parameter; the message names the key."""


# ----------------------------------------------------------------------------- constraint markers


@dataclass(frozen=True)
class Constraint:
    """JSON-schema keywords attached to a type with ``Annotated[T, Constraint(...)]`` (hashable, so ``| None`` works)."""

    keywords: tuple[tuple[str, Any], ...]

    def schema(self) -> dict[str, Any]:
        return dict(self.keywords)


def constraint(**keywords: Any) -> Constraint:
    return Constraint(tuple(sorted(keywords.items())))


def Min(value: float) -> Constraint:  # noqa: N802 - reads like a type annotation
    """``Annotated[int, Min(1)]``: inclusive lower bound."""
    return constraint(minimum=value)


def Above(value: float) -> Constraint:  # noqa: N802
    """``Annotated[float, Above(0)]``: exclusive lower bound."""
    return constraint(exclusiveMinimum=value)


def Max(value: float) -> Constraint:  # noqa: N802
    return constraint(maximum=value)


def Below(value: float) -> Constraint:  # noqa: N802
    return constraint(exclusiveMaximum=value)


PositiveInt = Annotated[int, Min(1)]
NonNegativeInt = Annotated[int, Min(0)]
PositiveFloat = Annotated[float, Above(0)]
NonNegativeFloat = Annotated[float, Min(0)]


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _strip(tp: Any) -> tuple[Any, dict[str, Any]]:
    """``(base type, merged constraints)`` of a possibly ``Annotated`` type."""
    extra: dict[str, Any] = {}
    while typing.get_origin(tp) is Annotated:
        base, *marks = typing.get_args(tp)
        for mark in marks:
            if isinstance(mark, Constraint):
                extra.update(mark.schema())
        tp = base
    return tp, extra


# ----------------------------------------------------------------------------- JSON schema


#: Names a profile may give things (models, problems, datasets, ... keys of a mapping): they become Snakemake
#: wildcards, file names and command-line arguments, so nothing a shell would interpret is allowed.
SAFE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$"


def schema_of(tp: Any) -> dict[str, Any]:
    """JSON schema (draft 2020-12) of a settings type; every dataclass field without a default is required."""
    tp, extra = _strip(tp)
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        alternatives = [schema_of(a) for a in options]
        if len(options) < len(typing.get_args(tp)):
            alternatives.insert(0, {"type": "null"})
        schema: dict[str, Any] = {"anyOf": alternatives} if len(alternatives) > 1 else alternatives[0]
    elif origin is Literal:
        schema = {"enum": list(typing.get_args(tp))}
    elif _is_dataclass_type(tp):
        hints = typing.get_type_hints(tp, include_extras=True)
        fields = [f for f in dataclasses.fields(tp) if f.init]
        schema = {
            "type": "object",
            "additionalProperties": False,
            "properties": {f.name: {**schema_of(hints[f.name]), **_describe(f)} for f in fields},
            "required": [f.name for f in fields
                         if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING],
        }
    elif origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            schema = {"type": "array", "items": schema_of(args[0])}
        else:
            schema = {"type": "array", "prefixItems": [schema_of(a) for a in args], "items": False,
                      "minItems": len(args)}
    elif origin in (dict, collections.abc.Mapping):
        schema = {"type": "object", "propertyNames": {"pattern": SAFE_NAME_PATTERN},
                  "additionalProperties": schema_of(typing.get_args(tp)[1])}
    elif tp is bool:
        schema = {"type": "boolean"}
    elif tp is int:
        schema = {"type": "integer"}
    elif tp is float:
        schema = {"type": "number"}
    elif tp is str:
        schema = {"type": "string"}
    elif tp is Any:
        schema = {}
    else:
        raise TypeError(f"unsupported settings type {tp!r}")
    return {**schema, **extra}


def _describe(field: dataclasses.Field) -> dict[str, Any]:
    doc = field.metadata.get("doc")
    return {"description": doc} if doc else {}


# ----------------------------------------------------------------------------- building typed objects


def _convert(tp: Any, value: Any, path: str) -> Any:
    """``value`` converted to the annotated type ``tp`` (dataclasses, tuples, mappings, optionals, scalars)."""
    tp, _ = _strip(tp)
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{path}: {value!r} fits none of the allowed forms ({'; '.join(errors)})")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{path}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if _is_dataclass_type(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return from_mapping(tp, value, path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
        return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        value_tp = typing.get_args(tp)[1]
        return types.MappingProxyType({k: _convert(value_tp, v, f"{path}.{k}") for k, v in value.items()})
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ConfigError(f"{path}: expected {tp.__name__}, got {value!r}")
        return value
    if tp is Any:
        return value
    raise ConfigError(f"{path}: unsupported settings type {tp!r}")


def from_mapping(cls: type[T], mapping: Mapping[str, Any], path: str = "") -> T:
    """Build the frozen dataclass ``cls`` from ``mapping``; unknown or missing keys raise a ConfigError naming them."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise ConfigError(f"{path or cls.__name__}: unknown key(s) {unknown}")
    kwargs = {}
    for name, field in fields.items():
        where = f"{path}.{name}" if path else name
        if name in mapping:
            kwargs[name] = _convert(hints[name], mapping[name], where)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required setting")
    return cls(**kwargs)


def to_plain(obj: Any) -> Any:
    """JSON-compatible form of a settings object (dataclasses -> dicts, tuples -> lists, mappings -> dicts)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def settings_hash(obj: Any) -> str:
    """Stable 16-hex-digit hash of a settings object (or any JSON-compatible value), key-order independent."""
    blob = json.dumps(to_plain(obj), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
