"""Length-prefixed frames over a trio socket, read into one reused buffer.

Wire format: a 4-byte little-endian body length, then the body. A zero length or one
above the reader's current limit is a framing error: the reader refuses it before
allocating anything, so a peer's length prefix never decides how much memory we take
beyond the limit we set (tiny before the handshake, ``frame_bytes_max`` after).

Why this shape (DESIGN 8): page faults and per-call allocations dominate at GB/s, so
:class:`FrameReader` does large ``recv_into`` calls into a single ``bytearray`` that it
keeps for the connection's lifetime and hands out ``memoryview`` slices of it; each
``recv_into`` asks for at least the rest of the current frame, and for large frames we
first let the kernel gather it (SO_RCVLOWAT), so a 4 MB frame costs one or two wakeups
and system calls (measured: ~1 instead of ~8 per 4 MB frame, and about a quarter less
receiver CPU per byte); compaction only ever moves a small tail. Writers send
header, payload and trailer with one ``sendmsg`` (scatter/gather), so a 4 MB payload is
never concatenated or copied in user space; frames of a MiB or more are written from a
worker thread (see :func:`send_buffers`).
"""

from __future__ import annotations

import select
import socket
import struct
import threading
from collections.abc import Sequence
from typing import Final

import trio

LENGTH: Final = struct.Struct("<I")
LENGTH_BYTES: Final = LENGTH.size
#: smallest read we issue, so that runs of small frames cost one system call per batch
RECV_BYTES_MIN: Final = 64 * 1024
_BUFFER_BYTES_INITIAL: Final = 4096
#: below this many missing bytes we read whatever has arrived; above it, we first ask the
#: kernel (SO_RCVLOWAT) to wake us only once that much is buffered, up to the max
RCVLOWAT_BYTES_MIN: Final = 256 * 1024
RCVLOWAT_BYTES_MAX: Final = 4 * 1024 * 1024
#: writes at least this large go through a worker thread (see :func:`send_buffers`)
THREAD_SEND_BYTES_MIN: Final = 1024 * 1024
#: how often a worker thread writing a large frame checks whether it was abandoned
_THREAD_SEND_POLL_MS: Final = 50


class FramingError(Exception):
    """The byte stream is not a sequence of acceptable frames. ``kind`` names the fault."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class StreamClosed(Exception):
    """The peer closed the connection (EOF), possibly in the middle of a frame."""


#: the world broke a connection: reconnect or drop it; nobody to blame
CONNECTION_ERRORS: Final = (OSError, StreamClosed, trio.BrokenResourceError)


class FrameReader:
    """Reads frames from a connected trio socket.

    A frame returned by :meth:`receive_frame` is a view into the reader's buffer and is
    valid only until the next call: copy what must outlive it. ``frame_bytes_max`` may be
    raised once the peer is authenticated.
    """

    def __init__(self, sock: trio.socket.SocketType, frame_bytes_max: int) -> None:
        self._sock = sock
        self.frame_bytes_max = frame_bytes_max
        self._buffer = bytearray(_BUFFER_BYTES_INITIAL)
        self._view = memoryview(self._buffer)
        self._start = 0  # first byte not yet returned as part of a frame
        self._end = 0  # one past the last byte received
        self.bytes_received = 0
        #: current SO_RCVLOWAT; 0 once the platform refused it (then we never use it)
        self._lowat_bytes = 1

    @property
    def buffer_bytes(self) -> int:
        """Current size of the reused receive buffer (for memory accounting)."""
        return len(self._buffer)

    def has_buffered_frame(self) -> bool:
        """Whether the next :meth:`receive_frame` can return without reading the socket."""
        available = self._end - self._start
        if available < LENGTH_BYTES:
            return False
        (length,) = LENGTH.unpack_from(self._buffer, self._start)
        return bool(available >= LENGTH_BYTES + length)

    async def receive_frame(self) -> memoryview:
        """The next frame's body. Raises :class:`FramingError` or :class:`StreamClosed`.

        Socket errors (``OSError``) propagate for the caller to translate.
        """
        while True:
            available = self._end - self._start
            frame_bytes = LENGTH_BYTES
            if available >= LENGTH_BYTES:
                (length,) = LENGTH.unpack_from(self._buffer, self._start)
                if length == 0:
                    raise FramingError("frame_invalid", "zero-length frame")
                if length > self.frame_bytes_max:
                    raise FramingError(
                        "frame_oversize",
                        f"length prefix {length} exceeds the limit {self.frame_bytes_max}",
                    )
                frame_bytes = LENGTH_BYTES + length
                if available >= frame_bytes:
                    body = self._view[self._start + LENGTH_BYTES : self._start + frame_bytes]
                    self._start += frame_bytes
                    if self._start == self._end:
                        self._start = self._end = 0
                    return body
            self._make_room(frame_bytes)
            missing = frame_bytes - available
            stop = min(self._end + max(missing, RECV_BYTES_MIN), len(self._buffer))
            if missing >= RCVLOWAT_BYTES_MIN and self._set_lowat(min(missing, RCVLOWAT_BYTES_MAX)):
                await trio.lowlevel.wait_readable(self._sock)
            else:
                self._set_lowat(1)
            received = await self._sock.recv_into(self._view[self._end : stop])
            if received == 0:
                where = " mid-frame" if available else ""
                raise StreamClosed(f"connection closed by peer{where}")
            self._end += received
            self.bytes_received += received

    def _set_lowat(self, lowat_bytes: int) -> bool:
        """Set SO_RCVLOWAT; whether it is in effect.

        Waiting for readability with a high low-water mark makes the kernel, not our event
        loop, collect a large frame: one wakeup and one ``recv_into`` per few MB instead of
        one per TCP segment burst, which measurably cuts the receiver's CPU per byte. EOF
        and a nearly closed receive window still wake us (Linux ``tcp_epollin_ready``).
        """
        if self._lowat_bytes == 0:
            return False
        if lowat_bytes != self._lowat_bytes:
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat_bytes)
            except (OSError, AttributeError):
                self._lowat_bytes = 0
                return False
            self._lowat_bytes = lowat_bytes
        return True

    def _make_room(self, frame_bytes: int) -> None:
        """Ensure the frame starting at ``_start`` fits in the buffer from there."""
        if self._start + frame_bytes <= len(self._buffer):
            return
        available = self._end - self._start
        if frame_bytes <= len(self._buffer):
            # Slide the partial frame to the front (memoryview assignment is a memmove).
            self._view[0:available] = self._view[self._start : self._end]
        else:
            # Grow to fit this frame plus one minimum read; a fresh buffer rather than
            # a resize, since frames handed out earlier may still be viewed by the caller.
            size = frame_bytes + RECV_BYTES_MIN
            buffer = bytearray(size)
            buffer[0:available] = self._view[self._start : self._end]
            self._buffer, self._view = buffer, memoryview(buffer)
        self._start, self._end = 0, available


def configure_socket(sock: trio.socket.SocketType, dead_peer_timeout_s: float) -> None:
    """Make a silently dead peer (power loss, cable pulled) break the connection within
    about ``dead_peer_timeout_s`` rather than TCP's ~15 minutes: keepalive probes on idle
    links, and TCP_USER_TIMEOUT on links with unacknowledged data. Best effort: options
    a platform lacks are skipped."""
    seconds = max(1, int(dead_peer_timeout_s))
    options = [
        (socket.SOL_SOCKET, "SO_KEEPALIVE", 1),
        (socket.IPPROTO_TCP, "TCP_KEEPIDLE", max(1, seconds // 3)),
        (socket.IPPROTO_TCP, "TCP_KEEPINTVL", max(1, seconds // 6)),
        (socket.IPPROTO_TCP, "TCP_KEEPCNT", 3),
        (socket.IPPROTO_TCP, "TCP_USER_TIMEOUT", seconds * 1000),
    ]
    for level, name, value in options:
        option = getattr(socket, name, None)
        if option is not None:
            try:
                sock.setsockopt(level, option, value)
            except OSError:
                pass


def frame_header(body_bytes: int) -> bytes:
    """The length prefix of a frame whose body is ``body_bytes`` long."""
    return LENGTH.pack(body_bytes)


async def send_buffers(sock: trio.socket.SocketType, buffers: Sequence[bytes | memoryview]) -> int:
    """Write ``buffers`` back to back with ``sendmsg`` (no user-space concatenation).

    Returns the number of bytes written. ``OSError`` propagates for the caller to translate.

    A write of ``THREAD_SEND_BYTES_MIN`` or more runs in a worker thread. A non-blocking
    ``sendmsg`` of a 4 MB frame over loopback returns after a few hundred KB (the kernel
    paces the transmit queue), so in the event loop it costs 10-18 partial writes, each a
    trip through trio's scheduler and epoll; in a thread each retry is just ``sendmsg``
    (and ``poll`` when the buffer is full), and the event loop meanwhile reads ACKs and
    the link MACs the next frame. Measured with 4 MB messages on 2 loaded cores: 15-20%
    more throughput from this alone, 20-40% with the MAC overlap of node/outbound_link.py,
    for ~10% more sender CPU per byte (benchmarks/bench_transport.py).
    """
    pending = [memoryview(buffer).cast("B") for buffer in buffers if len(buffer)]
    total = sum(len(view) for view in pending)
    if total >= THREAD_SEND_BYTES_MIN:
        await _send_in_thread(sock, pending)
        return total
    while pending:
        sent = await sock.sendmsg(pending)
        _consume(pending, sent)
    return total


async def _send_in_thread(sock: trio.socket.SocketType, pending: list[memoryview]) -> None:
    """Write ``pending`` from a worker thread, through a duplicate of the descriptor.

    On cancellation we stop waiting at once; the thread notices ``abandoned`` within
    ``_THREAD_SEND_POLL_MS`` and stops. Because it writes through its own duplicate, it can
    only ever write to this connection (which the caller is closing), never to a socket
    that later reuses the descriptor number.
    """
    duplicate = socket.fromfd(sock.fileno(), sock.family, sock.type)
    abandoned = threading.Event()
    try:
        await trio.to_thread.run_sync(
            _write_all, duplicate, pending, abandoned, abandon_on_cancel=True
        )
    finally:
        abandoned.set()


def _write_all(sock: socket.socket, pending: list[memoryview], abandoned: threading.Event) -> None:
    """In a worker thread: write ``pending`` on the (non-blocking) socket; closes it."""
    with sock:
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        while pending and not abandoned.is_set():
            try:
                sent = sock.sendmsg(pending)
            except BlockingIOError:
                poller.poll(_THREAD_SEND_POLL_MS)
                continue
            _consume(pending, sent)


def _consume(pending: list[memoryview], sent: int) -> None:
    """Drop the first ``sent`` bytes from ``pending``."""
    while sent:
        if sent >= len(pending[0]):
            sent -= len(pending.pop(0))
        else:
            pending[0] = pending[0][sent:]
            sent = 0
