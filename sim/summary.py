"""The summary of one simulation: what it ran, what the honest nodes got, what it cost.

:class:`Summary` is the frozen record :func:`sim.engine.run_scenario` returns and
``summary.json`` holds (via :meth:`Summary.to_json`). Node ids are JSON object keys, so
they are written as strings there; in Python they stay ints.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from node.divergence import DivergenceGuard
from node.runner import Runner
from sim.bandwidth import LinkStatistics
from sim.metrics import MetricsLog, RoundBook, RoundMeasure, finite_or_none
from sim.network import VirtualNetwork
from sim.scenario import Scenario, StrategySpec, strategy_label


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """How a run ended."""

    completed: bool
    stop_reason: str
    virtual_seconds: float


class SimulationState(Protocol):
    """What a summary reads of a finished simulation (sim/engine.py's ``Simulation``)."""

    scenario: Scenario
    network: VirtualNetwork
    log: MetricsLog
    book: RoundBook
    honest: list[int]
    byzantine: dict[int, StrategySpec]
    runners: list[Runner]
    learners: list[DivergenceGuard]
    crypto: bool
    session: bytes
    public_keys: list[bytes]


@dataclass(frozen=True, slots=True)
class Summary:
    scenario: str
    seed: int
    n: int
    f: int
    honest: tuple[int, ...]
    #: Byzantine node id -> its strategy, as a short label
    byzantine: Mapping[int, str]
    steps: int
    #: agreement rounds each node runs over the whole scenario (both phases)
    agreement_rounds: int
    #: False when the run stopped before every honest node finished every step
    completed: bool
    #: "until" (all honest nodes done), "time_limit" or "quiescent"
    stop_reason: str
    #: steps each honest node finished
    honest_steps_done: Mapping[int, int]
    honest_accuracy_final: Mapping[int, float]
    #: honest node -> the step its model first went non-finite (a collapsed run)
    honest_diverged: Mapping[int, int]
    honest_accuracy_mean: float
    honest_accuracy_min: float
    #: per agreement round: {step, phase, round, diameter, nodes}
    honest_diameter: Sequence[Mapping[str, Any]]
    #: per agreement instance: {step, phase, error, input_diameter, decision_diameter}
    averaging_error: Sequence[Mapping[str, Any]]
    averaging_error_mean: float
    averaging_error_max: float
    bytes_sent: Mapping[int, int]
    messages_sent: int
    messages_sent_by_node: Mapping[int, int]
    bytes_sent_by_kind: Mapping[str, int]
    messages_sent_by_kind: Mapping[str, int]
    #: {"by_kind": {kind: {accused: count}}, "by_accused": {accused: count},
    #:  "equivocation_proofs": count}, as seen by honest nodes
    faults: Mapping[str, Any]
    trace_digest: str
    virtual_seconds: float
    wall_seconds: float
    crypto: bool
    mode: str
    #: "full" (every protocol message simulated) or "broadcast" (reliable broadcast
    #: modelled: no protocol messages, and bytes_sent is what they would have cost)
    fidelity: str
    #: hex session id and Ed25519 public keys (by node): what verifies evidence offline
    session: str
    public_keys: Mapping[int, str] = field(default_factory=dict)
    #: the scenario as plain data (what from_dict reads back)
    config: Mapping[str, Any] = field(default_factory=dict)
    #: link capacities and what waiting on them cost (:func:`bandwidth_summary`); None
    #: when every link is unlimited
    bandwidth: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready data: string keys, null for unmeasured (NaN) values."""
        return {
            "scenario": self.scenario,
            "seed": self.seed,
            "n": self.n,
            "f": self.f,
            "honest": list(self.honest),
            "byzantine": _keys(self.byzantine),
            "steps": self.steps,
            "agreement_rounds": self.agreement_rounds,
            "completed": self.completed,
            "stop_reason": self.stop_reason,
            "honest_steps_done": _keys(self.honest_steps_done),
            "honest_accuracy_final": {
                str(node): finite_or_none(accuracy)
                for node, accuracy in sorted(self.honest_accuracy_final.items())
            },
            "honest_diverged": _keys(self.honest_diverged),
            "honest_accuracy_mean": finite_or_none(self.honest_accuracy_mean),
            "honest_accuracy_min": finite_or_none(self.honest_accuracy_min),
            "honest_diameter": [dict(row) for row in self.honest_diameter],
            "averaging_error": [dict(row) for row in self.averaging_error],
            "averaging_error_mean": finite_or_none(self.averaging_error_mean),
            "averaging_error_max": finite_or_none(self.averaging_error_max),
            "bytes_sent": _keys(self.bytes_sent),
            "messages_sent": self.messages_sent,
            "messages_sent_by_node": _keys(self.messages_sent_by_node),
            "bytes_sent_by_kind": dict(self.bytes_sent_by_kind),
            "messages_sent_by_kind": dict(self.messages_sent_by_kind),
            "faults": {
                "by_kind": {k: _keys(v) for k, v in self.faults["by_kind"].items()},
                "by_accused": _keys(self.faults["by_accused"]),
                "equivocation_proofs": self.faults["equivocation_proofs"],
            },
            "trace_digest": self.trace_digest,
            "virtual_seconds": self.virtual_seconds,
            "wall_seconds": self.wall_seconds,
            "crypto": self.crypto,
            "mode": self.mode,
            "fidelity": self.fidelity,
            "session": self.session,
            "public_keys": _keys(self.public_keys),
            "config": dict(self.config),
            "bandwidth": None if self.bandwidth is None else _bandwidth_json(self.bandwidth),
        }


def _keys(mapping: Mapping[int, Any]) -> dict[str, Any]:
    return {str(key): value for key, value in sorted(mapping.items())}


def _bandwidth_json(bandwidth: Mapping[str, Any]) -> dict[str, Any]:
    """Per-node tables with string keys; the honest means and maxima as they are."""
    return {
        key: _keys(value) if key in _PER_NODE else finite_or_none(value)
        for key, value in bandwidth.items()
    }


#: the per-node tables of :func:`bandwidth_summary`; the last four are also summarised
#: over the honest nodes
_PER_NODE = (
    "uplink_mbps",
    "downlink_mbps",
    "uplink_busy_s",
    "uplink_delay_s",
    "downlink_busy_s",
    "downlink_delay_s",
)


def bandwidth_summary(links: LinkStatistics, honest: Sequence[int]) -> dict[str, Any]:
    """The summary's ``bandwidth``: each node's configured rates (megabits/s, None =
    unlimited) and, per direction, its ``busy_s`` (the seconds the link had messages
    queued or in transmission: bytes x 8 / rate) and ``delay_s`` (what one message
    waited there on average, queued and in transmission; 0 without messages); then
    ``honest_<figure>_mean`` and ``honest_<figure>_max`` over the honest nodes."""

    def per_message(wait_s: tuple[float, ...], messages: tuple[int, ...]) -> dict[int, float]:
        return {
            node: w / m if m else 0.0
            for node, (w, m) in enumerate(zip(wait_s, messages, strict=True))
        }

    table: dict[str, Any] = {
        "uplink_mbps": dict(enumerate(links.uplink_mbps)),
        "downlink_mbps": dict(enumerate(links.downlink_mbps)),
        "uplink_busy_s": dict(enumerate(links.uplink_busy_s)),
        "uplink_delay_s": per_message(links.uplink_wait_s, links.uplink_messages),
        "downlink_busy_s": dict(enumerate(links.downlink_busy_s)),
        "downlink_delay_s": per_message(links.downlink_wait_s, links.downlink_messages),
    }
    for name in _PER_NODE[2:]:
        mean, top = _mean_and_max([table[name][node] for node in honest])
        table[f"honest_{name}_mean"] = mean
        table[f"honest_{name}_max"] = top
    return table


def _mean_and_max(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), max(finite)


def diameter_rows(rounds: Sequence[RoundMeasure]) -> list[dict[str, Any]]:
    """The summary's ``honest_diameter``: one row per measured round, in round order."""
    return [
        {
            "step": m.step,
            "phase": m.phase,
            "round": m.round,
            "diameter": finite_or_none(m.diameter),
            "nodes": m.nodes,
        }
        for m in sorted(rounds, key=lambda m: (m.step, m.phase, m.round))
    ]


def build_summary(
    simulation: SimulationState, outcome: RunOutcome, wall_seconds: float, mode: str
) -> Summary:
    scenario = simulation.scenario
    network = simulation.network
    log = simulation.log
    accuracy = {node: log.final_accuracy.get(node, math.nan) for node in simulation.honest}
    values = list(accuracy.values())
    errors = [m.averaging_error for m in simulation.book.finished_agreements]
    error_mean, error_max = _mean_and_max(errors)
    stats = network.statistics()
    endpoints = {node: network.endpoint(node).statistics() for node in range(scenario.n)}
    return Summary(
        scenario=scenario.name,
        seed=scenario.seed,
        n=scenario.n,
        f=scenario.f,
        honest=tuple(simulation.honest),
        byzantine={node: strategy_label(spec) for node, spec in simulation.byzantine.items()},
        steps=scenario.steps,
        agreement_rounds=scenario.agreement_rounds(),
        completed=outcome.completed,
        stop_reason=outcome.stop_reason,
        honest_steps_done={node: simulation.runners[node].step for node in simulation.honest},
        honest_accuracy_final=accuracy,
        honest_diverged={
            node: step
            for node in simulation.honest
            if (step := simulation.learners[node].diverged_at_step) is not None
        },
        honest_accuracy_mean=statistics.fmean(values) if values else math.nan,
        honest_accuracy_min=min(values) if values else math.nan,
        honest_diameter=diameter_rows(simulation.book.finished_rounds),
        averaging_error=[
            {
                "step": m.step,
                "phase": m.phase,
                "error": finite_or_none(m.averaging_error),
                "input_diameter": finite_or_none(m.input_diameter),
                "decision_diameter": finite_or_none(m.decision_diameter),
            }
            for m in sorted(simulation.book.finished_agreements, key=lambda m: (m.step, m.phase))
        ],
        averaging_error_mean=error_mean,
        averaging_error_max=error_max,
        bytes_sent={node: endpoint.bytes_sent for node, endpoint in endpoints.items()},
        messages_sent=stats.messages_sent,
        messages_sent_by_node={
            node: endpoint.messages_sent for node, endpoint in endpoints.items()
        },
        bytes_sent_by_kind=stats.bytes_sent_by_kind,
        messages_sent_by_kind=stats.messages_sent_by_kind,
        faults={
            "by_kind": log.faults_by_kind(),
            "by_accused": log.faults_by_accused(),
            "equivocation_proofs": log.proofs_distinct,
        },
        trace_digest=network.trace_digest(),
        virtual_seconds=outcome.virtual_seconds,
        wall_seconds=wall_seconds,
        crypto=simulation.crypto,
        mode=mode,
        fidelity=scenario.fidelity,
        session=simulation.session.hex(),
        public_keys={node: key.hex() for node, key in enumerate(simulation.public_keys)},
        config=scenario.to_dict(),
        bandwidth=None
        if network.links is None
        else bandwidth_summary(network.links.statistics(), simulation.honest),
    )
