"""Type checks for configuration dataclasses: a wrong type is a ValueError naming the key.

A frozen config dataclass calls :func:`check_field_types` first in ``__post_init__``, so
a value of the wrong type (from a TOML file, a run config, a checkpoint) is refused with
one line naming the key instead of failing later in a comparison or deep in a model.
:func:`coerce_value` is the lenient reading a run config gets (``64.0`` for an int,
``1`` for a float).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any, get_type_hints

SEED_LIMIT = 2**32  # seeds drive numpy, torch and Python's random: 0 <= seed < 2**32


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _fits(value: object, kind: object) -> bool:
    """Whether ``value`` may stand in a field of type ``kind`` (ints count as floats)."""
    if kind is int:
        return _is_int(value)
    if kind is float:
        return _is_real(value)
    if kind in (str, bool):
        return isinstance(value, kind)  # type: ignore[arg-type]
    return True  # other annotations (paths, nested configs) are the class's own business


def check_field_types(instance: Any, key: Callable[[str], str] = str) -> None:
    """Every int, float, str and bool field holds that type; floats are finite.

    ``key`` turns a field name into the name the user wrote (e.g. kebab-case).
    """
    hints = get_type_hints(type(instance))
    for field in dataclasses.fields(instance):
        value, kind = getattr(instance, field.name), hints[field.name]
        if not _fits(value, kind):
            name = getattr(kind, "__name__", str(kind))
            raise ValueError(f"{key(field.name)} must be {_article(name)}, got {value!r}")
        if kind is float and not math.isfinite(value):
            raise ValueError(f"{key(field.name)} must be a finite number, got {value!r}")


def check_seed(seed: int, name: str = "seed") -> None:
    """A seed every random generator of the project accepts: 0 <= seed < 2**32."""
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"{name} must be in 0..{SEED_LIMIT - 1}, got {seed}")


def coerce_value(label: str, value: Any, kind: object) -> Any:
    """A run-config value as the field type: ints accepted as floats, ``64.0`` as 64."""
    if kind is float and _is_real(value):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if _fits(value, kind):
        return value
    name = getattr(kind, "__name__", str(kind))
    raise ValueError(f"{label} must be {_article(name)}, got {value!r}")


def _article(type_name: str) -> str:
    """``an int``, ``a float``, ``a str``, ``a bool``: how the type reads in a message."""
    words = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}
    return words.get(type_name, type_name)
