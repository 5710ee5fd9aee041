"""Frames after the handshake: encrypted and authenticated with an AEAD, implicit counters.

Every frame body after the handshake is ``kind (1) | seq (8, LE) | sealed payload | tag (16)``:
the 9-byte header is associated data (authenticated, not hidden: a receiver must know a
frame's kind and sequence number, and an observer learns nothing from them it could not
count), the payload is encrypted. The nonce is the frame counter of that direction on that
connection (4 zero bytes and the counter as 8 bytes little-endian), never transmitted:
both ends count, so a frame that is replayed (from this connection, an older one or
another session), reordered, dropped or tampered with fails to open, and the first
failure closes the connection. Each direction of each connection has its own key,
derived in the handshake from fresh X25519 ephemerals (node/handshake.py), so frames can
be neither reflected nor carried over to another connection, and no (key, nonce) pair is
ever used twice.

Suites (the handshake picks one both ends offer; the choice is signed with the transcript,
so nobody on the path can downgrade it):

- ``aes-256-gcm``: OpenSSL's, through the ``cryptography`` package. With AES instructions
  (AES-NI) about 5 GB/s per core here, as fast as the keyed BLAKE3 MAC that used to
  authenticate frames without hiding them.
- ``chacha20-poly1305``: the same package; about 2.3 GB/s here, and the one to prefer on
  CPUs without AES instructions (where AES-GCM in software is slow and not constant-time).
  :func:`default_suites` orders the two by what this CPU has.
- ``blake3-mac``: integrity only, no secrecy: a keyed BLAKE3 tag over the counter, header
  and plaintext payload. Never offered unless configured explicitly; kept as the baseline
  ``benchmarks/bench_transport.py`` measures encryption against, and for tests that must
  see plaintext on the wire.

Usage limits. A key seals at most :data:`FRAMES_PER_KEY_MAX` frames and
``TransportConfig.link_bytes_max`` bytes (64 GiB by default: far below AES-GCM's
confidentiality and integrity bounds for 96-bit nonces, cf. RFC 8446 section 5.5); a
sender reaching either closes the connection and reconnects, which derives fresh keys,
and a receiver refuses frames past them.
"""

from __future__ import annotations

import functools
import hmac
import struct
from pathlib import Path
from typing import Final

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from node.framing import LENGTH

TAG_BYTES: Final = 16
KEY_BYTES: Final = 32
_COUNTER = struct.Struct("<Q")
_NONCE_PREFIX: Final = bytes(4)
#: body header: frame kind, then the link sequence number (DATA) or cumulative ack (ACK)
HEADER = struct.Struct("<BQ")
#: bytes a DATA frame's body adds to its payload (so frame_bytes_max bounds messages)
DATA_BODY_OVERHEAD_BYTES: Final = HEADER.size + TAG_BYTES
#: bytes a DATA frame adds around its payload on the wire (length prefix included)
DATA_OVERHEAD_BYTES: Final = LENGTH.size + DATA_BODY_OVERHEAD_BYTES
KIND_DATA: Final = 1
KIND_ACK: Final = 2

SUITE_AES_256_GCM: Final = 1
SUITE_CHACHA20_POLY1305: Final = 2
SUITE_BLAKE3_MAC: Final = 4
SUITES: Final = {
    "aes-256-gcm": SUITE_AES_256_GCM,
    "chacha20-poly1305": SUITE_CHACHA20_POLY1305,
    "blake3-mac": SUITE_BLAKE3_MAC,
}
SUITE_NAMES: Final = {code: name for name, code in SUITES.items()}
#: suites that hide what they carry (the ones offered unless configured otherwise)
ENCRYPTING_SUITES: Final = frozenset({SUITE_AES_256_GCM, SUITE_CHACHA20_POLY1305})
#: frames one key may seal (the counter is the nonce: never near its 2^64 wrap)
FRAMES_PER_KEY_MAX: Final = 2**32
#: bytes one key may seal at most, whatever a node configures (``link_bytes_max`` is at
#: most this): what a receiver enforces, since the sender's own limit is not negotiated.
#: 256 GiB is 2^34 AES blocks, inside RFC 8446's margin for AES-GCM (5.5: 2^24.5 full records)
LINK_BYTES_CEILING: Final = 2**38
#: payloads at least this large are sealed into reused buffers (no allocation per frame)
_REUSED_BUFFER_BYTES_MIN: Final = 64 * 1024


class FrameRejected(Exception):
    """An authenticated-phase frame was refused; ``kind`` names the fault.

    ``authentic``: the frame opened (its tag verified under the peer's key), so the peer
    sent it and may be charged; a frame that fails to open, or whose unauthenticated
    length prefix is wrong, may come from anyone on the path and is charged to nobody.
    """

    def __init__(self, kind: str, detail: str, *, authentic: bool = False) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.authentic = authentic


class KeyExhausted(Exception):
    """This direction's key reached its usage limit: reconnect (fresh keys)."""


@functools.cache
def cpu_has_aes_instructions() -> bool:
    """Whether this CPU advertises AES instructions (Linux ``/proc/cpuinfo``: x86 ``aes``,
    ARM ``aes`` in Features). Unknown platforms: assume yes (most servers have them)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return True
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() in ("flags", "features"):
            return "aes" in value.split()
    return True


def default_suites() -> tuple[int, ...]:
    """The encrypting suites, fastest first on this CPU."""
    if cpu_has_aes_instructions():
        return (SUITE_AES_256_GCM, SUITE_CHACHA20_POLY1305)
    return (SUITE_CHACHA20_POLY1305, SUITE_AES_256_GCM)


def _nonce(counter: int) -> bytes:
    return _NONCE_PREFIX + _COUNTER.pack(counter)


class _Direction:
    """One direction of one connection: its suite, key, counter and usage limits."""

    def __init__(self, suite: int, key: bytes, bytes_max: int) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"frame keys have {KEY_BYTES} bytes")
        if suite not in SUITE_NAMES:
            raise ValueError(f"unknown suite {suite}")
        self.suite = suite
        self._aead: AESGCM | ChaCha20Poly1305 | None = None
        self._keyed: blake3.blake3 | None = None
        if suite == SUITE_AES_256_GCM:
            self._aead = AESGCM(key)
        elif suite == SUITE_CHACHA20_POLY1305:
            self._aead = ChaCha20Poly1305(key)
        else:
            self._keyed = blake3.blake3(key=key)
        self.counter = 0
        self.bytes_sealed = 0
        self._bytes_max = bytes_max

    def within_limits(self, payload_bytes: int) -> bool:
        return (
            self.counter < FRAMES_PER_KEY_MAX
            and self.bytes_sealed + payload_bytes <= self._bytes_max
        )

    def mac(self, header: bytes | memoryview, payload: bytes | memoryview) -> bytes:
        assert self._keyed is not None
        mac = self._keyed.copy()
        mac.update(_COUNTER.pack(self.counter))
        mac.update(header)
        if len(payload):
            mac.update(payload)
        tag: bytes = mac.digest(TAG_BYTES)
        return tag


class FrameSealer:
    """Builds the frames of one direction of one connection (sending side).

    Not thread-safe; one task seals at a time (possibly from a worker thread). Large frames
    are sealed into two buffers used in turn, so a frame may be written while the next is
    sealed, and no frame allocates (page faults are expensive here); the caller must not
    seal a third frame before the first is written."""

    def __init__(self, suite: int, key: bytes, bytes_max: int = 2**36) -> None:
        self._direction = _Direction(suite, key, bytes_max)
        self._buffers = [bytearray(), bytearray()]
        self._turn = 0

    @property
    def suite(self) -> int:
        return self._direction.suite

    def can_seal(self, payload_bytes: int) -> bool:
        """Whether a frame of ``payload_bytes`` fits in this key's usage limits."""
        return self._direction.within_limits(payload_bytes)

    def data_frame(
        self, seq: int, payload: bytes | memoryview
    ) -> tuple[bytes, bytes | memoryview, bytes]:
        """(prefix+header, sealed payload, tag): buffers for one scatter/gather write.
        Raises :class:`KeyExhausted` past the key's usage limits."""
        header = HEADER.pack(KIND_DATA, seq)
        sealed, tag = self._seal(header, payload)
        return LENGTH.pack(HEADER.size + len(payload) + TAG_BYTES) + header, sealed, tag

    def ack_frame(self, seq: int) -> bytes:
        header = HEADER.pack(KIND_ACK, seq)
        sealed, tag = self._seal(header, b"")
        return LENGTH.pack(HEADER.size + TAG_BYTES) + header + bytes(sealed) + tag

    def _seal(self, header: bytes, payload: bytes | memoryview) -> tuple[bytes | memoryview, bytes]:
        direction = self._direction
        size = len(payload)
        if not direction.within_limits(size):
            raise KeyExhausted(
                f"key used for {direction.counter} frames and {direction.bytes_sealed} bytes"
            )
        aead = direction._aead
        if aead is None:
            sealed: bytes | memoryview = payload
            tag = direction.mac(header, payload)
        elif size >= _REUSED_BUFFER_BYTES_MIN:
            buffer = self._buffers[self._turn]
            self._turn ^= 1
            if len(buffer) < size + TAG_BYTES:
                buffer.extend(bytes(size + TAG_BYTES - len(buffer)))
            view = memoryview(buffer)[: size + TAG_BYTES]
            aead.encrypt_into(_nonce(direction.counter), payload, header, view)
            sealed, tag = view[:size], bytes(view[size:])
        else:
            out = aead.encrypt(_nonce(direction.counter), bytes(payload), header)
            sealed, tag = out[:size], out[size:]
        direction.counter += 1
        direction.bytes_sealed += size
        return sealed, tag


class FrameOpener:
    """Checks and opens the frames of one direction of one connection (receiving side)."""

    def __init__(self, suite: int, key: bytes, bytes_max: int = 2**36) -> None:
        self._direction = _Direction(suite, key, bytes_max)

    def open(self, body: memoryview) -> tuple[int, int, bytes]:
        """(kind, seq, payload) of an authentic frame; :class:`FrameRejected` otherwise.

        The payload is a new ``bytes`` object (it outlives the read buffer ``body`` views).
        A rejected frame leaves the connection unusable (the counter no longer matches),
        so the caller must close it.
        """
        direction = self._direction
        if len(body) < HEADER.size + TAG_BYTES:
            raise FrameRejected("frame_malformed", f"{len(body)}-byte frame is too short")
        split = len(body) - TAG_BYTES
        header = body[: HEADER.size]
        size = split - HEADER.size
        if not direction.within_limits(size):
            raise FrameRejected("frame_malformed", "frame past the key's usage limits")
        aead = direction._aead
        if aead is None:
            if not hmac.compare_digest(
                direction.mac(header, body[HEADER.size : split]), body[split:]
            ):
                raise FrameRejected("bad_mac", f"frame #{direction.counter} failed authentication")
            payload = bytes(body[HEADER.size : split])
        else:
            try:
                payload = aead.decrypt(_nonce(direction.counter), body[HEADER.size :], header)
            except InvalidTag:
                raise FrameRejected(
                    "bad_mac", f"frame #{direction.counter} failed authentication"
                ) from None
        direction.counter += 1
        direction.bytes_sealed += size
        kind, seq = HEADER.unpack_from(body)
        if kind not in (KIND_DATA, KIND_ACK):
            raise FrameRejected("frame_malformed", f"unknown frame kind {kind}", authentic=True)
        return kind, seq, payload
