"""Ed25519 identity key files.

A key file holds the node's 32-byte ed25519 *seed* as one line of standard base64 (44
characters) followed by a newline. Text rather than raw bytes so that an operator can
``cat`` it into a secrets manager without mangling it; the seed rather than libsodium's
64-byte "secret key" because the seed is the whole secret and the public key follows from it.

Key files are created with mode 0600 in a single ``os.open(O_CREAT | O_EXCL, 0o600)``: the
file never exists with looser permissions, and an existing key is never overwritten, not
even by a race between two ``jungle keygen`` runs. Loading refuses a file that group or
others may read or write, as ssh does: such a key must be considered leaked.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path
from typing import Final

import nacl.bindings
import nacl.signing

SEED_BYTES: Final = 32
PUBLIC_KEY_BYTES: Final = 32
#: permission bits that must be clear on a key file (group and others: no access at all)
_KEY_FILE_MODE_FORBIDDEN: Final = 0o077


class KeyFileError(Exception):
    """A key file cannot be written or used; the message is one line an operator can act on."""


class KeyFileExists(KeyFileError):
    """``generate_key`` refuses to replace an existing file."""


class KeyFileMissing(KeyFileError):
    pass


class KeyFileFormatError(KeyFileError):
    pass


class KeyFilePermissionsError(KeyFileError):
    pass


def generate_key(path: str | os.PathLike[str]) -> str:
    """Create a fresh ed25519 key at ``path`` (mode 0600) and return its base64 public key.

    Missing parent folders are created with mode 0700 (``~/.jungle/node.key`` on a fresh
    machine). Raises :class:`KeyFileExists` if anything already exists at ``path``.
    """
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = nacl.signing.SigningKey.generate()
    line = base64.b64encode(bytes(key)) + b"\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileExists(f"{path}: a file already exists; refusing to overwrite it") from None
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(line)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        # Never leave a truncated key behind that a later run would load as garbage.
        path.unlink(missing_ok=True)
        raise
    return public_key_b64(key)


def load_signing_key(path: str | os.PathLike[str]) -> nacl.signing.SigningKey:
    """Read a key file written by :func:`generate_key`.

    Raises :class:`KeyFileMissing`, :class:`KeyFilePermissionsError` (group/world access),
    or :class:`KeyFileFormatError`, each with a one-line reason.
    """
    path = Path(path)
    try:
        with open(path, "rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            raw = file.read(256)
    except FileNotFoundError:
        raise KeyFileMissing(f"{path}: no such key file (create it: jungle keygen PATH)") from None
    except IsADirectoryError:
        raise KeyFileFormatError(f"{path}: is a directory, not a key file") from None
    except PermissionError as error:
        raise KeyFilePermissionsError(f"{path}: cannot read key file: {error.strerror}") from None
    if not stat.S_ISREG(mode):
        raise KeyFileFormatError(f"{path}: not a regular file")
    if mode & _KEY_FILE_MODE_FORBIDDEN:
        raise KeyFilePermissionsError(
            f"{path}: mode {stat.S_IMODE(mode):04o} lets group/others access the key; "
            f"run `chmod 600 {path}` (and consider the key leaked)"
        )
    try:
        seed = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileFormatError(f"{path}: not a base64 ed25519 seed") from None
    if len(seed) != SEED_BYTES:
        raise KeyFileFormatError(
            f"{path}: holds {len(seed)} bytes; an ed25519 seed has {SEED_BYTES}"
        )
    return nacl.signing.SigningKey(seed)


def public_key_b64(key: nacl.signing.SigningKey | nacl.signing.VerifyKey) -> str:
    """The base64 text of a public key, as it appears in a roster."""
    verify_key = key.verify_key if isinstance(key, nacl.signing.SigningKey) else key
    return base64.b64encode(bytes(verify_key)).decode("ascii")


def decode_public_key(text: str) -> bytes:
    """The 32 raw bytes of a base64 public key; ``ValueError`` with a reason otherwise."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("public key is not valid base64") from None
    if len(raw) != PUBLIC_KEY_BYTES:
        raise ValueError(f"public key has {len(raw)} bytes, expected {PUBLIC_KEY_BYTES}")
    if nacl.bindings.has_crypto_core_ed25519 and not (
        nacl.bindings.crypto_core_ed25519_is_valid_point(raw)
    ):
        raise ValueError("public key is not a valid ed25519 point")
    return raw
