"""The runner: the one place where a node's effects happen.

It feeds (sender, bytes) pairs into the node's :class:`~protocol.core.NodeCore`, executes
the returned steps (sends through the :class:`~node.interfaces.Transport`, faults to the
log and the metrics, outputs to the learning loop) and drives the learning loop of
DESIGN 4.3: at step t, a momentum gradient on a local batch, averaging agreement on it
(R_t rounds), apply it, averaging agreement on the model (1 round by default), next step.

Everything here is synchronous and driven by inputs (``deliver``, ``tick``), so the
simulator can call it from its single delivery loop in virtual time, and the real node
(:meth:`Runner.run`) from a trio receive loop. Torch stays behind the :class:`Learner`
interface.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import trio

from node.interfaces import Transport
from protocol.codec import encode
from protocol.core import NodeCore
from protocol.messages import Message, Phase
from protocol.step import EVERYONE, Decided, Fault, FaultKind, Output, RoundStarted, Step

log = logging.getLogger("jungle.runner")


class Learner(Protocol):
    """What the runner needs from local training (``node.trainer.Trainer`` provides it)."""

    @property
    def dim(self) -> int: ...

    def gradient(self) -> np.ndarray: ...

    def apply_gradient(self, vec: np.ndarray) -> None: ...

    def parameters(self) -> np.ndarray: ...

    def set_parameters(self, vec: np.ndarray) -> None: ...

    def evaluate(self) -> tuple[float, float]: ...

    @property
    def train_loss(self) -> float: ...


#: Rewrites one outgoing message into the bytes actually sent to ``dst`` (protocol-level
#: Byzantine strategies in the simulator; honest nodes send ``data`` unchanged).
OutgoingFilter = Callable[[int, Message, bytes], Iterable[bytes]]


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One finished learning step, as written to the metrics."""

    node: int
    step: int
    time_s: float
    train_loss: float
    test_loss: float | None
    test_accuracy: float | None
    bytes_sent: int
    bytes_received: int
    faults: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class RunnerStatistics:
    step: int
    steps_total: int
    done: bool
    messages_in: int
    messages_out: int
    faults_by_kind: Mapping[str, int]
    faults_by_accused: Mapping[int, int]
    jumps: int


@dataclass(slots=True)
class RunnerHooks:
    """Observers the node and the simulator plug in; all optional."""

    on_output: Callable[[int, Output], None] | None = None
    on_fault: Callable[[int, Fault], None] | None = None
    on_step: Callable[[StepRecord], None] | None = None
    #: called after each finished step, e.g. to checkpoint; gets the next step number
    on_step_end: Callable[[int], None] | None = None
    outgoing_filter: OutgoingFilter | None = None


class Runner:
    def __init__(
        self,
        core: NodeCore,
        transport: Transport,
        learner: Learner,
        *,
        steps: int,
        start_step: int = 0,
        eval_every: int = 10,
        clock: Callable[[], float] = time.monotonic,
        hooks: RunnerHooks | None = None,
    ) -> None:
        if steps < 1:
            raise ValueError(f"steps must be positive, got {steps}")
        if learner.dim != core.config.dim:
            raise ValueError(
                f"model has {learner.dim} parameters, protocol expects {core.config.dim}"
            )
        self.core = core
        self.me = core.config.me
        self._transport = transport
        self._peers = tuple(peer for peer in range(core.config.n) if peer != self.me)
        self._learner = learner
        self._steps = steps
        self._eval_every = max(1, eval_every)
        self._clock = clock
        self._hooks = hooks or RunnerHooks()
        self._model_rounds = core.config.schedule.model_rounds
        self.step = start_step
        self.started = False
        self.stopped = False
        self._messages_in = 0
        self._messages_out = 0
        self._faults_by_kind: Counter[str] = Counter()
        self._faults_by_accused: Counter[int] = Counter()
        self._logged: set[tuple[str, int]] = set()
        self._jumps = 0

    @property
    def done(self) -> bool:
        return self.step >= self._steps

    # ------------------------------------------------------------------ inputs

    def start(self) -> None:
        """Propose our first gradient (or nothing, if the run is already complete)."""
        if self.started:
            return
        self.started = True
        if not self.done:
            self._propose_gradient()

    def deliver(self, src: int, data: bytes | memoryview) -> None:
        """One message from an authenticated peer; the transport or simulator calls this."""
        if self.stopped:
            return
        self._messages_in += 1
        step = self.core.receive(src, data)
        far_ahead = bool(step.faults) and any(
            fault.kind == FaultKind.FAR_AHEAD for fault in step.faults
        )
        self._execute(step)
        if far_ahead:
            self._maybe_jump()

    def tick(self, now_s: float | None = None) -> None:
        """Periodic: payload-fetch retries."""
        if not self.stopped:
            self._execute(self.core.tick())

    def stop(self) -> None:
        """Stop reacting to anything (a crash, or the end of a simulation)."""
        self.stopped = True

    async def run(
        self,
        receive: Callable[[], Awaitable[tuple[int, bytes]]],
        tick_interval_s: float = 0.5,
        linger_s: float = 5.0,
    ) -> None:
        """Node mode: start, then process received messages one at a time until done.

        After the last step the node keeps serving peers for ``linger_s`` so that slower
        honest nodes can still complete the last agreements with our echoes."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._tick_loop, tick_interval_s)
            self.start()
            while not self.done:
                src, data = await receive()
                self.deliver(src, data)
            with trio.move_on_after(linger_s):
                while True:
                    src, data = await receive()
                    self.deliver(src, data)
            nursery.cancel_scope.cancel()

    async def _tick_loop(self, interval_s: float) -> None:
        while True:
            await trio.sleep(interval_s)
            self.tick()

    # ------------------------------------------------------------------ observation

    def statistics(self) -> RunnerStatistics:
        return RunnerStatistics(
            step=self.step,
            steps_total=self._steps,
            done=self.done,
            messages_in=self._messages_in,
            messages_out=self._messages_out,
            faults_by_kind=dict(sorted(self._faults_by_kind.items())),
            faults_by_accused=dict(sorted(self._faults_by_accused.items())),
            jumps=self._jumps,
        )

    # ------------------------------------------------------------------ effects

    def _execute(self, step: Step) -> None:
        outgoing_filter = self._hooks.outgoing_filter
        for outgoing in step.messages:
            data = encode(outgoing.message)  # once, shared by every link
            targets = self._peers if outgoing.to == EVERYONE else (outgoing.to,)
            if outgoing_filter is None:
                self._messages_out += len(targets)
                self._transport.send_many(targets, data)
                continue
            for dst in targets:
                for rewritten in outgoing_filter(dst, outgoing.message, data):
                    self._send(dst, rewritten)
        for fault in step.faults:
            self._record_fault(fault)
        for output in step.outputs:
            if self._hooks.on_output is not None:
                self._hooks.on_output(self.me, output)
            if isinstance(output, Decided):
                self._on_decided(output)
            elif isinstance(output, RoundStarted):
                log.debug(
                    "node %d: step %d phase %d round %d",
                    self.me,
                    output.step,
                    output.phase,
                    output.round,
                )

    def _send(self, dst: int, data: bytes) -> None:
        self._messages_out += 1
        self._transport.send_nowait(dst, data)

    def _record_fault(self, fault: Fault) -> None:
        self._faults_by_kind[fault.kind.value] += 1
        self._faults_by_accused[fault.accused] += 1
        key = (fault.kind.value, fault.accused)
        if key not in self._logged:  # once per (kind, accused); all are counted
            self._logged.add(key)
            log.warning(
                "node %d: fault %s by node %d: %s",
                self.me,
                fault.kind.value,
                fault.accused,
                fault.detail,
            )
        if self._hooks.on_fault is not None:
            self._hooks.on_fault(self.me, fault)

    # ------------------------------------------------------------------ learning loop

    def _on_decided(self, decided: Decided) -> None:
        if self.stopped or decided.step != self.step:
            return  # a step we jumped past
        if decided.phase == Phase.GRADIENT:
            self._learner.apply_gradient(decided.vector)
            if self._model_rounds > 0:
                self._propose(Phase.MODEL, self._learner.parameters())
                return
        else:
            self._learner.set_parameters(decided.vector)
        self._finish_step()

    def _finish_step(self) -> None:
        finished = self.step
        self.step += 1
        evaluate = self.step % self._eval_every == 0 or self.done
        test_loss, test_accuracy = self._learner.evaluate() if evaluate else (None, None)
        if self._hooks.on_step is not None:
            stats = self._transport.statistics()
            self._hooks.on_step(
                StepRecord(
                    node=self.me,
                    step=finished,
                    time_s=self._clock(),
                    train_loss=self._learner.train_loss,
                    test_loss=test_loss,
                    test_accuracy=test_accuracy,
                    bytes_sent=stats.bytes_sent,
                    bytes_received=stats.bytes_received,
                    faults=dict(sorted(self._faults_by_kind.items())),
                )
            )
        if self._hooks.on_step_end is not None:
            self._hooks.on_step_end(self.step)
        if not self.done:
            self._propose_gradient()

    def _propose_gradient(self) -> None:
        self._propose(Phase.GRADIENT, self._learner.gradient())

    def _propose(self, phase: Phase, vector: np.ndarray) -> None:
        vector = np.ascontiguousarray(vector, dtype=self.core.config.dtype)
        self._execute(self.core.propose(self.step, phase, vector))

    def _maybe_jump(self) -> None:
        """Catch up after a restart: if f+1 peers (so at least one honest) are past the
        window we accept, their messages for our step are gone; join them at the step
        after the furthest one an honest node is known to have reached."""
        config = self.core.config
        seen = self.core.highest_steps_seen()
        if len(seen) <= config.f:
            return
        honest_reached = seen[config.f]
        if honest_reached <= self.step + config.steps_ahead_max or self.done:
            return
        target = min(honest_reached + 1, self._steps)
        log.warning(
            "node %d: peers are at step %d; jumping from %d to %d",
            self.me,
            honest_reached,
            self.step,
            target,
        )
        self._jumps += 1
        self.step = target
        self.core.advance_to(target)
        if not self.done:
            self._propose_gradient()
