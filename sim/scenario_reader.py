"""Reading a scenario: plain data (a parsed TOML file) in, a valid :class:`Scenario` out.

Every field is checked against its type (taken from the dataclass default) and its range
(:data:`_RULES`); unknown keys get a suggestion when a known one is close; then the
plugins the scenario names are built once, so a typo fails before a long run starts.
All problems are collected and raised together, one line each, in
:class:`~sim.scenario.ScenarioError`.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any, Final

from protocol.aggregate import AGGREGATORS, min_nodes
from sim.scenario import (
    GRADIENT_SCHEDULE_LOG2,
    LR_SCHEDULES,
    NO_ATTACK,
    PARTITION_SCHEMES,
    ByzantineSpec,
    NetworkSpec,
    PartitionSpec,
    ProtocolSpec,
    Scenario,
    StrategySpec,
    TrainingSpec,
)
from sim.schedulers import SchedulerSpecError, load_scheduler


def read_scenario(data: Mapping[str, Any]) -> tuple[Scenario, list[str]]:
    """The scenario ``data`` describes, and every problem found in it."""
    problems: list[str] = []
    scenario = _parse_scenario(data, problems)
    if not problems:
        problems += check_plugins(scenario)
    return scenario, problems


def check_plugins(scenario: Scenario) -> list[str]:
    """Problems building what the scenario names: scheduler, strategies, aggregator bound.

    The task is not loaded here (a user task may be slow to build); the engine reports it.
    """
    problems: list[str] = []
    try:
        needed = min_nodes(scenario.protocol.aggregator, scenario.f)
    except ValueError as error:
        problems.append(f"protocol.aggregator: {error}")
    else:
        if scenario.n < needed:
            problems.append(
                f"n: {scenario.protocol.aggregator} tolerates f={scenario.f} only with "
                f"n >= {needed}, got n={scenario.n}"
            )
    if scenario.protocol.aggregator not in AGGREGATORS and not problems:
        problems.append(f"protocol.aggregator: unknown {scenario.protocol.aggregator!r}")
    try:
        load_scheduler(scenario.network.scheduler, scenario.network.params)
    except SchedulerSpecError as error:
        problems.append(f"network: {error}")
    problems += _node_ids_problems(scenario)
    if not scenario.honest_nodes():
        problems.append("byzantine: every node is Byzantine; there is nothing to measure")
    from sim.strategies import load_strategy

    nodes_by_spec: dict[str, list[int]] = {}
    specs: dict[str, StrategySpec] = {}
    for node, spec in scenario.byzantine_strategies().items():
        nodes_by_spec.setdefault(repr(spec), []).append(node)
        specs[repr(spec)] = spec
    for key, nodes in nodes_by_spec.items():  # one line per distinct strategy
        try:
            load_strategy(specs[key])
        except (ValueError, TypeError) as error:
            who = f"node {nodes[0]}" if len(nodes) == 1 else f"nodes {nodes}"
            problems.append(f"byzantine: {who}: {error}")
    return problems


def _node_ids_problems(scenario: Scenario) -> list[str]:
    """Node ids the default scheduler's settings name must exist."""
    if scenario.network.scheduler != "default":
        return []
    params = scenario.network.params
    named: list[tuple[str, Any]] = []
    named += [("network.slow_nodes", node) for node in params.get("slow_nodes", {}) or {}]
    for entry in params.get("per_link", []) or []:
        if isinstance(entry, Mapping):
            named += [
                ("network.per_link", entry.get("src")),
                ("network.per_link", entry.get("dst")),
            ]
    for entry in params.get("partitions", []) or []:
        if isinstance(entry, Mapping):
            for group in entry.get("groups", []) or []:
                named += [("network.partitions", node) for node in group]
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


Rule = tuple[str, Any]  # (check name, argument), see _rule_problem

#: Range rules per dotted field; types come from each field's default.
_RULES: Final[dict[str, tuple[Rule, ...]]] = {
    "seed": (("min", 0),),
    "n": (("min", 1),),
    "f": (("min", 0),),
    "steps": (("min", 1),),
    "eval_every": (("min", 1),),
    "time_limit_s": (("above", 0.0),),
    "tick_interval_s": (("above", 0.0),),
    "partition.scheme": (("choice", PARTITION_SCHEMES),),
    "partition.alpha": (("above", 0.0),),
    "partition.shards_per_node": (("min", 1),),
    "training.lr": (("above", 0.0),),
    "training.lr_schedule": (("choice", LR_SCHEDULES),),
    "training.lr_decay_steps": (("min", 1),),
    "training.momentum": (("min", 0.0), ("below", 1.0)),
    "training.batch_size": (("min", 1),),
    "training.local_steps": (("min", 1),),
    "training.weight_decay": (("min", 0.0),),
    "protocol.aggregator": (("choice", tuple(sorted(AGGREGATORS))),),
    "protocol.model_rounds": (("min", 0),),
    "protocol.rounds_max": (("min", 1), ("max", 64)),
    "protocol.steps_ahead_max": (("min", 0),),
    "protocol.steps_retained": (("min", 0),),
}


def _parse_scenario(data: Mapping[str, Any], problems: list[str]) -> Scenario:
    if not isinstance(data, Mapping):
        problems.append(f"a scenario is a table, got {type(data).__name__}")
        return Scenario()
    sections = {
        "partition": PartitionSpec,
        "training": TrainingSpec,
        "protocol": ProtocolSpec,
    }
    values = _parse_fields(Scenario, data, "", problems, skip={*sections, "network", "byzantine"})
    for name, cls in sections.items():
        table = _table(data.get(name, {}), name, problems)
        values[name] = cls(**_parse_fields(cls, table, f"{name}.", problems))
    values["network"] = _parse_network(_table(data.get("network", {}), "network", problems))
    scenario = Scenario(**values)
    byzantine = _parse_byzantine(
        _table(data.get("byzantine", {}), "byzantine", problems), scenario, problems
    )
    scenario = replace(scenario, byzantine=byzantine)
    protocol = scenario.protocol
    if isinstance(protocol.gradient_rounds, str):
        if protocol.gradient_rounds != GRADIENT_SCHEDULE_LOG2:
            problems.append(
                f"protocol.gradient_rounds: expected 'log2' or a count, "
                f"got {protocol.gradient_rounds!r}"
            )
    elif not 1 <= protocol.gradient_rounds <= protocol.rounds_max:
        problems.append(f"protocol.gradient_rounds: must be in [1, {protocol.rounds_max}]")
    if protocol.model_rounds > protocol.rounds_max:
        problems.append(f"protocol.model_rounds: must be in [0, {protocol.rounds_max}]")
    return scenario


def _table(value: Any, where: str, problems: list[str]) -> Mapping[str, Any]:
    if isinstance(value, Mapping):
        return value
    problems.append(f"{where}: expected a table, got {value!r}")
    return {}


def _parse_fields(
    cls: type, data: Mapping[str, Any], prefix: str, problems: list[str], skip: Iterable[str] = ()
) -> dict[str, Any]:
    """Type- and range-checked values of ``cls``'s simple fields present in ``data``."""
    defaults = cls()
    known = {name for name in cls.__dataclass_fields__}  # type: ignore[attr-defined]
    skip = set(skip)
    values: dict[str, Any] = {}
    for key in sorted(data, key=str):
        if key not in known:
            problems.append(f"{prefix}{key}: unknown key{suggest(str(key), known)}")
            continue
        if key in skip:
            continue
        value = data[key]
        problem = _type_problem(value, getattr(defaults, key))
        if problem is None:
            for rule in _RULES.get(prefix + key, ()):
                problem = problem or _rule_problem(value, rule)
        if problem is not None:
            problems.append(f"{prefix}{key}: {problem}")
            continue
        default = getattr(defaults, key)
        values[key] = float(value) if isinstance(default, float) else value
    return values


def _type_problem(value: Any, default: Any) -> str | None:
    if isinstance(default, bool):
        ok = isinstance(value, bool)
        expected = "true or false"
    elif isinstance(default, str) and not isinstance(default, int):
        ok = isinstance(value, str) or (
            isinstance(value, int) and not isinstance(value, bool)  # gradient_rounds = 3
        )
        expected = "a string"
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        expected = "an integer"
    elif isinstance(default, float):
        ok = is_finite_number(value)
        expected = "a finite number"
    else:
        return None
    return None if ok else f"expected {expected}, got {value!r}"


def _rule_problem(value: Any, rule: Rule) -> str | None:
    check, bound = rule
    if check == "choice":
        return None if value in bound else f"expected one of {', '.join(bound)}, got {value!r}"
    if check == "min" and value < bound:
        return f"must be >= {bound}, got {value}"
    if check == "max" and value > bound:
        return f"must be <= {bound}, got {value}"
    if check == "above" and value <= bound:
        return f"must be > {bound}, got {value}"
    if check == "below" and value >= bound:
        return f"must be < {bound}, got {value}"
    return None


def _parse_network(data: Mapping[str, Any]) -> NetworkSpec:
    params = {key: value for key, value in data.items() if key != "scheduler"}
    return NetworkSpec(scheduler=str(data.get("scheduler", "default")), params=params)


def _parse_byzantine(
    data: Mapping[str, Any], scenario: Scenario, problems: list[str]
) -> ByzantineSpec:
    known = {"nodes", "strategy", "per_node"}
    for key in sorted(set(data) - known, key=str):
        problems.append(f"byzantine.{key}: unknown key{suggest(str(key), known)}")
    nodes: tuple[int, ...] | None = None
    if "nodes" in data:
        raw = data["nodes"]
        if not isinstance(raw, list) or not all(_is_node_id(x, scenario.n) for x in raw):
            problems.append(f"byzantine.nodes: expected a list of node ids in [0, n), got {raw!r}")
        elif len(set(raw)) != len(raw):
            problems.append(f"byzantine.nodes: duplicate ids in {raw!r}")
        else:
            nodes = tuple(sorted(raw))
    strategy = data.get("strategy", NO_ATTACK)
    problems += [f"byzantine.strategy: {p}" for p in _strategy_problems(strategy)]
    per_node: dict[int, StrategySpec] = {}
    raw_per_node = data.get("per_node", {})
    if not isinstance(raw_per_node, Mapping):
        problems.append(
            f"byzantine.per_node: expected a table id -> strategy, got {raw_per_node!r}"
        )
        raw_per_node = {}
    listed = nodes if nodes is not None else tuple(range(scenario.n - scenario.f, scenario.n))
    for key, spec in raw_per_node.items():
        node = int(key) if str(key).isdigit() else -1
        if node not in listed:
            problems.append(
                f"byzantine.per_node.{key}: not one of the Byzantine nodes {list(listed)}"
            )
            continue
        problems += [f"byzantine.per_node.{key}: {p}" for p in _strategy_problems(spec)]
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
