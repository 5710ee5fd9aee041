"""One outgoing link: our messages to one peer, delivered in order, exactly once.

We carry data to peer j on a TCP connection that *we* dial (j dials us for its own data),
so each connection has one writer per direction and no tie-breaking is needed: DATA flows
dialer -> acceptor, cumulative ACKs flow back on the same connection.

The link runs forever: dial, handshake (node/handshake.py), learn from the acceptor's
first ACK how far it already got, then write the outbox while reading ACKs, until the
connection breaks (one task seals frames, encrypting large ones in a worker thread, while
another writes the previous frame, so encryption and write overlap); then back off
(exponential, with seeded jitter) and do it again. A connection whose key reaches its
usage limit (node/frame_auth.py) is closed and redialed after the shortest backoff:
fresh keys. The outbox (node/outbox.py) keeps every message until acknowledged, so a
reconnect resends exactly what the peer lacks.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Final

import trio

from node import handshake
from node.frame_auth import (
    HEADER,
    KIND_ACK,
    LINK_BYTES_CEILING,
    TAG_BYTES,
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
from node.outbox import AckOutOfRange, Outbox
from node.transport_accounting import UNKNOWN_PEER, FaultKind, FaultLog, TrafficCounters
from node.transport_config import LinkContext

log = logging.getLogger("jungle.transport")
#: the only frames an acceptor sends us after the handshake are ACKs
_ACK_FRAME_BYTES: Final = HEADER.size + TAG_BYTES
_ATTEMPTS_BEFORE_WARNING: Final = 5
#: payloads at least this large are sealed in a worker thread, overlapping the previous
#: frame's write; below it the thread hand-off (~50 us) costs more than the overlap saves
_THREAD_SEAL_BYTES_MIN: Final = 256 * 1024
#: (payload bytes, the frame's buffers for one scatter/gather write)
_SealedFrame = tuple[int, tuple[bytes, bytes | memoryview, bytes]]


class OutboundLink:
    def __init__(
        self, context: LinkContext, peer: int, faults: FaultLog, counters: TrafficCounters
    ) -> None:
        self.peer = peer
        self.connected = False
        self.outbox = Outbox(context.config.settings.queue_bytes_max)
        self._context = context
        self._config = context.config
        self._faults = faults
        self._counters = counters
        self._rng = random.Random(f"jungle/transport/backoff/{self._config.seed}/{peer}")
        self._work_added = trio.lowlevel.ParkingLot()
        self._drained = trio.lowlevel.ParkingLot()
        self._state_changed = trio.lowlevel.ParkingLot()
        self._overflowing = False
        #: connection attempts that failed since the link was last up
        self._failed_attempts = 0
        #: the current connection attempt or backoff, for :meth:`reconnect`
        self._attempt = trio.CancelScope()

    # -- called by the transport ------------------------------------------------------

    def send_nowait(self, data: bytes) -> bool:
        """Queue ``data``; False (counted, logged once until the outbox drains) if full."""
        release_at = 0.0
        delay = self._config.send_delay_s
        if delay is not None:
            delay_s = delay(self.peer, self.outbox.next_seq, len(data))
            release_at = trio.current_time() + max(0.0, delay_s)
        if self.outbox.push(data, release_at) is None:
            self._counters.messages_dropped += 1
            if not self._overflowing:
                self._overflowing = True
                log.warning(
                    "node %d: queue to peer %d is full (%d bytes unacknowledged); dropping "
                    "messages to it until it catches up",
                    self._config.me,
                    self.peer,
                    self.outbox.bytes_queued,
                )
            return False
        self._work_added.unpark_all()
        return True

    async def wait_drained(self) -> None:
        """Until every queued message has been acknowledged by the peer."""
        while len(self.outbox):
            await self._drained.park()

    async def wait_connected(self) -> None:
        while not self.connected:
            await self._state_changed.park()

    async def run(self) -> None:
        """Connect, carry data, reconnect: forever (until cancelled)."""
        backoff_s = self._config.settings.backoff_s_min
        while True:
            established = True  # unless the attempt says otherwise (a reset retries at once)
            with trio.CancelScope() as self._attempt:
                established = await self._connect_once()
            if established:
                backoff_s = self._config.settings.backoff_s_min
            else:
                backoff_s = min(backoff_s * 2, self._config.settings.backoff_s_max)
            with trio.CancelScope() as self._attempt:
                await trio.sleep(backoff_s * self._rng.uniform(0.5, 1.0))

    def reconnect(self) -> None:
        """Drop the current connection (or backoff) and dial again now.

        Called when the peer shows up with a new incarnation: our connection to its old
        incarnation is dead even if no error has reached us yet.
        """
        self._attempt.cancel()

    # -- one connection -----------------------------------------------------------------

    async def _connect_once(self) -> bool:
        """One connection's life; True if it authenticated and then simply broke."""
        entry = self._config.roster.entry(self.peer)
        where = f"dialing {entry.address}"
        stream: trio.SocketStream | None = None
        session: tuple[FrameReader, FrameSealer, FrameOpener] | None = None
        authenticated = False
        try:
            with trio.move_on_after(self._config.settings.handshake_timeout_s):
                stream = await trio.open_tcp_stream(entry.host, entry.port)
                configure_socket(stream.socket, self._config.settings.dead_peer_timeout_s)
                reader = FrameReader(stream.socket, handshake.HANDSHAKE_FRAME_BYTES_MAX)
                dialer = handshake.DialerHandshake(
                    self._config.roster,
                    self._config.signing_key,
                    self.peer,
                    self._context.incarnation,
                    self.outbox.acked_seq,
                    suites=self._config.suites,
                )
                secrets = await handshake.dial(stream.socket, reader, dialer)
                authenticated = True
                self._context.peers.observe(self.peer, secrets.peer_incarnation, dialed=True)
                reader.frame_bytes_max = _ACK_FRAME_BYTES
                bytes_max = self._config.settings.link_bytes_max
                # the sender's limit is its own: refuse only past what no node may set
                opener = FrameOpener(secrets.suite, secrets.receive_key, LINK_BYTES_CEILING)
                # The acceptor's first ACK says how far it got: resend only the rest.
                self._apply_ack(await self._receive_ack(reader, opener))
                session = reader, FrameSealer(secrets.suite, secrets.send_key, bytes_max), opener
            if stream is None or session is None:
                self._note_refusal(
                    f"no handshake within {self._config.settings.handshake_timeout_s} s"
                )
                return False
            await self._run_session(stream, *session)
        except handshake.HandshakeError as error:
            self._faults.record(error.kind, UNKNOWN_PEER, error.detail, where)
        except (FramingError, FrameRejected, AckOutOfRange) as error:
            # Charged to the peer only for what opened under its key (an ACK out of range,
            # a frame of the wrong kind); a frame that fails to open may be anyone's.
            opened = isinstance(error, AckOutOfRange) or (
                isinstance(error, FrameRejected) and error.authentic
            )
            accused = self.peer if authenticated and opened else UNKNOWN_PEER
            kind = FaultKind.PROTOCOL_VIOLATION if isinstance(error, AckOutOfRange) else error.kind
            self._faults.record(kind, accused, str(error), f"{where} (peer {self.peer})")
        except CONNECTION_ERRORS as error:
            self._note_refusal(_describe(error))
            return authenticated
        except KeyExhausted:
            log.info(
                "node %d: link to peer %d used up its keys; redialing", self._config.me, self.peer
            )
            return True
        finally:
            self._set_connected(False)
            self.outbox.rewind()
            if stream is not None:
                await trio.aclose_forcefully(stream)
        return False

    async def _run_session(
        self,
        stream: trio.SocketStream,
        reader: FrameReader,
        sealer: FrameSealer,
        opener: FrameOpener,
    ) -> None:
        """Write the outbox and read ACKs until either side of the connection fails."""
        if self._failed_attempts >= _ATTEMPTS_BEFORE_WARNING:
            log.warning("node %d: link to peer %d is up again", self._config.me, self.peer)
        self._failed_attempts = 0
        self._set_connected(True)
        failure: list[Exception] = []
        async with trio.open_nursery() as nursery:

            async def until_failure(loop: Callable[[], Awaitable[None]]) -> None:
                try:
                    await loop()
                except (
                    *CONNECTION_ERRORS,
                    FramingError,
                    FrameRejected,
                    AckOutOfRange,
                    KeyExhausted,
                ) as error:
                    failure.append(error)
                    nursery.cancel_scope.cancel()

            # Seal (encrypt) and write in two tasks, one frame apart: sealing a large frame
            # (~0.8 ms per 4 MB) runs in a worker thread (OpenSSL releases the GIL) while
            # the previous frame is written, so the two overlap instead of adding up. The
            # channel holds no frame: the sealer's two buffers are one frame apart too.
            sealed_send, sealed_receive = trio.open_memory_channel[_SealedFrame](0)
            nursery.start_soon(until_failure, partial(self._seal_loop, sealer, sealed_send))
            nursery.start_soon(until_failure, partial(self._write_loop, stream, sealed_receive))
            nursery.start_soon(until_failure, partial(self._ack_loop, reader, opener))
        if failure:
            raise failure[0]

    async def _write_loop(
        self, stream: trio.SocketStream, sealed: trio.MemoryReceiveChannel[_SealedFrame]
    ) -> None:
        async for size_bytes, buffers in sealed:
            await send_buffers(stream.socket, buffers)
            self._counters.on_sent(self.peer, size_bytes)
            del buffers  # do not pin the payload while waiting for the next frame

    async def _seal_loop(
        self,
        sealer: FrameSealer,
        sealed: trio.MemorySendChannel[_SealedFrame],
    ) -> None:
        while True:
            entry = self.outbox.peek_unsent()
            if entry is None:
                await self._work_added.park()
                continue
            if entry.release_at > trio.current_time():
                await trio.sleep_until(entry.release_at)
                continue
            if not sealer.can_seal(len(entry.data)):
                raise KeyExhausted("this connection's key is used up")  # redial: new keys
            # In flight from here: a connection that breaks now resends it (rewind).
            entry = self.outbox.take_unsent()
            if len(entry.data) >= _THREAD_SEAL_BYTES_MIN:
                # Abandoning on cancel is safe: the sealer dies with the connection.
                buffers = await trio.to_thread.run_sync(
                    sealer.data_frame, entry.seq, entry.data, abandon_on_cancel=True
                )
            else:
                buffers = sealer.data_frame(entry.seq, entry.data)
            await sealed.send((len(entry.data), buffers))

    async def _ack_loop(self, reader: FrameReader, opener: FrameOpener) -> None:
        while True:
            self._apply_ack(await self._receive_ack(reader, opener))

    async def _receive_ack(self, reader: FrameReader, opener: FrameOpener) -> int:
        kind, seq, payload = opener.open(await reader.receive_frame())
        if kind != KIND_ACK or len(payload):
            raise FrameRejected(FaultKind.FRAME_MALFORMED, "expected an ACK frame", authentic=True)
        return seq

    def _apply_ack(self, seq: int) -> None:
        if self.outbox.acknowledge(seq) and not len(self.outbox):
            self._overflowing = False
            self._drained.unpark_all()

    # -- bookkeeping ----------------------------------------------------------------------

    def _set_connected(self, connected: bool) -> None:
        if connected != self.connected:
            self.connected = connected
            self._state_changed.unpark_all()

    def _note_refusal(self, reason: str) -> None:
        """A failure that is nobody's fault (peer down, restarting, refusing us): peers
        come and go, so only a link that stays down is worth a warning."""
        self._failed_attempts += 1
        if self._failed_attempts == _ATTEMPTS_BEFORE_WARNING:
            level = logging.WARNING
        else:
            level = logging.INFO if self._failed_attempts == 1 else logging.DEBUG
        log.log(
            level,
            "node %d: link to peer %d down (%d failed attempts): %s",
            self._config.me,
            self.peer,
            self._failed_attempts,
            reason,
        )


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__
