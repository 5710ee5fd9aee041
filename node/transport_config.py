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

from node.frame_auth import DATA_BODY_OVERHEAD_BYTES, LINK_BYTES_CEILING, SUITE_NAMES
from node.handshake import INCARNATION_BYTES
from node.roster import Roster
from protocol.settings import SettingsError, field_problems, setting

#: the largest frame a node may accept (the AEADs take at most 2^31 - 1 bytes at once)
FRAME_BYTES_CEILING: Final = 2**30

MIB: Final = 1024 * 1024


class TransportError(Exception):
    """Misuse of the transport by this node (never raised because of a peer's bytes)."""


class TransportClosed(TransportError):
    """The transport was used after it was closed."""


class MessageTooLarge(TransportError, ValueError):
    """A message does not fit in one frame of ``frame_bytes_max``."""


@dataclass(frozen=True, slots=True)
class TransportSettings:
    """``[transport]``: every limit and timing of the links, named after what it bounds."""

    queue_bytes_max: int = setting(
        256 * MIB,
        "per peer: bytes queued and not yet acknowledged; past it messages to it are dropped "
        "(counted)",
        minimum=1,
        unit="bytes",
    )
    receive_queue_bytes_max: int = setting(
        256 * MIB,
        "bytes received and not yet processed (one message always fits)",
        minimum=1,
        unit="bytes",
    )
    frame_bytes_max: int = setting(
        64 * MIB + 64 * 1024,
        "largest frame accepted from an authenticated peer (a message plus 25 bytes)",
        minimum=DATA_BODY_OVERHEAD_BYTES + 1,
        maximum=FRAME_BYTES_CEILING,
        unit="bytes",
    )
    backoff_s_min: float = setting(0.05, "first reconnect delay", above=0.0, unit="s")
    backoff_s_max: float = setting(5.0, "longest reconnect delay", above=0.0, unit="s")
    handshake_timeout_s: float = setting(
        10.0, "connecting plus the whole handshake must finish within this", above=0.0, unit="s"
    )
    hello_timeout_s: float = setting(
        1.0, "an accepted connection must send its first HELLO within this", above=0.0, unit="s"
    )
    dead_peer_timeout_s: float = setting(
        30.0,
        "a peer that vanished without closing (power loss) is noticed within about this",
        above=0.0,
        unit="s",
    )
    handshakes_pending_max: int = setting(
        64,
        "unauthenticated connections at once from outside the roster's addresses; a new one "
        "evicts the oldest",
        minimum=1,
    )
    handshakes_reserved_for_roster: int = setting(
        16, "pending-handshake room kept for the roster's own addresses", minimum=1
    )
    handshakes_per_source_max: int = setting(
        8,
        "pending handshakes one source (IPv4 address, IPv6 /64) may hold; its newest "
        "evicts its oldest",
        minimum=1,
    )
    handshakes_per_source_per_s: float = setting(
        20.0,
        "new connections a second from one source outside the roster (burst as many); "
        "past it they are closed unread",
        above=0.0,
    )
    ack_every_messages: int = setting(
        16, "a receiver acknowledges at least every this many messages", minimum=1
    )
    link_bytes_max: int = setting(
        2**36,
        "bytes a link encrypts under one key before it reconnects with fresh keys",
        minimum=1,
        maximum=LINK_BYTES_CEILING,
        unit="bytes",
    )
    send_delay: object = setting(
        None,
        "TESTING AND RESEARCH: hold each message for a drawn delay before sending it (how "
        "jungle sim --mode process injects link delays): seconds, a string or a table of "
        "sim.delays, optionally with seed and slow_nodes",
    )

    def __post_init__(self) -> None:
        problems = field_problems(self)
        if not problems and self.backoff_s_min > self.backoff_s_max:
            problems.append("backoff_s_min: must be <= backoff_s_max")
        delay = self.send_delay
        if delay is not None and (
            isinstance(delay, bool) or not isinstance(delay, int | float | str | dict)
        ):
            problems.append(f"send_delay: must be seconds, a string or a table, got {delay!r}")
        if problems:
            raise SettingsError(problems)


@dataclass(frozen=True, slots=True)
class TransportConfig:
    me: int
    signing_key: nacl.signing.SigningKey
    roster: Roster
    #: where to listen; None = the host/port of our own roster entry (port 0 = ephemeral)
    listen_host: str | None = None
    listen_port: int | None = None
    settings: TransportSettings = TransportSettings()
    #: seeds the reconnect jitter (derived per peer), so runs are reproducible
    seed: int = 0
    #: optional injected delay per (dst, seq, size_bytes): a message is not written before
    #: enqueue time + delay (links stay FIFO). Used by the simulator's process mode.
    send_delay_s: Callable[[int, int, int], float] | None = None
    #: frame suites offered and accepted, preferred first (node/frame_auth.py); None: the
    #: encrypting ones, fastest first on this CPU. ``blake3-mac`` (integrity, no secrecy)
    #: only if listed here: benchmarks and tests that must see plaintext.
    suites: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.me < self.roster.n:
            problems.append(f"me={self.me} is not an id of the roster (0..{self.roster.n - 1})")
        elif bytes(self.signing_key.verify_key) != self.roster.public_keys[self.me]:
            problems.append(f"the signing key is not node {self.me}'s key in the roster")
        if self.suites is not None and (
            not self.suites or any(suite not in SUITE_NAMES for suite in self.suites)
        ):
            problems.append(f"suites must name known frame suites, got {self.suites}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def message_bytes_max(self) -> int:
        """Largest message ``send_nowait`` accepts."""
        return self.settings.frame_bytes_max - DATA_BODY_OVERHEAD_BYTES


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
