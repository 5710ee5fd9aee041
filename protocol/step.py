"""What a protocol core returns for every input: messages to send, outputs, faults.

This is hbbft's ``Step``: cores never perform effects and never raise because of a peer.
Misbehaviour is returned as a :class:`Fault` naming the accused node, with evidence where
a third party can check it.

``Step.durable`` is etcd raft's ``Ready`` contract ("persist before you promise"): the
messages listed there must be on stable storage before any of ``Step.messages`` leaves
the node. They are every SEND the node accepts (its own, and the ones it echoes: an ECHO
promises to serve that payload) and every READY it sends. A node that crashes and
restarts feeds them back (:meth:`protocol.core.NodeCore.restore`), so it never signs a
second payload for one instance and never votes two ways, however often it restarts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from protocol.crypto import EquivocationProof
from protocol.messages import InstanceId, Message, WireMessage

#: ``Outgoing.to`` value meaning "every other node".
EVERYONE = -1
#: ``Fault.accused`` value for a sender outside the roster.
UNKNOWN_NODE = -1


class FaultKind(StrEnum):
    """What a peer did that no honest node ever does, crashes and restarts included.

    Not faults, because honest nodes do them: an identical copy of a message already
    handled (a restarted node resends what it signed; a peer answers a catch-up request
    with what we may already hold), a message for a step beyond our window (we are the
    slow one, and it tells us how far the others are), a fetch reply we no longer wait
    for (asked by a previous incarnation of ours). Those are dropped and counted in
    :class:`~protocol.core.CoreStatistics`, never charged to the sender.
    """

    MALFORMED = "malformed"  # bytes that do not decode
    UNKNOWN_SENDER = "unknown_sender"  # sender id outside the roster
    NOT_ORIGIN = "not_origin"  # a SEND from someone other than the instance's origin
    BAD_SIGNATURE = "bad_signature"  # origin signature does not verify
    EQUIVOCATION = "equivocation"  # origin signed two digests for one instance (with proof)
    CONFLICTING_ECHO = "conflicting_echo"  # two different ECHOs for one instance
    CONFLICTING_READY = "conflicting_ready"  # two different READYs for one instance
    OVERSIZE = "oversize"  # payload larger than the instance allows
    BAD_TAG = "bad_tag"  # phase/round/kind that cannot exist
    FAR_AHEAD = "far_ahead"  # a step past the run's last step (no honest node reaches it)
    BAD_FETCH = "bad_fetch"  # asks for a payload we never echoed
    FETCH_MISMATCH = "fetch_mismatch"  # a fetch reply whose digest is not the delivered one
    BAD_VECTOR = "bad_vector"  # delivered vector: undecodable, wrong dtype/length, NaN/Inf
    BAD_REPORT = "bad_report"  # delivered REPORT: undecodable or fewer than n-f origins


@dataclass(frozen=True, slots=True)
class Fault:
    accused: int
    kind: FaultKind
    detail: str
    iid: InstanceId | None = None
    evidence: EquivocationProof | None = None


@dataclass(frozen=True, slots=True)
class Outgoing:
    """Send ``message`` to node ``to``, or to every other node when ``to == EVERYONE``."""

    to: int
    message: WireMessage


@dataclass(frozen=True, slots=True)
class Delivered:
    """Reliable broadcast delivered ``payload`` for ``iid`` (internal to the core)."""

    iid: InstanceId
    payload: bytes | memoryview


@dataclass(frozen=True, slots=True)
class RoundStarted:
    """This node entered ``round`` of agreement (step, phase) holding ``vector``."""

    step: int
    phase: int
    round: int
    vector: np.ndarray


@dataclass(frozen=True, slots=True)
class Decided:
    """Agreement (step, phase) finished at this node with ``vector``."""

    step: int
    phase: int
    vector: np.ndarray


@dataclass(frozen=True, slots=True)
class PeerFinished:
    """Node ``peer`` says it has run all its ``steps`` steps
    (a :class:`~protocol.messages.Finished` message)."""

    peer: int
    steps: int


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Reliably broadcast ``payload`` for ``iid``: what an agreement asks of a *modelled*
    reliable broadcast (the simulator's ``fidelity = "broadcast"``), which then delivers it
    to every node by :meth:`~protocol.core.NodeCore.deliver`. Real nodes never see it."""

    iid: InstanceId
    payload: bytes


Output = Delivered | RoundStarted | Decided | PeerFinished | Broadcast


@dataclass(slots=True, init=False)
class Step:
    """Accumulates one input's consequences. Mutable while a core builds it."""

    messages: list[Outgoing]
    outputs: list[Output]
    faults: list[Fault]
    #: to be persisted before any of ``messages`` is sent (see the module docstring)
    durable: list[Message]

    def __init__(
        self,
        messages: list[Outgoing] | None = None,
        outputs: list[Output] | None = None,
        faults: list[Fault] | None = None,
        durable: list[Message] | None = None,
    ) -> None:
        # Written out: one Step per message handled, and dataclass default factories
        # cost twice as much.
        self.messages = [] if messages is None else messages
        self.outputs = [] if outputs is None else outputs
        self.faults = [] if faults is None else faults
        self.durable = [] if durable is None else durable

    def send(self, to: int, message: WireMessage) -> None:
        self.messages.append(Outgoing(to, message))

    def broadcast(self, message: WireMessage) -> None:
        self.messages.append(Outgoing(EVERYONE, message))

    def fault(
        self,
        accused: int,
        kind: FaultKind,
        detail: str,
        iid: InstanceId | None = None,
        evidence: EquivocationProof | None = None,
    ) -> None:
        self.faults.append(Fault(accused, kind, detail, iid, evidence))

    def extend(self, other: Step) -> None:
        self.messages += other.messages
        self.outputs += other.outputs
        self.faults += other.faults
        self.durable += other.durable

    def __bool__(self) -> bool:
        return bool(self.messages or self.outputs or self.faults)
