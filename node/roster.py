"""The roster: who takes part in a session, with which key, at which address.

The roster is the membership (DESIGN 3): no joining mid-run, no Sybils. Its digest is the
*session id*, bound into every signature and every transport handshake, so nothing signed
for one session or one roster is accepted by another: changing the label, the nonce, any
key or any address yields a different session id. ``jungle roster`` draws a fresh random
128-bit nonce each time, so every run gets its own session even with the very same nodes:
nothing signed in an earlier run can be replayed into it.

TOML format::

    session = "my-run-1"          # a label
    nonce = "9f86d081884c7d659a2feaa0c55ad015"   # 128 random bits, hex: one per run
    [[node]]
    id = 0
    public_key = "base64 ed25519 public key"
    address = "10.0.0.5:7400"     # IPv6 in brackets: "[::1]:7400"
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import blake3
import msgpack
import nacl.signing

from node.keys import PUBLIC_KEY_BYTES, decode_public_key, public_key_b64

SESSION_ID_BYTES: Final = 32
NONCE_BYTES: Final = 16
_SESSION_ID_DOMAIN: Final = "jungle/roster/v2"
_NODE_FIELDS: Final = frozenset({"id", "public_key", "address"})
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")


class RosterError(ValueError):
    """An invalid roster. ``problems`` holds one line per problem found (all of them)."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True, slots=True)
class RosterEntry:
    id: int
    public_key: bytes
    host: str
    port: int

    @property
    def address(self) -> str:
        """``host:port``, with an IPv6 host in brackets (the roster's own spelling)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Roster:
    """A validated roster; constructing one with any problem raises :class:`RosterError`."""

    session_name: str
    nodes: tuple[RosterEntry, ...]
    #: the run's random nonce (:data:`NONCE_BYTES`); part of the session id
    nonce: bytes = b""
    _session_id: bytes = field(init=False, repr=False, compare=False)
    _id_by_key: Mapping[bytes, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems = _roster_problems(self.session_name, self.nodes)
        if self.nonce and len(self.nonce) != NONCE_BYTES:
            problems.append(f"the nonce must have {NONCE_BYTES} bytes, got {len(self.nonce)}")
        if problems:
            raise RosterError(problems)
        session_id = _session_id(self.session_name, self.nonce, self.nodes)
        object.__setattr__(self, "_session_id", session_id)
        object.__setattr__(self, "_id_by_key", {node.public_key: node.id for node in self.nodes})

    @property
    def n(self) -> int:
        return len(self.nodes)

    @property
    def session_id(self) -> bytes:
        """blake3 of a canonical msgpack encoding of (label, nonce, sorted (id, key,
        address))."""
        return self._session_id

    @property
    def public_keys(self) -> tuple[bytes, ...]:
        """Public keys indexed by node id."""
        return tuple(node.public_key for node in self.nodes)

    def id_of_key(self, public_key: bytes) -> int | None:
        """The id of the node holding ``public_key``, or None for a key outside the roster."""
        return self._id_by_key.get(bytes(public_key))

    def entry(self, node_id: int) -> RosterEntry:
        return self.nodes[node_id]


def parse_address(text: str) -> tuple[str, int]:
    """Split ``host:port`` (IPv6 as ``[addr]:port``); ``ValueError`` with a reason otherwise."""
    text = text.strip()
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or not text[close + 1 :].startswith(":"):
            raise ValueError(f"address {text!r} is not [ipv6]:port")
        host, port_text = text[1:close], text[close + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"address {text!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"address {text!r} has no port (expected host:port)")
        if ":" in host:
            raise ValueError(f"address {text!r}: write IPv6 addresses in brackets, [addr]:port")
        if not _HOSTNAME.match(host):
            raise ValueError(f"address {text!r}: {host!r} is not a valid host name")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"address {text!r}: port must be an integer in 1..65535")
    return host, int(port_text)


def parse_roster(text: str, source: str = "<roster>") -> Roster:
    """Parse roster TOML text; every problem is reported, one line each, prefixed by source."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise RosterError([f"{source}: not valid TOML: {error}"]) from None
    problems: list[str] = []
    session = document.get("session")
    if not isinstance(session, str):
        problems.append(f'{source}: missing `session = "label"` (a string)')
        session = ""
    for key in sorted(set(document) - {"session", "nonce", "node"}):
        problems.append(f"{source}: unknown top-level key {key!r}")
    nonce = b""
    nonce_text = document.get("nonce")
    if nonce_text is None:
        problems.append(
            f"{source}: no `nonce`: make the roster with `jungle roster`, which draws a fresh "
            f"one for every run (a session reused across runs lets old messages be replayed)"
        )
    else:
        try:
            nonce = bytes.fromhex(nonce_text) if isinstance(nonce_text, str) else b""
        except ValueError:
            nonce = b""
        if len(nonce) != NONCE_BYTES:
            problems.append(f"{source}: `nonce` must be {2 * NONCE_BYTES} hex digits")
    raw_nodes = document.get("node", [])
    if not isinstance(raw_nodes, list) or not raw_nodes:
        problems.append(f"{source}: no [[node]] entries")
        raw_nodes = []
    entries: list[RosterEntry] = []
    for position, raw in enumerate(raw_nodes):
        entry = _parse_node(raw, f"{source}: node #{position}", problems)
        if entry is not None:
            entries.append(entry)
    if problems:
        raise RosterError(problems)
    entries.sort(key=_node_id)
    structural = _roster_problems(session, tuple(entries))
    if structural:
        raise RosterError(f"{source}: {problem}" for problem in structural)
    return Roster(session, tuple(entries), nonce)


def load_roster(path: str | os.PathLike[str]) -> Roster:
    """Read and validate a roster file (see the module docstring for the format)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise RosterError([f"{path}: cannot read roster: {error.strerror}"]) from None
    except UnicodeDecodeError:
        raise RosterError([f"{path}: roster is not UTF-8 text"]) from None
    return parse_roster(text, str(path))


def dump_roster(roster: Roster) -> str:
    """The roster as TOML text that :func:`parse_roster` reads back to an equal roster."""
    lines = [
        f"# jungle roster: {roster.n} nodes, session id {roster.session_id.hex()}",
        f"session = {_toml_string(roster.session_name)}",
        f'nonce = "{roster.nonce.hex()}"   # drawn by jungle roster: a new one for every run',
    ]
    for node in roster.nodes:
        lines += [
            "",
            "[[node]]",
            f"id = {node.id}",
            f"public_key = {_toml_string(public_key_b64_of(node.public_key))}",
            f"address = {_toml_string(node.address)}",
        ]
    return "\n".join(lines) + "\n"


def new_nonce() -> bytes:
    """A fresh run nonce (128 random bits)."""
    return os.urandom(NONCE_BYTES)


def assemble_roster(
    session: str, entries: Iterable[tuple[str, str]], nonce: bytes | None = None
) -> Roster:
    """Build a roster from ``(base64 public key, "host:port")`` pairs; ids follow their
    order. ``nonce``: the run's nonce (default: a fresh one)."""
    problems: list[str] = []
    nodes: list[RosterEntry] = []
    for node_id, (key_text, address) in enumerate(entries):
        try:
            key = decode_public_key(key_text)
            host, port = parse_address(address)
        except ValueError as error:
            problems.append(f"node {node_id}: {error}")
            continue
        nodes.append(RosterEntry(node_id, key, host, port))
    if problems:
        raise RosterError(problems)
    return Roster(session, tuple(nodes), new_nonce() if nonce is None else nonce)


def public_key_b64_of(public_key: bytes) -> str:
    """The roster spelling (base64) of raw public key bytes."""
    return public_key_b64(nacl.signing.VerifyKey(public_key))


def _parse_node(raw: Any, where: str, problems: list[str]) -> RosterEntry | None:
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a [[node]] table")
        return None
    start = len(problems)
    for key in sorted(set(raw) - _NODE_FIELDS):
        problems.append(f"{where}: unknown field {key!r}")
    node_id = raw.get("id")
    if not isinstance(node_id, int) or isinstance(node_id, bool):
        problems.append(f"{where}: `id` must be an integer")
    else:
        where = f"{where} (id {node_id})"
    key_text, address = raw.get("public_key"), raw.get("address")
    key = b""
    if not isinstance(key_text, str):
        problems.append(f"{where}: `public_key` must be a base64 string")
    else:
        try:
            key = decode_public_key(key_text)
        except ValueError as error:
            problems.append(f"{where}: {error}")
    host, port = "", 0
    if not isinstance(address, str):
        problems.append(f'{where}: `address` must be a string "host:port"')
    else:
        try:
            host, port = parse_address(address)
        except ValueError as error:
            problems.append(f"{where}: {error}")
    if len(problems) > start:
        return None
    assert isinstance(node_id, int)
    return RosterEntry(node_id, key, host, port)


def _roster_problems(session: str, nodes: tuple[RosterEntry, ...]) -> list[str]:
    """Whole-roster rules: a label, ids exactly 0..n-1 in order, distinct keys and addresses."""
    problems: list[str] = []
    if not isinstance(session, str) or not session.strip():
        problems.append("the session label must be a non-empty string")
    if not nodes:
        problems.append("the roster lists no nodes")
    ids = [node.id for node in nodes]
    if ids != list(range(len(nodes))):
        problems.append(f"node ids must be exactly 0..{len(nodes) - 1}, found {sorted(ids)}")
    for node in nodes:
        if len(node.public_key) != PUBLIC_KEY_BYTES:
            problems.append(f"node {node.id}: public key must have {PUBLIC_KEY_BYTES} bytes")
        if not node.host or not 1 <= node.port <= 65535:
            problems.append(f"node {node.id}: invalid address {node.host!r}:{node.port}")
    for label, values in (
        ("public key", [node.public_key for node in nodes]),
        ("address", [node.address for node in nodes]),
    ):
        seen: dict[object, int] = {}
        for node, value in zip(nodes, values, strict=True):
            if value in seen:
                problems.append(f"node {node.id}: same {label} as node {seen[value]}")
            seen.setdefault(value, node.id)
    return problems


def _session_id(session: str, nonce: bytes, nodes: tuple[RosterEntry, ...]) -> bytes:
    canonical = msgpack.packb(
        [
            _SESSION_ID_DOMAIN,
            session,
            nonce,
            [[node.id, node.public_key, node.address] for node in sorted(nodes, key=_node_id)],
        ],
        use_bin_type=True,
    )
    digest: bytes = blake3.blake3(canonical).digest(SESSION_ID_BYTES)
    return digest


def _node_id(node: RosterEntry) -> int:
    return node.id


def _toml_string(text: str) -> str:
    """A TOML basic string: escape quotes, backslashes and control characters."""
    out = ['"']
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)
