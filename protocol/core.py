"""A node's whole protocol state: every live agreement instance, behind one entry point.

:class:`NodeCore` is what the runner talks to. It decodes bytes, checks every tag against
what can exist (phase, round, kind) and against the acceptance window around the node's
current step (DESIGN 4.4: a message 1000 rounds ahead is a fault, not a buffer), routes
messages to agreement instances (created on first sight, so that early messages from
faster peers are kept), and retires instances that fall behind the window, freeing
their payloads. Memory per peer is therefore bounded by
``(steps_ahead_max + steps_retained + 1) x phases x rounds_max x 2 x payload_bytes_max``.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from protocol.aggregate import get_aggregator, min_nodes
from protocol.agreement import (
    ARRAY_HEADER_BYTES_MAX,
    AgreementParams,
    AveragingAgreement,
    VectorFilter,
)
from protocol.broadcast import BroadcastParams
from protocol.codec import CodecError, decode
from protocol.crypto import SESSION_ID_BYTES, SignatureScheme
from protocol.messages import Kind, Message, Phase
from protocol.step import UNKNOWN_NODE, FaultKind, Step

#: the broadcast kinds an agreement runs (a set of plain ints: enum lookups are slow)
_KINDS = frozenset({int(Kind.VECTOR), int(Kind.REPORT)})


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

    def __post_init__(self) -> None:
        needed = min_nodes(self.aggregator, self.f)  # raises for unknown names, f < 0
        if self.n < needed:
            raise ValueError(
                f"{self.aggregator} tolerates f={self.f} Byzantine nodes only with "
                f"n >= {needed}, got n={self.n}"
            )
        if not 0 <= self.me < self.n:
            raise ValueError(f"node id {self.me} is not in [0, {self.n})")
        if len(self.session) != SESSION_ID_BYTES:
            raise ValueError(f"session id must be {SESSION_ID_BYTES} bytes")
        if self.dim < 1:
            raise ValueError(f"dim must be positive, got {self.dim}")
        if self.dtype not in ("<f4", "<f8"):
            raise ValueError(f"dtype must be <f4 or <f8, got {self.dtype}")
        if self.steps_ahead_max < 0 or self.steps_retained < 0:
            raise ValueError("window sizes must be non-negative")

    @property
    def payload_bytes_max(self) -> int:
        """The largest payload a message may carry: an encoded vector."""
        return self.dim * np.dtype(self.dtype).itemsize + ARRAY_HEADER_BYTES_MAX


@dataclass(frozen=True, slots=True)
class CoreStatistics:
    current_step: int
    live_instances: int
    stale_messages: int
    messages_handled: int
    faults: Mapping[str, Mapping[int, int]]
    highest_step_seen: Mapping[int, int]


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
        decoder: Callable[[bytes | memoryview], Message] | None = None,
    ) -> None:
        """``decoder`` replaces :func:`~protocol.codec.decode` (with this core's payload
        limit); the simulator passes one :class:`~protocol.codec.SharedDecoder` to all its
        cores. It must raise :class:`~protocol.codec.CodecError` for bad bytes."""
        self.config = config
        self._scheme = scheme
        self._params = AgreementParams(
            BroadcastParams(config.n, config.f, config.me, config.session),
            config.dim,
            np.dtype(config.dtype),
            get_aggregator(config.aggregator),
            vector_filter,
        )
        self._agreements: dict[tuple[int, int], AveragingAgreement] = {}
        self._step = 0
        self._stale = 0
        self._handled = 0
        self._faults: Counter[tuple[str, int]] = Counter()
        self._highest_step_seen = [-1] * config.n  # -1: nothing seen yet
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
        oldest_kept = step - self.config.steps_retained
        for key in sorted(self._agreements):
            if key[0] < oldest_kept:
                self._agreements.pop(key).retire()

    def tick(self) -> Step:
        """Retry what needs retrying (payload fetches). Call it every so often."""
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
        return self.handle(sender, message)

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
            self._highest_step_seen[sender] = tag.step
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
        if tag.step > self._step + config.steps_ahead_max:
            step.fault(
                sender,
                FaultKind.FAR_AHEAD,
                f"step {tag.step} is beyond our window (at {self._step} "
                f"+ {config.steps_ahead_max})",
                msg.iid,
            )
            return self._account(step)
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
        )

    # ------------------------------------------------------------------ internals

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
