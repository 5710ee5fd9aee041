"""Averaging agreement: RB-TM with witnesses, R rounds per instance (DESIGN 4.2).

One :class:`AveragingAgreement` agrees on one vector (a gradient or the model) for one
(step, phase). In round r, node i:

1. reliably broadcasts its vector x_i (kind VECTOR);
2. collects delivered vectors; one that fails validation (undecodable, wrong dtype or
   length, NaN/Inf) is dropped, identically at every honest node since all of them
   deliver the same bytes, and becomes a fault against its origin;
3. once it holds ``report_quorum`` = n-f valid vectors, reliably broadcasts
   REPORT(origins held) (kind REPORT), once;
4. counts j as a *witness* once j's REPORT is delivered and every origin in it is held
   locally (re-checked as vectors arrive);
5. with ``witness_quorum`` = n-f witnesses, sets x_i := aggregate(all vectors held, f)
   and enters round r+1; after round R-1 it decides.

Witnesses (Abraham, Amit, Dolev 2004) make any two honest nodes' sets share at least n-f
vectors, which is what makes the trimmed mean contract even at n = 3f+1.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protocol.aggregate import Aggregator, aggregate_with, reference_taker
from protocol.broadcast import BroadcastInstance, BroadcastParams, Ignored
from protocol.codec import CodecError, decode_report, encode_report
from protocol.crypto import SignatureScheme
from protocol.encoding import ErrorFeedback, VectorEncoding
from protocol.messages import Echo, Fetch, FetchReply, InstanceId, Kind, Message, Ready, Send, Tag
from protocol.step import Broadcast, Decided, Delivered, FaultKind, Output, RoundStarted, Step

#: (step, phase, round, vector) -> the vector actually broadcast. None for honest nodes;
#: the simulator's learning-level Byzantine strategies plug in here, so that a lying
#: node's own core stays consistent with what it sends (no accidental equivocation).
#: A filter may return None: "not yet" (a rushing adversary holding its vector until it
#: has seen the honest ones); the round's broadcast then waits for :meth:`NodeCore.resume`,
#: which asks the filter again, and the round cannot complete before it is sent.
VectorFilter = Callable[[int, int, int, np.ndarray], np.ndarray | None]

#: the broadcast instance's handler for each message type (a dict beats a match here)
_HANDLERS: dict[type[Message], Callable[[BroadcastInstance, int, Any], Step]] = {
    Send: BroadcastInstance.handle_send,
    Echo: BroadcastInstance.handle_echo,
    Ready: BroadcastInstance.handle_ready,
    Fetch: BroadcastInstance.handle_fetch,
    FetchReply: BroadcastInstance.handle_fetch_reply,
}

#: origins a stall description details, at most
_WAITING_LISTED_MAX = 8


class VectorMemo:
    """Work that cores sharing payload objects need not repeat: the simulator's.

    In the simulator one delivered payload (a ``bytes`` or ``memoryview`` object) reaches
    every core. Decoding and checking it (NaN/Inf over d values) is pure, so it is done
    once: validated vectors are kept by payload identity, each entry holding its payload
    so the identity cannot be reused while it is remembered; at most ``entries_max``
    entries, oldest first out.

    Aggregating is pure too, and honest cores usually aggregate the very same vectors
    (their round's sets agree once every vector has arrived): results are kept by the
    content digests of their inputs, the ``results_max`` latest, and shared read-only. A
    hit returns the bytes a fresh computation would (same inputs, same function), so
    traces do not change. Only for cores of one configuration (one encoding, dtype and
    dimension).
    """

    __slots__ = ("_digests", "_entries", "_results", "entries_max", "results_max")

    def __init__(self, entries_max: int = 4096, results_max: int = 8) -> None:
        self.entries_max = entries_max
        self.results_max = results_max
        self._entries: dict[int, tuple[object, tuple[np.ndarray | None, str]]] = {}
        #: id(vector) -> digest of its payload, for the vectors the entries hold
        self._digests: dict[int, bytes] = {}
        self._results: dict[tuple[object, ...], np.ndarray] = {}

    def get(self, payload: object) -> tuple[np.ndarray | None, str] | None:
        entry = self._entries.get(id(payload))
        if entry is None or entry[0] is not payload:
            return None
        return entry[1]

    def put(self, payload: bytes | memoryview, result: tuple[np.ndarray | None, str]) -> None:
        entries = self._entries
        if len(entries) >= self.entries_max:
            _, (old, _why) = entries.pop(next(iter(entries)))
            if old is not None:
                del self._digests[id(old)]
        entries[id(payload)] = (payload, result)
        vector = result[0]
        if vector is not None:
            self._digests[id(vector)] = hashlib.blake2b(payload, digest_size=32).digest()

    def aggregate(
        self,
        aggregator: Aggregator,
        f: int,
        vectors: list[np.ndarray],
        reference: np.ndarray | None = None,
    ) -> np.ndarray:
        """``aggregator(np.stack(vectors), f)``, computed once per distinct input. A rule
        that takes a ``reference`` (the node's own vector) is computed afresh: no other
        core shares it."""
        if reference is not None and reference_taker(aggregator) is not None:
            return aggregate_with(aggregator, np.stack(vectors), f, reference)
        digests = self._digests
        try:
            key = (aggregator, f, *(digests[id(vector)] for vector in vectors))
        except KeyError:  # a vector this memo did not validate: nothing to key it by
            return aggregator(np.stack(vectors), f)
        results = self._results
        result = results.get(key)
        if result is None:
            result = aggregator(np.stack(vectors), f)
            result.flags.writeable = False  # shared by every core that asks
            if len(results) >= self.results_max:
                del results[next(iter(results))]
            results[key] = result
        return result


@dataclass(frozen=True, slots=True)
class AgreementParams:
    broadcast: BroadcastParams
    dim: int
    dtype: np.dtype[np.floating]
    aggregator: Aggregator
    vector_filter: VectorFilter | None = None
    #: the core's counters of dropped duplicates and stale replies (one per core)
    ignored: Ignored | None = None
    #: the validated vectors of payloads other cores of this process have seen (the
    #: simulator shares one: every core gets the very same payload object)
    vector_memo: VectorMemo | None = None
    #: reliable broadcast is modelled, not messaged (the simulator's broadcast fidelity):
    #: our own broadcasts become :class:`~protocol.step.Broadcast` outputs, and
    #: deliveries come in through :meth:`AveragingAgreement.deliver`
    modelled: bool = False
    #: how vectors travel (``[protocol] encoding``)
    encoding: str = "f32"
    #: the core's quantisation residuals (one per phase, carried across steps), or None:
    #: no error feedback (switched off, or a lossless encoding)
    feedback: ErrorFeedback | None = None
    #: encodes and decodes this core's vectors (derived from the fields above)
    codec: VectorEncoding = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "codec", VectorEncoding(self.encoding, self.dim, self.dtype))

    @property
    def report_quorum(self) -> int:
        """Valid vectors a node holds before it reports them."""
        return self.broadcast.n - self.broadcast.f

    @property
    def witness_quorum(self) -> int:
        """Witnesses a node waits for before it aggregates and moves on."""
        return self.broadcast.n - self.broadcast.f

    def payload_bytes_max(self, kind: int) -> int:
        if kind == Kind.VECTOR:
            return self.codec.payload_bytes_max
        return 8 + 5 * self.broadcast.n  # msgpack list of n small ints


@dataclass(slots=True)
class _Round:
    held: dict[int, np.ndarray] = field(default_factory=dict)
    invalid: set[int] = field(default_factory=set)
    reports: dict[int, frozenset[int]] = field(default_factory=dict)
    reported: bool = False
    #: reporters whose every listed origin is held: the witnesses, counted as they come
    witnesses: int = 0
    #: origin not held yet -> reporters whose REPORT lists it
    waiting: dict[int, list[int]] = field(default_factory=dict)
    #: reporter -> how many origins of its REPORT are not held yet
    missing: dict[int, int] = field(default_factory=dict)
    #: the held origins as a bit mask (bit i: origin i), for the witness check
    held_mask: int = 0
    #: the vector we broadcast this round: the reference of rules that take one (MoNNA)
    own: np.ndarray | None = None

    def hold(self, origin: int, vector: np.ndarray) -> None:
        self.held[origin] = vector
        self.held_mask |= 1 << origin
        for reporter in self.waiting.pop(origin, ()):
            self.missing[reporter] -= 1
            if not self.missing[reporter]:
                self.witnesses += 1

    def add_report(self, reporter: int, report: frozenset[int]) -> None:
        """A REPORT delivered: its reporter is a witness once every origin it lists is
        held (counted incrementally: each (report, origin) pair is looked at once)."""
        self.reports[reporter] = report
        lacking = _mask_of(report) & ~self.held_mask  # n/64 words, not n set probes
        if not lacking:
            self.witnesses += 1
            return
        self.missing[reporter] = lacking.bit_count()
        while lacking:
            low = lacking & -lacking
            self.waiting.setdefault(low.bit_length() - 1, []).append(reporter)
            lacking ^= low


@functools.lru_cache(maxsize=1024)
def _mask_of(report: frozenset[int]) -> int:
    """A REPORT's origins as a bit mask. Cached: one decoded REPORT (one frozenset object,
    see :func:`protocol.codec.decode_report`) reaches every core of a simulation."""
    mask = 0
    for origin in report:
        mask |= 1 << origin
    return mask


class AveragingAgreement:
    """One agreement instance (step, phase) with ``rounds`` rounds, at node ``me``."""

    def __init__(
        self,
        step: int,
        phase: int,
        rounds: int,
        params: AgreementParams,
        scheme: SignatureScheme,
    ) -> None:
        if rounds < 1:
            raise ValueError(f"an agreement needs at least one round, got {rounds}")
        self.step = step
        self.phase = phase
        self.rounds = rounds
        self._params = params
        self._report_quorum = params.report_quorum
        self._witness_quorum = params.witness_quorum
        self._scheme = scheme
        self._instances: dict[InstanceId, BroadcastInstance] = {}
        self._rounds = [_Round() for _ in range(rounds)]
        #: the round this node is in; None before :meth:`start`, ``rounds`` once decided
        self.current_round: int | None = None
        self.decision: np.ndarray | None = None
        #: the vector of the current round while the vector filter holds it back
        self._held_back: np.ndarray | None = None

    @property
    def started(self) -> bool:
        return self.current_round is not None

    @property
    def decided(self) -> bool:
        return self.decision is not None

    @property
    def holding_back(self) -> bool:
        """Whether the vector filter holds back this round's broadcast (see
        :data:`VectorFilter`); :meth:`resume` asks it again."""
        return self._held_back is not None

    # ------------------------------------------------------------------ inputs

    def start(self, vector: np.ndarray) -> Step:
        """Enter round 0 with our own vector (a local call: bad input is our bug)."""
        if self.started:
            raise RuntimeError(f"agreement ({self.step}, {self.phase}) already started")
        self._check_own_vector(vector)
        return self._consume_deliveries(self._enter_round(0, vector))

    def resume(self) -> Step:
        """Ask the vector filter again for the round it held back; broadcast what it gives
        (the round may then complete at once on what was delivered meanwhile)."""
        held = self._held_back
        round_ = self.current_round
        if held is None or round_ is None:
            return Step()
        self._held_back = None
        return self._consume_deliveries(self._enter_round(round_, held))

    def handle(self, sender: int, msg: Message) -> Step:
        """A broadcast message whose tag belongs to this agreement (the core checked it)."""
        instance = self._instances.get(msg.iid) or self._instance(msg.iid)
        step: Step = _HANDLERS[type(msg)](instance, sender, msg)
        if not step.outputs:
            return step  # nothing delivered, so no round can have completed
        return self._consume_deliveries(step)

    def tick(self) -> Step:
        step = Step()
        for iid in sorted(self._instances):
            step.extend(self._instances[iid].tick())
        return self._consume_deliveries(step)

    def retire(self) -> None:
        """Free payloads and held vectors; the instance only answers duplicates after this."""
        for instance in self._instances.values():
            instance.drop_payload()
        for state in self._rounds:
            state.held.clear()
            state.own = None

    def deliver(self, iid: InstanceId, payload: bytes) -> Step:
        """A modelled reliable broadcast delivered ``payload`` for ``iid`` (broadcast
        fidelity: the simulator guarantees every node delivers the same payload)."""
        # _consume_deliveries(Step(outputs=[Delivered(iid, payload)])), minus its
        # allocations on the usual path: the delivery completes nothing
        step = self._on_delivered(Delivered(iid, payload))
        if not step.outputs:
            progressed = self._complete_round()
            if progressed is None:
                return step
            self._absorb(progressed, step)
            step.outputs = progressed.outputs
        return self._consume_deliveries(step)

    def restore(self, message: Send | Ready) -> None:
        """Put back what this node persisted before a restart: a SEND it accepted (its
        own or one it echoed) or a READY it sent (see :mod:`protocol.broadcast`)."""
        instance = self._instance(message.iid)
        if isinstance(message, Send):
            instance.restore_send(message.payload, message.signature)
        else:
            instance.restore_ready(message.digest)

    def replay(self) -> list[Message]:
        """Our own SEND, ECHO and READY messages of this agreement, as sent."""
        return [m for _, instance in sorted(self._instances.items()) for m in instance.replay()]

    def forget_peer(self, peer: int) -> None:
        for instance in self._instances.values():
            instance.forget_peer(peer)

    def waiting_for(self) -> str:
        """What the current round still lacks, in words (for a node's stall warning)."""
        round_ = self.current_round
        if round_ is None:
            return "not started (computing our own vector)"
        if round_ >= self.rounds:
            return "decided"
        state = self._rounds[round_]
        n = self._params.broadcast.n
        held = sorted(state.held)
        missing = [i for i in range(n) if i not in state.held and i not in state.invalid]
        covered = sorted(j for j, report in state.reports.items() if report <= state.held.keys())
        uncovered = {
            j: sorted(report - state.held.keys())
            for j, report in sorted(state.reports.items())
            if not report <= state.held.keys()
        }
        quorum = self._params.witness_quorum
        lacks = "; ".join(
            f"REPORT of {j} lists {', '.join(map(str, origins))} not held"
            for j, origins in uncovered.items()
        )
        undelivered = []
        for origin in missing[:_WAITING_LISTED_MAX]:
            instance = self._instances.get(InstanceId(origin, self._tag(round_, Kind.VECTOR)))
            undelivered.append(
                f"{origin}: {'nothing yet' if instance is None else instance.progress()}"
            )
        return (
            f"round {round_}: {len(held)} of {self._params.report_quorum} vectors "
            f"(held from {_ids(held)}; missing from {_ids(missing)}), "
            f"{len(covered)} of {quorum} witnesses ({_ids(covered)})"
            + (f"; {lacks}" if lacks else "")
            + (f"; vectors under way: {'; '.join(undelivered)}" if undelivered else "")
        )

    def equivocations(self) -> list[BroadcastInstance]:
        return [i for _, i in sorted(self._instances.items()) if i.equivocation is not None]

    def deliveries(self) -> dict[InstanceId, bytes]:
        """The digest each broadcast instance delivered here (for tests and metrics)."""
        return {
            iid: instance.delivered_digest
            for iid, instance in sorted(self._instances.items())
            if instance.delivered_digest is not None and instance.payload is not None
        }

    def held(self, round_: int) -> dict[int, np.ndarray]:
        """Valid vectors held in ``round_``, by origin."""
        return dict(sorted(self._rounds[round_].held.items()))

    # ------------------------------------------------------------------ internals

    def _instance(self, iid: InstanceId) -> BroadcastInstance:
        instance = self._instances.get(iid)
        if instance is None:
            params = self._params
            bytes_max = params.payload_bytes_max(iid.tag.kind)
            instance = BroadcastInstance(
                iid, params.broadcast, self._scheme, bytes_max, params.ignored
            )
            self._instances[iid] = instance
        return instance

    def _tag(self, round_: int, kind: Kind) -> Tag:
        return Tag(self.step, self.phase, round_, kind)

    def _broadcast_own(self, iid: InstanceId, payload: bytes) -> Step:
        """Reliably broadcast our own ``payload``: a SEND, or a modelled broadcast."""
        if self._params.modelled:
            return Step(outputs=[Broadcast(iid, payload)])
        return self._instance(iid).send(payload)

    def _enter_round(self, round_: int, vector: np.ndarray) -> Step:
        self.current_round = round_
        iid = InstanceId(self._params.broadcast.me, self._tag(round_, Kind.VECTOR))
        # a modelled broadcast has no instance here, and nothing survives a restart
        instance = None if self._params.modelled else self._instance(iid)
        if instance is not None and instance.payload is not None:
            # We signed this round's vector before a restart: that one, not a new one,
            # decoded and checked as every receiver does.
            restored, why = self._validate_vector(instance.payload)
            if restored is None:
                raise RuntimeError(f"our own restored vector is unusable: {why}")
            vector = restored
            step = instance.send(b"")
        else:
            if self._params.vector_filter is not None:
                filtered = self._params.vector_filter(self.step, self.phase, round_, vector)
                if filtered is None:  # held back until resume()
                    self._held_back = vector
                    return Step()
                vector = filtered
            payload, vector = self._encode_own(vector, round_)
            step = self._broadcast_own(iid, payload)
        self._rounds[round_].own = vector
        step.outputs.insert(0, RoundStarted(self.step, self.phase, round_, vector))
        return step

    def _encode_own(self, vector: np.ndarray, round_: int) -> tuple[bytes, np.ndarray]:
        """(payload to sign and send, our round's vector). The origin encodes before it
        signs and keeps the *decoded* vector, so that it aggregates exactly what every
        other honest node receives from it. In round 0 (our proposal: a gradient, a
        pseudo-gradient, our model) the phase's residual (error feedback) is added first,
        and what rounding takes now becomes the residual of our next proposal. Later rounds
        send aggregates, consensus iterates that must contract: their rounding (at most
        half an int8 step of the block) is left to the contraction, not carried (carried
        into the next round, it moved each node's iterate away from the others: measured,
        honest accuracy 0.80 instead of 0.85 under the optimal IPM attack, H = 16, int8).
        Only a vector filter's invalid vector (a Byzantine test's) fails to decode: it is
        kept as given."""
        params = self._params
        feedback = params.feedback if round_ == 0 else None
        sent = vector if feedback is None else feedback.add(self.phase, vector)
        payload = params.codec.encode(sent)
        decoded, _why = self._validate_vector(payload)
        if decoded is None:
            return payload, vector
        if feedback is not None:
            feedback.update(self.phase, sent, decoded, params.codec.saturation)
        return payload, decoded

    def _consume_deliveries(self, raw: Step) -> Step:
        """Run broadcast deliveries through the agreement until nothing more follows.

        Deliveries stay internal: they may make us REPORT, finish a round, enter the next
        one (whose own SEND may deliver at once in tiny systems) or decide.
        """
        if not raw.outputs:
            return raw  # nothing delivered, so no round can have completed
        step = Step(raw.messages, [], raw.faults, raw.durable)
        work = list(raw.outputs)
        while True:
            while work:
                output = work.pop(0)
                if isinstance(output, Delivered):
                    work += self._absorb(self._on_delivered(output), step)
                else:
                    step.outputs.append(output)
            progressed = self._complete_round()
            if progressed is None:
                return step
            work += self._absorb(progressed, step)

    @staticmethod
    def _absorb(sub: Step, into: Step) -> list[Output]:
        into.messages += sub.messages
        into.faults += sub.faults
        into.durable += sub.durable
        return sub.outputs

    def _on_delivered(self, delivered: Delivered) -> Step:
        step = Step()
        iid = delivered.iid
        state = self._rounds[iid.tag.round]
        if iid.tag.kind == Kind.VECTOR:
            vector, why = self._validate_vector(delivered.payload)
            if vector is None:
                state.invalid.add(iid.origin)
                step.fault(iid.origin, FaultKind.BAD_VECTOR, why, iid)
                return step
            state.hold(iid.origin, vector)
            if not state.reported and len(state.held) >= self._report_quorum:
                state.reported = True
                me = self._params.broadcast.me
                report_iid = InstanceId(me, self._tag(iid.tag.round, Kind.REPORT))
                step.extend(self._broadcast_own(report_iid, encode_report(sorted(state.held))))
            return step
        try:
            report = decode_report(delivered.payload, self._params.broadcast.n)
        except CodecError as exc:
            step.fault(iid.origin, FaultKind.BAD_REPORT, str(exc), iid)
            return step
        if len(report) < self._report_quorum:
            step.fault(iid.origin, FaultKind.BAD_REPORT, "REPORT lists fewer than n-f", iid)
        else:
            state.add_report(iid.origin, report)
        return step

    def _validate_vector(self, payload: bytes | memoryview) -> tuple[np.ndarray | None, str]:
        memo = self._params.vector_memo
        if memo is not None:
            found = memo.get(payload)
            if found is not None:
                return found
        result = self._check_vector(payload)
        if memo is not None:
            memo.put(payload, result)
        return result

    def _check_vector(self, payload: bytes | memoryview) -> tuple[np.ndarray | None, str]:
        try:
            return self._params.codec.decode(payload), ""
        except CodecError as exc:
            return None, str(exc)

    def _complete_round(self) -> Step | None:
        """Aggregate and move on (or decide) once the current round can complete."""
        round_ = self.current_round
        if round_ is None or round_ >= self.rounds or self._held_back is not None:
            return None
        vectors = self._vectors_to_aggregate(self._rounds[round_])
        if vectors is None:
            return None
        params = self._params
        own = self._rounds[round_].own  # the reference of rules that take one
        if params.vector_memo is not None:
            aggregated = params.vector_memo.aggregate(
                params.aggregator, params.broadcast.f, vectors, own
            )
        else:
            aggregated = aggregate_with(
                params.aggregator, np.stack(vectors), params.broadcast.f, own
            )
        vector = aggregated.astype(params.dtype, copy=False)
        if round_ + 1 < self.rounds:
            return self._enter_round(round_ + 1, vector)
        self.current_round = self.rounds
        self.decision = vector
        step = Step()
        step.outputs.append(Decided(self.step, self.phase, vector))
        return step

    def _vectors_to_aggregate(self, state: _Round) -> list[np.ndarray] | None:
        """Every valid vector held, by origin, once ``witness_quorum`` reports are covered
        by what we hold; None until then."""
        if state.witnesses < self._witness_quorum:
            return None
        held = state.held
        return [held[origin] for origin in sorted(held)]

    def _check_own_vector(self, vector: np.ndarray) -> None:
        if vector.shape != (self._params.dim,) or vector.dtype != self._params.dtype:
            raise ValueError(
                f"expected a ({self._params.dim},) {self._params.dtype} vector, "
                f"got {vector.shape} {vector.dtype}"
            )
        if not np.isfinite(vector).all():
            raise ValueError("our own vector has NaN or infinite values")


def _ids(nodes: list[int]) -> str:
    return ", ".join(map(str, nodes)) if nodes else "none"
