"""Per-frame authentication after the handshake: keyed BLAKE3 MACs with implicit counters.

Every frame body after the handshake is ``kind (1) | seq (8, LE) | payload | tag (16)``,
where ``tag = blake3(key=direction_key)(counter || body without tag)[:16]`` and
``counter`` is the number of frames sent before it in this direction on this connection.
The counter is never transmitted: both ends count, so a frame that is replayed (from this
connection, an older one, or another session), reordered, dropped or tampered with fails
its MAC. Each direction of each connection has its own key, derived in the handshake from
fresh X25519 ephemerals, so frames cannot be reflected either.

Why a MAC and not an AEAD: we need integrity and authenticity, not secrecy (every update is
broadcast to every peer anyway), and the cost per byte decides the link's throughput.
Measured on this kind of machine (2-core AMD EPYC VM, 4 MB buffers, one thread, idle):
keyed blake3 5.8 GB/s; Poly1305 alone (chacha20poly1305 with the payload as associated
data) 2.9 GB/s; keyed blake2b 0.64 GB/s; AES-256-GCM 0.65 GB/s; chacha20poly1305-ietf
0.45 GB/s; xchacha20poly1305 0.44 GB/s. With an encrypting AEAD a link would top out near
0.45 GB/s; with blake3 the MAC costs about as much as the kernel's copy of the bytes. A
16-byte tag keeps forgery odds at 2^-128 per attempt, and an attempt costs the attacker
its connection (the first bad tag closes it).
"""

from __future__ import annotations

import hmac
import struct
from typing import Final

import blake3

from node.framing import LENGTH

TAG_BYTES: Final = 16
KEY_BYTES: Final = 32
_COUNTER = struct.Struct("<Q")
#: body header: frame kind, then the link sequence number (DATA) or cumulative ack (ACK)
HEADER = struct.Struct("<BQ")
#: bytes a DATA frame's body adds to its payload (so frame_bytes_max bounds messages)
DATA_BODY_OVERHEAD_BYTES: Final = HEADER.size + TAG_BYTES
#: bytes a DATA frame adds around its payload on the wire (length prefix included)
DATA_OVERHEAD_BYTES: Final = LENGTH.size + DATA_BODY_OVERHEAD_BYTES
KIND_DATA: Final = 1
KIND_ACK: Final = 2


class FrameRejected(Exception):
    """An authenticated-phase frame was refused; ``kind`` names the fault."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class FrameAuthenticator:
    """Builds the frames of one direction of one connection (sending side)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"MAC keys have {KEY_BYTES} bytes")
        self._keyed = blake3.blake3(key=key)
        self._counter = 0

    def data_frame(
        self, seq: int, payload: bytes | memoryview
    ) -> tuple[bytes, bytes | memoryview, bytes]:
        """(prefix+header, payload, tag): three buffers for one scatter/gather write."""
        header = HEADER.pack(KIND_DATA, seq)
        tag = self._tag(header, payload)
        return LENGTH.pack(HEADER.size + len(payload) + TAG_BYTES) + header, payload, tag

    def ack_frame(self, seq: int) -> bytes:
        header = HEADER.pack(KIND_ACK, seq)
        return LENGTH.pack(HEADER.size + TAG_BYTES) + header + self._tag(header, b"")

    def _tag(self, header: bytes, payload: bytes | memoryview) -> bytes:
        mac = self._keyed.copy()
        mac.update(_COUNTER.pack(self._counter))
        mac.update(header)
        if len(payload):
            mac.update(payload)
        self._counter += 1
        tag: bytes = mac.digest(TAG_BYTES)
        return tag


class FrameVerifier:
    """Checks the frames of one direction of one connection (receiving side)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"MAC keys have {KEY_BYTES} bytes")
        self._keyed = blake3.blake3(key=key)
        self._counter = 0

    def open(self, body: memoryview) -> tuple[int, int, memoryview]:
        """(kind, seq, payload view) of an authentic frame; :class:`FrameRejected` otherwise.

        The payload view aliases ``body``; a rejected frame leaves the connection unusable
        (the counter no longer matches), so the caller must close it.
        """
        if len(body) < HEADER.size + TAG_BYTES:
            raise FrameRejected("frame_malformed", f"{len(body)}-byte frame is too short")
        split = len(body) - TAG_BYTES
        mac = self._keyed.copy()
        mac.update(_COUNTER.pack(self._counter))
        mac.update(body[:split])
        if not hmac.compare_digest(mac.digest(TAG_BYTES), body[split:]):
            raise FrameRejected("bad_mac", f"frame #{self._counter} failed authentication")
        self._counter += 1
        kind, seq = HEADER.unpack_from(body)
        if kind not in (KIND_DATA, KIND_ACK):
            raise FrameRejected("frame_malformed", f"unknown frame kind {kind}")
        return kind, seq, body[HEADER.size : split]
