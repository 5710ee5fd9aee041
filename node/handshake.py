"""The mutual handshake that opens every link: roster keys, session id, fresh ephemerals.

Three frames (each length-prefixed, at most :data:`HANDSHAKE_FRAME_BYTES_MAX` bytes):

1. dialer -> acceptor ``HELLO``: magic, session id, the dialer's identity key, the id it
   means to reach, a fresh X25519 ephemeral, its incarnation nonce, its ``seq_base`` (the
   last sequence number the previous acceptor instance acknowledged), and the frame
   suites it offers (node/frame_auth.py).
2. acceptor -> dialer ``ACCEPT``: its fresh ephemeral, its incarnation, the suite it
   chose, and an ed25519 signature by its roster key over the transcript hash ``T`` of
   HELLO and ACCEPT.
3. dialer -> acceptor ``CONFIRM``: the dialer's signature over ``T``.

The pattern is ISO/IEC 9798-3 three-pass mutual authentication with signed ephemeral
Diffie-Hellman, with both identities inside what each side signs (as TLS 1.3's
CertificateVerify signs its transcript). Canetti and Krawczyk ("Analysis of Key-Exchange
Protocols and Their Use for Building Secure Channels", Eurocrypt 2001) prove this signed-DH
exchange secure when each signature covers the peer's identity, which is what SIGMA's MAC
over identities achieves otherwise; here ``T`` binds the session id, the dialer's key,
the acceptor's id, both ephemerals, both incarnations and the chosen suite. Each side
signs a different label, so a signature proves possession of a roster key *for this very
connection*: a recorded handshake cannot be replayed (the other side's ephemeral differs),
one from another session or roster fails the session check or the signature, and nobody
on the path can downgrade the suite. Not hidden from an observer: the session id and the
dialer's public key (the acceptor needs them for its cheap checks before any public-key
operation, and they name roster members, whose addresses the observer sees anyway).

The acceptor checks the cheap things (format, session id, target id, whether the key is in
the roster, a common suite) before its first public-key operation: its ephemeral is
generated only then, so a stranger's junk costs it no key generation and no signature.

Two directional frame keys are derived from the X25519 shared secret and ``T`` with BLAKE3's
key derivation mode (see ``node/frame_auth.py`` for how frames use them).

The classes here are pure (bytes in, bytes out, like h11); :func:`dial` and :func:`accept`
drive them over a socket. Every failure is a :class:`HandshakeError` whose ``kind`` names
the fault; nothing the peer claims before the handshake succeeds is trusted, so callers
must not accuse the claimed id.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import blake3
import nacl.bindings
import nacl.exceptions
import nacl.public
import nacl.signing
import trio

from node.frame_auth import SUITE_NAMES, default_suites
from node.framing import FrameReader, frame_header, send_buffers
from node.roster import Roster

HANDSHAKE_FRAME_BYTES_MAX: Final = 256
INCARNATION_BYTES: Final = 16
MAGIC: Final = b"jungle\x00\x02"
_HELLO = struct.Struct("<8sB32s32sI32s16sQB")
_ACCEPT_UNSIGNED = struct.Struct("<B32s16sB")
_SIGNATURE_BYTES: Final = 64
_TYPE_HELLO, _TYPE_ACCEPT, _TYPE_CONFIRM = 1, 2, 3
_TRANSCRIPT_DOMAIN: Final = b"jungle/transport/handshake/v2\x00"
_ACCEPTOR_LABEL: Final = b"jungle/transport/v2/acceptor-signs\x00"
_DIALER_LABEL: Final = b"jungle/transport/v2/dialer-signs\x00"
_KEY_CONTEXT_DIALER_TO_ACCEPTOR: Final = "jungle 2026 transport v2 dialer-to-acceptor frame key"
_KEY_CONTEXT_ACCEPTOR_TO_DIALER: Final = "jungle 2026 transport v2 acceptor-to-dialer frame key"


class HandshakeError(Exception):
    """The handshake failed. ``kind`` is the fault name; ``claimed_peer`` is unverified."""

    def __init__(self, kind: str, detail: str, claimed_peer: int | None = None) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.claimed_peer = claimed_peer


@dataclass(frozen=True, slots=True)
class Hello:
    session_id: bytes
    dialer_key: bytes
    to_id: int
    ephemeral: bytes
    incarnation: bytes
    seq_base: int
    #: bit mask of the frame suites the dialer offers
    suites: int

    def encode(self) -> bytes:
        return _HELLO.pack(
            MAGIC,
            _TYPE_HELLO,
            self.session_id,
            self.dialer_key,
            self.to_id,
            self.ephemeral,
            self.incarnation,
            self.seq_base,
            self.suites,
        )

    @classmethod
    def decode(cls, body: bytes) -> Hello:
        if len(body) != _HELLO.size:
            raise HandshakeError("handshake_malformed", f"HELLO of {len(body)} bytes")
        magic, kind, session_id, key, to_id, ephemeral, incarnation, seq_base, suites = (
            _HELLO.unpack(body)
        )
        if magic != MAGIC or kind != _TYPE_HELLO:
            raise HandshakeError("handshake_malformed", "not a jungle v2 HELLO")
        return cls(session_id, key, to_id, ephemeral, incarnation, seq_base, suites)


@dataclass(frozen=True, slots=True)
class LinkSecrets:
    """What a completed handshake establishes."""

    peer: int
    peer_incarnation: bytes
    #: from the dialer's HELLO: everything up to this sequence number was acknowledged
    seq_base: int
    send_key: bytes
    receive_key: bytes
    #: the frame suite both ends use (node/frame_auth.py)
    suite: int


class DialerHandshake:
    """The dialer's side: ``hello()``, then ``on_accept(body) -> (CONFIRM, secrets)``."""

    def __init__(
        self,
        roster: Roster,
        signing_key: nacl.signing.SigningKey,
        peer: int,
        incarnation: bytes,
        seq_base: int,
        ephemeral: nacl.public.PrivateKey | None = None,
        suites: Sequence[int] | None = None,
    ) -> None:
        self._roster = roster
        self._signing_key = signing_key
        self._peer = peer
        self._ephemeral = ephemeral or nacl.public.PrivateKey.generate()
        offered = default_suites() if suites is None else tuple(suites)
        self._hello = Hello(
            roster.session_id,
            bytes(signing_key.verify_key),
            peer,
            bytes(self._ephemeral.public_key),
            incarnation,
            seq_base,
            _mask(offered),
        )
        self._hello_body = self._hello.encode()

    def hello(self) -> bytes:
        return self._hello_body

    def on_accept(self, body: bytes) -> tuple[bytes, LinkSecrets]:
        if len(body) != _ACCEPT_UNSIGNED.size + _SIGNATURE_BYTES:
            raise HandshakeError("handshake_malformed", f"ACCEPT of {len(body)} bytes", self._peer)
        unsigned, signature = body[: _ACCEPT_UNSIGNED.size], body[_ACCEPT_UNSIGNED.size :]
        kind, ephemeral, incarnation, suite = _ACCEPT_UNSIGNED.unpack(unsigned)
        if kind != _TYPE_ACCEPT:
            raise HandshakeError("handshake_malformed", "not an ACCEPT", self._peer)
        if suite not in SUITE_NAMES or not suite & self._hello.suites:
            raise HandshakeError("handshake_malformed", f"ACCEPT chose suite {suite}", self._peer)
        transcript = _transcript(self._hello_body, unsigned)
        peer_key = self._roster.public_keys[self._peer]
        if not _verify(peer_key, _ACCEPTOR_LABEL + transcript, signature):
            raise HandshakeError(
                "handshake_bad_signature",
                "ACCEPT not signed by the roster key of the node dialed",
                self._peer,
            )
        confirm = (
            bytes([_TYPE_CONFIRM]) + self._signing_key.sign(_DIALER_LABEL + transcript).signature
        )
        to_acceptor, to_dialer = _derive_keys(self._ephemeral, ephemeral, transcript, self._peer)
        secrets = LinkSecrets(
            self._peer, incarnation, self._hello.seq_base, to_acceptor, to_dialer, suite
        )
        return confirm, secrets


class AcceptorHandshake:
    """The acceptor's side: ``on_hello(body) -> ACCEPT``, then ``on_confirm(body) -> secrets``."""

    def __init__(
        self,
        roster: Roster,
        me: int,
        signing_key: nacl.signing.SigningKey,
        incarnation: bytes,
        ephemeral: nacl.public.PrivateKey | None = None,
        suites: Sequence[int] | None = None,
    ) -> None:
        """``ephemeral``: for tests; by default one is generated once HELLO passes the
        cheap checks. ``suites``: what we accept, in our order of preference."""
        self._roster = roster
        self._me = me
        self._signing_key = signing_key
        self._incarnation = incarnation
        self._ephemeral = ephemeral
        self._suites = default_suites() if suites is None else tuple(suites)
        self._hello: Hello | None = None
        self._peer = -1
        self._suite = 0
        self._transcript = b""

    def on_hello(self, body: bytes) -> bytes:
        hello = Hello.decode(body)
        peer = self._roster.id_of_key(hello.dialer_key)
        if hello.session_id != self._roster.session_id:
            raise HandshakeError(
                "wrong_session", f"session id {hello.session_id.hex()[:16]}... is not ours", peer
            )
        if peer is None or peer == self._me:
            raise HandshakeError("unknown_key", "dialer's key is not a peer in the roster")
        if hello.to_id != self._me:
            raise HandshakeError(
                "wrong_peer", f"dialer meant to reach node {hello.to_id}, we are {self._me}", peer
            )
        common = [suite for suite in self._suites if suite & hello.suites]
        if not common:
            offered = [name for code, name in SUITE_NAMES.items() if code & hello.suites]
            raise HandshakeError(
                "handshake_malformed",
                f"no frame suite in common (offered {offered or 'none'})",
                peer,
            )
        self._suite = common[0]
        if self._ephemeral is None:  # only now: junk costs no key generation
            self._ephemeral = nacl.public.PrivateKey.generate()
        unsigned = _ACCEPT_UNSIGNED.pack(
            _TYPE_ACCEPT, bytes(self._ephemeral.public_key), self._incarnation, self._suite
        )
        self._hello, self._peer = hello, peer
        self._transcript = _transcript(body, unsigned)
        return unsigned + self._signing_key.sign(_ACCEPTOR_LABEL + self._transcript).signature

    def on_confirm(self, body: bytes) -> LinkSecrets:
        hello = self._hello
        if hello is None:
            raise RuntimeError("on_confirm before on_hello")
        if len(body) != 1 + _SIGNATURE_BYTES or body[0] != _TYPE_CONFIRM:
            raise HandshakeError("handshake_malformed", "not a CONFIRM", self._peer)
        peer_key = self._roster.public_keys[self._peer]
        if not _verify(peer_key, _DIALER_LABEL + self._transcript, body[1:]):
            raise HandshakeError(
                "handshake_bad_signature",
                "CONFIRM not signed by the roster key the dialer presented",
                self._peer,
            )
        assert self._ephemeral is not None
        to_acceptor, to_dialer = _derive_keys(
            self._ephemeral, hello.ephemeral, self._transcript, self._peer
        )
        return LinkSecrets(
            self._peer, hello.incarnation, hello.seq_base, to_dialer, to_acceptor, self._suite
        )


async def dial(
    sock: trio.socket.SocketType, reader: FrameReader, handshake: DialerHandshake
) -> LinkSecrets:
    """Run the dialer's side over a connected socket (the caller bounds it in time)."""
    hello = handshake.hello()
    await send_buffers(sock, (frame_header(len(hello)), hello))
    confirm, secrets = handshake.on_accept(bytes(await reader.receive_frame()))
    await send_buffers(sock, (frame_header(len(confirm)), confirm))
    return secrets


async def accept(
    sock: trio.socket.SocketType,
    reader: FrameReader,
    handshake: AcceptorHandshake,
    hello_timeout_s: float = math.inf,
) -> LinkSecrets:
    """Run the acceptor's side over an accepted socket (the caller bounds it in time);
    ``trio.TooSlowError`` if no HELLO arrives within ``hello_timeout_s``."""
    with trio.fail_after(hello_timeout_s):
        hello = bytes(await reader.receive_frame())
    accept_body = handshake.on_hello(hello)
    await send_buffers(sock, (frame_header(len(accept_body)), accept_body))
    return handshake.on_confirm(bytes(await reader.receive_frame()))


def _mask(suites: Sequence[int]) -> int:
    mask = 0
    for suite in suites:
        if suite not in SUITE_NAMES:
            raise ValueError(f"unknown frame suite {suite}")
        mask |= suite
    return mask


def _transcript(hello_body: bytes, accept_unsigned: bytes) -> bytes:
    digest: bytes = blake3.blake3(_TRANSCRIPT_DOMAIN + hello_body + accept_unsigned).digest()
    return digest


def _verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        return False
    return True


def _derive_keys(
    mine: nacl.public.PrivateKey, theirs: bytes, transcript: bytes, peer: int
) -> tuple[bytes, bytes]:
    """(dialer->acceptor key, acceptor->dialer key) from the X25519 secret and transcript."""
    try:
        shared = nacl.bindings.crypto_scalarmult(bytes(mine), theirs)
    except RuntimeError:  # libsodium refuses low-order points
        shared = bytes(32)
    if shared == bytes(32):
        raise HandshakeError("handshake_malformed", "low-order X25519 ephemeral", peer)
    material = shared + transcript
    to_acceptor: bytes = blake3.blake3(
        material, derive_key_context=_KEY_CONTEXT_DIALER_TO_ACCEPTOR
    ).digest()
    to_dialer: bytes = blake3.blake3(
        material, derive_key_context=_KEY_CONTEXT_ACCEPTOR_TO_DIALER
    ).digest()
    return to_acceptor, to_dialer
