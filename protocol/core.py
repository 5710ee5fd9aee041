"""A node's whole protocol state: every live agreement instance, behind one entry point.

:class:`NodeCore` is what the runner talks to. It decodes bytes, checks every tag against
what can exist (phase, round, kind) and against the acceptance window around the node's
current step (DESIGN 4.4: a message 1000 rounds ahead is a fault, not a buffer), routes
messages to agreement instances (created on first sight, so that early messages from
faster peers are kept), and retires instances that fall behind the window, freeing
their payloads. Memory per peer is therefore bounded by
``(steps_ahead_max + steps_retained + 1) x phases x rounds_max x 2 x payload_bytes_max``.

Crash-recovery and catching up (DESIGN 3). The invariant: *once every honest node runs
again and links are up, the session makes progress*, for any pattern of crashes of
honest nodes, up to all n at once. Why it holds:

* Nothing an honest node promised is lost. What it signs, echoes and votes is persisted
  before it is sent (``Step.durable``) and put back by :meth:`NodeCore.restore`, so a
  restarted node resends the same bytes, never contradicts itself, and still holds the
  payloads it echoed (others may fetch them from it).
* Everything still relevant reaches a node that lost it. A restarted node asks every
  peer with :class:`~protocol.messages.Catchup` and each answers with its own messages
  for every live instance from that step on (:meth:`NodeCore.replay`); it also resends
  its own restored messages to everyone. Links only resend what was not acknowledged, so
  this is what replaces what died with the process that acknowledged it.
* No node waits on a step nobody serves. Peers keep ``steps_retained`` steps behind their
  own; a node that sees f+1 peers (so at least one honest) beyond that
  (:meth:`NodeCore.catchup_target`) cannot gather n-f participants where it is, and jumps
  to the step they vouch for, asking for a replay there; a restarted node resumes at the
  step it had signed up to, not at its older checkpoint.
* Nothing honest is called a fault: copies of messages already held, messages beyond
  the window and fetch replies for a previous incarnation are dropped and counted
  (:class:`CoreStatistics`), not charged.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from protocol.aggregate import compose, tolerance_problem
from protocol.agreement import (
    AgreementParams,
    AveragingAgreement,
    VectorFilter,
    VectorMemo,
)
from protocol.broadcast import BroadcastParams, Ignored
from protocol.codec import CodecError, decode
from protocol.crypto import SESSION_ID_BYTES, SignatureScheme
from protocol.encoding import ENCODINGS, ErrorFeedback, VectorEncoding
from protocol.messages import (
    Catchup,
    Control,
    Finished,
    InstanceId,
    Kind,
    Message,
    Phase,
    Ready,
    Send,
    WireMessage,
)
from protocol.step import UNKNOWN_NODE, FaultKind, Outgoing, PeerFinished, Step

#: the broadcast kinds an agreement runs (a set of plain ints: enum lookups are slow)
_KINDS = frozenset({int(Kind.VECTOR), int(Kind.REPORT)})
#: a peer gets another replay for the same step only after this many of our ticks (a
#: replay costs up to a window of our payloads: a liar must not make us resend at will)
CATCHUP_TICKS_MIN = 20


class GradientSchedule(StrEnum):
    LOG2 = "log2"  # ceil(log2(t + 1)) rounds at step t = 1, 2, ... (heterogeneous data)
    CONSTANT = "constant"


@dataclass(frozen=True, slots=True)
class RoundSchedule:
    """How many agreement rounds each (step, phase) runs; 0 rounds skips the phase."""

    gradient: GradientSchedule = GradientSchedule.LOG2
    gradient_rounds: int = 1  # used when ``gradient`` is constant
    model_rounds: int = 1
    rounds_max: int = 8  # a bound on everything (DESIGN 4.4)

    def __post_init__(self) -> None:
        if not 1 <= self.rounds_max <= 64:
            raise ValueError(f"rounds_max must be in [1, 64], got {self.rounds_max}")
        if not 0 <= self.gradient_rounds <= self.rounds_max:
            raise ValueError(f"gradient_rounds must be in [0, {self.rounds_max}]")
        if not 0 <= self.model_rounds <= self.rounds_max:
            raise ValueError(f"model_rounds must be in [0, {self.rounds_max}]")

    def rounds(self, step: int, phase: int) -> int:
        """Rounds of agreement (step, phase); steps count from 0, the paper's t = step + 1."""
        if phase == Phase.MODEL:
            return self.model_rounds
        if phase != Phase.GRADIENT:
            return 0
        if self.gradient == GradientSchedule.CONSTANT:
            return self.gradient_rounds
        return min(self.rounds_max, max(1, math.ceil(math.log2(step + 2))))


@dataclass(frozen=True, slots=True)
class ProtocolConfig:
    n: int
    f: int
    me: int
    session: bytes
    dim: int
    dtype: str = "<f4"
    aggregator: str = "trimmed_mean"
    schedule: RoundSchedule = field(default_factory=RoundSchedule)
    steps_ahead_max: int = 4  # accept messages up to this many steps ahead of ours
    steps_retained: int = 2  # keep serving instances this many steps behind ours
    #: the run's number of steps, if known: a message for a later step is a fault
    steps_total: int | None = None
    #: rules applied in order before the aggregator (protocol.aggregate.PRE_AGGREGATORS)
    pre_aggregators: tuple[str, ...] = ()
    #: how vectors travel (protocol.encoding.ENCODINGS); every node of a run uses one
    encoding: str = "f32"
    #: carry each lossy encoding's rounding error into the node's next vector of the phase
    error_feedback: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.pre_aggregators, tuple):
            raise ValueError(f"pre_aggregators must be a tuple, got {self.pre_aggregators!r}")
        # raises for unknown names and f < 0; names the rule that needs more nodes
        problem = tolerance_problem(self.n, self.f, self.aggregator, self.pre_aggregators)
        if problem is not None:
            raise ValueError(problem)
        if not 0 <= self.me < self.n:
            raise ValueError(f"node id {self.me} is not in [0, {self.n})")
        if len(self.session) != SESSION_ID_BYTES:
            raise ValueError(f"session id must be {SESSION_ID_BYTES} bytes")
        if self.dim < 1:
            raise ValueError(f"dim must be positive, got {self.dim}")
        if self.dtype not in ("<f4", "<f8"):
            raise ValueError(f"dtype must be <f4 or <f8, got {self.dtype}")
        if self.encoding not in ENCODINGS:
            raise ValueError(
                f"encoding must be one of {', '.join(ENCODINGS)}, got {self.encoding!r}"
            )
        if self.steps_ahead_max < 0 or self.steps_retained < 0:
            raise ValueError("window sizes must be non-negative")
        if self.steps_total is not None and self.steps_total < 1:
            raise ValueError(f"steps_total must be positive, got {self.steps_total}")

    @property
    def payload_bytes_max(self) -> int:
        """The largest payload a message may carry: an encoded vector."""
        return VectorEncoding(self.encoding, self.dim, np.dtype(self.dtype)).payload_bytes_max


@dataclass(frozen=True, slots=True)
class CoreStatistics:
    current_step: int
    live_instances: int
    stale_messages: int
    messages_handled: int
    faults: Mapping[str, Mapping[int, int]]
    highest_step_seen: Mapping[int, int]
    #: dropped, not faults (see :class:`~protocol.step.FaultKind`), by sender
    far_ahead: Mapping[int, int]
    duplicates: Mapping[int, int]
    stale_replies: Mapping[int, int]
    #: catch-up replays we sent, by peer
    replays_sent: Mapping[int, int]


class NodeCore:
    """Every agreement instance of one node. Inputs in, :class:`Step` out; never raises
    because of a peer."""

    #: the agreement algorithm; tests swap in variants (e.g. without witnesses)
    agreement_class: type[AveragingAgreement] = AveragingAgreement

    def __init__(
        self,
        config: ProtocolConfig,
        scheme: SignatureScheme,
        vector_filter: VectorFilter | None = None,
        decoder: Callable[[bytes | memoryview], WireMessage] | None = None,
        *,
        modelled_broadcast: bool = False,
        vector_memo: VectorMemo | None = None,
    ) -> None:
        """``decoder`` replaces :func:`~protocol.codec.decode` (with this core's payload
        limit); the simulator passes one :class:`~protocol.codec.SharedDecoder` to all its
        cores. It must raise :class:`~protocol.codec.CodecError` for bad bytes.
        ``modelled_broadcast``: reliable broadcast is modelled by the simulator (its
        broadcast fidelity): own broadcasts come out as :class:`~protocol.step.Broadcast`
        outputs and deliveries go in through :meth:`deliver`. ``vector_memo``: shared by
        cores that receive the very same payload objects (the simulator's), so that each
        delivered vector is decoded and checked once, not once per core.

        With a lossy ``config.encoding`` and ``config.error_feedback``, the core holds the
        node's quantisation residuals (:class:`~protocol.encoding.ErrorFeedback`, one per
        phase, carried from step to step). They are not persisted: a restarted node starts
        with a zero residual, which costs one round's rounding error and nothing else."""
        self.config = config
        self._scheme = scheme
        self._ignored = Ignored(config.n)
        #: the node's quantisation residuals, None without error feedback
        lossy = VectorEncoding(config.encoding, config.dim, np.dtype(config.dtype)).lossy
        self.error_feedback = ErrorFeedback() if config.error_feedback and lossy else None
        self._params = AgreementParams(
            BroadcastParams(config.n, config.f, config.me, config.session),
            config.dim,
            np.dtype(config.dtype),
            compose(config.aggregator, config.pre_aggregators),
            vector_filter,
            self._ignored,
            vector_memo,
            modelled_broadcast,
            config.encoding,
            self.error_feedback,
        )
        self._agreements: dict[tuple[int, int], AveragingAgreement] = {}
        self._step = 0
        self._stale = 0
        self._handled = 0
        self._faults: Counter[tuple[str, int]] = Counter()
        self._highest_step_seen = [-1] * config.n  # -1: nothing seen yet
        self._far_ahead = [0] * config.n
        #: peers whose highest step seen lies beyond ours + steps_retained (kept up to
        #: date, so that the per-message catch-up check costs one comparison)
        self._beyond = 0
        self._ticks = 0
        #: per peer: (step, tick) of the last replay we sent it, None if none since it
        #: (re)started
        self._replayed: list[tuple[int, int] | None] = [None] * config.n
        self._replays_sent = [0] * config.n
        self._decode = decoder or functools.partial(
            decode, payload_bytes_max=config.payload_bytes_max
        )

    @property
    def current_step(self) -> int:
        return self._step

    # ------------------------------------------------------------------ local inputs

    def propose(self, step: int, phase: int, vector: np.ndarray) -> Step:
        """Start agreement (step, phase) with our vector; moves the window to ``step``."""
        if step < self._step:
            raise ValueError(f"cannot propose for step {step}: already at step {self._step}")
        self.advance_to(step)
        rounds = self.config.schedule.rounds(step, phase)
        if rounds == 0:
            raise ValueError(f"phase {phase} has no rounds at step {step}")
        return self._account(self._agreement(step, phase, rounds).start(vector))

    def advance_to(self, step: int) -> None:
        """Move the window forward (also used to catch up after a restart)."""
        if step <= self._step:
            return
        self._step = step
        threshold = step + self.config.steps_retained
        self._beyond = sum(1 for seen in self._highest_step_seen if seen > threshold)
        oldest_kept = step - self.config.steps_retained
        for key in sorted(self._agreements):
            if key[0] < oldest_kept:
                self._agreements.pop(key).retire()

    def resume(self) -> Step:
        """Ask the vector filter again for every round whose broadcast it holds back (see
        :data:`~protocol.agreement.VectorFilter`): the host of a rushing adversary calls
        this when the honest vectors it waits for may have become known."""
        step = Step()
        for key in sorted(self._agreements):
            agreement = self._agreements[key]
            if agreement.holding_back:
                step.extend(agreement.resume())
        return self._account(step)

    @property
    def holding_back(self) -> bool:
        """Whether some round's broadcast is held back by the vector filter."""
        return any(agreement.holding_back for agreement in self._agreements.values())

    def tick(self) -> Step:
        """Retry what needs retrying (payload fetches). Call it every so often."""
        self._ticks += 1
        step = Step()
        for key in sorted(self._agreements):
            step.extend(self._agreements[key].tick())
        return self._account(step)

    # ------------------------------------------------------------------ network inputs

    def receive(self, sender: int, data: bytes | memoryview) -> Step:
        """Bytes from an authenticated peer."""
        try:
            message = self._decode(data)
        except CodecError as exc:
            step = Step()
            step.fault(self._accused(sender), FaultKind.MALFORMED, str(exc))
            return self._account(step)
        if isinstance(message, Catchup | Finished):
            return self.handle_control(sender, message)
        return self.handle(sender, message)

    def handle_control(self, sender: int, msg: Control) -> Step:
        """A :class:`~protocol.messages.Catchup` or :class:`~protocol.messages.Finished`."""
        step = Step()
        config = self.config
        if not 0 <= sender < config.n or sender == config.me:
            step.fault(self._accused(sender), FaultKind.UNKNOWN_SENDER, f"sender id {sender}")
            return self._account(step)
        if isinstance(msg, Finished):
            if config.steps_total is not None and msg.steps > config.steps_total:
                step.fault(
                    sender,
                    FaultKind.FAR_AHEAD,
                    f"says it finished {msg.steps} steps of {config.steps_total}",
                )
                return self._account(step)
            self._saw_step(sender, msg.steps - 1)
            step.outputs.append(PeerFinished(sender, msg.steps))
            return step
        self._saw_step(sender, msg.step)
        last = self._replayed[sender]
        if last is not None and msg.step <= last[0] and self._ticks - last[1] < CATCHUP_TICKS_MIN:
            return step  # answered lately: a repeat costs us a window of payloads
        self._replayed[sender] = (msg.step, self._ticks)
        self._replays_sent[sender] += 1
        return self.replay(sender, msg.step)

    def handle(self, sender: int, msg: Message) -> Step:
        self._handled += 1
        config = self.config
        if not 0 <= sender < config.n or sender == config.me:
            step = Step()
            step.fault(self._accused(sender), FaultKind.UNKNOWN_SENDER, f"sender id {sender}")
            return self._account(step)
        iid = msg.iid
        tag = iid.tag
        if tag.step > self._highest_step_seen[sender]:
            self._saw_step(sender, tag.step)
        agreement = self._agreements.get((tag.step, tag.phase))
        if (
            agreement is not None
            and tag.round < agreement.rounds
            and tag.kind in _KINDS
            and iid.origin < config.n
        ):
            # The common case. A live agreement lies inside the window: it was created
            # inside it, the window only moves forward, and leaving it retires it.
            step = agreement.handle(sender, msg)
            return self._account(step) if step.faults else step
        step = Step()
        if tag.step < self._step - config.steps_retained:
            self._stale += 1  # late, from a slow peer: not a fault, nothing left to do
            return step
        if config.steps_total is not None and tag.step >= config.steps_total:
            step.fault(
                sender,
                FaultKind.FAR_AHEAD,
                f"step {tag.step} does not exist: the run has {config.steps_total} steps",
                msg.iid,
            )
            return self._account(step)
        if tag.step > self._step + config.steps_ahead_max:
            # We are the slow one (or the sender lies, which the f+1 rule of
            # catchup_target absorbs): dropped, not buffered (DESIGN 4.4), not a fault.
            self._far_ahead[sender] += 1
            return step
        rounds = config.schedule.rounds(tag.step, tag.phase)
        if iid.origin >= config.n or tag.kind not in _KINDS:
            step.fault(sender, FaultKind.BAD_TAG, f"no such instance {msg.iid}", msg.iid)
            return self._account(step)
        if tag.round >= rounds:
            step.fault(
                sender,
                FaultKind.BAD_TAG,
                f"round {tag.round} of phase {tag.phase} at step {tag.step} does not exist",
                msg.iid,
            )
            return self._account(step)
        agreement = self._agreement(tag.step, tag.phase, rounds)
        return self._account(agreement.handle(sender, msg))

    def deliver(self, iid: InstanceId, payload: bytes) -> Step:
        """A modelled reliable broadcast delivered ``payload`` for ``iid`` here (the
        simulator's broadcast fidelity). Steps behind the window are stale, as in
        :meth:`handle`; steps ahead of it are kept, not dropped: these come from the
        simulator's model of honest broadcasts, which cannot flood, and nothing would
        deliver them again (a real node's peers would replay them on a catch-up)."""
        tag = iid.tag
        config = self.config
        if tag.step < self._step - config.steps_retained:
            self._stale += 1
            return Step()
        if iid.origin != config.me:
            self._saw_step(iid.origin, tag.step)
        agreement = self._agreements.get((tag.step, tag.phase))
        rounds = (
            config.schedule.rounds(tag.step, tag.phase) if agreement is None else agreement.rounds
        )
        if tag.round >= rounds or tag.kind not in _KINDS:
            raise ValueError(f"a modelled broadcast for an instance that cannot exist: {iid}")
        if agreement is None:
            agreement = self._agreement(tag.step, tag.phase, rounds)
        step = agreement.deliver(iid, payload)
        return self._account(step) if step.faults else step

    # ------------------------------------------------------------------ crash-recovery

    def restore(self, messages: Iterable[Message]) -> int:
        """Put back what was persisted (``Step.durable``) before a restart: the SENDs this
        node accepted and the READYs it sent. Call it once, before anything else, after
        :meth:`advance_to` the step the node resumes at; entries outside the window are
        skipped. Returns the highest step at which this node had signed a SEND of its own
        (-1 if none): the node resumes there, since its peers may have moved on."""
        config = self.config
        oldest_kept = self._step - config.steps_retained
        newest_kept = self._step + config.steps_ahead_max
        own_step = -1
        for message in messages:
            if not isinstance(message, Send | Ready):
                raise ValueError(f"only SENDs and READYs are persisted, got {message!r}")
            tag = message.iid.tag
            if isinstance(message, Send) and message.iid.origin == config.me:
                own_step = max(own_step, tag.step)
            rounds = config.schedule.rounds(tag.step, tag.phase)
            if oldest_kept <= tag.step <= newest_kept and tag.round < rounds:
                self._agreement(tag.step, tag.phase, rounds).restore(message)
        return own_step

    def replay(self, to: int, from_step: int = 0) -> Step:
        """Our own SEND, ECHO and READY messages, as sent, for every live agreement at
        ``from_step`` or later, addressed to ``to`` (:data:`~protocol.step.EVERYONE`
        for all peers)."""
        step = Step()
        for key in sorted(self._agreements):
            if key[0] >= from_step:
                step.messages += [Outgoing(to, m) for m in self._agreements[key].replay()]
        return step

    def peer_restarted(self, peer: int) -> None:
        """The transport met a new incarnation of ``peer``: what it had asked of us and
        we of it (fetches, replays) starts afresh."""
        if not 0 <= peer < self.config.n:
            return
        self._replayed[peer] = None
        for agreement in self._agreements.values():
            agreement.forget_peer(peer)

    def catchup_target(self) -> int | None:
        """The step to jump to, or None to stay.

        At least f+1 peers (so at least one honest) have sent messages for steps beyond
        ``steps_retained`` past ours: at least one honest node no longer serves our step,
        so n-f participants can no longer be found here. The (f+1)-th highest step seen is
        one an honest node has started, and keeps serving for ``steps_retained`` steps."""
        config = self.config
        if self._beyond <= config.f:
            return None
        reached = sorted(self._highest_step_seen, reverse=True)[config.f]
        if reached <= self._step + config.steps_retained:
            return None
        if config.steps_total is not None:
            reached = min(reached, config.steps_total - 1)
        return reached if reached > self._step else None

    def waiting_for(self) -> str:
        """What this node's current step still lacks, in words (its stall warning)."""
        for phase in (Phase.GRADIENT, Phase.MODEL):
            agreement = self._agreements.get((self._step, phase))
            if agreement is not None and agreement.started and not agreement.decided:
                return f"step {self._step} {phase.name.lower()} {agreement.waiting_for()}"
        return f"step {self._step}: no agreement under way (computing our next vector)"

    # ------------------------------------------------------------------ observation

    def highest_steps_seen(self) -> list[int]:
        """The highest step each peer has sent us a message for, highest first."""
        return sorted((s for s in self._highest_step_seen if s >= 0), reverse=True)

    def agreement(self, step: int, phase: int) -> AveragingAgreement | None:
        return self._agreements.get((step, phase))

    def statistics(self) -> CoreStatistics:
        faults: dict[str, dict[int, int]] = {}
        for (kind, accused), count in sorted(self._faults.items()):
            faults.setdefault(kind, {})[accused] = count
        return CoreStatistics(
            current_step=self._step,
            live_instances=len(self._agreements),
            stale_messages=self._stale,
            messages_handled=self._handled,
            faults=faults,
            highest_step_seen={
                peer: seen for peer, seen in enumerate(self._highest_step_seen) if seen >= 0
            },
            far_ahead=_nonzero(self._far_ahead),
            duplicates=_nonzero(self._ignored.duplicates),
            stale_replies=_nonzero(self._ignored.stale_replies),
            replays_sent=_nonzero(self._replays_sent),
        )

    # ------------------------------------------------------------------ internals

    def _saw_step(self, sender: int, step: int) -> None:
        previous = self._highest_step_seen[sender]
        if step > previous:
            self._highest_step_seen[sender] = step
            threshold = self._step + self.config.steps_retained
            if previous <= threshold < step:
                self._beyond += 1

    def _accused(self, sender: int) -> int:
        return sender if 0 <= sender < self.config.n else UNKNOWN_NODE

    def _agreement(self, step: int, phase: int, rounds: int) -> AveragingAgreement:
        agreement = self._agreements.get((step, phase))
        if agreement is None:
            agreement = self.agreement_class(step, phase, rounds, self._params, self._scheme)
            self._agreements[(step, phase)] = agreement
        return agreement

    def _account(self, step: Step) -> Step:
        for fault in step.faults:
            self._faults[(fault.kind.value, fault.accused)] += 1
        return step


def _nonzero(counts: list[int]) -> dict[int, int]:
    return {node: count for node, count in enumerate(counts) if count}
