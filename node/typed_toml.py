"""TOML values onto typed dataclass fields, with a one-line reason for every refusal.

node/config.py describes each config table as a frozen dataclass; these helpers read a TOML
file and check each value against the field's annotation (int, float, str, Path, or a union
of them), without coercing what an operator did not mean: ``true`` is not an int, ``"3"`` is
not a float. Paths are resolved against a base folder given by the caller.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import tomllib
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def read_toml_file(path: Path) -> dict[str, Any]:
    """The parsed file; ``ValueError`` with a one-line reason if it cannot be read."""
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory, not a config file") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot read config: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid TOML: {error}") from None


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotation of every field of dataclass ``cls``."""
    return typing.get_type_hints(cls)


def coerce(value: object, hint: Any, base: Path) -> object:
    """``value`` as the type ``hint`` names; ``TypeError`` saying what was expected."""
    if hint is object:
        return value
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if option is str and isinstance(value, str):
            return value
        if option is Path and isinstance(value, str | Path) and str(value):
            return base / Path(value).expanduser()
    names = " or ".join(
        "a path" if option is Path else f"{getattr(option, '__name__', option)}"
        for option in options
        if option is not type(None)
    )
    raise TypeError(f"expected {names}, got {value!r}")


def is_required(field: dataclasses.Field[Any]) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the closest known name, or nothing."""
    close = difflib.get_close_matches(word, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""
