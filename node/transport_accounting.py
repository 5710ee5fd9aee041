"""Counting what the transport did and what its peers did wrong.

Faults are counted every time and logged rarely: the first occurrence of each (kind,
peer) pair at WARNING with its reason, then again only at 10, 100, 1000, ... occurrences,
so a peer that floods garbage cannot flood the log as well.

A fault is charged to a peer id only when that peer authenticated the offending bytes
(handshake completed, or a frame on its authenticated link). Anything before that is
charged to :data:`UNKNOWN_PEER`: the id a dialer *claims* is not evidence, and charging it
would let anyone frame an honest node.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from node.interfaces import TransportStatistics

UNKNOWN_PEER: Final = -1
log = logging.getLogger("jungle.transport")


class FaultKind(StrEnum):
    # before authentication (charged to UNKNOWN_PEER)
    FRAME_OVERSIZE = "frame_oversize"  # length prefix above the current limit
    FRAME_INVALID = "frame_invalid"  # zero length prefix
    HANDSHAKE_MALFORMED = "handshake_malformed"
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    HANDSHAKE_BAD_SIGNATURE = "handshake_bad_signature"
    UNKNOWN_KEY = "unknown_key"  # dialer's key is not in the roster
    WRONG_SESSION = "wrong_session"  # different session id (label, keys or addresses)
    WRONG_PEER = "wrong_peer"  # dialer meant to reach another node id
    HANDSHAKE_EVICTED = "handshake_evicted"  # a newer connection took its pending slot
    RATE_LIMITED = "rate_limited"  # over handshakes_per_source_per_s
    # on an authenticated link (charged to the peer)
    BAD_MAC = "bad_mac"  # tampered, replayed, reordered or foreign frame
    FRAME_MALFORMED = "frame_malformed"
    PROTOCOL_VIOLATION = "protocol_violation"  # sequence gap, ack of unsent data


class FaultLog:
    """Counts faults as {kind: {peer: count}} and logs each (kind, peer) sparingly."""

    def __init__(self, me: int) -> None:
        self._me = me
        self._counts: defaultdict[str, defaultdict[int, int]] = defaultdict(
            lambda: defaultdict(int)
        )

    def record(self, kind: str, peer: int, detail: str, where: str = "") -> None:
        counts = self._counts[str(kind)]
        counts[peer] += 1
        count = counts[peer]
        if _is_log_point(count):
            who = "unauthenticated peer" if peer == UNKNOWN_PEER else f"peer {peer}"
            again = "" if count == 1 else f" ({count} times so far)"
            origin = f" [{where}]" if where else ""
            log.warning("node %d: %s from %s%s: %s%s", self._me, kind, who, origin, detail, again)

    def snapshot(self) -> dict[str, dict[int, int]]:
        return {kind: dict(by_peer) for kind, by_peer in self._counts.items()}


def _is_log_point(count: int) -> bool:
    while count % 10 == 0:
        count //= 10
    return count == 1


@dataclass(slots=True)
class TrafficCounters:
    """Mutable counters behind :meth:`TcpTransport.statistics`.

    ``*_sent`` count DATA frames written to sockets (a resend after a reconnect counts
    again: it really crossed the wire); ``*_received`` count messages accepted for
    ``receive()``, each exactly once. Bytes are payload bytes (no framing, no handshakes).
    """

    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    messages_dropped: int = 0
    bytes_sent_by_peer: defaultdict[int, int] = field(default_factory=lambda: defaultdict(int))
    bytes_received_by_peer: defaultdict[int, int] = field(default_factory=lambda: defaultdict(int))

    def on_sent(self, peer: int, size_bytes: int) -> None:
        self.messages_sent += 1
        self.bytes_sent += size_bytes
        self.bytes_sent_by_peer[peer] += size_bytes

    def on_received(self, peer: int, size_bytes: int) -> None:
        self.messages_received += 1
        self.bytes_received += size_bytes
        self.bytes_received_by_peer[peer] += size_bytes

    def snapshot(self, faults: FaultLog) -> TransportStatistics:
        return TransportStatistics(
            bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received,
            messages_sent=self.messages_sent,
            messages_received=self.messages_received,
            messages_dropped=self.messages_dropped,
            bytes_sent_by_peer=dict(self.bytes_sent_by_peer),
            bytes_received_by_peer=dict(self.bytes_received_by_peer),
            faults=faults.snapshot(),
        )
