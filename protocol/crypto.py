"""Payload digests, origin signatures and equivocation proofs.

The payload hash is BLAKE3 (32 bytes). Measured on this kind of machine (2-core x86,
1M float32 = 4 MB payloads, one thread): blake3 6.3 GB/s, sha256 1.8 GB/s, blake2b
0.9 GB/s. Every node hashes every delivered payload once, so for a 4 MB vector that is
~0.6 ms with blake3 against ~4.4 ms with blake2b: the hash is off the critical path only
with blake3. It is also a tree hash with a 128-bit security level, like sha256.

Only the origin signs, once per broadcast, over (session, instance id, digest): ed25519
costs ~30 us to sign and ~75 us to verify here, far too much to spend on every
ECHO/READY at scale (DESIGN 8). ECHO/READY ride on links the transport authenticates.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, Protocol

import blake3
import nacl.exceptions
import nacl.signing

from protocol.messages import DIGEST_BYTES, InstanceId

_STATEMENT_PREFIX: Final = b"jungle/send/v1\x00"
_IID = struct.Struct("<IIIII")
SESSION_ID_BYTES: Final = 32


def digest(payload: bytes | memoryview) -> bytes:
    """The 32-byte BLAKE3 digest a broadcast is echoed and delivered by."""
    result: bytes = blake3.blake3(payload).digest(DIGEST_BYTES)
    return result


def send_statement(session: bytes, iid: InstanceId, payload_digest: bytes) -> bytes:
    """The exact bytes an origin signs: domain, session, instance id, payload digest."""
    tag = iid.tag
    return b"".join(
        (
            _STATEMENT_PREFIX,
            session,
            _IID.pack(iid.origin, tag.step, tag.phase, tag.round, tag.kind),
            payload_digest,
        )
    )


def verify_statement(public_key: bytes, statement: bytes, signature: bytes) -> bool:
    try:
        nacl.signing.VerifyKey(public_key).verify(statement, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        return False
    return True


class SignatureScheme(Protocol):
    """How origins sign SENDs and how everyone checks them. Pluggable so that very large
    simulations can switch signatures off (their summary says so)."""

    @property
    def enabled(self) -> bool: ...

    def sign(self, session: bytes, iid: InstanceId, payload_digest: bytes) -> bytes: ...

    def verify(
        self, session: bytes, iid: InstanceId, payload_digest: bytes, signature: bytes
    ) -> bool: ...


class Ed25519Scheme:
    """Real signatures: our own signing key, and the roster's public keys by node id."""

    enabled = True

    def __init__(self, signing_key_seed: bytes, public_keys: tuple[bytes, ...]) -> None:
        self._signing_key = nacl.signing.SigningKey(signing_key_seed)
        self._verify_keys = tuple(nacl.signing.VerifyKey(key) for key in public_keys)

    @property
    def public_key(self) -> bytes:
        return bytes(self._signing_key.verify_key)

    def sign(self, session: bytes, iid: InstanceId, payload_digest: bytes) -> bytes:
        signed = self._signing_key.sign(send_statement(session, iid, payload_digest))
        return bytes(signed.signature)

    def verify(
        self, session: bytes, iid: InstanceId, payload_digest: bytes, signature: bytes
    ) -> bool:
        if not 0 <= iid.origin < len(self._verify_keys):
            return False
        try:
            self._verify_keys[iid.origin].verify(
                send_statement(session, iid, payload_digest), signature
            )
        except (nacl.exceptions.BadSignatureError, ValueError):
            return False
        return True


class UnsignedScheme:
    """Signatures off: empty signatures, everything verifies, no equivocation evidence."""

    enabled = False

    def sign(self, session: bytes, iid: InstanceId, payload_digest: bytes) -> bytes:
        return b""

    def verify(
        self, session: bytes, iid: InstanceId, payload_digest: bytes, signature: bytes
    ) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class EquivocationProof:
    """Two SENDs for one instance, with different digests, both signed by the origin.

    Anyone holding the roster's public keys can check it offline with :meth:`verify`:
    an honest origin never signs two digests for one instance id.
    """

    session: bytes
    iid: InstanceId
    digest_a: bytes
    signature_a: bytes
    digest_b: bytes
    signature_b: bytes

    def verify(self, origin_public_key: bytes) -> bool:
        if self.digest_a == self.digest_b:
            return False
        return verify_statement(
            origin_public_key,
            send_statement(self.session, self.iid, self.digest_a),
            self.signature_a,
        ) and verify_statement(
            origin_public_key,
            send_statement(self.session, self.iid, self.digest_b),
            self.signature_b,
        )

    def to_json(self) -> dict[str, object]:
        tag = self.iid.tag
        return {
            "session": self.session.hex(),
            "origin": self.iid.origin,
            "tag": [tag.step, tag.phase, tag.round, tag.kind],
            "digest_a": self.digest_a.hex(),
            "signature_a": self.signature_a.hex(),
            "digest_b": self.digest_b.hex(),
            "signature_b": self.signature_b.hex(),
        }
