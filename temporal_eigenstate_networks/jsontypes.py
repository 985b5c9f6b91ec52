"""Whether values read from JSON have the types a dataclass declares: config.json and trainer_state.json are
checked with it, so a hand edit ("d_model": "64") is a one-line error rather than a failure deep inside."""

from __future__ import annotations

import functools
import types
import typing
from typing import Any


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value has the type of a dataclass field (an integer is a float; true is not an integer)."""
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    origin, params = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, part) for part in params)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and all(_fits(item, params[0] if params else Any) for item in value)
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(value, bool):
        return hint is bool
    return isinstance(value, (int, float)) if hint is float else isinstance(value, hint)


def _json_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_json_name(part) for part in typing.get_args(hint))
    if typing.get_origin(hint) in (list, tuple):
        return f"a list of {_json_name(typing.get_args(hint)[0]).split(' ', 1)[1]}s"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    return names.get(hint, "an object")


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_type_problem(values: dict[str, Any], cls: type, prefix: str = "") -> str | None:
    """The first value of `values` (a dict read from JSON) whose type is not that of `cls`'s field of the same
    name, said in one line ("d_model must be an integer, got '64'"); None when all fit. Other keys are let be."""
    for name, hint in _field_types(cls).items():
        if name in values and not _fits(values[name], hint):
            return f"{prefix}{name} must be {_json_name(hint)}, got {values[name]!r}"
    return None
