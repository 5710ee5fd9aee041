"""Scenarios: everything one simulation needs, as TOML or as Python dataclasses.

A scenario file and a :class:`Scenario` hold the same fields under the same names, so a
researcher can start from a file, load it, change one field in Python and run it::

    scenario = Scenario.from_toml("sim/scenarios/default.toml")
    scenario = scenario.with_values({"protocol.aggregator": "mean", "steps": 20})
    summary = run_scenario(scenario, Path("results/mean"))

Validation reads the whole input and reports every problem at once, one line each
(unknown keys included, with a suggestion when one is close), in :class:`ScenarioError`.
Schedulers and Byzantine strategies (built-in or ``"module:Name"``) are built during
validation, so a typo fails before a long run starts, not in the middle
(:mod:`sim.scenario_reader`).
See docs/simulator.md for the reference of every field.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from protocol.core import GradientSchedule, RoundSchedule
from protocol.messages import Phase

#: The strategy value meaning "behaves honestly" (an attack-free run keeps its node ids).
NO_ATTACK: Final = "none"
#: Where the built-in scenario files live; ``jungle sim NAME`` looks here too.
SCENARIOS_DIR: Final = Path(__file__).parent / "scenarios"
PARTITION_SCHEMES: Final = ("iid", "dirichlet", "shards")
LR_SCHEDULES: Final = ("constant", "inverse_sqrt")
GRADIENT_SCHEDULE_LOG2: Final = "log2"

#: A Byzantine strategy as a scenario writes it: a name, a table {name = ..., params...},
#: a list of those (combined), or "module:Class".
StrategySpec = str | Mapping[str, Any] | Sequence[Any]


class ScenarioError(ValueError):
    """An invalid scenario; ``problems`` holds one line per problem found."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


def read_toml(path: Path) -> dict[str, Any]:
    """A scenario or sweep file as a table; unreadable or invalid TOML is a ScenarioError."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ScenarioError([f"{path}: cannot read: {error.strerror or error}"]) from None
    except tomllib.TOMLDecodeError as error:
        raise ScenarioError([f"{path}: not valid TOML: {error}"]) from None


@dataclass(frozen=True, slots=True)
class PartitionSpec:
    """How the task's training set is split among the n nodes (node/partition.py)."""

    scheme: str = "iid"
    alpha: float = 0.5  # dirichlet: smaller is more heterogeneous
    shards_per_node: int = 2  # shards: label-sorted slices per node


@dataclass(frozen=True, slots=True)
class TrainingSpec:
    """Local learning on every node (node/trainer.py ``TrainerConfig``)."""

    lr: float = 0.3
    lr_schedule: str = "constant"
    lr_decay_steps: int = 100
    momentum: float = 0.9
    batch_size: int = 32
    local_steps: int = 1
    weight_decay: float = 0.0


@dataclass(frozen=True, slots=True)
class ProtocolSpec:
    """The agreement protocol (protocol/core.py ``ProtocolConfig`` and ``RoundSchedule``)."""

    aggregator: str = "trimmed_mean"
    #: "log2" (ceil(log2(t+1)) rounds at step t, for heterogeneous data) or a constant count
    gradient_rounds: str | int = GRADIENT_SCHEDULE_LOG2
    model_rounds: int = 1
    rounds_max: int = 8
    #: Ed25519 signatures on every SEND; off for large runs (the summary says so)
    crypto: bool = True
    steps_ahead_max: int = 4
    steps_retained: int = 2


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    """Who decides message delays: ``"default"`` (sim/schedulers.py ``DefaultScheduler``:
    delay model, per-link overrides, slow nodes, duplicates, jitter, partitions) or a
    ``"module:Class"`` Scheduler subclass; ``params`` are its settings."""

    scheduler: str = "default"
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ByzantineSpec:
    """Which nodes are Byzantine and what each does.

    Each id in ``nodes`` (default: the last f ids) runs ``per_node[id]`` if given, else
    ``strategy``. A node whose strategy is ``"none"`` is honest, so the attack-free run of
    a comparison is ``strategy = "none"``."""

    nodes: tuple[int, ...] | None = None
    strategy: StrategySpec = NO_ATTACK
    per_node: Mapping[int, StrategySpec] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Scenario:
    """One simulation: who takes part, what they learn, how they agree, what the network
    and the adversary do. All randomness derives from ``seed``."""

    name: str = "scenario"
    description: str = ""
    seed: int = 0
    n: int = 10
    f: int = 3
    steps: int = 100
    task: str = "digits-mlp"
    #: honest nodes evaluate on the test set every this many steps (and after the last)
    eval_every: int = 10
    #: virtual seconds after which an unfinished run stops (and is reported incomplete)
    time_limit_s: float = 3600.0
    #: virtual seconds between two runner ticks (payload-fetch retries)
    tick_interval_s: float = 0.5
    partition: PartitionSpec = field(default_factory=PartitionSpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    protocol: ProtocolSpec = field(default_factory=ProtocolSpec)
    network: NetworkSpec = field(default_factory=NetworkSpec)
    byzantine: ByzantineSpec = field(default_factory=ByzantineSpec)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_toml(cls, path: str | Path) -> Scenario:
        """Read and validate a scenario file; the name defaults to the file's stem."""
        path = Path(path)
        data = read_toml(path)
        data.setdefault("name", path.stem)
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scenario:
        """Validate plain data (a parsed TOML file); raises :class:`ScenarioError`."""
        from sim.scenario_reader import read_scenario  # the reader imports this module

        scenario, problems = read_scenario(data)
        if problems:
            raise ScenarioError(problems)
        return scenario

    def to_dict(self) -> dict[str, Any]:
        """Plain data that :meth:`from_dict` reads back into an equal scenario."""
        data = asdict(self)
        byzantine = data["byzantine"]
        byzantine["nodes"] = None if self.byzantine.nodes is None else list(self.byzantine.nodes)
        byzantine["per_node"] = {str(k): v for k, v in sorted(self.byzantine.per_node.items())}
        if byzantine["nodes"] is None:
            del byzantine["nodes"]
        network = data["network"]
        data["network"] = {"scheduler": network["scheduler"], **network["params"]}
        return data

    def with_values(self, values: Mapping[str, Any]) -> Scenario:
        """A copy with dotted fields replaced, e.g. ``{"protocol.aggregator": "mean"}``;
        validated again as a whole."""
        data = self.to_dict()
        for dotted, value in values.items():
            *parents, leaf = dotted.split(".")
            table = data
            for part in parents:
                child = table.setdefault(part, {})
                if not isinstance(child, dict):
                    raise ScenarioError([f"{dotted}: {part} is not a table"])
                table = child
            table[leaf] = value
        return Scenario.from_dict(data)

    def with_seed(self, seed: int) -> Scenario:
        return replace(self, seed=seed)

    # ------------------------------------------------------------------ derived facts

    def byzantine_strategies(self) -> dict[int, StrategySpec]:
        """Byzantine node id -> its strategy spec, for every node that is not honest."""
        spec = self.byzantine
        nodes = spec.nodes if spec.nodes is not None else range(self.n - self.f, self.n)
        chosen = {node: spec.per_node.get(node, spec.strategy) for node in sorted(nodes)}
        return {node: s for node, s in chosen.items() if not _is_no_attack(s)}

    def round_schedule(self) -> RoundSchedule:
        """The protocol's round schedule for this scenario."""
        spec = self.protocol
        if spec.gradient_rounds == GRADIENT_SCHEDULE_LOG2:
            return RoundSchedule(GradientSchedule.LOG2, 1, spec.model_rounds, spec.rounds_max)
        return RoundSchedule(
            GradientSchedule.CONSTANT, int(spec.gradient_rounds), spec.model_rounds, spec.rounds_max
        )

    def agreement_rounds(self) -> int:
        """Agreement rounds each node runs over the whole scenario (both phases)."""
        schedule = self.round_schedule()
        return sum(
            schedule.rounds(step, Phase.GRADIENT) + schedule.rounds(step, Phase.MODEL)
            for step in range(self.steps)
        )

    def honest_nodes(self) -> list[int]:
        byzantine = self.byzantine_strategies()
        return [node for node in range(self.n) if node not in byzantine]


def _is_no_attack(spec: StrategySpec) -> bool:
    return isinstance(spec, str) and spec == NO_ATTACK


def strategy_label(spec: StrategySpec) -> str:
    """A short readable name: ``"alie"``, ``"equivocate+sign_flip"``, ``"ipm(epsilon=0.5)"``,
    ``"DoubleAgent(boost=3.0)"`` for ``{name = "examples.strategy_double_agent:DoubleAgent",
    boost = 3.0}``."""
    if isinstance(spec, str):
        return spec.rpartition(":")[2]  # a custom class by its class name
    if isinstance(spec, Mapping):
        name = str(spec.get("name", "?")).rpartition(":")[2]
        params = ", ".join(f"{k}={v}" for k, v in sorted(spec.items()) if k != "name")
        return f"{name}({params})" if params else name
    return "+".join(strategy_label(part) for part in spec)


def resolve_scenario(spec: str) -> Path:
    """A scenario argument as a path: an existing file, or the name of a built-in one."""
    path = Path(spec)
    if path.is_file() or path.suffix == ".toml":
        return path
    return SCENARIOS_DIR / f"{spec}.toml"


def builtin_scenarios() -> list[str]:
    """Names of the scenario files shipped in sim/scenarios (not the sweep grids there)."""
    return sorted(p.stem for p in SCENARIOS_DIR.glob("*.toml") if not is_grid_file(p))


def is_grid_file(path: Path) -> bool:
    """Whether a TOML file is a sweep grid (it has ``[axes]``) rather than a scenario."""
    try:
        return "axes" in tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return False
