"""Acceptance: 4 ``jungle node`` OS processes on 127.0.0.1 (n=4, f=1), keys from
``jungle keygen``, a roster from ``jungle roster``.

- all honest: every node finishes every step and learns digits;
- one Byzantine process (silent, or sending garbage): the honest three still finish and
  learn, and only the Byzantine id is accused;
- a stall: with too few peers up, a node says what it waits for, then exits with status 3
  (crashes and restarts have their own acceptance test: tests/node/test_crash_recovery.py).

Accuracies measured on the 2-core test machine (digits-mlp, task seed 3, lr 0.3, momentum
0.9, batch 32, iid split, one gradient and one model round per step): after 40 steps every
honest node scores 0.81-0.82 (0.84 with seed 1); after 30 steps with three honest nodes and
a silent or garbage-sending fourth, 0.68. Message order varies from run to run, so the
floors below leave room for it.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nacl.signing
import numpy as np
import pytest
import trio

from node import handshake
from node.checkpoint import CheckpointStore
from node.frame_auth import FrameSealer
from node.framing import LENGTH, FrameReader, StreamClosed, send_buffers
from node.keys import load_signing_key
from node.roster import Roster, RosterEntry, load_roster
from protocol.codec import encode, encode_array
from protocol.messages import InstanceId, Kind, Phase, Send, Tag
from tests.node.helpers import (
    START_TIMEOUT_S,
    NodeProcess,
    assert_no_lies,
    make_cluster,
    processes_cleanup,
    vm_rss_kib,
    wait_all_exit,
    wait_until,
)
from tests.node.transport_helpers import dial_as, wait_closed_by_peer

pytestmark = pytest.mark.slow

#: test accuracy floors (see the module docstring for the measured values)
ACCURACY_FLOOR_40_STEPS = 0.75
ACCURACY_FLOOR_30_STEPS_BYZANTINE = 0.6
#: a run of a few tens of steps takes ~10-30 s here, plus start-up; generous but bounded
RUN_TIMEOUT_S = 240.0


def final_summaries(processes: list[NodeProcess]) -> list[dict[str, Any]]:
    return [process.records("summary")[-1] for process in processes]


def test_four_honest_processes_learn_digits(tmp_path: Path) -> None:
    steps = 40
    cluster = make_cluster(tmp_path, settings={"node": {"steps": steps, "eval_every": steps}})
    with processes_cleanup([NodeProcess(node).start() for node in cluster.nodes]) as nodes:
        statuses = wait_all_exit(nodes, START_TIMEOUT_S + RUN_TIMEOUT_S)

        assert statuses == [0, 0, 0, 0], [node.log_text()[-2000:] for node in nodes]
        accuracies = []
        for node, summary in zip(nodes, final_summaries(nodes), strict=True):
            assert summary["done"] and summary["step"] == steps, summary
            assert_no_lies(summary)
            accuracies.append(summary["test_accuracy"])
            assert node.records("step")[-1]["step"] == steps - 1
            saved = CheckpointStore(node.files.checkpoint_dir, node.files.id).load()
            assert saved is not None and saved.step == steps
            assert saved.public_key_b64 == node.files.public_key
            assert f"public key {node.files.public_key}" in node.log_text()
        print(f"test accuracy after {steps} steps: {accuracies}")
        assert min(accuracies) >= ACCURACY_FLOOR_40_STEPS, accuracies
        # Model agreement every step keeps honest models close: they score alike.
        assert max(accuracies) - min(accuracies) <= 0.02, accuracies


@pytest.mark.parametrize("strategy", ["silent", "garbage"])
def test_one_byzantine_process_cannot_stop_the_honest_ones(tmp_path: Path, strategy: str) -> None:
    steps, byzantine = 30, 3
    cluster = make_cluster(tmp_path, settings={"node": {"steps": steps, "eval_every": steps}})
    processes = [
        NodeProcess(node, ("--byzantine", strategy) if node.id == byzantine else ()).start()
        for node in cluster.nodes
    ]
    with processes_cleanup(processes):
        honest = processes[:byzantine]
        statuses = wait_all_exit(honest, START_TIMEOUT_S + RUN_TIMEOUT_S)

        assert statuses == [0, 0, 0]
        assert "BYZANTINE MODE" in processes[byzantine].log_text()
        accuracies = []
        for summary in final_summaries(honest):
            assert summary["done"] and summary["step"] == steps, summary
            accuracies.append(summary["test_accuracy"])
            # Only the Byzantine node is ever accused, by the protocol or the transport.
            assert set(summary["faults_by_accused"]) <= {str(byzantine)}, summary
            for by_peer in summary["transport_faults"].values():
                assert set(by_peer) <= {str(byzantine)}, summary
            if strategy == "garbage":
                assert summary["faults_by_accused"].get(str(byzantine), 0) > 0, summary
                assert summary["faults"].get("malformed", 0) > 0, summary
        print(f"{strategy}: honest test accuracy after {steps} steps: {accuracies}")
        assert min(accuracies) >= ACCURACY_FLOOR_30_STEPS_BYZANTINE, accuracies
        if strategy == "garbage":
            fault_records = [r for p in honest for r in p.records("fault")]
            assert fault_records and {r["accused"] for r in fault_records} == {byzantine}


# ----------------------------------------------------------------------- bad input


def test_a_node_that_cannot_progress_says_why_and_exits_with_its_own_status(
    tmp_path: Path,
) -> None:
    """Two of four nodes up (n - f = 3 are needed): neither can finish step 0. Each warns,
    naming the quorum it lacks and the peers that are down, then gives up with exit
    status 3 and a summary saying why."""
    cluster = make_cluster(
        tmp_path,
        settings={
            "node": {
                "steps": 10,
                "wait_for_peers_s": 0.0,
                "stall_warning_s": 1.0,
                "stall_timeout_s": 4.0,
            }
        },
    )
    processes = [NodeProcess(node).start() for node in cluster.nodes[:2]]
    with processes_cleanup(processes):
        statuses = wait_all_exit(processes, START_TIMEOUT_S + 60)

        assert statuses == [3, 3], [p.log_text()[-2000:] for p in processes]
        for process in processes:
            log = process.log_text()
            assert "no progress for" in log, log[-2000:]
            assert "waiting at step 0 gradient round 0: 0 of 3 vectors" in log, log[-2000:]
            # its own vector: sent, echoed by the two that run, short of an echo quorum
            own = process.files.id
            assert f"{own}: SEND held, 2 of 3 echoes, 0 of 3 readies" in log, log[-2000:]
            assert "links down to 2, 3" in log, log[-2000:]
            summary = process.records("summary")[-1]
            assert summary["exit_status"] == 3 and summary["outcome"].startswith("stalled")
            assert not summary["faults"], summary


def test_bad_input_against_a_live_node_process(tmp_path: Path) -> None:
    """Nodes 0-2 run as processes; the test holds node 3's key and attacks node 0 with
    random bytes, oversize length prefixes, a forged handshake signature, a key outside
    the roster, a handshake and frames from another session, garbage and badly signed
    messages on an authenticated link, then a flood. Node 0 stays up, keeps stepping,
    logs and counts each, and its resident memory stays bounded."""
    cluster = make_cluster(
        tmp_path,
        settings={"node": {"steps": 100_000, "eval_every": 1000, "wait_for_peers_s": 0.0}},
    )
    attacker_key = load_signing_key(cluster.nodes[3].key)
    roster = load_roster(cluster.roster)
    processes = [NodeProcess(node).start() for node in cluster.nodes[:3]]
    with processes_cleanup(processes):
        target = processes[0]
        wait_until(lambda: target.steps_done() >= 5, START_TIMEOUT_S, "steps", processes)
        dim = target.records("start")[-1]["dim"]
        port = cluster.addresses[0][1]

        trio.run(attacks, port, roster, attacker_key, target.steps_done, dim)
        at_flood = target.steps_done()
        rss_before_kib = vm_rss_kib(target.pid)
        flood = trio.run(flood_attack, port, roster, attacker_key)
        wait_until(lambda: target.steps_done() >= at_flood + 3, RUN_TIMEOUT_S, "steps", processes)
        rss_after_kib = vm_rss_kib(target.pid)

        assert target.alive()
        last = target.records("step")[-1]
        transport = last["transport_faults"]
        for kind in (
            "frame_oversize",
            "handshake_bad_signature",
            "unknown_key",
            "wrong_session",
        ):
            assert transport.get(kind, {}).get("-1", 0) >= 1, (kind, transport)
        # other session, other connection: frames that do not open are charged to nobody
        assert transport["bad_mac"]["-1"] >= 2, transport
        assert "3" not in transport["bad_mac"], transport
        assert last["faults"]["malformed"] >= 1 and last["faults"]["bad_signature"] >= 1, last
        assert set(last["faults_by_accused"]) == {"3"}, last
        log = target.log_text()
        for kind in ("frame_oversize", "handshake_bad_signature", "unknown_key", "bad_mac"):
            assert kind in log
        assert "fault bad_signature by node 3" in log and "fault malformed by node 3" in log
        growth_mib = (rss_after_kib - rss_before_kib) / 1024
        print(
            f"flood: {flood}; node 0 RSS {rss_before_kib / 1024:.1f} MiB before, "
            f"{rss_after_kib / 1024:.1f} MiB after (+{growth_mib:.1f} MiB)"
        )
        assert growth_mib < RSS_GROWTH_MIB_MAX, (rss_before_kib, rss_after_kib)

        for process in processes:
            process.kill(signal.SIGTERM)
        assert wait_all_exit(processes, 60) == [143, 143, 143]
        assert target.records("summary")[-1]["transport_faults"]["bad_mac"]["-1"] >= 2


#: RSS growth allowed across the flood below; measured: a few MiB (see the report)
RSS_GROWTH_MIB_MAX = 64
UNTRUSTED_HOST = "127.0.0.1"


async def send_and_wait_closed(port: int, data: bytes) -> None:
    """Connect, send ``data`` and wait for the node to hang up."""
    stream = await trio.open_tcp_stream(UNTRUSTED_HOST, port)
    async with stream:
        try:
            await stream.send_all(data)
        except trio.BrokenResourceError:
            pass  # it hung up before reading everything
        await wait_closed_by_peer(stream)


async def attacks(
    port: int,
    roster: Roster,
    key: nacl.signing.SigningKey,
    current_step: Callable[[], int],
    dim: int,
) -> None:
    with trio.fail_after(60):
        rng = random.Random(7)
        # Random bytes and an oversize length prefix, before any handshake.
        await send_and_wait_closed(port, rng.randbytes(4096))
        await send_and_wait_closed(port, b"\xff\xff\xff\x7f" + bytes(100))
        # A key outside the roster; a handshake for another session (roster label).
        with pytest.raises((StreamClosed, OSError)):
            await dial_as(port, roster, nacl.signing.SigningKey.generate(), 0)
        other = Roster("another-session", roster.nodes)
        with pytest.raises((StreamClosed, OSError)):
            await dial_as(port, other, key, 0)
        # A forged handshake signature: node 3's key claimed, CONFIRM signature flipped.
        stream = await trio.open_tcp_stream(UNTRUSTED_HOST, port)
        async with stream:
            reader = FrameReader(stream.socket, 1024)
            dialer = handshake.DialerHandshake(roster, key, 0, bytes(16), seq_base=0)
            hello = dialer.hello()
            await send_buffers(stream.socket, [LENGTH.pack(len(hello)), hello])
            confirm, _ = dialer.on_accept(bytes(await reader.receive_frame()))
            forged = confirm[:-1] + bytes([confirm[-1] ^ 1])
            await send_buffers(stream.socket, [LENGTH.pack(len(forged)), forged])
            await wait_closed_by_peer(stream)
        # Genuine frames of node 3 from another session, replayed on a genuine link.
        link = await dial_as(port, roster, key, 0)
        async with link.stream:
            await link.send_raw(frames_from_another_session(key, [b"hello"] * 3))
            await wait_closed_by_peer(link.stream)
        # On a genuine link: garbage, then a SEND whose signature does not verify; then
        # the frames just sent, replayed on a new connection.
        link = await dial_as(port, roster, key, 0, incarnation=b"\x08" * 16)
        garbage = rng.randbytes(300)
        forged_send = encode(
            Send(
                InstanceId(3, Tag(current_step() + 1, Phase.GRADIENT, 0, Kind.VECTOR)),
                encode_array(np.zeros(dim, dtype="<f4")),
                bytes(64),
            )
        )
        recorded = []
        async with link.stream:
            for seq, payload in enumerate((garbage, forged_send), 1):
                buffers = link.sealer.data_frame(seq, payload)
                recorded.append(b"".join(bytes(buffer) for buffer in buffers))
                await link.send_raw(recorded[-1])
            acked = 0
            while acked < 2:  # delivered: closing earlier could reset the connection first
                _kind, acked, _ = link.opener.open(await link.reader.receive_frame())
        link = await dial_as(port, roster, key, 0, incarnation=b"\x08" * 16, seq_base=2)
        async with link.stream:
            await link.send_raw(b"".join(recorded))
            await wait_closed_by_peer(link.stream)


def frames_from_another_session(key: nacl.signing.SigningKey, payloads: list[bytes]) -> bytes:
    """DATA frames node 3 genuinely sent node 0 in a session with another roster."""
    other_keys = [nacl.signing.SigningKey.generate() for _ in range(3)] + [key]
    roster = Roster(
        "elsewhere",
        tuple(
            RosterEntry(i, bytes(k.verify_key), "192.0.2.1", 7400 + i)
            for i, k in enumerate(other_keys)
        ),
    )
    dialer = handshake.DialerHandshake(roster, key, 0, bytes(16), seq_base=0)
    acceptor = handshake.AcceptorHandshake(roster, 0, other_keys[0], bytes(16))
    confirm, secrets = dialer.on_accept(acceptor.on_hello(dialer.hello()))
    acceptor.on_confirm(confirm)
    sealer = FrameSealer(secrets.suite, secrets.send_key)
    return b"".join(
        bytes(buffer)
        for seq, payload in enumerate(payloads, 1)
        for buffer in sealer.data_frame(seq, payload)
    )


async def flood_attack(port: int, roster: Roster, key: nacl.signing.SigningKey) -> str:
    """About 1,500 hostile connections and 64 MiB of authenticated garbage."""
    rng = random.Random(9)
    blobs = [rng.randbytes(16 * 1024) for _ in range(4)]
    connections = 0

    async def unauthenticated(worker: int) -> None:
        nonlocal connections
        for index in range(50):
            connections += 1
            data = blobs[index % 4] if index % 2 else b"\xf0\xff\xff\x7f" + blobs[0][:512]
            try:
                await send_and_wait_closed(port, data)
            except OSError:
                pass

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for worker in range(30):
                nursery.start_soon(unauthenticated, worker)
        link = await dial_as(port, roster, key, 0, incarnation=b"\x09" * 16)
        async with link.stream, trio.open_nursery() as nursery:
            nursery.start_soon(wait_closed_by_peer, link.stream)  # drain its ACKs
            chunk = rng.randbytes(1024 * 1024)
            for _ in range(64):
                await link.send_data(chunk)
            nursery.cancel_scope.cancel()
    return f"{connections} unauthenticated connections, 64 MiB of authenticated garbage"
