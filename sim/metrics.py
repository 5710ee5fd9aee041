"""What a simulation measures (DESIGN 7), collected while it runs, in bounded memory.

- :class:`RoundBook` keeps the honest nodes' vectors of each agreement round while some
  honest node (or a Byzantine strategy that peeks at them) may still need them, and turns
  them into the paper's two measures: the **honest diameter** of every round (max pairwise
  L2 distance among honest vectors as they enter it) and the **averaging error** of every
  agreement instance, ||mean(honest decisions) - mean(honest inputs)|| / diameter(honest
  inputs), the empirical averaging constant. Distances are folded in as vectors arrive,
  and a step's vectors are dropped once every honest node is ``RETAINED_STEPS`` past it.
- :class:`MetricsLog` streams per-node and per-round records to ``metrics.jsonl`` and
  faults to ``faults.jsonl`` (with the equivocation proof where there is one), and keeps
  the small aggregates the summary and the plots need.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import numpy as np

from node.runner import StepRecord
from protocol.step import Fault

#: Steps of honest vectors kept behind the slowest honest node, for strategies that lag.
RETAINED_STEPS: Final = 2
#: faults.jsonl keeps this many records per (observer, accused, kind); all are counted,
#: and every distinct equivocation proof is written once whatever the cap.
FAULT_RECORDS_PER_KEY: Final = 20


@dataclass(frozen=True, slots=True)
class RoundMeasure:
    """The honest diameter of one agreement round, as its honest nodes entered it."""

    step: int
    phase: int
    round: int
    diameter: float
    nodes: int  # honest vectors it was measured over
    first_s: float  # virtual time the first / last honest node entered the round
    last_s: float


@dataclass(frozen=True, slots=True)
class AgreementMeasure:
    """How one agreement instance (step, phase) did: its averaging error and diameters."""

    step: int
    phase: int
    averaging_error: float  # NaN when the honest inputs were all equal
    input_diameter: float
    decision_diameter: float
    nodes: int  # honest decisions it was measured over


def _diameter_with(vectors: Sequence[np.ndarray], new: np.ndarray, diameter: float) -> float:
    """``diameter`` widened by the distances from ``new`` to ``vectors``. The very same
    array is at distance 0 and skipped: honest cores that aggregate the same vectors share
    one result (protocol.agreement.VectorMemo), so after exact agreement most pairs are
    one object, and the float64 norms (d values each, n^2/2 per round) are the cost."""
    new64: np.ndarray | None = None
    for other in vectors:
        if other is new:
            continue
        if new64 is None:
            new64 = new.astype(np.float64)
        diameter = max(diameter, float(np.linalg.norm(new64 - other)))
    return diameter


@dataclass(slots=True)
class _Round:
    vectors: dict[int, np.ndarray] = field(default_factory=dict)
    diameter: float = 0.0
    first_s: float = math.inf
    last_s: float = -math.inf
    done: bool = False


@dataclass(slots=True)
class _Agreement:
    input_sum: np.ndarray | None = None
    inputs: int = 0
    decisions: dict[int, np.ndarray] = field(default_factory=dict)
    decision_diameter: float = 0.0
    done: bool = False


class RoundBook:
    """Honest vectors by (step, phase, round) -> diameters and averaging errors."""

    def __init__(self, honest: Sequence[int]) -> None:
        self._honest = frozenset(honest)
        self._rounds: dict[tuple[int, int, int], _Round] = {}
        self._agreements: dict[tuple[int, int], _Agreement] = {}
        self._released_below = 0  # steps under this are gone
        self.finished_rounds: list[RoundMeasure] = []
        self.finished_agreements: list[AgreementMeasure] = []

    def round_started(
        self, node: int, step: int, phase: int, round_: int, vector: np.ndarray, now_s: float
    ) -> None:
        if node not in self._honest or step < self._released_below:
            return
        state = self._rounds.setdefault((step, phase, round_), _Round())
        state.diameter = _diameter_with(list(state.vectors.values()), vector, state.diameter)
        state.vectors[node] = vector
        state.first_s = min(state.first_s, now_s)
        state.last_s = max(state.last_s, now_s)
        if round_ == 0:
            agreement = self._agreements.setdefault((step, phase), _Agreement())
            if agreement.input_sum is None:
                agreement.input_sum = np.zeros(vector.shape, dtype=np.float64)
            agreement.input_sum += vector
            agreement.inputs += 1
        if len(state.vectors) == len(self._honest):
            self._finish_round((step, phase, round_), state)

    def decided(self, node: int, step: int, phase: int, vector: np.ndarray) -> None:
        if node not in self._honest or step < self._released_below:
            return
        agreement = self._agreements.setdefault((step, phase), _Agreement())
        agreement.decision_diameter = _diameter_with(
            list(agreement.decisions.values()), vector, agreement.decision_diameter
        )
        agreement.decisions[node] = vector
        if len(agreement.decisions) == len(self._honest):
            self._finish_agreement((step, phase), agreement)

    def honest_vectors(self, step: int, phase: int, round_: int) -> Mapping[int, np.ndarray]:
        """The honest vectors entered into a round so far, by node id: the omniscient
        strategies' view (``StrategyContext.honest_vectors``)."""
        state = self._rounds.get((step, phase, round_))
        if state is None:
            return {}
        return dict(sorted(state.vectors.items()))

    def release_below(self, step: int) -> None:
        """Every honest node is at ``step`` or later: measure and drop what lies far behind."""
        cutoff = step - RETAINED_STEPS
        if cutoff <= self._released_below:
            return
        self._released_below = cutoff
        for key in sorted(k for k in self._rounds if k[0] < cutoff):
            self._finish_round(key, self._rounds.pop(key))
        for instance in sorted(k for k in self._agreements if k[0] < cutoff):
            self._finish_agreement(instance, self._agreements.pop(instance))

    def flush(self) -> None:
        """The run is over: measure whatever is still open."""
        self.release_below(2**62)

    def _finish_round(self, key: tuple[int, int, int], state: _Round) -> None:
        if state.done or not state.vectors:
            return
        state.done = True
        step, phase, round_ = key
        self.finished_rounds.append(
            RoundMeasure(
                step, phase, round_, state.diameter, len(state.vectors), state.first_s, state.last_s
            )
        )

    def _finish_agreement(self, key: tuple[int, int], agreement: _Agreement) -> None:
        if agreement.done or not agreement.decisions or agreement.input_sum is None:
            return
        agreement.done = True
        step, phase = key
        inputs = self._rounds.get((step, phase, 0))
        input_diameter = inputs.diameter if inputs is not None else math.nan
        decisions = list(agreement.decisions.values())
        decision_mean = np.mean(decisions, axis=0, dtype=np.float64)
        input_mean = agreement.input_sum / agreement.inputs
        error = (
            float(np.linalg.norm(decision_mean - input_mean)) / input_diameter
            if input_diameter > 0.0
            else math.nan
        )
        self.finished_agreements.append(
            AgreementMeasure(
                step, phase, error, input_diameter, agreement.decision_diameter, len(decisions)
            )
        )
        agreement.decisions.clear()  # keep the finished flag, free the vectors


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN: unmeasured values are written as null."""
    return value if value is not None and math.isfinite(value) else None


class MetricsLog:
    """Streams metrics.jsonl and faults.jsonl (when ``out_dir`` is given) and keeps the
    aggregates the summary and the plots need. Only honest observers' faults count."""

    def __init__(self, out_dir: Path | None, honest: Sequence[int]) -> None:
        self._honest = frozenset(honest)
        self._metrics: IO[str] | None = None
        self._faults: IO[str] | None = None
        if out_dir is not None:
            self._metrics = (out_dir / "metrics.jsonl").open("w", encoding="utf-8")
            self._faults = (out_dir / "faults.jsonl").open("w", encoding="utf-8")
        #: honest node -> [(step, test accuracy)] at each evaluation
        self.accuracy: dict[int, list[tuple[int, float]]] = {node: [] for node in sorted(honest)}
        self.final_accuracy: dict[int, float] = {}
        self.fault_counts: Counter[tuple[str, int]] = Counter()
        self.proofs_distinct = 0
        self._records_by_key: Counter[tuple[int, int, str]] = Counter()
        self._proofs_seen: set[tuple[int, int, int, int, int]] = set()

    def close(self) -> None:
        for stream in (self._metrics, self._faults):
            if stream is not None:
                stream.close()

    def step(self, record: StepRecord) -> None:
        honest = record.node in self._honest
        if honest and record.test_accuracy is not None:
            self.accuracy[record.node].append((record.step + 1, record.test_accuracy))
            self.final_accuracy[record.node] = record.test_accuracy
        self._write_metric(
            {
                "type": "step",
                "node": record.node,
                "honest": honest,
                "step": record.step,
                "time_s": record.time_s,
                "train_loss": finite_or_none(record.train_loss),
                "test_loss": finite_or_none(record.test_loss),
                "test_accuracy": record.test_accuracy,
                "bytes_sent": record.bytes_sent,
                "bytes_received": record.bytes_received,
                "batches": record.batches,
            }
        )

    def node_round(self, node: int, step: int, phase: int, round_: int, now_s: float) -> None:
        self._write_metric(
            {
                "type": "node_round",
                "node": node,
                "step": step,
                "phase": phase,
                "round": round_,
                "time_s": now_s,
            }
        )

    def rounds(self, measures: Sequence[RoundMeasure]) -> None:
        for m in measures:
            self._write_metric(
                {
                    "type": "round",
                    "step": m.step,
                    "phase": m.phase,
                    "round": m.round,
                    "honest_diameter": m.diameter,
                    "nodes": m.nodes,
                    "first_s": m.first_s,
                    "last_s": m.last_s,
                }
            )

    def agreements(self, measures: Sequence[AgreementMeasure]) -> None:
        for m in measures:
            self._write_metric(
                {
                    "type": "agreement",
                    "step": m.step,
                    "phase": m.phase,
                    "averaging_error": finite_or_none(m.averaging_error),
                    "input_diameter": finite_or_none(m.input_diameter),
                    "decision_diameter": m.decision_diameter,
                    "nodes": m.nodes,
                }
            )

    def fault(self, observer: int, fault: Fault, now_s: float) -> None:
        if observer not in self._honest:
            return  # a Byzantine node's accusations prove nothing
        kind = fault.kind.value
        self.fault_counts[(kind, fault.accused)] += 1
        key = (observer, fault.accused, kind)
        self._records_by_key[key] += 1
        proof = fault.evidence
        new_proof = False
        if proof is not None:
            tag = proof.iid.tag
            proof_key = (proof.iid.origin, tag.step, tag.phase, tag.round, tag.kind)
            new_proof = proof_key not in self._proofs_seen
            self._proofs_seen.add(proof_key)
        if self._records_by_key[key] > FAULT_RECORDS_PER_KEY and not new_proof:
            return
        iid = fault.iid
        record: dict[str, Any] = {
            "time_s": now_s,
            "observer": observer,
            "accused": fault.accused,
            "kind": kind,
            "detail": fault.detail,
            "iid": None
            if iid is None
            else [iid.origin, iid.tag.step, iid.tag.phase, iid.tag.round, iid.tag.kind],
            "evidence": proof.to_json() if new_proof and proof is not None else None,
        }
        self.proofs_distinct += int(new_proof)
        if self._faults is not None:
            self._faults.write(json.dumps(record) + "\n")

    def faults_by_kind(self) -> dict[str, dict[int, int]]:
        """{kind: {accused: count}} over honest observers."""
        table: dict[str, dict[int, int]] = {}
        for (kind, accused), count in sorted(self.fault_counts.items()):
            table.setdefault(kind, {})[accused] = count
        return table

    def faults_by_accused(self) -> dict[int, int]:
        totals: Counter[int] = Counter()
        for (_, accused), count in self.fault_counts.items():
            totals[accused] += count
        return dict(sorted(totals.items()))

    def _write_metric(self, record: Mapping[str, Any]) -> None:
        if self._metrics is not None:
            self._metrics.write(json.dumps(record) + "\n")
