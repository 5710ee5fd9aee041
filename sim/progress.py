"""A progress display for long simulations: a bar on a terminal, plain lines otherwise.

The engine calls :meth:`Progress.poll` often (at honest step ends and on one node's
ticks); polling only reads the wall clock until an update is due, so it costs nothing
measurable and, reading no simulation state until then, cannot change what the
simulation does (the display never touches the trace digest).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TextIO

#: seconds between two redraws of the bar on a terminal
TTY_INTERVAL_S: Final = 0.25
#: seconds between two plain progress lines (logs, CI)
LINE_INTERVAL_S: Final = 10.0
BAR_WIDTH: Final = 28


@dataclass(frozen=True, slots=True)
class ProgressSnapshot:
    """Where a run stands, summed over honest nodes: agreement rounds entered (the bar:
    later steps run more rounds, so rounds measure work better than steps), steps
    finished; then virtual time and messages delivered."""

    rounds_done: int
    rounds_total: int
    steps_done: int
    steps_total: int
    virtual_s: float
    messages: int


class Progress:
    """Renders :class:`ProgressSnapshot` values to ``stream`` (stderr by default)."""

    def __init__(
        self,
        label: str,
        stream: TextIO | None = None,
        *,
        tty: bool | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._label = label
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty() if tty is None else tty
        self._interval_s = TTY_INTERVAL_S if self._tty else LINE_INTERVAL_S
        self._clock = clock
        self._started_s = clock()
        self._next_s = self._started_s + self._interval_s

    def poll(self, snapshot: Callable[[], ProgressSnapshot]) -> None:
        """Redraw if an update is due; ``snapshot`` is only called then."""
        now_s = self._clock()
        if now_s < self._next_s:
            return
        self._next_s = now_s + self._interval_s
        self._render(snapshot(), now_s)

    def finish(self, snapshot: ProgressSnapshot) -> None:
        """The final state, then a newline on a terminal."""
        self._render(snapshot, self._clock())
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()

    def _render(self, snapshot: ProgressSnapshot, now_s: float) -> None:
        wall_s = max(now_s - self._started_s, 1e-9)
        fraction = min(snapshot.rounds_done / max(snapshot.rounds_total, 1), 1.0)
        figures = (
            f"{snapshot.steps_done}/{snapshot.steps_total} honest steps  "
            f"virtual {snapshot.virtual_s:8.2f} s  wall {wall_s:6.1f} s  "
            f"{snapshot.messages / wall_s:8.0f} msg/s"
        )
        if self._tty:
            filled = round(fraction * BAR_WIDTH)
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            self._stream.write(f"\r{self._label} [{bar}] {fraction:4.0%}  {figures}")
        else:
            self._stream.write(f"{self._label}: {fraction:4.0%}  {figures}\n")
        self._stream.flush()
