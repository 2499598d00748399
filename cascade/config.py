"""Typed, frozen configuration read from YAML: unknown keys and wrong types are one-line errors.

Any frozen dataclass is a config; :func:`from_dict` checks a plain dict against its type hints
(int, float, bool, str, Literal, tuples, lists of such, optional values and nested dataclasses),
and :func:`load_yaml` reads a file with ``yaml.safe_load`` (no tags, no code). :func:`to_dict`
goes back, so configs round-trip through ``config.yaml`` files of release checkpoints.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

from cascade.errors import UserError

T = TypeVar("T")


def _describe(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if origin in (tuple, list):
        return f"a list of {_describe(get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked (and converted: lists to tuples, ints to floats) against the type ``tp``."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        sections = [o for o in options if dataclasses.is_dataclass(o)]
        if isinstance(value, dict) and len(sections) == 1:  # an optional section: report what is wrong inside it
            return _convert(value, sections[0], where)
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, where)
            except UserError:
                continue
        raise UserError(f"{where}: expected {_describe(tp)}, got {value!r}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise UserError(f"{where}: expected {_describe(tp)}, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected {_describe(tp)}, got {value!r}")
        item_type = get_args(tp)[0]
        items = [_convert(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise UserError(f"{where}: expected a finite number, got {value!r}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    raise UserError(f"{where}: expected {_describe(tp)}, got {value!r}")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build the dataclass ``cls`` from ``data``; missing keys take the defaults."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(names))})")
    kwargs = {key: _convert(value, hints[key], f"{where}.{key}") for key, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as error:  # a required field is missing
        raise UserError(f"{where}: {error}") from None
    except ValueError as error:  # the dataclass's own __post_init__ checks
        raise UserError(f"{where}: {error}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """The plain-data form of a config dataclass (tuples as lists), ready for YAML."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(config)


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping read with the safe loader; a missing or malformed file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} does not exist" if not path.exists() else f"{str(path)!r} is not a file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"config file {str(path)!r} is not UTF-8 text") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"config file {str(path)!r} is not valid YAML{line}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {str(path)!r} must hold a mapping at the top level")
    return data


def load_yaml(cls: type[T], path: Path) -> T:
    """Read ``path`` as the config dataclass ``cls``."""
    return from_dict(cls, read_yaml(path), where=Path(path).name)


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
