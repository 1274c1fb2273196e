"""Declarative fields for frozen config dataclasses, and their validation from TOML mappings.

A field is declared with ``option(default, "what it means", positive=True, choices=...)``; the
constraints live in the field's metadata so that validation, ``--set`` overrides and the generated
case-file reference all read the same table.
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import types
import typing
from typing import Any, Mapping

__all__ = ["ConfigError", "option", "from_mapping", "to_mapping", "field_docs", "warn_once"]


class ConfigError(ValueError):
    """A case file or override that cannot be used; the message names the field and the fix."""


def option(default: Any = dataclasses.MISSING, doc: str = "", *, positive: bool = False,
           nonnegative: bool = False, choices: tuple | None = None, minimum: float | None = None,
           maximum: float | None = None, length: int | None = None, default_factory: Any = dataclasses.MISSING):
    """A config field with its documentation and constraints."""
    metadata = {"doc": doc, "positive": positive, "nonnegative": nonnegative, "choices": choices,
                "minimum": minimum, "maximum": maximum, "length": length}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "nothing"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return {bool: "true/false", int: "integer", float: "number", str: "string"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value: Any, tp: Any, where: str) -> Any:
    """``value`` as type ``tp`` or ``ConfigError`` naming ``where``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option_type in typing.get_args(tp):
            if option_type is type(None):
                if value is None:
                    return None
                continue
            try:
                return _convert(value, option_type, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list of {_type_name(typing.get_args(tp)[0])}, got {value!r}")
        item_type = typing.get_args(tp)[0]
        return tuple(_convert(item, item_type, f"{where}[{i}]") for i, item in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table of {tp.__name__} fields, got {value!r}")
        return from_mapping(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, float) and value.is_integer():
            if abs(value) > 2 ** 53:
                raise ConfigError(f"{where} = {value!r} is beyond the integers a float holds exactly (2**53); "
                                  "write it as an integer")
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if not -2 ** 63 <= value < 2 ** 63:  # NetCDF attributes and tensor indices are 64-bit
                raise ConfigError(f"{where} = {value} does not fit a 64-bit integer; give a smaller number")
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
            if not math.isfinite(value):
                raise ConfigError(f"{where} = {value!r} is not finite; give a finite number")
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _check_constraints(value: Any, metadata: Mapping[str, Any], where: str) -> None:
    items = value if isinstance(value, tuple) else (value,)
    if metadata.get("length") is not None and isinstance(value, tuple) and len(value) != metadata["length"]:
        raise ConfigError(f"{where} has {len(value)} entries; it needs exactly {metadata['length']}")
    for item in items:
        if item is None or isinstance(item, (str, bool)) and not metadata.get("choices"):
            continue
        if metadata.get("choices") and item not in metadata["choices"]:
            hint = difflib.get_close_matches(str(item), [str(c) for c in metadata["choices"]], n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"{where} = {item!r} is not one of {list(metadata['choices'])}{suggestion}")
        if not isinstance(item, (int, float)) or isinstance(item, bool):
            continue
        if metadata.get("positive") and not item > 0:
            raise ConfigError(f"{where} = {item!r} must be positive")
        if metadata.get("nonnegative") and not item >= 0:
            raise ConfigError(f"{where} = {item!r} must be zero or positive")
        if metadata.get("minimum") is not None and item < metadata["minimum"]:
            raise ConfigError(f"{where} = {item!r} must be at least {metadata['minimum']}")
        if metadata.get("maximum") is not None and item > metadata["maximum"]:
            raise ConfigError(f"{where} = {item!r} must be at most {metadata['maximum']}")


def _abbreviated(key: str, names) -> list[str]:
    """The one name whose words' initials spell ``key`` (``lr`` -> ``learning_rate``), if exactly one."""
    matches = [name for name in names if "_" in name and "".join(word[0] for word in name.split("_")) == key]
    return matches if len(matches) == 1 else []


def from_mapping(cls: type, mapping: Mapping[str, Any], where: str, *, validate: bool = True) -> Any:
    """Build the frozen dataclass ``cls`` from a TOML table, rejecting unknown keys and bad values.

    ``where`` is the table's dotted path (``"training"``), used in every error message. ``validate``:
    also the rules joining several keys (the class's ``validate``), not only each key's own.
    """
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for key in mapping:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1) or _abbreviated(key, fields)
            suggestion = f"; did you mean {where}.{close[0]}?" if close else ""
            raise ConfigError(f"unknown key {where}.{key}{suggestion} (known keys: {', '.join(sorted(fields))})")
    values = {}
    for name, field in fields.items():
        dotted = f"{where}.{name}"
        if name in mapping:
            value = _convert(mapping[name], hints[name], dotted)
        elif field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            raise ConfigError(f"missing key {dotted}: {field.metadata.get('doc', '')}".rstrip(": "))
        _check_constraints(value, field.metadata, dotted)
        values[name] = value
    instance = cls(**values)
    if validate and hasattr(instance, "validate"):
        instance.validate(where)
    return instance


def to_mapping(instance: Any) -> dict[str, Any]:
    """A dataclass as a TOML-ready mapping (tuples become lists, ``None`` values are dropped)."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(instance):
        value = getattr(instance, field.name)
        if value is None:
            continue
        if dataclasses.is_dataclass(value):
            value = to_mapping(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[field.name] = value
    return out


def field_docs(cls: type) -> list[tuple[str, str, Any, str, dict]]:
    """``(name, type, default, doc, constraints)`` per field, for the generated reference."""
    hints = typing.get_type_hints(cls)
    rows = []
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = dataclasses.MISSING
        # "is not": a bound of 0 is a constraint (0 == False)
        constraints = {k: v for k, v in field.metadata.items() if k != "doc" and v is not None and v is not False}
        rows.append((field.name, _type_name(hints[field.name]), default, field.metadata.get("doc", ""), constraints))
    return rows


_warned: set[str] = set()  # the warnings given in this process


def warn_once(logger: logging.Logger, message: str) -> None:
    """Log ``message`` as a warning once per process: `hybridnde run` parses its case and reads its inputs
    for its checks, then again for each stage (and parses each ``--compare`` variant)."""
    if message not in _warned:
        _warned.add(message)
        logger.warning("%s", message)
