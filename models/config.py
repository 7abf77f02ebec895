"""Configs: frozen dataclasses built from mappings in one validation pass, one override syntax.

Every configurable thing of the project (a stage's options, a chain file, a training recipe,
the extractor) is a frozen dataclass with defaults. What a type can say is in the type
(``Literal[...]``, ``Annotated[int, Field(ge=1)]``, nested config dataclasses); checks across
fields are in ``__post_init__``. :func:`build_config` turns a mapping (a YAML section) into
one, in a single pass:

1. unknown keys, at any depth, are refused with the valid keys listed, and so are NaN
   anywhere and a bool where a number is expected;
2. values are type-checked and coerced by pydantic (``"3"`` is not an int, ``2.5`` not a
   count), nested mappings become nested configs;
3. ``__post_init__`` runs.

Every problem is a :class:`ConfigError` that names where it is. :func:`parse_override` reads
the one override syntax used by every command line (``--set key.sub=VALUE``, the value parsed
as YAML) and :func:`set_path` applies it to a raw mapping.

Torch-free: the pipeline and the stages use this module without importing any model.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid; the message names it and the fix."""


@functools.cache
def _adapter(cls: type) -> Any:  # a pydantic.TypeAdapter
    # imported here: a stage process only needs ConfigError from this module, and pydantic
    # costs 0.3 s of start-up in each of a chain's processes
    import pydantic

    return pydantic.TypeAdapter(cls)


def _field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved type of an init field of dataclass ``cls``."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints.get(f.name) for f in dataclasses.fields(cls) if f.init}


def _config_classes(annotation: Any) -> tuple[type | None, bool]:
    """(dataclass inside ``annotation``, whether it is the element of a tuple/list)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _config_classes(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _config_classes(arg)
            if found[0] is not None:
                return found
        return None, False
    if origin in (tuple, list):
        inner = _config_classes(typing.get_args(annotation)[0])[0]
        return inner, inner is not None
    if dataclasses.is_dataclass(annotation):
        return annotation, False
    return None, False


def _numeric(annotation: Any) -> bool:
    """True when ``annotation`` admits a number but not a bool (int, float, Optional…)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _numeric(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(args) and all(_numeric(a) for a in args)
    return annotation in (int, float)


def _nan_at(value: Any, here: str) -> str | None:
    """Path of the first NaN in ``value`` (``here``, ``here.key``, ``here[i]``), or None."""
    if isinstance(value, float):
        return here if math.isnan(value) else None
    items = (value.items() if isinstance(value, Mapping)
             else enumerate(value) if isinstance(value, (list, tuple)) else ())
    for key, item in items:
        found = _nan_at(item, f"{here}.{key}" if isinstance(key, str) else f"{here}[{key}]")
        if found:
            return found
    return None


def raw_problems(cls: type, values: Any, where: str = "") -> list[str]:
    """What pydantic's lax checks would let through, for every key of ``values``:

    - ``"where.key: unknown key for Cls; valid keys: …"``;
    - a bool where a number is expected (lax validation would read ``true`` as 1);
    - NaN anywhere (a float field accepts it and every range check passes it).

    Nested mappings are checked against nested config dataclasses, and each element of a
    tuple of configs against its dataclass.
    """
    if not isinstance(values, Mapping):
        return []
    fields = _field_types(cls)
    problems = []
    for key, value in values.items():
        here = f"{where}.{key}" if where else str(key)
        if key not in fields:
            valid = ", ".join(fields) if fields else "none (it takes no options)"
            problems.append(f"{here}: unknown key for {cls.__name__}; valid keys: {valid}")
            continue
        inner, many = _config_classes(fields[key])
        if inner is None:
            if isinstance(value, bool) and _numeric(fields[key]):
                problems.append(f"{here}: expected a number, got {str(value).lower()}")
            nan = _nan_at(value, here)
            if nan:
                problems.append(f"{nan}: NaN is not a valid value")
            continue
        items = enumerate(value) if many and isinstance(value, Sequence) else [(None, value)]
        for i, item in items:
            problems += raw_problems(inner, item, here if i is None else f"{here}[{i}]")
    return problems


def _location(loc: Sequence[Any]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def build_config(cls: type, values: Mapping[str, Any] | None = None, where: str = "") -> Any:
    """Build config dataclass ``cls`` from ``values`` (None: all defaults), in one pass.

    Parameters
    ----------
    cls : dataclass type
    values : mapping or None
        Option name -> value, e.g. a YAML section; nested mappings for nested configs.
    where : str
        Where the values come from (a file, ``"stages[1] (detector).config"``), put in front
        of every error.

    Raises
    ------
    ConfigError
        Listing every unknown key (with the valid ones), missing required key, value of the
        wrong type or failed ``__post_init__`` check.
    """
    prefix = f"{where}: " if where else ""
    values = {} if values is None else values
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix}expected a mapping of {cls.__name__} options, "
                          f"got {type(values).__name__}")
    problems = raw_problems(cls, values)
    if problems:
        raise ConfigError(prefix + "; ".join(problems))
    import pydantic

    try:
        return _adapter(cls).validate_python(dict(values))
    except pydantic.ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            at = _location(err["loc"])
            message = err["msg"].removeprefix("Value error, ")
            lines.append(f"{at}: {message}" if at else message)
        raise ConfigError(f"{prefix}invalid {cls.__name__}: " + "; ".join(lines)) from exc


def config_dict(config: Any) -> dict[str, Any]:
    """Plain JSON/YAML-able mapping of a config dataclass (tuples become lists)."""
    return _adapter(type(config)).dump_python(config, mode="json")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``key.sub=value`` into its key path and YAML-parsed value.

    Raises
    ------
    ConfigError
        If there is no ``=``, a key part is empty or the value is not YAML.
    """
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"--set {text!r}: expected KEY.SUB=VALUE, e.g. run.frames=100")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc})") from exc
    return key.strip().split("."), parsed


def set_path(raw: dict[str, Any], path: Sequence[str], value: Any, where: str = "") -> None:
    """Set ``value`` at key path ``path`` of a raw mapping, creating mappings on the way;
    ``where`` prefixes the error raised when a key on the way holds something else."""
    node = raw
    for key in path[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{where}{key!r} is not a mapping")
        node = child
    node[path[-1]] = value


def read_yaml_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """The mapping at the top of a YAML file.

    Raises
    ------
    ConfigError
        If the file cannot be read, is not YAML or does not hold a mapping.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} file ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: the {what} file is not UTF-8 text (byte {exc.start}); "
                          "save it as UTF-8") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the {what} file must be a mapping of keys")
    return raw


def load_config(cls: type, path: str | Path, overrides: Sequence[str] = ()) -> Any:
    """Config ``cls`` from a YAML file plus ``key.sub=VALUE`` overrides, validated once."""
    raw = read_yaml_mapping(path)
    for text in overrides:
        set_path(raw, *parse_override(text), where=f"{path}: --set {text!r}: ")
    return build_config(cls, raw, str(path))
