"""Scenarios: everything one simulation needs, as TOML or as Python dataclasses.

A scenario file and a :class:`Scenario` hold the same fields under the same names, so a
researcher can start from a file, load it, change one field in Python and run it. The
``[protocol]``, ``[task]``, ``[partition]`` and ``[training]`` tables are the very tables of
a real node's config, read by the same code into the same classes (node/schema.py), so they
work on real nodes as they are; what a scenario adds is its own: the top-level keys below
(n, f, seed, the run's length), ``[network]`` and ``[byzantine]``::

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
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from node.partition import PartitionSettings
from node.runner import RunSettings
from node.schema import Table
from node.training import TaskSettings, TrainingSettings
from protocol.core import RoundSchedule
from protocol.messages import Phase
from protocol.settings import ProtocolSettings, SettingsError, field_problems, setting
from sim.scenario_parts import (
    NO_ATTACK,
    ByzantineSpec,
    NetworkSpec,
    StrategySpec,
    is_no_attack,
    strategy_label,
)
from sim.scenario_reader import check_plugins, read_scenario

__all__ = [
    "NO_ATTACK",
    "SCENARIOS_DIR",
    "ByzantineSpec",
    "NetworkSpec",
    "Scenario",
    "ScenarioError",
    "StrategySpec",
    "builtin_scenarios",
    "resolve_scenario",
    "strategy_label",
]

FIDELITY_FULL: Final = "full"
FIDELITY_BROADCAST: Final = "broadcast"
FIDELITIES: Final = (FIDELITY_FULL, FIDELITY_BROADCAST)
MODE_DECENTRALIZED: Final = "decentralized"
MODE_SERVER: Final = "server"
MODES: Final = (MODE_DECENTRALIZED, MODE_SERVER)
#: Where the built-in scenario files live; ``jungle sim NAME`` looks here too.
SCENARIOS_DIR: Final = Path(__file__).parent / "scenarios"


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
class Scenario:
    """One simulation: who takes part, what they learn, how they agree, what the network
    and the adversary do. All randomness derives from ``seed``.

    The fields declared with :func:`~protocol.settings.setting` are the scenario's own
    top-level keys; ``run`` holds the run's (steps, eval_every, tick_interval_s: also
    top-level keys of the file); the rest are tables."""

    name: str = setting("scenario", "a label for the outputs (default: the file's name)")
    description: str = setting("", "a sentence saying what the scenario shows")
    seed: int = setting(0, "the run's seed: every random stream derives from it", minimum=0)
    n: int = setting(10, "nodes", minimum=1)
    f: int = setting(3, "Byzantine nodes the protocol tolerates", minimum=0)
    time_limit_s: float = setting(
        3600.0,
        "virtual seconds after which an unfinished run stops (reported incomplete)",
        above=0.0,
        unit="s",
    )
    fidelity: str = setting(
        FIDELITY_FULL,
        "full: every protocol message simulated; broadcast: reliable broadcast modelled "
        "(delivery times from per-hop delays), the agreement run for real: hundreds of nodes",
        choices=FIDELITIES,
    )
    mode: str = setting(
        MODE_DECENTRALIZED,
        "decentralized: every node runs averaging agreement over the network; server: the "
        "centralized reference (same data, model, trainers and attacks; one trusted server "
        "aggregates the gradients once per step, no network)",
        choices=MODES,
    )
    run: RunSettings = field(default_factory=RunSettings)
    task: TaskSettings = field(default_factory=TaskSettings)
    partition: PartitionSettings = field(default_factory=PartitionSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    protocol: ProtocolSettings = field(default_factory=ProtocolSettings)
    network: NetworkSpec = field(default_factory=NetworkSpec)
    byzantine: ByzantineSpec = field(default_factory=ByzantineSpec)

    def __post_init__(self) -> None:
        problems = field_problems(self)
        if problems:
            raise SettingsError(problems)

    @property
    def steps(self) -> int:
        return self.run.steps

    @property
    def eval_every(self) -> int:
        return self.run.eval_every

    @property
    def tick_interval_s(self) -> float:
        return self.run.tick_interval_s

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
        values, problems = read_scenario(data, scenario_tables())
        if problems:
            raise ScenarioError(problems)
        scenario = cls(**values)
        problems = check_plugins(scenario)
        if problems:
            raise ScenarioError(problems)
        return scenario

    def to_dict(self) -> dict[str, Any]:
        """Plain data that :meth:`from_dict` reads back into an equal scenario."""
        data = asdict(self)
        data.update(data.pop("run"))  # the run's keys are top-level keys of the file
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
        return {node: s for node, s in chosen.items() if not is_no_attack(s)}

    def round_schedule(self) -> RoundSchedule:
        """The protocol's round schedule for this scenario."""
        return self.protocol.round_schedule()

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


def scenario_tables() -> tuple[Table, ...]:
    """A scenario file's tables: its top level (the scenario's own keys and the run's), and
    those it shares with node configs."""
    return (
        Table("", (Scenario, RunSettings)),
        Table("task", (TaskSettings,)),
        Table("partition", (PartitionSettings,)),
        Table("training", (TrainingSettings,)),
        Table("protocol", (ProtocolSettings,)),
    )


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
