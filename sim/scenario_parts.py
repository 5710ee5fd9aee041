"""The tables of a scenario that are the simulator's own: ``[network]`` and ``[byzantine]``.

Shared by :class:`sim.scenario.Scenario` and the reader (sim/scenario_reader.py), which
therefore need not import each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sim.bandwidth import Bandwidth, split_network_params

#: The strategy value meaning "behaves honestly" (an attack-free run keeps its node ids).
NO_ATTACK: Final = "none"
#: A Byzantine strategy as a scenario writes it: a name, a table {name = ..., params...},
#: a list of those (combined), or "module:Class".
StrategySpec = str | Mapping[str, Any] | Sequence[Any]


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    """Who decides message delays: ``"default"`` (sim/schedulers.py ``DefaultScheduler``:
    delay model, per-link overrides, slow nodes, duplicates, jitter, partitions) or a
    ``"module:Class"`` Scheduler subclass; ``params`` are its settings, and the network's
    own bandwidth keys (sim/bandwidth.py), whatever the scheduler."""

    scheduler: str = "default"
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def scheduler_params(self) -> dict[str, Any]:
        """``params`` without the bandwidth keys: what the scheduler is built from."""
        return split_network_params(self.params)[0]

    @property
    def bandwidth(self) -> Bandwidth:
        """The links' capacities (unlimited unless the table says otherwise)."""
        return Bandwidth.from_params(self.params)


@dataclass(frozen=True, slots=True)
class ByzantineSpec:
    """Which nodes are Byzantine and what each does.

    Each id in ``nodes`` (default: the last f ids) runs ``per_node[id]`` if given, else
    ``strategy``. A node whose strategy is ``"none"`` is honest, so the attack-free run of
    a comparison is ``strategy = "none"``."""

    nodes: tuple[int, ...] | None = None
    strategy: StrategySpec = NO_ATTACK
    per_node: Mapping[int, StrategySpec] = field(default_factory=dict)


def is_no_attack(spec: StrategySpec) -> bool:
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
