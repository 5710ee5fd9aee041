"""Every message jungle nodes exchange, as frozen, slotted records.

A reliable-broadcast instance is named by :class:`InstanceId` = (origin, tag), and a
:class:`Tag` names what is being broadcast: which learning step, which phase of that step
(the gradient or the model), which agreement round, and whether the payload is the
origin's vector or its REPORT of the vectors it holds (DESIGN 4.2).

Only :mod:`protocol.codec` turns bytes into these objects, so that one place can be
fuzzed; nothing here parses anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

DIGEST_BYTES = 32
SIGNATURE_BYTES = 64


class Phase(IntEnum):
    """What one averaging-agreement instance of a learning step agrees on (DESIGN 4.3)."""

    GRADIENT = 0
    MODEL = 1


class Kind(IntEnum):
    """What a reliable broadcast inside an agreement round carries (DESIGN 4.2)."""

    VECTOR = 0  # the origin's current vector x_i
    REPORT = 1  # the set of origins whose valid vectors the origin holds


class Tag(NamedTuple):
    """Names a broadcast within the learning loop. Identifiers (Tag, InstanceId) are
    named tuples rather than dataclasses: every message is routed by hashing them, and
    tuple hashing and construction run in C (measured: about a fifth of the per-message
    cost of a cluster run went to dataclass __hash__/__init__ for these two)."""

    step: int
    phase: int
    round: int
    kind: int


class InstanceId(NamedTuple):
    """A reliable-broadcast instance: (origin, tag)."""

    origin: int
    tag: Tag


@dataclass(frozen=True, slots=True)
class Send:
    """SEND(id, payload), signed by the origin over (session, id, digest(payload))."""

    iid: InstanceId
    payload: bytes | memoryview
    signature: bytes


@dataclass(frozen=True, slots=True)
class Echo:
    """ECHO(id, digest). Carries the origin's signature over that digest, so that a node
    holding a SEND with another digest gets an offline-verifiable equivocation proof."""

    iid: InstanceId
    digest: bytes
    origin_signature: bytes


@dataclass(frozen=True, slots=True)
class Ready:
    """READY(id, digest)."""

    iid: InstanceId
    digest: bytes


@dataclass(frozen=True, slots=True)
class Fetch:
    """Ask a node that echoed `digest` for the payload (we delivered without holding it)."""

    iid: InstanceId
    digest: bytes


@dataclass(frozen=True, slots=True)
class FetchReply:
    """The payload asked for by a :class:`Fetch`; the asker checks its digest."""

    iid: InstanceId
    payload: bytes | memoryview


Message = Send | Echo | Ready | Fetch | FetchReply
"""The messages of one reliable-broadcast instance (they all carry an :class:`InstanceId`)."""


@dataclass(frozen=True, slots=True)
class Catchup:
    """ "I am (re)joining at ``step``: send me again your own messages (SEND, ECHO, READY)
    for the instances you still hold at ``step`` and later."

    A node sends it after a restart (what it had received died with the process, and a
    transport only resends what the peer had not acknowledged) and after a jump (what it
    dropped as beyond its window is needed now). Answers are rate-limited per peer
    (:class:`~protocol.core.NodeCore`), so a liar gains at most a bounded replay.
    """

    step: int


@dataclass(frozen=True, slots=True)
class Finished:
    """The sender has run all ``steps`` of its learning steps; it keeps serving its peers
    until every peer has said the same (or a timeout), so slow honest nodes still finish."""

    steps: int


Control = Catchup | Finished
"""Messages between nodes that belong to no broadcast instance."""

WireMessage = Message | Control
"""Everything :mod:`protocol.codec` decodes."""
