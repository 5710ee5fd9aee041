"""One reader for every settings table: TOML tables and flags onto the settings dataclasses.

Each concept declares its settings once, as a frozen dataclass whose fields carry their
default, help, range and unit (:func:`protocol.settings.setting`): protocol/settings.py,
node/training.py, node/partition.py, node/runner.py, node/transport_config.py,
node/config.py. A file format is a list of :class:`Table`: a name and the dataclasses whose
fields it holds (``[node]`` of a node config holds the node's own settings and the run's;
the top level of a scenario holds the scenario's and the run's). Node configs and scenarios
share the ``[protocol]``, ``[training]``, ``[task]`` and ``[partition]`` tables, read by the
same code into the same classes.

What this module does with a declaration:

- :class:`SettingsReader` type-checks every value against the field's annotation (no
  silent coercion: ``true`` is not an int, ``"3"`` not a float), builds the dataclass (whose
  ``__post_init__`` checks ranges and cross-field rules), and reports *every* problem at
  once, one line each (``node.toml: [protocol] model_rounds: must be >= 0, got -1``), with a
  did-you-mean for unknown keys and a pointer for keys that moved;
- :func:`add_flags` derives one ``jungle node`` flag per field, with its help line and
  default;
- :func:`markdown_table` writes the reference tables of docs/operators.md and
  docs/simulator.md (a test checks the docs against it).

Why not pydantic or msgspec: both would bring a second declaration (models beside the
dataclasses the code uses, or the core importing them) into protocol/, which stays pure and
mypy-strict; msgspec stops at the first error. The rules here are few (types, bounds,
choices) and the messages are ours.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from protocol.settings import SettingsError, info, settings_fields

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Table:
    """A table of a file format and the settings dataclasses whose fields it holds."""

    #: the TOML table name; "" for the top level of a file
    name: str
    classes: tuple[type, ...]

    def label(self, key: str) -> str:
        return f"[{self.name}] {key}" if self.name else key

    def owner(self, key: str) -> type | None:
        for cls in self.classes:
            if key in field_types(cls):
                return cls
        return None

    def keys(self) -> list[str]:
        return [field.name for cls in self.classes for field in settings_fields(cls)]


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotation of every setting of dataclass ``cls``."""
    names = {field.name for field in settings_fields(cls)}
    return {name: hint for name, hint in typing.get_type_hints(cls).items() if name in names}


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or nothing."""
    close = difflib.get_close_matches(word, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def coerce(value: object, hint: Any, base: Path | None = None) -> object:
    """``value`` as the annotation ``hint`` allows; ``TypeError`` saying what was expected.

    ``int | str`` (gradient_rounds) also takes a string of digits as an int, as a flag
    gives it; a ``Path`` is resolved against ``base``."""
    if hint is object or hint is typing.Any:
        return value
    if typing.get_origin(hint) is tuple:  # tuple[str, ...]: a TOML list, or a flag's a,b
        if isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
            return tuple(value)
        raise TypeError(f"expected a list of strings, got {value!r}")
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    for option in options:
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is int and str in options and isinstance(value, str) and value.isdigit():
            return int(value)
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if option is str and isinstance(value, str):
            return value
        if option is Path and isinstance(value, str | Path) and str(value):
            path = Path(value).expanduser()
            return path if base is None else base / path
    names = " or ".join(_type_name(option) for option in options if option is not type(None))
    raise TypeError(f"expected {names}, got {value!r}")


def _type_name(option: Any) -> str:
    return {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        Path: "a path",
    }.get(option, getattr(option, "__name__", str(option)))


class SettingsReader:
    """Reads the tables of one file (or flags), collecting every problem."""

    def __init__(self, where: str = "") -> None:
        #: prefix of every problem line: ``"node.toml: "``, or "" for flags
        self.where = where
        self.problems: list[str] = []
        #: (class, key) of every value given, refused ones included (no "missing" for them)
        self.given: set[tuple[type, str]] = set()
        #: where each value came from (its problems' prefix), when not ``where``
        self.origins: dict[tuple[type, str], str] = {}

    def read(
        self,
        table: Table,
        data: Mapping[str, Any],
        *,
        base: Path | None = None,
        skip: Iterable[str] = (),
        moved: Mapping[str, str] | None = None,
        into: dict[type, dict[str, Any]] | None = None,
    ) -> dict[type, dict[str, Any]]:
        """Type-checked values of ``table`` by owning class (``into``, if given, is
        updated: later reads, e.g. flags, override earlier ones). Keys in ``skip`` are the
        caller's; ``moved`` maps old keys to where they went."""
        values = into if into is not None else {}
        for cls in table.classes:
            values.setdefault(cls, {})
        skipped = set(skip)
        for key, value in data.items():
            if key in skipped:
                continue
            owner = table.owner(str(key))
            if owner is None:
                if moved and key in moved:
                    hint = f": it moved to {moved[key]}"
                else:
                    hint = did_you_mean(str(key), table.keys())
                self.problems.append(f"{self.where}unknown key {table.label(str(key))}{hint}")
                continue
            self.given.add((owner, str(key)))
            self.origins[(owner, str(key))] = self.where
            try:
                values[owner][key] = coerce(value, field_types(owner)[key], base)
            except TypeError as error:
                self.problems.append(f"{self.where}{table.label(str(key))}: {error}")
        return values

    def build(self, table: Table, cls: type[T], values: Mapping[str, Any]) -> T | None:
        """``cls(**values)``; None, with the problems recorded, if it refuses them."""
        missing = [
            field.name
            for field in settings_fields(cls)
            if _is_required(field)
            and field.name not in values
            and (cls, field.name) not in self.given
        ]
        for name in missing:
            self.problems.append(f"{self.where}missing {table.label(name)}")
        if missing or any((cls, name) in self.given and name not in values for name in _names(cls)):
            return None
        try:
            return cls(**values)
        except SettingsError as error:
            for line in error.problems:
                where = self.origins.get((cls, line.partition(":")[0]), self.where)
                self.problems.append(f"{where}{_prefixed(table, line)}")
        return None


def _names(cls: type) -> list[str]:
    return [field.name for field in settings_fields(cls)]


def _prefixed(table: Table, line: str) -> str:
    return f"[{table.name}] {line}" if table.name else line


def _is_required(field: dataclasses.Field[Any]) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def to_table(settings: Any) -> dict[str, Any]:
    """A settings dataclass as a TOML-ready table (paths as strings, tuples as lists, as
    TOML reads them back; None left out)."""
    table: dict[str, Any] = {}
    for field in settings_fields(settings):
        value = getattr(settings, field.name)
        if value is None:
            continue
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        table[field.name] = value
    return table


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


# --------------------------------------------------------------------------- flags


def flag_of(field: dataclasses.Field[Any]) -> str:
    return info(field).flag or "--" + field.name.replace("_", "-")


def add_flags(
    parser: argparse.ArgumentParser, tables: Sequence[Table], *, skip: Iterable[str] = ()
) -> None:
    """One flag per field of ``tables`` (but ``skip``, as ``table.key``), dest ``table.key``,
    with the field's help line and default; values are read like the file's."""
    skipped = set(skip)
    for table in tables:
        group = parser.add_argument_group(f"[{table.name}]" if table.name else "settings")
        for cls in table.classes:
            hints = field_types(cls)
            for field in settings_fields(cls):
                dest = f"{table.name}.{field.name}"
                if dest in skipped:
                    continue
                rules = info(field)
                default = "required" if _is_required(field) else _shown(field.default)
                unit = f" {rules.unit}" if rules.unit else ""
                group.add_argument(
                    flag_of(field),
                    dest=dest,
                    type=_flag_type(hints[field.name]),
                    default=None,
                    metavar=_metavar(hints[field.name], rules.unit),
                    help=f"{rules.help} (default: {default}{unit})".replace("%", "%%"),
                )


def _flag_type(hint: Any) -> Any:
    if typing.get_origin(hint) is tuple:
        return str  # comma-separated, split by coerce
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if bool in options:
        return _boolean
    if str in options or Path in options or object in options:
        return str
    if float in options:
        return float
    return int


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _metavar(hint: Any, unit: str) -> str:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if Path in options:
        return "PATH"
    if bool in options:
        return "BOOL"
    if unit:
        return {"s": "SECONDS"}.get(unit, unit.upper())
    if int in options and str not in options:
        return "N"
    if float in options:
        return "X"
    return "VALUE"


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if value == "":
        return '""'
    if isinstance(value, tuple):
        return "[" + ", ".join(f'"{item}"' for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and value >= 1024 * 1024 and value % (1024 * 1024) == 0:
        return f"{value // (1024 * 1024)} MiB"
    return str(value)


# --------------------------------------------------------------------------- docs


def markdown_table(tables: Sequence[Table], *, flags: bool) -> str:
    """The reference table of ``tables``: key, (flag,) default, meaning."""
    header = "| key | flag | default | meaning |" if flags else "| key | default | meaning |"
    rule = "| --- | --- | --- | --- |" if flags else "| --- | --- | --- |"
    rows = [header, rule]
    for table in tables:
        for cls in table.classes:
            for field in settings_fields(cls):
                rules = info(field)
                key = f"`{table.label(field.name)}`"
                default = "required" if _is_required(field) else f"`{_shown(field.default)}`"
                unit = f" ({rules.unit})" if rules.unit else ""
                meaning = rules.help + unit
                if flags:
                    rows.append(f"| {key} | `{flag_of(field)}` | {default} | {meaning} |")
                else:
                    rows.append(f"| {key} | {default} | {meaning} |")
    return "\n".join(rows) + "\n"
