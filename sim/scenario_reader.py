"""Reading a scenario: plain data (a parsed TOML file) in, a valid :class:`Scenario` out.

The shared tables (``[protocol]``, ``[task]``, ``[partition]``, ``[training]``) and the
top-level keys go through node/schema.py, the reader node configs use: every value is
checked against the field's type and rules, unknown keys get a suggestion. ``[network]``
and ``[byzantine]`` are the scenario's own. Then the plugins the scenario names are built
once, so a typo fails before a long run starts. All problems are collected and raised
together, one line each, in :class:`~sim.scenario.ScenarioError`.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

from node.schema import SettingsReader, Table
from node.training import TRAINING_MOVED
from protocol.aggregate import AGGREGATORS
from protocol.settings import ProtocolSettings
from sim.bandwidth import bandwidth_problems
from sim.scenario_parts import (
    NO_ATTACK,
    ByzantineSpec,
    NetworkSpec,
    StrategySpec,
    strategy_label,
)
from sim.schedulers import SchedulerSpecError, load_scheduler

_OWN_TABLES: Final = ("network", "byzantine")
#: keys of earlier versions in the shared tables, and where they are now
_MOVED: Final = {"training": TRAINING_MOVED}


class ScenarioView(Protocol):
    """What the plugin checks read of a scenario (sim/scenario.py's ``Scenario``)."""

    @property
    def n(self) -> int: ...

    @property
    def f(self) -> int: ...

    @property
    def protocol(self) -> ProtocolSettings: ...

    @property
    def network(self) -> NetworkSpec: ...

    @property
    def fidelity(self) -> str: ...

    @property
    def mode(self) -> str: ...

    def byzantine_strategies(self) -> dict[int, StrategySpec]: ...

    def honest_nodes(self) -> list[int]: ...


def read_scenario(
    data: Mapping[str, Any], tables: Sequence[Table]
) -> tuple[dict[str, Any], list[str]]:
    """The keyword arguments of the scenario ``data`` describes, and every problem found.

    ``tables``: the scenario's (sim/scenario.py ``scenario_tables``): its top level first,
    whose first class is the scenario itself, then the tables it shares with nodes."""
    reader = SettingsReader()
    if not isinstance(data, Mapping):
        return {}, [f"a scenario is a table, got {type(data).__name__}"]
    data = dict(data)
    if isinstance(data.get("task"), str):  # `task = "digits-mlp"`: short for [task] name
        data["task"] = {"name": data["task"]}
    top, *shared = tables
    own_cls, run_cls = top.classes
    values = reader.read(top, data, skip=[table.name for table in shared] + list(_OWN_TABLES))
    for table in shared:
        table_data = _table(data.get(table.name, {}), table.name, reader.problems)
        reader.read(table, table_data, into=values, moved=_MOVED.get(table.name))
    own = reader.build(top, own_cls, values.get(own_cls, {}))
    parts: dict[str, Any] = {"run": reader.build(top, run_cls, values.get(run_cls, {}))}
    for table in shared:
        (cls,) = table.classes
        parts[table.name] = reader.build(table, cls, values.get(cls, {}))
    parts["network"] = _parse_network(_table(data.get("network", {}), "network", reader.problems))
    if own is None or any(part is None for part in parts.values()):
        return {}, reader.problems
    byzantine_data = _table(data.get("byzantine", {}), "byzantine", reader.problems)
    parts["byzantine"] = _parse_byzantine(byzantine_data, own.n, own.f, reader.problems)
    kwargs = {name: getattr(own, name) for name in _own_names(top)}
    return {**kwargs, **parts}, reader.problems


def _own_names(top: Table) -> list[str]:
    own_cls = top.classes[0]
    return [name for name in top.keys() if top.owner(name) is own_cls]


def check_plugins(scenario: ScenarioView) -> list[str]:
    """Problems building what the scenario names: scheduler, strategies, aggregator bound.

    The task is not loaded here (a user task may be slow to build); the engine reports it.
    """
    problems: list[str] = []
    tolerance = scenario.protocol.tolerance_problem(scenario.n, scenario.f)
    if tolerance is not None:
        problems.append(f"n: {tolerance}")
    if scenario.protocol.aggregator not in AGGREGATORS and not problems:
        problems.append(f"[protocol] aggregator: unknown {scenario.protocol.aggregator!r}")
    try:
        load_scheduler(scenario.network.scheduler, scenario.network.scheduler_params)
    except SchedulerSpecError as error:
        problems.append(f"[network]: {error}")
    problems += bandwidth_problems(scenario.network.params, scenario.n)
    problems += _node_ids_problems(scenario)
    if not scenario.honest_nodes():
        problems.append("[byzantine]: every node is Byzantine; there is nothing to measure")
    from sim.strategies import load_strategy

    nodes_by_spec: dict[str, list[int]] = {}
    specs: dict[str, StrategySpec] = {}
    for node, spec in scenario.byzantine_strategies().items():
        nodes_by_spec.setdefault(repr(spec), []).append(node)
        specs[repr(spec)] = spec
    for key, nodes in nodes_by_spec.items():  # one line per distinct strategy
        who = f"node {nodes[0]}" if len(nodes) == 1 else f"nodes {nodes}"
        try:
            strategy = load_strategy(specs[key])
        except (ValueError, TypeError) as error:
            problems.append(f"[byzantine] {who}: {error}")
            continue
        if scenario.mode == "server" and strategy.acts_on_messages:
            problems.append(
                f"[byzantine] {who}: {strategy_label(specs[key])} works on protocol messages, "
                'which mode = "server" does not have (no network, no agreement): use '
                "learning-level attacks there"
            )
        elif scenario.fidelity == "broadcast" and strategy.acts_on_messages:
            problems.append(
                f"[byzantine] {who}: {strategy_label(specs[key])} works on protocol messages, "
                f'which fidelity = "broadcast" does not simulate; use fidelity = "full" '
                f"(--fidelity full)"
            )
    return problems


def _node_ids_problems(scenario: ScenarioView) -> list[str]:
    """Node ids the default scheduler's settings name must exist."""
    if scenario.network.scheduler != "default":
        return []
    params = scenario.network.params
    named: list[tuple[str, Any]] = []
    named += [("[network] slow_nodes", node) for node in params.get("slow_nodes", {}) or {}]
    for entry in params.get("per_link", []) or []:
        if isinstance(entry, Mapping):
            named += [
                ("[network] per_link", entry.get("src")),
                ("[network] per_link", entry.get("dst")),
            ]
    for entry in params.get("partitions", []) or []:
        if isinstance(entry, Mapping):
            for group in entry.get("groups", []) or []:
                named += [("[network] partitions", node) for node in group]
    problems = []
    for where, node in named:
        try:
            ok = 0 <= int(node) < scenario.n
        except (TypeError, ValueError):
            ok = False
        if not ok:
            problems.append(f"{where}: no node {node!r} (n={scenario.n})")
    return problems


def suggest(key: str, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for a close known key, else ''."""
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def is_finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _table(value: Any, where: str, problems: list[str]) -> Mapping[str, Any]:
    if isinstance(value, Mapping):
        return value
    problems.append(f"[{where}]: expected a table, got {value!r}")
    return {}


def _parse_network(data: Mapping[str, Any]) -> NetworkSpec:
    params = {key: value for key, value in data.items() if key != "scheduler"}
    return NetworkSpec(scheduler=str(data.get("scheduler", "default")), params=params)


def _parse_byzantine(data: Mapping[str, Any], n: int, f: int, problems: list[str]) -> ByzantineSpec:
    known = {"nodes", "strategy", "per_node"}
    for key in sorted(set(data) - known, key=str):
        problems.append(f"unknown key [byzantine] {key}{suggest(str(key), known)}")
    nodes: tuple[int, ...] | None = None
    if "nodes" in data:
        raw = data["nodes"]
        if not isinstance(raw, list) or not all(_is_node_id(x, n) for x in raw):
            problems.append(
                f"[byzantine] nodes: expected a list of node ids in [0, n), got {raw!r}"
            )
        elif len(set(raw)) != len(raw):
            problems.append(f"[byzantine] nodes: duplicate ids in {raw!r}")
        else:
            nodes = tuple(sorted(raw))
    strategy = data.get("strategy", NO_ATTACK)
    problems += [f"[byzantine] strategy: {p}" for p in _strategy_problems(strategy)]
    per_node: dict[int, StrategySpec] = {}
    raw_per_node = data.get("per_node", {})
    if not isinstance(raw_per_node, Mapping):
        problems.append(
            f"[byzantine] per_node: expected a table id -> strategy, got {raw_per_node!r}"
        )
        raw_per_node = {}
    listed = nodes if nodes is not None else tuple(range(n - f, n))
    for key, spec in raw_per_node.items():
        node = int(key) if str(key).isdigit() else -1
        if node not in listed:
            problems.append(
                f"[byzantine] per_node.{key}: not one of the Byzantine nodes {list(listed)}"
            )
            continue
        problems += [f"[byzantine] per_node.{key}: {p}" for p in _strategy_problems(spec)]
        per_node[node] = spec
    return ByzantineSpec(nodes=nodes, strategy=strategy, per_node=per_node)


def _is_node_id(value: Any, n: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n


def _strategy_problems(spec: Any) -> list[str]:
    if isinstance(spec, str):
        return [] if spec else ["empty strategy name"]
    if isinstance(spec, Mapping):
        name = spec.get("name")
        return (
            [] if isinstance(name, str) and name else [f"a strategy table needs a name: {spec!r}"]
        )
    if isinstance(spec, list) and spec:
        return [p for part in spec for p in _strategy_problems(part)]
    return [f"expected a name, a table or a list of those, got {spec!r}"]
