"""A simulated node's transport: its end of the virtual network.

:class:`VirtualEndpoint` implements :class:`~node.interfaces.Transport` for one node of a
:class:`~sim.network.VirtualNetwork`. Sending hands the message to the network, which
schedules it; the network's delivery loop updates the receiving endpoint's counters (and
its deduplication state) before calling the node. The two classes are one mechanism split
in two files: the network reads and writes the endpoint's underscored counters directly,
because that is the per-message hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from node.interfaces import TransportStatistics

__all__ = ["VirtualEndpoint", "VirtualTransportStatistics"]


@dataclass(frozen=True, slots=True)
class VirtualTransportStatistics(TransportStatistics):
    """A virtual endpoint's counters: the real transport's, plus per-kind and duplicates.

    ``messages_dropped`` counts sends attempted by this node after it crashed.
    """

    messages_sent_by_peer: Mapping[int, int] = field(default_factory=dict)
    messages_received_by_peer: Mapping[int, int] = field(default_factory=dict)
    bytes_sent_by_kind: Mapping[str, int] = field(default_factory=dict)
    messages_sent_by_kind: Mapping[str, int] = field(default_factory=dict)
    bytes_received_by_kind: Mapping[str, int] = field(default_factory=dict)
    messages_received_by_kind: Mapping[str, int] = field(default_factory=dict)
    #: extra copies that reached this node and were dropped by (src, seq)
    duplicates_dropped: int = 0


class Network(Protocol):
    """What an endpoint needs of its network (sim/network.py's ``VirtualNetwork``)."""

    n: int
    _crashed: list[bool]
    _classify: Callable[[bytes], tuple[str, tuple[int, ...]]]

    def _schedule(
        self,
        endpoint: VirtualEndpoint,
        dsts: Sequence[int],
        kind: str,
        tag: tuple[int, ...],
        data: bytes,
    ) -> None: ...

    def modelled_bytes_sent(self, node: int) -> int: ...


#: Per message kind, ``[messages, bytes]``: one dict lookup per message instead of four.
_KindCounts = dict[str, list[int]]


def _split(counts: _KindCounts) -> tuple[dict[str, int], dict[str, int]]:
    """(messages by kind, bytes by kind), sorted by kind."""
    ordered = sorted(counts.items())
    return {kind: c[0] for kind, c in ordered}, {kind: c[1] for kind, c in ordered}


class VirtualEndpoint:
    """One node's view of the virtual network; implements ``node.interfaces.Transport``.

    When the scheduler may duplicate messages, receiving deduplicates by (src, seq) as the
    real transport does: per source, a low watermark below which every seq was delivered,
    plus the set of seqs delivered above it, which stays as small as the link's
    reordering. Otherwise every (src, seq) arrives once and nothing needs checking.
    """

    __slots__ = (
        "_bytes_received_from",
        "_bytes_sent_to",
        "_delivered_above",
        "_delivered_below",
        "_duplicates_dropped",
        "_messages_dropped",
        "_messages_received_from",
        "_messages_sent_to",
        "_network",
        "_received_by_kind",
        "_sent_by_kind",
        "node_id",
    )

    def __init__(self, network: Network, node_id: int) -> None:
        n = network.n
        self._network = network
        self.node_id = node_id
        self._messages_sent_to = [0] * n  # also the next seq on each link
        self._bytes_sent_to = [0] * n
        self._bytes_received_from = [0] * n
        self._sent_by_kind: _KindCounts = {}
        self._received_by_kind: _KindCounts = {}
        self._messages_received_from = [0] * n
        # (src, seq) deduplication, used only when the scheduler may duplicate
        self._delivered_below = [0] * n
        self._delivered_above: list[set[int]] = [set() for _ in range(n)]
        self._duplicates_dropped = 0
        self._messages_dropped = 0

    def send_nowait(self, dst: int, data: bytes) -> None:
        """Queue ``data`` for ``dst``; it arrives after the scheduler's delay."""
        self.send_many((dst,), data)

    def send_many(self, dsts: Sequence[int], data: bytes) -> None:
        """:meth:`send_nowait` to each of ``dsts``, in order (a broadcast): what depends
        on the message alone (classifying it, counting it by kind) is done once."""
        network = self._network
        src = self.node_id
        n = network.n
        for dst in dsts:
            if not 0 <= dst < n or dst == src:
                raise ValueError(f"node {src} has no link to {dst!r} (n={n})")
        if network._crashed[src]:
            self._messages_dropped += len(dsts)
            return
        if type(data) is not bytes:
            data = bytes(data)  # never hold a buffer the sender may still mutate
        kind, tag = network._classify(data)
        counts = self._sent_by_kind.get(kind)
        if counts is None:
            counts = self._sent_by_kind[kind] = [0, 0]
        counts[0] += len(dsts)
        counts[1] += len(data) * len(dsts)
        network._schedule(self, dsts, kind, tag, data)

    def _accept(self, src: int, seq: int) -> bool:
        """Whether (src, seq) is new here; marks it delivered if so."""
        below = self._delivered_below[src]
        if seq < below:
            return False
        above = self._delivered_above[src]
        if seq != below:
            if seq in above:
                return False
            above.add(seq)
            return True
        below += 1
        while below in above:
            above.remove(below)
            below += 1
        self._delivered_below[src] = below
        return True

    def statistics(self) -> VirtualTransportStatistics:
        peers = [peer for peer in range(self._network.n) if peer != self.node_id]
        messages_sent_by_kind, bytes_sent_by_kind = _split(self._sent_by_kind)
        messages_received_by_kind, bytes_received_by_kind = _split(self._received_by_kind)
        return VirtualTransportStatistics(
            bytes_sent=sum(self._bytes_sent_to) + self._network.modelled_bytes_sent(self.node_id),
            bytes_received=sum(self._bytes_received_from),
            messages_sent=sum(self._messages_sent_to),
            messages_received=sum(self._messages_received_from),
            messages_dropped=self._messages_dropped,
            bytes_sent_by_peer={peer: self._bytes_sent_to[peer] for peer in peers},
            bytes_received_by_peer={peer: self._bytes_received_from[peer] for peer in peers},
            messages_sent_by_peer={peer: self._messages_sent_to[peer] for peer in peers},
            messages_received_by_peer={peer: self._messages_received_from[peer] for peer in peers},
            bytes_sent_by_kind=bytes_sent_by_kind,
            messages_sent_by_kind=messages_sent_by_kind,
            bytes_received_by_kind=bytes_received_by_kind,
            messages_received_by_kind=messages_received_by_kind,
            duplicates_dropped=self._duplicates_dropped,
        )
