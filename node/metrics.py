"""What a node tells its operator: a JSONL metrics file and a live progress line.

The metrics file has one JSON object per line, each with a ``type``:

- ``start``: node id, public key, session id, first step, steps, whether it resumed, config;
- ``round``: a round of agreement began (step, phase, round, time);
- ``step``: one finished learning step: rounds it took, train loss, test loss/accuracy when
  evaluated, bytes and messages sent/received, peers connected, protocol faults by kind and
  by accused node, transport faults ``{kind: {peer: count}}`` (peer -1: unauthenticated);
- ``fault``: a protocol fault (kind, accused, detail, count so far, equivocation evidence);
- ``checkpoint``: a checkpoint was written;
- ``summary``: the last record of a run, with final counters.

Lines are flushed as written, so ``tail -f`` and tests can follow a live node, and the file
is opened for appending, so a restarted node continues the same file after a new ``start``.

Bounded like everything else (DESIGN 4.4): a Byzantine peer can make a node detect
millions of faults, so ``fault`` lines are written for the first occurrence of each (kind,
accused) pair and then at 10, 100, 1000, ... occurrences; every fault is still counted in
the ``step`` records. Equivocation proofs are always written (each is evidence a third party
can check with ``jungle verify-evidence``), up to :data:`EVIDENCE_RECORDS_MAX`.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

from protocol.step import Fault

EVIDENCE_RECORDS_MAX: Final = 10_000


@dataclass(frozen=True, slots=True)
class MetricsStatistics:
    records_written: int
    faults_seen: int
    fault_records_written: int
    evidence_records_written: int


class MetricsWriter:
    """Appends JSON records to one file; a writer without a path only counts."""

    def __init__(self, path: Path | None, node_id: int) -> None:
        self.path = path
        self._node = node_id
        self._file: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")  # closed in close()
        self._records = 0
        self._fault_counts: Counter[tuple[str, int]] = Counter()
        self._fault_records = 0
        self._evidence_records = 0

    def write(self, record_type: str, /, **fields: Any) -> None:
        """One record: ``{"type": record_type, "node": id, "time_s": now, **fields}``."""
        self._records += 1
        if self._file is None:
            return
        record = {
            "type": record_type,
            "node": self._node,
            "time_s": round(time.time(), 6),
            **fields,
        }
        self._file.write(json.dumps(_clean(record), separators=(",", ":")) + "\n")
        self._file.flush()

    def fault(self, fault: Fault, step: int) -> None:
        """Record a protocol fault, sparingly (see the module docstring)."""
        key = (fault.kind.value, fault.accused)
        self._fault_counts[key] += 1
        count = self._fault_counts[key]
        evidence = None if fault.evidence is None else fault.evidence.to_json()
        if evidence is not None:
            if self._evidence_records >= EVIDENCE_RECORDS_MAX:
                evidence = None
            else:
                self._evidence_records += 1
        if evidence is None and not is_log_point(count):
            return
        self._fault_records += 1
        self.write(
            "fault",
            step=step,
            kind=fault.kind.value,
            accused=fault.accused,
            count=count,
            detail=fault.detail,
            evidence=evidence,
        )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def statistics(self) -> MetricsStatistics:
        return MetricsStatistics(
            records_written=self._records,
            faults_seen=sum(self._fault_counts.values()),
            fault_records_written=self._fault_records,
            evidence_records_written=self._evidence_records,
        )


def is_log_point(count: int) -> bool:
    """True for 1, 10, 100, ...: where a repeated event is reported again."""
    while count % 10 == 0:
        count //= 10
    return count == 1


def peer_keyed(counts: Mapping[str, Mapping[int, int]]) -> dict[str, dict[str, int]]:
    """``{kind: {peer: n}}`` with string peer keys, as JSON objects require."""
    return {kind: {str(peer): n for peer, n in sorted(by.items())} for kind, by in counts.items()}


def _clean(value: Any) -> Any:
    """JSON has no NaN or infinity: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): _clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item) for item in value]
    return value


# -------------------------------------------------------------------------- progress line


@dataclass(frozen=True, slots=True)
class Progress:
    step: int
    steps: int
    accuracy: float | None
    peers_connected: int
    peers: int
    bytes_sent: int
    faults: int


class ProgressLine:
    """One self-overwriting status line on a terminal (``stream`` must be a TTY).

    Log lines share the terminal: :meth:`clear` before writing one, :meth:`redraw` after
    (node/app.py's log handler does both).
    """

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._text = ""

    def show(self, progress: Progress) -> None:
        accuracy = "-" if progress.accuracy is None else f"{progress.accuracy:.3f}"
        self._text = (
            f"step {progress.step}/{progress.steps}  acc {accuracy}  "
            f"peers {progress.peers_connected}/{progress.peers}  "
            f"sent {progress.bytes_sent / 1e6:.1f} MB  faults {progress.faults}"
        )
        self.redraw()

    def clear(self) -> None:
        if self._text:
            self._stream.write("\r\x1b[K")

    def redraw(self) -> None:
        if self._text:
            self._stream.write("\r\x1b[K" + self._text)
            self._stream.flush()

    def finish(self) -> None:
        """Leave the last state on screen and move to a fresh line."""
        if self._text:
            self._stream.write("\n")
            self._stream.flush()
            self._text = ""
