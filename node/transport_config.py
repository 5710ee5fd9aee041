"""Configuration and errors of the TCP transport, and what its links share.

Every limit is here, named after what it bounds (TIGER_STYLE: put a limit on everything).
Whatever the settings, a node of an n-node roster holds at most about

    (n-1) * queue_bytes_max                      unacknowledged outgoing messages
  + receive_queue_bytes_max + (n-1) * frame_bytes_max   received, not yet consumed
  + (n-1) * (frame_bytes_max + 64 KiB)           one reused read buffer per inbound link
  + (n-1) * 2 * frame_bytes_max                  two reused sealing buffers per outbound link
  + (handshakes_pending_max + handshakes_reserved_for_roster) * 4 KiB
                                                 connections not yet authenticated

and nothing a peer sends before it authenticates can grow any of these (node/admission.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import nacl.signing

from node.frame_auth import DATA_BODY_OVERHEAD_BYTES, SUITE_NAMES
from node.handshake import INCARNATION_BYTES
from node.roster import Roster

MIB: Final = 1024 * 1024


class TransportError(Exception):
    """Misuse of the transport by this node (never raised because of a peer's bytes)."""


class TransportClosed(TransportError):
    """The transport was used after it was closed."""


class MessageTooLarge(TransportError, ValueError):
    """A message does not fit in one frame of ``frame_bytes_max``."""


@dataclass(frozen=True, slots=True)
class TransportConfig:
    me: int
    signing_key: nacl.signing.SigningKey
    roster: Roster
    #: where to listen; None = the host/port of our own roster entry (port 0 = ephemeral)
    listen_host: str | None = None
    listen_port: int | None = None
    #: per peer: bytes queued for it and not yet acknowledged; past it messages are dropped
    queue_bytes_max: int = 256 * MIB
    #: bytes received and not yet taken by ``receive()`` (one message always fits)
    receive_queue_bytes_max: int = 256 * MIB
    #: largest frame body accepted from an authenticated peer (a message plus 25 bytes)
    frame_bytes_max: int = 64 * MIB + 64 * 1024
    backoff_s_min: float = 0.05
    backoff_s_max: float = 5.0
    #: connecting plus the whole handshake must finish within this, else the link is dropped
    handshake_timeout_s: float = 10.0
    #: an accepted connection must send its HELLO within this (strangers hold no slot long)
    hello_timeout_s: float = 1.0
    #: a peer that vanished without closing (power loss) is noticed within about this
    #: (TCP keepalive and TCP_USER_TIMEOUT); a peer that restarts is noticed at once
    dead_peer_timeout_s: float = 30.0
    #: inbound connections from outside the roster's addresses allowed to be mid-handshake
    #: at once; a newer one evicts the oldest (node/admission.py)
    handshakes_pending_max: int = 64
    #: slots kept for connections from the roster's own addresses
    handshakes_reserved_for_roster: int = 16
    #: slots one source (IPv4 address, IPv6 /64) may hold in a pool; its newest evicts its oldest
    handshakes_per_source_max: int = 8
    #: new connections a second from one source outside the roster (burst: as many)
    handshakes_per_source_per_s: float = 20.0
    #: a receiver acknowledges at least every this many messages (and whenever it is idle)
    ack_every_messages: int = 16
    #: seeds the reconnect jitter (derived per peer), so runs are reproducible
    seed: int = 0
    #: optional injected delay per (dst, seq, size_bytes): a message is not written before
    #: enqueue time + delay (links stay FIFO). Used by the simulator's process mode.
    send_delay_s: Callable[[int, int, int], float] | None = None
    #: frame suites offered and accepted, preferred first (node/frame_auth.py); None: the
    #: encrypting ones, fastest first on this CPU. ``blake3-mac`` (integrity, no secrecy)
    #: only if listed here: benchmarks and tests that must see plaintext.
    suites: tuple[int, ...] | None = None
    #: payload bytes one key seals per direction before the link reconnects (fresh keys)
    link_bytes_max: int = 2**36

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.me < self.roster.n:
            problems.append(f"me={self.me} is not an id of the roster (0..{self.roster.n - 1})")
        elif bytes(self.signing_key.verify_key) != self.roster.public_keys[self.me]:
            problems.append(f"the signing key is not node {self.me}'s key in the roster")
        if self.frame_bytes_max <= DATA_BODY_OVERHEAD_BYTES:
            problems.append("frame_bytes_max is too small to carry any message")
        for name in (
            "queue_bytes_max",
            "receive_queue_bytes_max",
            "handshakes_pending_max",
            "handshakes_reserved_for_roster",
            "handshakes_per_source_max",
            "link_bytes_max",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be positive")
        if not self.handshakes_per_source_per_s > 0:
            problems.append("handshakes_per_source_per_s must be positive")
        if self.suites is not None and (
            not self.suites or any(suite not in SUITE_NAMES for suite in self.suites)
        ):
            problems.append(f"suites must name known frame suites, got {self.suites}")
        if self.ack_every_messages < 1:
            problems.append("ack_every_messages must be positive")
        if not 0 < self.backoff_s_min <= self.backoff_s_max:
            problems.append("need 0 < backoff_s_min <= backoff_s_max")
        if min(self.handshake_timeout_s, self.dead_peer_timeout_s, self.hello_timeout_s) <= 0:
            problems.append(
                "handshake_timeout_s, hello_timeout_s and dead_peer_timeout_s must be positive"
            )
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def message_bytes_max(self) -> int:
        """Largest message ``send_nowait`` accepts."""
        return self.frame_bytes_max - DATA_BODY_OVERHEAD_BYTES


class PeerIncarnations:
    """The incarnation each peer last authenticated with, from either link direction.

    A peer that restarts shows a new incarnation nonce in its next handshake, whichever
    of our two links to it connects first; :meth:`observe` calls ``on_restart(peer,
    dialed)`` once per change (``dialed``: seen on the link we dialed)."""

    def __init__(self) -> None:
        self._known: dict[int, bytes] = {}
        self.on_restart: Callable[[int, bool], None] | None = None

    def observe(self, peer: int, incarnation: bytes, *, dialed: bool) -> None:
        previous = self._known.get(peer)
        self._known[peer] = incarnation
        if previous is not None and previous != incarnation and self.on_restart is not None:
            self.on_restart(peer, dialed)


@dataclass(frozen=True, slots=True)
class LinkContext:
    """What every link of one transport shares (set once when the transport opens)."""

    config: TransportConfig
    #: random per transport instance: tells peers we restarted, so they reset our seqs
    incarnation: bytes = field(default_factory=lambda: os.urandom(INCARNATION_BYTES))
    peers: PeerIncarnations = field(default_factory=PeerIncarnations)
