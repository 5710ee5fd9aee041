"""Key files (0600, never overwritten) and rosters (validated, one line per problem; the
session id changes with anything that defines the session)."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from node.keys import (
    KeyFileExists,
    KeyFileFormatError,
    KeyFileMissing,
    KeyFilePermissionsError,
    generate_key,
    load_signing_key,
    public_key_b64,
)
from node.roster import (
    Roster,
    RosterEntry,
    RosterError,
    assemble_roster,
    dump_roster,
    load_roster,
    new_nonce,
    parse_address,
    parse_roster,
)
from tests.node.transport_helpers import node_key

# -- key files --------------------------------------------------------------------------------


def test_generate_key_writes_0600_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    previous = os.umask(0)
    try:
        public = generate_key(path)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = load_signing_key(path)
    assert public_key_b64(key) == public
    assert len(base64.b64decode(public)) == 32
    assert len(base64.b64decode(path.read_text().strip())) == 32  # the seed, in base64


def test_generate_key_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    first = generate_key(path)
    before = path.read_bytes()
    with pytest.raises(KeyFileExists, match="refusing to overwrite"):
        generate_key(path)
    assert path.read_bytes() == before
    assert public_key_b64(load_signing_key(path)) == first
    other = tmp_path / "other.key"
    other.write_text("not a key")
    with pytest.raises(KeyFileExists):
        generate_key(other)
    assert other.read_text() == "not a key"


def test_load_signing_key_explains_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(KeyFileMissing, match="no such key file"):
        load_signing_key(tmp_path / "absent.key")
    path = tmp_path / "node.key"
    generate_key(path)
    path.chmod(0o644)
    with pytest.raises(KeyFilePermissionsError, match="chmod 600"):
        load_signing_key(path)
    for content, reason in (
        ("%%% not base64 %%%", "base64"),
        (base64.b64encode(b"short").decode(), "holds 5 bytes"),
    ):
        bad = tmp_path / f"bad-{len(content)}.key"
        bad.write_text(content)
        bad.chmod(0o600)
        with pytest.raises(KeyFileFormatError, match=reason):
            load_signing_key(bad)
    with pytest.raises(KeyFileFormatError, match="directory"):
        load_signing_key(tmp_path)


# -- rosters ----------------------------------------------------------------------------------


def _key_text(index: int) -> str:
    return public_key_b64(node_key(index))


NONCE = "9f86d081884c7d659a2feaa0c55ad015"
GOOD = f"""
session = "my-run-1"   # a label
nonce = "{NONCE}"
[[node]]
id = 1
public_key = "{_key_text(1)}"
address = "[::1]:7401"
[[node]]
id = 0
public_key = "{_key_text(0)}"
address = "10.0.0.5:7400"
[[node]]
id = 2
public_key = "{_key_text(2)}"
address = "node-2.example.org:7402"
"""


def test_parse_roster_and_round_trip(tmp_path: Path) -> None:
    roster = parse_roster(GOOD)
    assert roster.n == 3 and roster.session_name == "my-run-1"
    assert [node.id for node in roster.nodes] == [0, 1, 2]
    assert roster.entry(1).host == "::1" and roster.entry(1).address == "[::1]:7401"
    assert roster.public_keys[2] == bytes(node_key(2).verify_key)
    assert roster.id_of_key(bytes(node_key(1).verify_key)) == 1
    assert roster.id_of_key(bytes(node_key(9).verify_key)) is None
    assert len(roster.session_id) == 32
    path = tmp_path / "roster.toml"
    path.write_text(dump_roster(roster))
    again = load_roster(path)
    assert again == roster and again.session_id == roster.session_id


def test_session_id_changes_with_label_nonce_keys_and_addresses() -> None:
    roster = parse_roster(GOOD)
    relabelled = parse_roster(GOOD.replace("my-run-1", "my-run-2"))
    rerun = parse_roster(GOOD.replace(NONCE, "0" * 32))
    rekeyed = parse_roster(GOOD.replace(_key_text(2), _key_text(7)))
    moved = parse_roster(GOOD.replace("10.0.0.5:7400", "10.0.0.5:7500"))
    ids = {r.session_id for r in (roster, relabelled, rerun, rekeyed, moved)}
    assert len(ids) == 5
    assert parse_roster(GOOD).session_id == roster.session_id  # deterministic


def test_every_problem_gets_its_own_line() -> None:
    text = f"""
session = 7
nonce = "abc"
colour = "blue"
[[node]]
id = 0
public_key = "{_key_text(0)}"
address = "::1:7400"
[[node]]
id = 1
public_key = "not base64!"
address = "10.0.0.1"
[[node]]
id = 2
public_key = "{base64.b64encode(b"x" * 31).decode()}"
address = "10.0.0.1:99999"
nickname = "bob"
"""
    with pytest.raises(RosterError) as error:
        parse_roster(text, "r.toml")
    problems = error.value.problems
    expected = [
        "missing `session",
        "unknown top-level key 'colour'",
        "`nonce` must be 32 hex digits",
        "write IPv6 addresses in brackets",
        "not valid base64",
        "has no port",
        "unknown field 'nickname'",
        "has 31 bytes",
        "port must be an integer in 1..65535",
    ]
    assert len(problems) == len(expected), problems
    for line, fragment in zip(problems, expected, strict=True):
        assert fragment in line and line.startswith("r.toml: ") and "\n" not in line


def test_whole_roster_rules() -> None:
    duplicate_key = GOOD.replace(_key_text(2), _key_text(0))
    with pytest.raises(RosterError, match="node 2: same public key as node 0"):
        parse_roster(duplicate_key)
    gap = GOOD.replace("id = 2", "id = 3")
    with pytest.raises(RosterError, match=r"ids must be exactly 0\.\.2, found \[0, 1, 3\]"):
        parse_roster(gap)
    same_address = GOOD.replace("node-2.example.org:7402", "10.0.0.5:7400")
    with pytest.raises(RosterError, match="same address as node 0"):
        parse_roster(same_address)
    with pytest.raises(RosterError, match=r"no \[\[node\]\] entries"):
        parse_roster(f'session = "empty"\nnonce = "{NONCE}"')
    with pytest.raises(RosterError, match="not valid TOML"):
        parse_roster("session = ")


def test_assemble_roster_from_public_keys() -> None:
    roster = assemble_roster(
        "assembled", [(_key_text(index), f"127.0.0.1:{7400 + index}") for index in range(4)]
    )
    assert roster.n == 4 and roster.entry(3).port == 7403
    assert parse_roster(dump_roster(roster)) == roster
    with pytest.raises(RosterError) as error:
        assemble_roster("x", [(_key_text(0), "127.0.0.1"), ("AAAA", "127.0.0.1:1")])
    assert len(error.value.problems) == 2


def test_labels_with_special_characters_survive_dump() -> None:
    label = 'run "7" \\ tab\there\nnewline é ✓'
    entries = (RosterEntry(0, bytes(node_key(0).verify_key), "::1", 9),)
    roster = Roster(label, entries, new_nonce())
    assert parse_roster(dump_roster(roster)).session_name == label


def test_a_roster_without_a_nonce_is_refused_with_what_to_do() -> None:
    with pytest.raises(RosterError, match="make the roster with `jungle roster`"):
        parse_roster(GOOD.replace(f'nonce = "{NONCE}"', ""))


def test_every_assembled_roster_is_a_new_session() -> None:
    entries = [(_key_text(index), f"127.0.0.1:{7400 + index}") for index in range(4)]
    first, second = assemble_roster("same", entries), assemble_roster("same", entries)
    assert first.nonce != second.nonce and first.session_id != second.session_id


def test_keygen_creates_missing_folders_private(tmp_path: Path) -> None:
    path = tmp_path / "fresh" / "keys" / "node0.key"
    generate_key(path)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("127.0.0.1:1", ("127.0.0.1", 1)),
        ("[fe80::1]:65535", ("fe80::1", 65535)),
        ("h:80", ("h", 80)),
    ],
)
def test_parse_address(text: str, parsed: tuple[str, int]) -> None:
    assert parse_address(text) == parsed


@pytest.mark.parametrize("text", ["[::1:80", "[zz::1]:80", "host:0", "-bad-:80", "a b:80", ":80"])
def test_parse_address_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)
