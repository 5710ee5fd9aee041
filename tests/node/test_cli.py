"""The ``jungle`` command line, in process: keygen, roster, start-up checks, evidence."""

from __future__ import annotations

import json
import logging
import socket
import stat
import subprocess
import sys
import tomllib
import types
from collections.abc import Iterator
from pathlib import Path

import nacl.signing
import numpy as np
import pytest

from node.checkpoint import Checkpoint, CheckpointStore
from node.cli import main
from node.journal import Journal
from node.keys import load_signing_key, public_key_b64
from node.roster import load_roster
from protocol.codec import encode, encode_array
from protocol.crypto import Ed25519Scheme, EquivocationProof, digest
from protocol.messages import InstanceId, Kind, Phase, Send, Tag
from sim.process_setup import toml_document
from tests.node.helpers import REPO

N = 4


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """``jungle node`` configures the "jungle" logger; give the next test a clean one."""
    logger = logging.getLogger("jungle")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("jungle: ")]


@pytest.fixture
def cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """Four keys and a roster on loopback, made with the CLI; returns the folder."""
    args = []
    for i in range(N):
        status, _, _ = run(capsys, "keygen", str(tmp_path / f"node{i}.key"))
        assert status == 0
        args += ["--key-file", f"{tmp_path / f'node{i}.key'}@127.0.0.1:{7400 + i}"]
    status, _, _ = run(
        capsys, "roster", "--session", "cli", "--out", str(tmp_path / "r.toml"), *args
    )
    assert status == 0
    (tmp_path / "node.toml").write_text(
        '[node]\nroster = "r.toml"\nf = 1\n[task]\nname = "synthetic"\n'
    )
    return tmp_path


def check(capsys: pytest.CaptureFixture[str], folder: Path, *flags: str) -> tuple[int, str]:
    node_flags = ["--id", "0", "--key", str(folder / "node0.key"), *flags]
    status, _, err = run(capsys, "node", str(folder / "node.toml"), *node_flags, "--check")
    return status, err


# ------------------------------------------------------------------------------- keygen


def test_keygen_writes_a_private_key_and_prints_its_public_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "node.key"
    status, out, _ = run(capsys, "keygen", str(path))

    assert status == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert out.strip() == public_key_b64(load_signing_key(path))


def test_keygen_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "node.key"
    run(capsys, "keygen", str(path))
    before = path.read_bytes()

    status, out, err = run(capsys, "keygen", str(path))

    assert status == 2 and out == ""
    assert errors(err) == [f"jungle: {path}: a file already exists; refusing to overwrite it"]
    assert path.read_bytes() == before


# ------------------------------------------------------------------------------- roster


def test_roster_from_key_files_lists_them_in_order(cluster: Path) -> None:
    roster = load_roster(cluster / "r.toml")

    assert roster.session_name == "cli" and roster.n == N
    for i, entry in enumerate(roster.nodes):
        assert entry.public_key == bytes(load_signing_key(cluster / f"node{i}.key").verify_key)
        assert entry.address == f"127.0.0.1:{7400 + i}"


def test_roster_from_public_keys_and_ids(cluster: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = [public_key_b64(load_signing_key(cluster / f"node{i}.key")) for i in range(2)]
    status, out, _ = run(
        capsys,
        "roster",
        "--session",
        "cli",
        "--node",
        f"1={keys[1]}@[::1]:9001",
        "--node",
        f"0={keys[0]}@host-a.example:9000",
    )

    assert status == 0
    path = cluster / "printed.toml"
    path.write_text(out)
    roster = load_roster(path)
    assert [entry.address for entry in roster.nodes] == ["host-a.example:9000", "[::1]:9001"]


def test_roster_mistakes_are_one_line_each(
    cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = public_key_b64(load_signing_key(cluster / "node0.key"))
    status, _, err = run(
        capsys,
        "roster",
        "--session",
        "x",
        "--node",
        f"0={key}",
        "--node",
        "1=AAAA@127.0.0.1:1",
        "--node",
        f"2={key}@127.0.0.1:70000",
    )

    assert status == 2
    assert len(errors(err)) == 3, err
    assert "expected ID=PUBKEY@HOST:PORT" in errors(err)[0]
    assert "public key has 3 bytes" in errors(err)[1]
    assert "port must be an integer in 1..65535" in errors(err)[2]


def test_roster_does_not_replace_a_roster_unless_forced(
    cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["roster", "--session", "new", "--out", str(cluster / "r.toml")]
    args += ["--key-file", f"{cluster / 'node0.key'}@127.0.0.1:7400"]

    status, _, err = run(capsys, *args)
    assert status == 2 and "pass --force" in err
    assert load_roster(cluster / "r.toml").session_name == "cli"
    assert run(capsys, *args, "--force")[0] == 0
    assert load_roster(cluster / "r.toml").session_name == "new"


# ---------------------------------------------------------------------- node start-up


def test_a_sound_node_passes_its_checks(cluster: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, err = check(capsys, cluster)

    assert status == 0, err
    assert "ok: node 0 of 4 in session 'cli'" in err and "resumes at step 0" in err


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (("--f", "2"), "n=4 nodes cannot tolerate f=2 with trimmed_mean: it needs n >= 3f+1 = 7"),
        (("--aggregator", "mda"), "n=4 nodes cannot tolerate f=1 with mda: it needs n >= 6f+1 = 7"),
        (("--id", "9"), "node id 9 is not in the roster"),
        (("--id", "1"), "is node 0's, not node 1's in"),
        (("--task", "no_such_module:task"), "cannot import module 'no_such_module'"),
        (("--roster", "missing.toml"), "missing.toml: cannot read roster"),
        (("--lr", "-1"), "jungle: [training] lr: must be > 0, got -1.0"),
        (("--part", "7"), "[node] part 7 does not exist: the train set is cut in 4 parts"),
        (("--byzantine", "teleport"), "unknown strategy 'teleport'"),
    ],
)
def test_impossible_settings_are_refused_with_one_line(
    cluster: Path, capsys: pytest.CaptureFixture[str], flags: tuple[str, ...], problem: str
) -> None:
    status, err = check(capsys, cluster, *flags)

    assert status == 2
    assert len(errors(err)) == 1 and problem in errors(err)[0], err


def test_a_key_outside_the_roster_is_refused(
    cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "keygen", str(cluster / "stranger.key"))
    status, err = check(capsys, cluster, "--key", str(cluster / "stranger.key"))

    assert status == 2
    [line] = errors(err)
    assert "stranger.key" in line and "is not in the roster, not node 0's" in line


def test_a_missing_key_file_and_roster_are_both_reported(
    cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, err = check(capsys, cluster, "--key", "absent.key", "--roster", "absent.toml")

    assert status == 2
    assert len(errors(err)) == 2, err
    assert "absent.key: no such key file" in err and "absent.toml: cannot read roster" in err


def test_a_checkpoint_of_another_session_is_refused(
    cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = load_signing_key(cluster / "node0.key")
    store = CheckpointStore(cluster / "ckpt", 0)
    store.save(Checkpoint(5, "00" * 32, public_key_b64(key), "digest", {}))

    status, err = check(capsys, cluster, "--checkpoint-dir", str(cluster / "ckpt"))

    assert status == 2
    [line] = errors(err)
    assert "checkpoint of another session or roster" in line


def _signed_state(folder: Path, session_id_hex: str, step: int) -> Journal:
    """A journal as node 0 leaves it after signing its gradient of ``step``."""
    key = load_signing_key(folder / "node0.key")
    scheme = Ed25519Scheme(bytes(key), load_roster(folder / "r.toml").public_keys)
    iid = InstanceId(0, Tag(step, Phase.GRADIENT, 0, Kind.VECTOR))
    payload = encode_array(np.zeros(4, np.float32))
    signature = scheme.sign(bytes.fromhex(session_id_hex), iid, digest(payload))
    journal = Journal(folder / "ckpt" / "node-0.journal", session_id_hex)
    journal.open()
    journal.append(step, encode(Send(iid, payload, signature)))
    journal.sync()
    journal.close()
    return journal


def test_signed_state_without_its_checkpoint_is_never_a_fresh_start(
    cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    session = load_roster(cluster / "r.toml").session_id.hex()
    _signed_state(cluster, session, 7)

    status, err = check(capsys, cluster, "--checkpoint-dir", str(cluster / "ckpt"))

    assert status == 2
    [line] = errors(err)
    assert "node-0.pt: missing, but node 0 already signed messages in session 'cli'" in line
    assert "up to step 7" in line and "new roster (jungle roster)" in line


def test_a_journal_of_another_session_is_refused(
    cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _signed_state(cluster, "ab" * 32, 3)

    status, err = check(capsys, cluster, "--checkpoint-dir", str(cluster / "ckpt"))

    assert status == 2
    [line] = errors(err)
    assert "journal of another session or roster" in line


def test_a_fresh_node_keeps_its_state_beside_the_config_by_default(
    cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, err = check(capsys, cluster)
    assert status == 0, err
    # checked writable up front, beside the config file; --check writes no state in it
    assert list((cluster / "checkpoints").iterdir()) == []


def test_a_scenarios_protocol_and_training_tables_pass_the_nodes_checks(
    cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tomllib.loads((REPO / "sim/scenarios/default.toml").read_text(encoding="utf-8"))
    tables = {"protocol": scenario["protocol"], "training": scenario["training"]}
    node = {"node": {"roster": "r.toml", "f": 1}, "task": {"name": "synthetic"}}
    (cluster / "node.toml").write_text(toml_document({**node, **tables}))
    status, err = check(capsys, cluster)
    assert status == 0, err
    assert tables["protocol"]["crypto"] is True

    tables["protocol"] = {**tables["protocol"], "crypto": False}
    (cluster / "node.toml").write_text(toml_document({**node, **tables}))
    status, err = check(capsys, cluster)
    assert status == 2
    [line] = errors(err)
    assert line.endswith(
        "[protocol] crypto: a real node always signs (crypto = false is for simulations)"
    )


def test_byzantine_specs_may_be_json(cluster: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, err = check(capsys, cluster, "--byzantine", '{"name": "garbage", "rate": 0.5}')
    assert status == 0, err
    status, err = check(capsys, cluster, "--byzantine", '{"name": "garbage", "rate": 2}')
    assert status == 2 and "rate" in err


def test_running_a_node_does_not_import_the_simulator() -> None:
    code = (
        "import sys, node.cli, node.app, node.startup\n"
        "print(sorted(m for m in sys.modules if m == 'sim' or m.startswith('sim.')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------------------- the rest


def test_sim_is_delegated_with_its_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        calls.append(argv)
        return 7

    fake = types.ModuleType("sim.cli")
    fake.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sim.cli", fake)

    assert main(["sim", "run", "--seed", "3"]) == 7
    assert calls == [["run", "--seed", "3"]]


@pytest.mark.parametrize("command", [[], ["keygen"], ["roster"], ["node"], ["verify-evidence"]])
def test_help_everywhere_with_examples(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    assert "example" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("jungle 0.1")


def equivocation_record(key: nacl.signing.SigningKey, session: bytes) -> str:
    scheme = Ed25519Scheme(bytes(key), (bytes(key.verify_key),))
    iid = InstanceId(0, Tag(4, Phase.GRADIENT, 1, Kind.VECTOR))
    a, b = digest(np.zeros(3).tobytes()), digest(np.ones(3).tobytes())
    proof = EquivocationProof(
        session, iid, a, scheme.sign(session, iid, a), b, scheme.sign(session, iid, b)
    )
    return json.dumps({"type": "fault", "kind": "equivocation", "evidence": proof.to_json()})


def test_verify_evidence_checks_proofs_offline(
    cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    roster = load_roster(cluster / "r.toml")
    key = load_signing_key(cluster / "node0.key")
    good = equivocation_record(key, roster.session_id)
    forged = json.loads(good)
    forged["evidence"]["signature_b"] = "00" * 64
    lines = [
        '{"type": "step", "step": 1}',
        good,
        json.dumps(forged),
        equivocation_record(key, bytes(32)),
        '{"evidence": {"origin": 0}}',
    ]
    (cluster / "faults.jsonl").write_text("\n".join(lines) + "\n")

    status, out, _ = run(
        capsys,
        "verify-evidence",
        str(cluster / "faults.jsonl"),
        "--roster",
        str(cluster / "r.toml"),
    )

    verdicts = [line.split(": ", 1)[1] for line in out.splitlines()]
    assert verdicts[0].startswith("VALID: node 0 at step 4 phase 0 round 1 kind 0")
    assert verdicts[1].startswith("INVALID: the signatures do not verify")
    assert verdicts[2].startswith("WRONG SESSION")
    assert verdicts[3].startswith("MALFORMED")
    assert len(verdicts) == 4 and status == 1
    (cluster / "good.jsonl").write_text(good + "\n")
    assert (
        main(["verify-evidence", str(cluster / "good.jsonl"), "--roster", str(cluster / "r.toml")])
        == 0
    )


def test_a_taken_port_is_one_line_and_exit_1(
    cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = f"127.0.0.1:{holder.getsockname()[1]}"
        key = str(cluster / "node0.key")
        status, _, err = run(
            capsys, "node", str(cluster / "node.toml"), "--id", "0", "--key", key, "--listen", taken
        )

    assert status == 1
    assert f"jungle.node: cannot listen on {taken}: " in err


def test_outputs_that_cannot_be_written_are_refused_up_front(
    cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = cluster / "a-file"
    blocker.write_text("")
    status, err = check(
        capsys,
        cluster,
        "--metrics",
        str(blocker / "m.jsonl"),
        "--checkpoint-dir",
        str(blocker / "ckpt"),
    )

    assert status == 2
    assert len(errors(err)) == 2, err
    assert "cannot write the metrics file" in err and "cannot write checkpoints there" in err
