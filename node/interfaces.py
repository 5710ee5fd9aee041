"""The seams between the runner and the world around it.

The runner (``node/runner.py``) is the one place effects happen. It talks to the network
only through a :class:`Transport`, so that the same runner runs over real TCP
(``node/transport.py``) and over the simulator's virtual network (``sim/network.py``).

Receiving is push-based: whoever owns the transport calls ``runner.deliver(src, data)``
once per received message, one message at a time (the node's receive loop, or the
simulator's single delivery loop, which is what makes simulations deterministic).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class TransportStatistics:
    """A snapshot of a transport's counters (trio's ``statistics()`` convention)."""

    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    #: messages refused because a peer's bounded send queue was full
    messages_dropped: int = 0
    bytes_sent_by_peer: Mapping[int, int] = field(default_factory=dict)
    bytes_received_by_peer: Mapping[int, int] = field(default_factory=dict)
    #: transport-level faults (bad handshake, bad MAC, malformed frame, ...):
    #: {kind: {accused peer id (-1 when unknown): count}}
    faults: Mapping[str, Mapping[int, int]] = field(default_factory=dict)


class Transport(Protocol):
    """Reliable, authenticated, per-peer FIFO links from this node to every other node.

    ``send_nowait`` never blocks the caller: data is queued for ``dst`` and delivered in
    order, resent across reconnects until the peer acknowledges it. Each peer's queue is
    bounded; past the bound the message is dropped, counted and logged (a peer that
    cannot keep up is, to us, a crashed peer).
    """

    def send_nowait(self, dst: int, data: bytes) -> None: ...

    def send_many(self, dsts: Sequence[int], data: bytes) -> None:
        """``send_nowait(dst, data)`` for each of ``dsts``, in order: one encoded broadcast
        to many peers. Every bad ``dst`` is refused before anything is queued."""
        ...

    def statistics(self) -> TransportStatistics: ...


class Journal(Protocol):
    """Stable storage for what the protocol marks durable (``node/journal.py``).

    ``append`` is called on the event loop, ``sync`` from a worker thread; the runner
    sends nothing of a step before the ``sync`` that follows its appends returns."""

    def append(self, step: int, data: bytes) -> None: ...

    def sync(self) -> None: ...

    def prune_below(self, step: int) -> None: ...
