"""What ``jungle sim --mode process`` reads back from its node processes: each node's
metrics file as it grows (:class:`NodeMetrics`) and how the run ended (:class:`RunEnd`).
Shared by the supervisor (sim/process_mode.py) and the report (sim/process_report.py)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any


class NodeMetrics:
    """One node's metrics file, read as it grows: complete lines only, each once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.steps: list[dict[str, Any]] = []
        self.rounds: list[dict[str, Any]] = []
        self.faults: list[dict[str, Any]] = []
        self.checkpoint_steps: list[int] = []
        self.summary: dict[str, Any] | None = None
        self._file: IO[bytes] | None = None
        self._partial = b""

    @property
    def steps_seen(self) -> int:
        return len(self.steps)

    @property
    def rounds_seen(self) -> int:
        return len(self.rounds)

    @property
    def messages_sent(self) -> int:
        return int(self.steps[-1]["messages_sent"]) if self.steps else 0

    def finished(self, steps: int) -> bool:
        """Whether the node finished its last step (and saved its final model)."""
        done = self.summary is not None and bool(self.summary.get("done"))
        return done or any(step >= steps for step in self.checkpoint_steps)

    def final_counters(self) -> Mapping[str, Any]:
        """The last cumulative counters: the summary record, else the last step record."""
        if self.summary is not None and "bytes_sent" in self.summary:
            return self.summary
        return self.steps[-1] if self.steps else {}

    def poll(self) -> None:
        """Read whatever complete lines were appended since the last call."""
        if self._file is None:
            try:
                self._file = open(self.path, "rb")  # closed by close()
            except FileNotFoundError:
                return  # the node has not started yet
        chunk = self._file.read()
        if not chunk:
            return
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # not ours to judge: a node only ever writes whole JSON lines
            if isinstance(record, dict):
                self._add(record)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _add(self, record: dict[str, Any]) -> None:
        kind = record.get("type")
        if kind == "step":
            self.steps.append(record)
        elif kind == "round":
            self.rounds.append(record)
        elif kind == "fault":
            self.faults.append(record)
        elif kind == "checkpoint":
            self.checkpoint_steps.append(int(record["step"]))
        elif kind == "summary":
            self.summary = record


# ------------------------------------------------------------------------ supervision


@dataclass(frozen=True, slots=True)
class RunEnd:
    """How the node processes ended, as the supervisor saw it."""

    #: "until" (every honest node finished), "time_limit" or "node_failed"
    stop_reason: str
    #: wall seconds from the launch to the last process gone
    run_seconds: float
    #: Unix time of the launch: node metrics carry Unix times
    started_unix_s: float
    #: node -> exit status (None: never exited, then killed)
    exit_statuses: Mapping[int, int | None]
