"""The authenticated, reliable TCP transport: one node's links to every other node.

Shape (see each module for the why):

- ``node/framing.py``: length-prefixed frames, large ``recv_into`` into reused buffers,
  scatter/gather writes;
- ``node/admission.py``: who may hold a pending handshake (room reserved for the roster,
  caps and a rate limit per source, the oldest evicted first);
- ``node/handshake.py``: mutual ed25519 authentication bound to the roster and session id,
  X25519 ephemerals, the frame suite, two directional keys;
- ``node/frame_auth.py``: every later frame is encrypted and authenticated (AES-256-GCM or
  ChaCha20-Poly1305) under an implicit counter, so an observer learns sizes and timing
  only, and tampered, replayed or foreign frames are refused;
- ``node/outbound_link.py`` / ``node/inbound_link.py``: one TCP connection per ordered
  pair, DATA one way and cumulative ACKs the other, reconnect with backoff, resend of
  what was not acknowledged, per-peer dedup by sequence number;
- ``node/outbox.py`` / ``node/inbound_queue.py``: the byte bounds on both sides.

Errors are translated at this boundary: what a peer does wrong is logged and counted in
``statistics().faults`` and costs at most its own connection; socket errors become
reconnects; only our own misuse (unknown destination, oversized message, use after close)
raises, as :class:`TransportError`.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager

import trio

from node.inbound_link import InboundLinks
from node.inbound_queue import InboundQueue
from node.interfaces import TransportStatistics
from node.outbound_link import OutboundLink
from node.transport_accounting import FaultKind, FaultLog, TrafficCounters
from node.transport_config import (
    LinkContext,
    MessageTooLarge,
    TransportClosed,
    TransportConfig,
    TransportError,
)

log = logging.getLogger("jungle.transport")

__all__ = [
    "FaultKind",
    "MessageTooLarge",
    "TcpTransport",
    "TransportClosed",
    "TransportConfig",
    "TransportError",
    "open_tcp_transport",
]


class TcpTransport:
    """Use through :func:`open_tcp_transport`, which runs its background tasks."""

    def __init__(
        self,
        config: TransportConfig,
        listen_port: int,
        outbound: Mapping[int, OutboundLink],
        inbound: InboundLinks,
        queue: InboundQueue,
        faults: FaultLog,
        counters: TrafficCounters,
    ) -> None:
        self._config = config
        self._listen_port = listen_port
        self._outbound = outbound
        self._inbound = inbound
        self._queue = queue
        self._faults = faults
        self._counters = counters
        self._closed = False

    @property
    def me(self) -> int:
        return self._config.me

    @property
    def listen_port(self) -> int:
        """The TCP port we accept peers on (useful when listening on port 0)."""
        return self._listen_port

    def send_nowait(self, dst: int, data: bytes) -> None:
        """Queue ``data`` for ``dst``: delivered once, in order, resent across reconnects.

        Never blocks. If ``dst``'s queue is full the message is dropped, counted in
        ``messages_dropped`` and logged once until the queue drains.
        """
        if self._closed:
            raise TransportClosed("send_nowait on a closed transport")
        link = self._outbound.get(dst)
        if link is None:
            raise TransportError(
                f"node {self.me} has no link to {dst!r}: peers are the other roster ids "
                f"0..{self._config.roster.n - 1}"
            )
        if len(data) > self._config.message_bytes_max:
            raise MessageTooLarge(
                f"a {len(data)}-byte message exceeds message_bytes_max "
                f"{self._config.message_bytes_max} (raise frame_bytes_max)"
            )
        link.send_nowait(data)

    def send_many(self, dsts: Sequence[int], data: bytes) -> None:
        """:meth:`send_nowait` to each of ``dsts``; every bad ``dst`` is refused first."""
        for dst in dsts:
            if dst not in self._outbound:
                self.send_nowait(dst, data)  # raises the error naming it
        for dst in dsts:
            self.send_nowait(dst, data)

    async def receive(self) -> tuple[int, bytes]:
        """The next message from any peer, as (source id, data); waits for one."""
        return await self._queue.get()

    def statistics(self) -> TransportStatistics:
        return self._counters.snapshot(self._faults)

    def peers_connected(self) -> frozenset[int]:
        """Peers we currently hold an authenticated link to (for our data to them)."""
        return frozenset(peer for peer, link in self._outbound.items() if link.connected)

    async def wait_connected(self, peers: Iterable[int] | None = None) -> None:
        """Until our links to ``peers`` (default: all) are authenticated."""
        for peer in sorted(self._outbound if peers is None else peers):
            await self._outbound[peer].wait_connected()

    async def wait_flushed(self) -> None:
        """Until every message queued so far has been acknowledged by its peer."""
        for peer in sorted(self._outbound):
            await self._outbound[peer].wait_drained()

    @property
    def handshakes_pending(self) -> int:
        """Inbound connections currently in their handshake (at most handshakes_pending_max)."""
        return self._inbound.handshakes_pending

    def queued_bytes(self, dst: int) -> int:
        """Bytes queued for ``dst`` and not yet acknowledged."""
        return self._outbound[dst].outbox.bytes_queued


@asynccontextmanager
async def open_tcp_transport(
    config: TransportConfig,
    *,
    listeners: Sequence[trio.SocketListener] | None = None,
    on_peer_restart: Callable[[int], None] | None = None,
) -> AsyncIterator[TcpTransport]:
    """Listen, dial every peer in the background, and yield the transport.

    ``listeners`` lets a caller bind first (e.g. on port 0) and write the roster after;
    otherwise we bind ``config.listen_host/listen_port`` (default: our roster address).
    ``on_peer_restart(peer)`` is called when a peer authenticates with a new incarnation
    (it restarted: what it had received from us died with it). On exit every connection
    is closed and every background task cancelled.
    """
    if listeners is None:
        entry = config.roster.entry(config.me)
        host = entry.host if config.listen_host is None else config.listen_host
        port = entry.port if config.listen_port is None else config.listen_port
        listeners = await trio.open_tcp_listeners(port, host=host)
    listen_port = listeners[0].socket.getsockname()[1]
    roster_hosts = await _roster_addresses(config)
    context = LinkContext(config)
    faults = FaultLog(config.me)
    counters = TrafficCounters()
    queue = InboundQueue(config.settings.receive_queue_bytes_max)
    outbound = {
        peer: OutboundLink(context, peer, faults, counters)
        for peer in range(config.roster.n)
        if peer != config.me
    }
    inbound = InboundLinks(context, faults, counters, queue, roster_hosts)

    def peer_restarted(peer: int, dialed: bool) -> None:
        log.info("node %d: peer %d restarted (new incarnation)", config.me, peer)
        if not dialed:  # our link to it still goes to the old incarnation
            outbound[peer].reconnect()
        if on_peer_restart is not None:
            on_peer_restart(peer)

    context.peers.on_restart = peer_restarted
    transport = TcpTransport(config, listen_port, outbound, inbound, queue, faults, counters)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, inbound.serve, list(listeners))
            for link in outbound.values():
                nursery.start_soon(link.run)
            try:
                yield transport
            finally:
                transport._closed = True
                nursery.cancel_scope.cancel()
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)


#: how long start-up waits for the roster's host names to resolve (best effort)
_RESOLVE_TIMEOUT_S = 2.0


async def _roster_addresses(config: TransportConfig) -> frozenset[str]:
    """The IP addresses of our peers' roster entries (host names resolved once, best
    effort): connections from them get the handshake room reserved for the roster."""
    hosts: set[str] = set()
    for entry in config.roster.nodes:
        if entry.id == config.me:
            continue
        try:
            ipaddress.ip_address(entry.host)
        except ValueError:
            with trio.move_on_after(_RESOLVE_TIMEOUT_S):
                try:
                    for *_, sockaddr in await trio.socket.getaddrinfo(entry.host, None):
                        hosts.add(str(sockaddr[0]))
                except OSError as error:
                    log.info("cannot resolve roster host %s: %s", entry.host, error)
            continue
        hosts.add(entry.host)
    return frozenset(hosts)
