"""Process mode's results: the nodes' own metrics files, read back as the simulator's outputs.

A ``jungle node`` writes JSON lines (docs/operators.md): ``round`` when it enters an
agreement round, ``step`` per finished step with its cumulative traffic and fault counters,
``fault`` at the 1st, 10th, 100th, ... fault of each (kind, accused) with any equivocation
proof, ``checkpoint``, and ``summary`` when it stops. ``sim.process_metrics.NodeMetrics``
reads one such file as it grows; :func:`build_summary` and :func:`write_outputs` turn them
into the same ``summary.json``, ``metrics.jsonl``, ``faults.jsonl``, plots and table as
the in-process simulator, with what the nodes do not publish left out:

- the nodes do not publish their per-round vectors, so ``honest_diameter`` holds one row,
  the diameter of the honest nodes' final models (read from their final checkpoints), and
  ``averaging_error`` is empty; no ``diameter.png`` is drawn;
- faults are counted exactly by kind and by accused node; a kind charged to several nodes
  by one observer is split by its sampled ``fault`` records (a lower bound per node);
  transport faults count as kind ``transport.<kind>``, accused -1 when unauthenticated;
- traffic is not counted by message kind: those two tables are empty.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from sim.metrics import FAULT_RECORDS_PER_KEY, finite_or_none
from sim.report import plot_accuracy, plot_bytes, results_table
from sim.scenario import strategy_label
from sim.summary import Summary

if TYPE_CHECKING:
    from sim.process_metrics import NodeMetrics, RunEnd
    from sim.process_setup import ProcessSetup
    from sim.scenario import Scenario

#: lines of a failed node's log printed with the failure
LOG_TAIL_LINES: Final = 8
TRANSPORT_FAULT_PREFIX: Final = "transport."
#: exit statuses of a node process stopped by the supervisor (SIGTERM, SIGKILL, or its
#: SIGTERM handler's 143), or None when it had to be killed after the grace period
STOPPED_STATUSES: Final = frozenset({143, -15, -9, None})
_PHASES: Final = {"gradient": 0, "model": 1}


# ------------------------------------------------------------------------- the summary


def build_summary(
    scenario: Scenario,
    setup: ProcessSetup,
    metrics: Mapping[int, NodeMetrics],
    end: RunEnd,
    wall_seconds: float,
) -> Summary:
    """The run's :class:`~sim.summary.Summary`, from the nodes' metrics and final models
    (see the module docstring for what process mode cannot measure)."""
    honest = [files.id for files in setup.nodes if files.honest]
    byzantine = scenario.byzantine_strategies()
    accuracy = {node: _final_accuracy(metrics[node]) for node in honest}
    values = list(accuracy.values())
    all_evaluated = bool(values) and all(math.isfinite(value) for value in values)
    counters = {node: m.final_counters() for node, m in metrics.items()}
    by_kind, by_accused = _faults(metrics[node] for node in honest)
    checkpoints = {f.id: f.checkpoint for f in setup.nodes if f.checkpoint is not None}
    return Summary(
        scenario=scenario.name,
        seed=scenario.seed,
        n=scenario.n,
        f=scenario.f,
        honest=tuple(honest),
        byzantine={node: strategy_label(spec) for node, spec in byzantine.items()},
        steps=scenario.steps,
        agreement_rounds=scenario.agreement_rounds(),
        completed=end.stop_reason == "until",
        stop_reason=end.stop_reason,
        honest_steps_done={node: _steps_done(metrics[node]) for node in honest},
        honest_accuracy_final=accuracy,
        honest_diverged={
            node: step for node in honest if (step := _diverged_at(metrics[node])) is not None
        },
        honest_accuracy_mean=statistics.fmean(values) if all_evaluated else math.nan,
        honest_accuracy_min=min(values) if all_evaluated else math.nan,
        honest_diameter=final_model_diameter(checkpoints, scenario.steps),
        averaging_error=[],
        averaging_error_mean=math.nan,
        averaging_error_max=math.nan,
        bytes_sent={node: int(c.get("bytes_sent", 0)) for node, c in counters.items()},
        messages_sent=sum(_messages_sent(c) for c in counters.values()),
        messages_sent_by_node={node: _messages_sent(c) for node, c in counters.items()},
        bytes_sent_by_kind={},
        messages_sent_by_kind={},
        faults={
            "by_kind": by_kind,
            "by_accused": by_accused,
            "equivocation_proofs": len(_proofs(metrics[node] for node in honest)),
        },
        trace_digest=f"setup:{setup.setup_digest}",
        virtual_seconds=end.run_seconds,
        wall_seconds=wall_seconds,
        crypto=True,
        mode="process",
        fidelity="full",
        session=setup.roster.session_id.hex(),
        public_keys={node: key.hex() for node, key in enumerate(setup.roster.public_keys)},
        config=scenario.to_dict(),
    )


def final_model_diameter(checkpoints: Mapping[int, Path], steps: int) -> list[dict[str, Any]]:
    """The largest L2 distance between two honest nodes' final models, from the
    checkpoints they wrote after their last step; no row with fewer than two."""
    from node.checkpoint import CheckpointError, CheckpointStore

    vectors: list[np.ndarray] = []
    for node, path in sorted(checkpoints.items()):
        try:
            checkpoint = CheckpointStore(path.parent, node).load()
        except CheckpointError:
            continue
        if checkpoint is None or checkpoint.step != steps:
            continue
        model = checkpoint.trainer_state["model"]
        parts = [
            model[name].numpy().astype(np.float64).ravel()
            for name in sorted(model)
            if model[name].is_floating_point()
        ]
        vectors.append(np.concatenate(parts))
    if len(vectors) < 2:
        return []
    diameter = max(
        float(np.linalg.norm(a - b)) for i, a in enumerate(vectors) for b in vectors[i + 1 :]
    )
    return [
        {
            "step": steps - 1,
            "phase": "final_model",
            "round": None,
            "diameter": diameter,
            "nodes": len(vectors),
        }
    ]


def _final_accuracy(metrics: NodeMetrics) -> float:
    evaluated = [r["test_accuracy"] for r in metrics.steps if r.get("test_accuracy") is not None]
    return float(evaluated[-1]) if evaluated else math.nan


def _steps_done(metrics: NodeMetrics) -> int:
    if metrics.summary is not None and "step" in metrics.summary:
        return int(metrics.summary["step"])
    return int(metrics.steps[-1]["step"]) + 1 if metrics.steps else 0


def _diverged_at(metrics: NodeMetrics) -> int | None:
    """The first step whose training loss was not finite (written as null)."""
    return next((int(r["step"]) for r in metrics.steps if r.get("train_loss") is None), None)


def _messages_sent(counters: Mapping[str, Any]) -> int:
    """Messages the node's runner handed to its transport (summary record), else the
    transport's count at the last step."""
    return int(counters.get("messages_out", counters.get("messages_sent", 0)))


def _faults(
    observers: Iterable[NodeMetrics],
) -> tuple[dict[str, dict[int, int]], dict[int, int]]:
    """Faults seen by the honest observers: ({kind: {accused: count}}, {accused: count})."""
    by_kind: dict[str, Counter[int]] = {}
    by_accused: Counter[int] = Counter()
    for observer in observers:
        counters = observer.final_counters()
        for kind, row in _observer_protocol_faults(observer, counters).items():
            by_kind.setdefault(kind, Counter()).update(row)
        by_accused.update(
            {int(k): int(v) for k, v in counters.get("faults_by_accused", {}).items()}
        )
        for kind, peers in sorted(counters.get("transport_faults", {}).items()):
            row = {int(peer): int(count) for peer, count in peers.items()}
            by_kind.setdefault(TRANSPORT_FAULT_PREFIX + kind, Counter()).update(row)
            by_accused.update(row)
    return (
        {kind: dict(sorted(row.items())) for kind, row in sorted(by_kind.items())},
        dict(sorted(by_accused.items())),
    )


def _observer_protocol_faults(
    observer: NodeMetrics, counters: Mapping[str, Any]
) -> dict[str, dict[int, int]]:
    """One observer's {kind: {accused: count}}. Its counters hold exact totals by kind and
    by accused; its ``fault`` records name every (kind, accused) pair (the first of each
    is always written) with a running count. A pair alone in its kind or alone for its
    accused gets the exact total; others keep their last recorded count."""
    table: dict[str, dict[int, int]] = {}
    for record in observer.faults:
        row = table.setdefault(str(record["kind"]), {})
        accused = int(record["accused"])
        row[accused] = max(row.get(accused, 0), int(record.get("count", 1)))
    kind_totals = {str(k): int(v) for k, v in counters.get("faults", {}).items()}
    accused_totals = {int(k): int(v) for k, v in counters.get("faults_by_accused", {}).items()}
    kinds_of: dict[int, list[str]] = {}
    for kind, row in table.items():
        for accused in row:
            kinds_of.setdefault(accused, []).append(kind)
    for kind, row in table.items():
        for accused in row:
            if len(row) == 1 and kind in kind_totals:
                row[accused] = kind_totals[kind]
            elif len(kinds_of[accused]) == 1 and accused in accused_totals:
                row[accused] = accused_totals[accused]
    return table


def _proofs(observers: Iterable[NodeMetrics]) -> set[tuple[Any, ...]]:
    """The distinct equivocation proofs the observers recorded, by (origin, tag)."""
    keys = (_proof_key(record.get("evidence")) for m in observers for record in m.faults)
    return {key for key in keys if key is not None}


def _proof_key(evidence: object) -> tuple[Any, ...] | None:
    if not isinstance(evidence, dict):
        return None
    return (evidence.get("origin"), *evidence.get("tag", ()))


# --------------------------------------------------------------------------- the files


def write_outputs(
    out_dir: Path, summary: Summary, metrics: Mapping[int, NodeMetrics], started_unix_s: float
) -> None:
    """summary.json, metrics.jsonl, faults.jsonl, results.txt, accuracy.png, bytes.png."""
    honest = frozenset(summary.honest)
    (out_dir / "summary.json").write_text(
        json.dumps(summary.to_json(), indent=2) + "\n", encoding="utf-8"
    )
    (out_dir / "results.txt").write_text(results_table(summary) + "\n", encoding="utf-8")
    records: list[dict[str, Any]] = []
    for node, m in sorted(metrics.items()):
        records += [_step_record(node, node in honest, r, started_unix_s) for r in m.steps]
        if node in honest:
            records += [_round_record(node, r, started_unix_s) for r in m.rounds]
    records.sort(key=lambda r: (r["time_s"], r["node"]))
    _write_lines(out_dir / "metrics.jsonl", records)
    _write_lines(out_dir / "faults.jsonl", _fault_records(metrics, honest, started_unix_s))
    curves = {
        node: [
            (int(r["step"]) + 1, float(r["test_accuracy"]))
            for r in metrics[node].steps
            if r.get("test_accuracy") is not None
        ]
        for node in summary.honest
    }
    plot_accuracy(out_dir / "accuracy.png", summary, curves)
    plot_bytes(out_dir / "bytes.png", summary)


def _step_record(
    node: int, honest: bool, record: Mapping[str, Any], started_unix_s: float
) -> dict[str, Any]:
    return {
        "type": "step",
        "node": node,
        "honest": honest,
        "step": record["step"],
        "time_s": record["time_s"] - started_unix_s,
        "train_loss": finite_or_none(record.get("train_loss")),
        "test_loss": finite_or_none(record.get("test_loss")),
        "test_accuracy": record.get("test_accuracy"),
        "bytes_sent": record.get("bytes_sent", 0),
        "bytes_received": record.get("bytes_received", 0),
    }


def _round_record(node: int, record: Mapping[str, Any], started_unix_s: float) -> dict[str, Any]:
    return {
        "type": "node_round",
        "node": node,
        "step": record["step"],
        "phase": _PHASES.get(str(record.get("phase")), record.get("phase")),
        "round": record["round"],
        "time_s": record["time_s"] - started_unix_s,
    }


def _fault_records(
    metrics: Mapping[int, NodeMetrics], honest: frozenset[int], started_unix_s: float
) -> list[dict[str, Any]]:
    """The honest observers' fault records in the simulator's shape (``iid`` is null: a
    node's records do not carry it); each distinct proof once; at most
    FAULT_RECORDS_PER_KEY records per (observer, accused, kind) besides new proofs."""
    written: Counter[tuple[int, int, str]] = Counter()
    proofs_seen: set[tuple[Any, ...]] = set()
    lines = []
    ordered = sorted(
        ((observer, record) for observer in honest for record in metrics[observer].faults),
        key=lambda item: (item[1]["time_s"], item[0]),
    )
    for observer, record in ordered:
        evidence = record.get("evidence")
        proof_key = _proof_key(evidence)
        if proof_key is not None:
            if proof_key in proofs_seen:
                evidence, proof_key = None, None
            else:
                proofs_seen.add(proof_key)
        key = (observer, int(record["accused"]), str(record["kind"]))
        written[key] += 1
        if written[key] > FAULT_RECORDS_PER_KEY and proof_key is None:
            continue
        lines.append(
            {
                "time_s": record["time_s"] - started_unix_s,
                "observer": observer,
                "accused": record["accused"],
                "kind": record["kind"],
                "detail": record.get("detail", ""),
                "iid": None,
                "evidence": evidence if isinstance(evidence, dict) else None,
            }
        )
    return lines


def _write_lines(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as file:
        for record in records:
            file.write(json.dumps(record) + "\n")


def print_failures(summary: Summary, end: RunEnd, logs: Mapping[int, Path]) -> None:
    """Why the run is incomplete: one line per unfinished honest node, and the end of the
    log of each that exited on its own (the others were stopped by the supervisor)."""
    for node in summary.honest:
        done = summary.honest_steps_done.get(node, 0)
        if done >= summary.steps:
            continue
        status = end.exit_statuses.get(node)
        failed = status not in STOPPED_STATUSES
        if failed:
            how = f"exited with status {status}"
        elif end.stop_reason == "time_limit":
            how = "was still running at the time limit"
        else:
            how = "was stopped when another honest node failed"
        print(
            f"jungle sim: honest node {node} {how} after {done}/{summary.steps} steps"
            + (f"; the end of {logs[node]}:" if failed else ""),
            file=sys.stderr,
        )
        if failed:
            try:
                text = logs[node].read_text(encoding="utf-8", errors="replace")
            except OSError:
                text = ""
            for line in text.splitlines()[-LOG_TAIL_LINES:]:
                print(f"  {line}", file=sys.stderr)
