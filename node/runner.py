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

What a real node adds in :meth:`Runner.run`:

- **Persist before you promise.** With a :class:`~node.interfaces.Journal`, what a step
  marks durable is appended to it at once, and that step's messages wait in order until
  a flusher task has fsynced the journal (in a worker thread), then go out. Everything
  accumulated during one fsync goes out after the next: group commit, one fsync per
  batch rather than per message. The simulator has no journal and sends at once.
- **Compute off the event loop.** Gradients and evaluations run in a worker thread, one
  at a time, while the node keeps answering its peers (echoes, readies, fetches, acks).
  A continuation runs back on the event loop; one made stale by a jump is dropped. The
  simulator computes inline, in the same order.
- **Finishing together.** After its last step a node tells its peers
  (:class:`~protocol.messages.Finished`) and keeps serving them until every peer has said
  the same, or ``linger_s`` has passed: the slowest honest nodes are not left below quorum.
- **Catching up.** A restarted node resends what it had sent and asks its peers for a
  replay (:class:`~protocol.messages.Catchup`); a node that finds f+1 peers beyond the
  steps they still serve jumps to them and asks for a replay there.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import trio

from node.interfaces import Journal, Transport
from protocol.codec import encode
from protocol.core import NodeCore
from protocol.messages import Catchup, Finished, InstanceId, Message, Phase
from protocol.settings import SettingsError, field_problems, setting
from protocol.step import (
    EVERYONE,
    Decided,
    Fault,
    Output,
    PeerFinished,
    RoundStarted,
    Step,
)

log = logging.getLogger("jungle.runner")


@dataclass(frozen=True, slots=True)
class RunSettings:
    """How long a run is and how often the runner acts: top-level keys of a scenario and
    ``[node]`` keys of a node config."""

    steps: int = setting(100, "learning steps to run", minimum=1)
    eval_every: int = setting(
        10, "evaluate on the test set every this many steps (and after the last)", minimum=1
    )
    tick_interval_s: float = setting(
        0.5, "how often the protocol retries payload fetches", above=0.0, unit="s"
    )

    def __post_init__(self) -> None:
        problems = field_problems(self)
        if problems:
            raise SettingsError(problems)


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

    @property
    def batches(self) -> int:
        """Local mini-batches drawn so far (inner steps x batches per gradient per step)."""
        ...


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
    #: local mini-batches this node has drawn by the end of the step (all inner steps)
    batches: int = 0


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
    #: rounds of agreement this node has entered (a progress marker)
    rounds_started: int
    #: peers that said they have finished all their steps
    peers_finished: frozenset[int]


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
        journal: Journal | None = None,
        rejoin: bool = False,
    ) -> None:
        """``journal``: where durable messages go before anything is sent (real nodes).
        ``rejoin``: this node restarted; its core holds restored state, which
        :meth:`start` resends, and it asks its peers to catch it up."""
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
        self._journal = journal
        self._rejoin = rejoin
        self.step = start_step
        self.started = False
        self.stopped = False
        self._messages_in = 0
        self._messages_out = 0
        self._faults_by_kind: Counter[str] = Counter()
        self._faults_by_accused: Counter[int] = Counter()
        self._logged: set[tuple[str, int]] = set()
        self._jumps = 0
        self._rounds_started = 0
        self._peers_finished: set[int] = set()
        self._announced_finished = False
        #: bumped by a jump: continuations of computations started before it are dropped
        self._generation = 0
        #: messages waiting for the journal's next sync (real nodes), in order
        self._held: list[tuple[Sequence[int], bytes]] = []
        self._held_added = trio.lowlevel.ParkingLot()
        self._flushing = False
        self._flushed = trio.lowlevel.ParkingLot()
        #: unparked when we announce our end or a peer announces its own
        self._changed = trio.lowlevel.ParkingLot()
        #: computations waiting for the worker thread (real nodes); None: compute inline
        self._jobs: deque[tuple[Callable[[], Any], Callable[[Any], None]]] | None = None
        self._job_added = trio.lowlevel.ParkingLot()

    @property
    def done(self) -> bool:
        return self.step >= self._steps

    @property
    def all_peers_finished(self) -> bool:
        return len(self._peers_finished) == len(self._peers)

    # ------------------------------------------------------------------ inputs

    def start(self) -> None:
        """Propose our first gradient (or nothing, if the run is already complete).

        A rejoining node first resends its restored messages to everyone and asks every
        peer to replay theirs from our step on: links only resend what the other side had
        not acknowledged, and what our previous incarnation acknowledged died with it."""
        if self.started:
            return
        self.started = True
        if self._rejoin:
            step = self.core.replay(EVERYONE)
            step.broadcast(Catchup(self.step))
            self._execute(step)
        if not self.done:
            self._propose_gradient()
        else:
            self._announce_finished()

    def deliver(self, src: int, data: bytes | memoryview) -> None:
        """One message from an authenticated peer; the transport or simulator calls this."""
        if self.stopped:
            return
        self._messages_in += 1
        self._execute(self.core.receive(src, data))
        target = self.core.catchup_target()
        if target is not None:
            self._jump(target)

    def deliver_broadcast(self, iid: InstanceId, payload: bytes) -> None:
        """A modelled reliable broadcast delivered ``payload`` for ``iid`` (the
        simulator's broadcast fidelity calls this instead of :meth:`deliver`)."""
        if self.stopped:
            return
        self._messages_in += 1
        step = self.core.deliver(iid, payload)
        if step.outputs or step.messages or step.faults:  # usually none: a vote counted
            self._execute(step)
        target = self.core.catchup_target()
        if target is not None:
            self._jump(target)

    def resume(self) -> None:
        """Ask the vector filter again for the rounds it holds back (the simulator wakes a
        rushing adversary so when the honest vectors it waits for may be known)."""
        if not self.stopped:
            self._execute(self.core.resume())

    def tick(self, now_s: float | None = None) -> None:
        """Periodic: payload-fetch retries."""
        if not self.stopped:
            self._execute(self.core.tick())

    def peer_restarted(self, peer: int) -> None:
        """The transport met a new incarnation of ``peer`` (it restarted). Its replay
        request will come; what it had asked of us starts afresh, and it learns again
        that we are finished, if we are."""
        if self.stopped:
            return
        self.core.peer_restarted(peer)
        self._peers_finished.discard(peer)
        if self._announced_finished:
            step = Step()
            step.send(peer, Finished(self._steps))
            self._execute(step)

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

        Computations run in a worker thread and, with a journal, messages leave only once
        what they promise is durable (see the module docstring). After the last step the
        node keeps serving its peers until all have finished, or for ``linger_s``."""
        async with trio.open_nursery() as nursery:
            self._jobs = deque()
            nursery.start_soon(self._compute_loop)
            if self._journal is not None:
                nursery.start_soon(self._flush_loop)
            nursery.start_soon(self._tick_loop, tick_interval_s)
            self.start()
            nursery.start_soon(self._receive_loop, receive)
            while not self._announced_finished:  # the last step, evaluated and recorded
                await self._changed.park()
            with trio.move_on_after(linger_s):
                while not self.all_peers_finished:
                    await self._changed.park()
            await self.wait_flushed()
            nursery.cancel_scope.cancel()

    async def _receive_loop(self, receive: Callable[[], Awaitable[tuple[int, bytes]]]) -> None:
        while True:
            src, data = await receive()
            self.deliver(src, data)

    async def wait_flushed(self) -> None:
        """Until every message handed to the runner so far has gone to the transport."""
        while self._held or self._flushing:
            await self._flushed.park()

    async def _tick_loop(self, interval_s: float) -> None:
        while True:
            await trio.sleep(interval_s)
            self.tick()

    async def _compute_loop(self) -> None:
        """Run computations one at a time in a worker thread (the learner is not
        thread-safe, and it is touched by nothing else while one runs: a decision of the
        current step needs our proposal, which waits for the computation)."""
        assert self._jobs is not None
        while True:
            while not self._jobs:
                await self._job_added.park()
            work, then = self._jobs.popleft()
            result = await trio.to_thread.run_sync(work)
            if not self.stopped:
                then(result)

    async def _flush_loop(self) -> None:
        """Group commit: fsync the journal, then send what was held for it, in order."""
        assert self._journal is not None
        while True:
            while not self._held:
                await self._held_added.park()
            batch, self._held = self._held, []
            self._flushing = True
            try:
                await trio.to_thread.run_sync(self._journal.sync)
                for targets, data in batch:
                    self._transport.send_many(targets, data)
            finally:
                self._flushing = False
                self._flushed.unpark_all()

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
            rounds_started=self._rounds_started,
            peers_finished=frozenset(self._peers_finished),
        )

    # ------------------------------------------------------------------ effects

    def _execute(self, step: Step) -> None:
        journal = self._journal
        if journal is not None:
            for message in step.durable:
                journal.append(message.iid.tag.step, encode(message))
        outgoing_filter = self._hooks.outgoing_filter
        for outgoing in step.messages:
            wire = outgoing.message
            data = encode(wire)  # once, shared by every link
            targets = self._peers if outgoing.to == EVERYONE else (outgoing.to,)
            if outgoing_filter is None or isinstance(wire, Catchup | Finished):
                self._send(targets, data)
                continue
            for dst in targets:
                for rewritten in outgoing_filter(dst, wire, data):
                    self._send((dst,), rewritten)
        for fault in step.faults:
            self._record_fault(fault)
        for output in step.outputs:
            if self._hooks.on_output is not None:
                self._hooks.on_output(self.me, output)
            if isinstance(output, Decided):
                self._on_decided(output)
            elif isinstance(output, RoundStarted):
                self._rounds_started += 1
                log.debug(
                    "node %d: step %d phase %d round %d",
                    self.me,
                    output.step,
                    output.phase,
                    output.round,
                )
            elif isinstance(output, PeerFinished):
                self._peers_finished.add(output.peer)
                self._changed.unpark_all()

    def _send(self, targets: Sequence[int], data: bytes) -> None:
        self._messages_out += len(targets)
        if self._journal is None:
            self._transport.send_many(targets, data)
            return
        self._held.append((targets, data))  # after the journal's next sync
        self._held_added.unpark_all()

    def _compute(self, work: Callable[[], Any], then: Callable[[Any], None]) -> None:
        """``then(work())``: inline (the simulator), or with ``work`` in the worker thread."""
        if self._jobs is None:
            then(work())
            return
        self._jobs.append((work, then))
        self._job_added.unpark_all()

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
        if self._journal is not None:
            self._journal.prune_below(self.step - self.core.config.steps_retained)
        evaluate = self.step % self._eval_every == 0 or self.done
        generation = self._generation

        def then(result: tuple[float | None, float | None]) -> None:
            test_loss, test_accuracy = result
            self._record_step(finished, test_loss, test_accuracy)
            if generation != self._generation:
                return  # we jumped while evaluating; the jump proposed already
            if self.done:
                self._announce_finished()
            else:
                self._propose_gradient()

        self._compute(self._learner.evaluate if evaluate else _not_evaluated, then)

    def _record_step(
        self, finished: int, test_loss: float | None, test_accuracy: float | None
    ) -> None:
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
                    batches=self._learner.batches,
                )
            )
        if self._hooks.on_step_end is not None:
            self._hooks.on_step_end(self.step)

    def _announce_finished(self) -> None:
        if self._announced_finished:
            return
        self._announced_finished = True
        step = Step()
        step.broadcast(Finished(self._steps))
        self._execute(step)
        self._changed.unpark_all()

    def _propose_gradient(self) -> None:
        generation = self._generation

        def then(gradient: np.ndarray) -> None:
            if generation == self._generation and not self.done:
                self._propose(Phase.GRADIENT, gradient)

        self._compute(self._learner.gradient, then)

    def _propose(self, phase: Phase, vector: np.ndarray) -> None:
        vector = np.ascontiguousarray(vector, dtype=self.core.config.dtype)
        self._execute(self.core.propose(self.step, phase, vector))

    def _jump(self, target: int) -> None:
        """Catch up: f+1 peers are beyond the steps they still serve for us, so our step
        cannot gather n-f participants any more (:meth:`NodeCore.catchup_target`). Join
        them at the step they vouch for, with our current model (the model agreement pulls
        it to theirs), and ask every peer to replay what we dropped for it."""
        if self.done or target <= self.step:
            return
        log.warning(
            "node %d: f+1 peers are at step %d or beyond; jumping from %d to %d",
            self.me,
            target,
            self.step,
            target,
        )
        self._jumps += 1
        self._generation += 1
        self.step = target
        self.core.advance_to(target)
        if self._journal is not None:
            self._journal.prune_below(target - self.core.config.steps_retained)
        step = Step()
        step.broadcast(Catchup(target))
        self._execute(step)
        self._propose_gradient()


def _not_evaluated() -> tuple[None, None]:
    return None, None
