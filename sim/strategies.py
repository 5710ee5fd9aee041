"""Byzantine strategies by name: the registry and the loader scenarios use.

A scenario names a node's strategy as

* ``"sign_flip"``: a registered name, default parameters;
* ``{"name": "alie", "z": 1.5}`` (a TOML table), or ``("alie", {"z": 1.5})``
  through ``load_strategy(name, params)``;
* ``["equivocate", {"name": "ipm", "epsilon": 0.5}]``: several at once, in order
  (:class:`~sim.strategies_base.Combined`);
* ``"package.module:Class"``: a custom :class:`~sim.strategies_base.Strategy` subclass,
  built with the given parameters (``examples/strategy_double_agent.py`` is one),
  imported from ``sys.path`` or else from the current directory.

Every mistake raises :class:`StrategySpecError` saying what is wrong: an unknown name
lists the valid ones, an unknown parameter lists the strategy's parameters with their
defaults, a bad value names the parameter.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import sys
from collections.abc import Mapping, Sequence
from types import MappingProxyType, ModuleType
from typing import Any

from sim.strategies_base import (
    Combined,
    HonestVectors,
    Strategy,
    StrategyContext,
    VectorAttack,
    strategy_rng,
)
from sim.strategies_learning import LEARNING_STRATEGIES, alie_z
from sim.strategies_literature import LITERATURE_STRATEGIES
from sim.strategies_protocol import PROTOCOL_STRATEGIES

__all__ = [
    "STRATEGIES",
    "Combined",
    "HonestVectors",
    "Strategy",
    "StrategyContext",
    "StrategySpec",
    "StrategySpecError",
    "VectorAttack",
    "alie_z",
    "load_strategy",
    "strategy_parameters",
    "strategy_rng",
]

_BUILT_IN = (*PROTOCOL_STRATEGIES, *LEARNING_STRATEGIES, *LITERATURE_STRATEGIES)

#: Every built-in strategy by name: protocol level first, then learning level (jungle's
#: variants, then the literature's under ByzFL's names). A name is registered once.
STRATEGIES: Mapping[str, type[Strategy]] = MappingProxyType({cls.name: cls for cls in _BUILT_IN})
if len(STRATEGIES) != len(_BUILT_IN):  # pragma: no cover - a programming error
    raise RuntimeError(f"strategy names are not unique: {[cls.name for cls in _BUILT_IN]}")

StrategySpec = str | Mapping[str, Any] | Sequence[Any] | Strategy


class StrategySpecError(ValueError):
    """A strategy specification that cannot be built; the message says why."""


def load_strategy(spec: StrategySpec, params: Mapping[str, Any] | None = None) -> Strategy:
    """Build the strategy ``spec`` names (see the module docstring for the forms)."""
    if isinstance(spec, Strategy):
        _no_params(spec, params)
        return spec
    if isinstance(spec, str):
        return _build(spec, dict(params or {}))
    if isinstance(spec, Mapping):
        _no_params(spec, params)
        table = dict(spec)
        name = table.pop("name", None)
        if not isinstance(name, str):
            raise StrategySpecError(f"a strategy table needs a string 'name', got {spec!r}")
        return _build(name, table)
    if isinstance(spec, Sequence):
        _no_params(spec, params)
        if not spec:
            raise StrategySpecError("an empty list names no strategy")
        parts = [load_strategy(item) for item in spec]
        return parts[0] if len(parts) == 1 else Combined(parts)
    raise StrategySpecError(
        f"a strategy is a name, a table, a list or a Strategy, got {type(spec).__name__}"
    )


def strategy_parameters(cls: type[Strategy]) -> dict[str, Any]:
    """A strategy class's parameters and their defaults (``inspect.Parameter.empty``
    for required ones), for error messages and ``--help`` listings."""
    if dataclasses.is_dataclass(cls):
        result: dict[str, Any] = {}
        for fld in dataclasses.fields(cls):
            if not fld.init:
                continue
            if fld.default is not dataclasses.MISSING:
                result[fld.name] = fld.default
            elif fld.default_factory is not dataclasses.MISSING:
                result[fld.name] = fld.default_factory()
            else:
                result[fld.name] = inspect.Parameter.empty
        return result
    signature = inspect.signature(cls)
    return {
        p.name: p.default
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


# --------------------------------------------------------------------------- internals


def _no_params(spec: object, params: Mapping[str, Any] | None) -> None:
    if params:
        raise StrategySpecError(
            f"parameters {dict(params)!r} go with a strategy name, not with {spec!r}"
        )


def _build(name: str, params: dict[str, Any]) -> Strategy:
    cls = _resolve(name)
    accepted = strategy_parameters(cls)
    takes_any = any(p.kind == p.VAR_KEYWORD for p in inspect.signature(cls).parameters.values())
    unknown = sorted(set(params) - set(accepted))
    if unknown and not takes_any:
        listing = ", ".join(f"{key}={_show(default)}" for key, default in accepted.items())
        raise StrategySpecError(
            f"strategy {name!r} has no parameter {', '.join(map(repr, unknown))}; "
            f"its parameters: {listing or 'none'}"
        )
    missing = sorted(k for k, v in accepted.items() if v is inspect.Parameter.empty)
    missing = [k for k in missing if k not in params]
    if missing:
        raise StrategySpecError(f"strategy {name!r} needs parameter(s) {', '.join(missing)}")
    try:
        return cls(**params)
    except ValueError as error:  # a parameter check; its message names the parameter
        raise StrategySpecError(str(error)) from None
    except TypeError as error:
        raise StrategySpecError(
            f"cannot build strategy {name!r} from {params!r}: {error}"
        ) from None


def _resolve(name: str) -> type[Strategy]:
    cls = STRATEGIES.get(name)
    if cls is not None:
        return cls
    module_name, sep, class_name = name.partition(":")
    if not (sep and module_name and class_name):
        raise StrategySpecError(
            f"unknown strategy {name!r}; valid names: {', '.join(STRATEGIES)}; "
            "or 'package.module:Class' for a custom Strategy subclass"
        )
    try:
        module = _import(module_name)
    except ImportError as error:
        raise StrategySpecError(f"cannot import strategy module {module_name!r}: {error}") from None
    found = getattr(module, class_name, None)
    if not (isinstance(found, type) and issubclass(found, Strategy)):
        raise StrategySpecError(f"{name!r} does not name a Strategy subclass")
    return found


def _import(module_name: str) -> ModuleType:
    """Import from ``sys.path``, then from the current directory, as ``python -m`` would:
    a console script (``jungle sim``) does not put it on the path, yet scenarios name
    modules beside them (``examples.strategy_double_agent:DoubleAgent``). The directory
    is appended, so it never shadows an installed module."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        here = os.getcwd()
        top = module_name.partition(".")[0]
        if error.name != top or here in sys.path or "" in sys.path:
            raise
        sys.path.append(here)
        return importlib.import_module(module_name)


def _show(default: object) -> str:
    return "<required>" if default is inspect.Parameter.empty else repr(default)
