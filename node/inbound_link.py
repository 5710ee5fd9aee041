"""Incoming links: peers' messages to us, authenticated, deduplicated, acknowledged.

Each peer dials us to carry its data (node/outbound_link.py is the other end). Every
accepted connection first asks node/admission.py for a pending-handshake slot (room
reserved for the roster's addresses, caps and a rate limit per source, the oldest evicted
first), must send its HELLO within ``hello_timeout_s`` and finish the handshake within
``handshake_timeout_s``, so unauthenticated connections cost a bounded amount of memory and
time and cannot keep an honest peer out; then we read DATA frames into the bounded inbound
queue and answer with cumulative ACKs (every ``ack_every_messages`` messages, and whenever
no further frame is already buffered, so a lone message is acknowledged at once).

Per peer we remember its incarnation and the last sequence number delivered, across
connections: a reconnect resumes where the peer left off, a resend of a delivered
message is dropped, and a new incarnation (the peer restarted) starts afresh from the
``seq_base`` in its HELLO. The newest authenticated connection from a peer replaces the
older one (the older is cancelled first, so a peer's messages are never read from two
connections at once).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import trio

from node import handshake
from node.admission import Admission, AdmissionStatistics
from node.frame_auth import (
    KIND_DATA,
    LINK_BYTES_CEILING,
    FrameOpener,
    FrameRejected,
    FrameSealer,
    KeyExhausted,
)
from node.framing import (
    CONNECTION_ERRORS,
    FrameReader,
    FramingError,
    configure_socket,
    send_buffers,
)
from node.inbound_queue import InboundQueue
from node.transport_accounting import UNKNOWN_PEER, FaultKind, FaultLog, TrafficCounters
from node.transport_config import LinkContext

log = logging.getLogger("jungle.transport")


@dataclass(slots=True)
class _PeerInbound:
    """What we know of one peer's stream to us; outlives its connections."""

    incarnation: bytes | None = None
    delivered_seq: int = 0
    #: cancel scope of the connection currently allowed to deliver (the newest)
    active: trio.CancelScope | None = None
    #: held by the connection that is reading this peer's messages
    reading: trio.Lock = field(default_factory=trio.Lock)


class InboundLinks:
    def __init__(
        self,
        context: LinkContext,
        faults: FaultLog,
        counters: TrafficCounters,
        queue: InboundQueue,
        roster_hosts: frozenset[str] = frozenset(),
    ) -> None:
        """``roster_hosts``: the roster's peer addresses as IP strings (their own pool)."""
        self._context = context
        self._config = context.config
        self._faults = faults
        self._counters = counters
        self._queue = queue
        self._peers = {
            peer: _PeerInbound() for peer in range(self._config.roster.n) if peer != self._config.me
        }
        config = self._config
        self._admission = Admission(
            roster_hosts,
            strangers_max=config.settings.handshakes_pending_max,
            roster_max=config.settings.handshakes_reserved_for_roster,
            per_source_max=config.settings.handshakes_per_source_max,
            rate_per_s=config.settings.handshakes_per_source_per_s,
        )
        self._pending_scopes: dict[int, trio.CancelScope] = {}

    @property
    def handshakes_pending(self) -> int:
        stats = self._admission.statistics()
        return stats.pending_roster + stats.pending_strangers

    def admission_statistics(self) -> AdmissionStatistics:
        return self._admission.statistics()

    async def serve(self, stream: trio.SocketStream) -> None:
        """Handle one accepted connection (a ``trio.serve_listeners`` handler).

        Never raises because of what the peer sent: every failure is logged and, when it
        is someone's fault, counted.
        """
        where = _remote_address(stream)
        configure_socket(stream.socket, self._config.settings.dead_peer_timeout_s)
        try:
            accepted = await self._accept(stream, where)
            if accepted is not None:
                await self._run_session(stream, *accepted, where)
        finally:
            await trio.aclose_forcefully(stream)

    async def _accept(
        self, stream: trio.SocketStream, where: str
    ) -> tuple[FrameReader, handshake.LinkSecrets] | None:
        host = _remote_host(stream)
        ticket, evicted = self._admission.admit(host, trio.current_time())
        for old in evicted:
            self._faults.record(
                FaultKind.HANDSHAKE_EVICTED,
                UNKNOWN_PEER,
                "pending handshake evicted to make room for a newer connection",
                f"from {old.source}",
            )
            self._pending_scopes.pop(old.number).cancel()
        if ticket is None:
            self._faults.record(
                FaultKind.RATE_LIMITED,
                UNKNOWN_PEER,
                f"more than {self._config.settings.handshakes_per_source_per_s:g} connections "
                "a second from this source; closed unread",
                where,
            )
            return None
        config = self._config
        try:
            with trio.CancelScope() as scope:
                self._pending_scopes[ticket.number] = scope
                reader = FrameReader(stream.socket, handshake.HANDSHAKE_FRAME_BYTES_MAX)
                acceptor = handshake.AcceptorHandshake(
                    config.roster,
                    config.me,
                    config.signing_key,
                    self._context.incarnation,
                    suites=config.suites,
                )
                with trio.move_on_after(config.settings.handshake_timeout_s):
                    return reader, await handshake.accept(
                        stream.socket, reader, acceptor, config.settings.hello_timeout_s
                    )
                self._faults.record(
                    FaultKind.HANDSHAKE_TIMEOUT,
                    UNKNOWN_PEER,
                    f"no handshake within {config.settings.handshake_timeout_s} s",
                    where,
                )
        except trio.TooSlowError:
            self._faults.record(
                FaultKind.HANDSHAKE_TIMEOUT,
                UNKNOWN_PEER,
                f"no HELLO within {config.settings.hello_timeout_s} s",
                where,
            )
        except handshake.HandshakeError as error:
            self._faults.record(error.kind, UNKNOWN_PEER, error.detail, where)
        except FramingError as error:
            self._faults.record(error.kind, UNKNOWN_PEER, error.detail, where)
        except CONNECTION_ERRORS as error:
            log.debug("node %d: connection from %s ended in handshake: %r", self._me, where, error)
        finally:
            self._pending_scopes.pop(ticket.number, None)
            self._admission.release(ticket)
        return None

    async def _run_session(
        self,
        stream: trio.SocketStream,
        reader: FrameReader,
        secrets: handshake.LinkSecrets,
        where: str,
    ) -> None:
        peer = secrets.peer
        state = self._peers[peer]
        if state.active is not None:
            state.active.cancel()  # the newest authenticated connection wins
        scope = state.active = trio.CancelScope()
        try:
            with scope:
                async with state.reading:
                    self._resume(state, secrets)
                    await self._receive_loop(stream, reader, secrets, state)
        except CONNECTION_ERRORS as error:
            log.debug("node %d: link from peer %d closed: %r", self._me, peer, error)
        except KeyExhausted:
            log.info(
                "node %d: link from peer %d used up its keys; it will reconnect", self._me, peer
            )
        except (FramingError, FrameRejected) as error:
            # Only what opened under the peer's key is the peer's doing; a frame that fails
            # to open (or a bad length prefix) may be anyone's on the path.
            authentic = isinstance(error, FrameRejected) and error.authentic
            accused = peer if authentic else UNKNOWN_PEER
            link = f"{where}, link from peer {peer}"
            self._faults.record(error.kind, accused, error.detail, link)
        finally:
            if state.active is scope:
                state.active = None

    def _resume(self, state: _PeerInbound, secrets: handshake.LinkSecrets) -> None:
        self._context.peers.observe(secrets.peer, secrets.peer_incarnation, dialed=False)
        if state.incarnation == secrets.peer_incarnation:
            state.delivered_seq = max(state.delivered_seq, secrets.seq_base)
            return
        if state.incarnation is not None:
            log.info("node %d: peer %d restarted; its sequence restarts", self._me, secrets.peer)
        state.incarnation = secrets.peer_incarnation
        state.delivered_seq = secrets.seq_base

    async def _receive_loop(
        self,
        stream: trio.SocketStream,
        reader: FrameReader,
        secrets: handshake.LinkSecrets,
        state: _PeerInbound,
    ) -> None:
        peer = secrets.peer
        config = self._config
        sealer = FrameSealer(secrets.suite, secrets.send_key, config.settings.link_bytes_max)
        # the sender's limit is its own: refuse only past what no node may configure
        opener = FrameOpener(secrets.suite, secrets.receive_key, LINK_BYTES_CEILING)
        reader.frame_bytes_max = config.settings.frame_bytes_max
        acked_seq = state.delivered_seq
        await send_buffers(stream.socket, (sealer.ack_frame(acked_seq),))
        while True:
            # Opening decrypts out of the reused read buffer: the one copy of a message.
            kind, seq, payload = opener.open(await reader.receive_frame())
            if kind != KIND_DATA:
                raise FrameRejected(
                    FaultKind.FRAME_MALFORMED, "an ACK frame on a data link", authentic=True
                )
            if seq == state.delivered_seq + 1:
                await self._queue.put(peer, payload)
                state.delivered_seq = seq
                self._counters.on_received(peer, len(payload))
            elif seq > state.delivered_seq + 1:
                raise FrameRejected(
                    FaultKind.PROTOCOL_VIOLATION,
                    f"seq {seq} follows {state.delivered_seq}: messages were skipped",
                    authentic=True,
                )
            # else: a resend of a message already delivered; drop it
            unacked = state.delivered_seq - acked_seq
            if unacked and (
                unacked >= self._config.settings.ack_every_messages
                or not reader.has_buffered_frame()
            ):
                acked_seq = state.delivered_seq
                await send_buffers(stream.socket, (sealer.ack_frame(acked_seq),))

    @property
    def _me(self) -> int:
        return self._config.me


def _remote_host(stream: trio.SocketStream) -> str:
    try:
        return str(stream.socket.getpeername()[0])
    except (OSError, ValueError, IndexError):
        return "unknown"


def _remote_address(stream: trio.SocketStream) -> str:
    try:
        host, port, *_ = stream.socket.getpeername()
    except (OSError, ValueError):
        return "unknown address"
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
