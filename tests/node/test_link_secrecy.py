"""What an outsider on the path learns (sizes and timing only), what a stranger at the port
can cost a node (nothing that keeps an honest peer out), and keys used up in time.

- A relay between two nodes records every byte: no broadcast vector is in it, nor any run
  of plausible float32 values; the same relay on the integrity-only suite does see them
  (so the check can fail).
- A stranger at another address holds idle connections and floods handshakes while an
  honest peer restarts: the peer reconnects within about two seconds.
- A link whose key reaches its usage limit reconnects with fresh keys; nothing is lost or
  delivered twice.
- The acceptor spends no key generation and no signature on a HELLO that fails the cheap
  checks.
"""

from __future__ import annotations

import time

import nacl.public
import nacl.signing
import numpy as np
import pytest
import trio

from node import handshake
from node.frame_auth import SUITES
from protocol.codec import encode, encode_array
from protocol.messages import InstanceId, Kind, Phase, Send, Tag
from tests.node.transport_helpers import (
    HOST,
    Relay,
    exchange,
    make_roster,
    node_key,
    open_cluster,
    wait_closed_by_peer,
)

#: where a stranger connects from: loopback, but not the roster's 127.0.0.1
STRANGER_HOST = "127.0.0.2"
#: a run of this many consecutive plausible float32 values is a plaintext vector
FLOAT_RUN_MIN = 16


def float_runs(data: bytes) -> int:
    """The longest run of 4-byte-aligned (at any of the 4 phases) float32 values a model
    could hold: finite, magnitude in [1e-6, 1e3], or exactly zero."""
    longest = 0
    for phase in range(4):
        usable = (len(data) - phase) // 4 * 4
        values = np.frombuffer(data[phase : phase + usable], dtype="<f4")
        with np.errstate(invalid="ignore", over="ignore"):
            magnitude = np.abs(values)
            plausible = np.isfinite(values) & (
                ((magnitude >= 1e-6) & (magnitude <= 1e3)) | (values == 0.0)
            )
        run = best = 0
        for flag in plausible:
            run = run + 1 if flag else 0
            best = max(best, run)
        longest = max(longest, best)
    return longest


def gradient_message(step: int) -> tuple[bytes, bytes]:
    """A node's broadcast of a 1000-float gradient: (the message, the vector's bytes)."""
    rng = np.random.default_rng(step)
    vector = (rng.standard_normal(1000) * 0.01).astype("<f4")
    payload = encode_array(vector)
    iid = InstanceId(2, Tag(step, Phase.GRADIENT, 0, Kind.VECTOR))
    return encode(Send(iid, payload, bytes(64))), vector.tobytes()


@pytest.mark.parametrize("suite", ["aes-256-gcm", "chacha20-poly1305", "blake3-mac"])
async def test_an_outsider_on_the_path_sees_no_vector(suite: str) -> None:
    relay = Relay(target_port=0)
    suites = (SUITES[suite],)
    async with trio.open_nursery() as nursery:
        await nursery.start(relay.serve)
        async with open_cluster(
            3, running=[], dial_ports={0: relay.port}, suites=suites
        ) as cluster:
            relay.target_port = cluster.listen_ports[0]
            await cluster.start(0)
            await cluster.start(2)
            vectors = []
            with trio.fail_after(10):
                for step in range(5):
                    message, vector_bytes = gradient_message(step)
                    vectors.append(vector_bytes)
                    cluster[2].send_nowait(0, message)
                for step in range(5):
                    assert await cluster[0].receive() == (2, gradient_message(step)[0])
        nursery.cancel_scope.cancel()
    wire = b"".join(bytes(record) for record in relay.recorded)
    assert len(wire) > 5 * 4000
    found = [vector[:64] in wire for vector in vectors]
    longest = float_runs(wire)
    print(
        f"{suite}: {len(wire)} bytes on the wire; vectors found {found}; longest float run "
        f"{longest}"
    )
    if suite == "blake3-mac":  # integrity only: the check does see plaintext
        assert all(found) and longest >= 1000
    else:
        assert not any(found) and longest < FLOAT_RUN_MIN


@pytest.mark.parametrize("stranger_host", [STRANGER_HOST, HOST])
async def test_a_restarted_peer_gets_in_while_a_stranger_floods_the_port(
    stranger_host: str,
) -> None:
    """The stranger keeps 200 idle connections open and opens new ones as fast as it can,
    each sending a HELLO that claims a roster key; honest node 1 restarts meanwhile and
    must reconnect to node 0 within about two seconds. From another address the stranger
    is rate-limited and never touches the roster's room; from the roster's own address
    (a shared NAT) it shares that room, where the oldest pending handshake makes way."""
    async with open_cluster(2) as cluster:
        await exchange(cluster, 0, 1)
        port = cluster.listen_ports[0]
        roster = cluster.roster
        stats = {"idle": 0, "handshakes": 0}
        fake = handshake.DialerHandshake(
            roster, nacl.signing.SigningKey.generate(), 0, bytes(16), 0
        )
        claimed = bytearray(fake.hello())
        claimed[41:73] = bytes(node_key(1).verify_key)  # claims node 1's key (it cannot sign)
        hello = bytes(handshake.frame_header(len(claimed))) + bytes(claimed)

        async def idle_holder() -> None:
            held = []
            try:
                for _ in range(200):
                    try:
                        held.append(
                            await trio.open_tcp_stream(HOST, port, local_address=stranger_host)
                        )
                        stats["idle"] += 1
                    except OSError:
                        await trio.sleep(0.01)
                await trio.sleep_forever()
            finally:
                for stream in held:  # at once: an await here would be cancelled
                    stream.socket.close()

        async def flooder() -> None:
            while True:
                try:
                    stream = await trio.open_tcp_stream(HOST, port, local_address=stranger_host)
                except OSError:
                    await trio.sleep(0.001)
                    continue
                stats["handshakes"] += 1
                async with stream:
                    try:
                        await stream.send_all(hello)
                        with trio.move_on_after(0.5):
                            await wait_closed_by_peer(stream)
                    except (OSError, trio.BrokenResourceError):
                        pass

        async with trio.open_nursery() as attack:
            attack.start_soon(idle_holder)
            for _ in range(8):
                attack.start_soon(flooder)
            await trio.sleep(1.0)  # the stranger fills what it can
            await cluster.stop(1)
            restarted_at = time.monotonic()
            await cluster.start(1)
            with trio.fail_after(10):
                await exchange(cluster, 0, 1, b"after the restart")
            took_s = time.monotonic() - restarted_at
            attack.cancel_scope.cancel()
        admission = cluster[0]._inbound.admission_statistics()
        faults = cluster[0].statistics().faults
    print(
        f"stranger: {stats['idle']} idle connections, {stats['handshakes']} handshakes; the "
        f"restarted peer got through in {took_s:.2f} s; admission {admission}; "
        f"faults { {kind: sum(by.values()) for kind, by in faults.items()} }"
    )
    assert took_s < 2.5, took_s
    assert stats["handshakes"] > 50 and stats["idle"] > 50
    assert admission.evicted + admission.rate_limited > 0
    assert set().union(*(set(by) for by in faults.values())) <= {-1}  # nobody framed


async def test_a_used_up_key_reconnects_with_fresh_keys_and_loses_nothing() -> None:
    async with open_cluster(2, link_bytes_max=10_000) as cluster:
        with trio.fail_after(20):
            messages = [bytes([k]) * 3000 for k in range(20)]  # 60 kB: about 6 keys' worth
            for message in messages:
                cluster[1].send_nowait(0, message)
            received = [await cluster[0].receive() for _ in messages]
            assert received == [(1, message) for message in messages]
            await exchange(cluster, 0, 1)
        assert cluster[0].statistics().faults == {}
        assert cluster[1].statistics().faults == {}


def test_the_acceptor_spends_no_key_generation_or_signature_on_junk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    roster = make_roster([7400, 7401])
    generated = []
    real_generate = nacl.public.PrivateKey.generate
    monkeypatch.setattr(
        nacl.public.PrivateKey,
        "generate",
        classmethod(lambda cls: generated.append(1) or real_generate()),
    )
    signed = []
    real_sign = nacl.signing.SigningKey.sign
    monkeypatch.setattr(
        nacl.signing.SigningKey, "sign", lambda self, *a: signed.append(1) or real_sign(self, *a)
    )
    stranger = nacl.signing.SigningKey.generate()
    good = handshake.DialerHandshake(roster, node_key(1), 0, bytes(16), 0)
    generated.clear()
    junk = [
        b"\0" * 10,
        handshake.DialerHandshake(roster, stranger, 0, bytes(16), 0).hello(),  # unknown key
        handshake.DialerHandshake(make_roster([1, 2], "x"), node_key(1), 0, bytes(16), 0).hello(),
        handshake.DialerHandshake(roster, node_key(1), 1, bytes(16), 0).hello(),  # not us
    ]
    generated.clear()
    for body in junk:
        acceptor = handshake.AcceptorHandshake(roster, 0, node_key(0), bytes(16))
        with pytest.raises(handshake.HandshakeError):
            acceptor.on_hello(body)
    assert generated == [] and signed == []
    acceptor = handshake.AcceptorHandshake(roster, 0, node_key(0), bytes(16))
    acceptor.on_hello(good.hello())  # passes the cheap checks: now it pays
    assert generated == [1] and signed == [1]
