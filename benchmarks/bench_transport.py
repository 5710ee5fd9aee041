"""Transport throughput, handshake cost and flood memory, against baselines of the same run.

    python -m benchmarks.bench_transport [--quick] [--messages N] [--size-mib S] [--rounds R]

1. Per-byte costs of the frame protections (node/frame_auth.py), next to memcpy.
2. Throughput of N messages of S MiB from one node process to another through
   ``TcpTransport`` over loopback (handshake, encryption, ACKs, the receiver's decryption
   out of the read buffer, all included): encrypted (AES-256-GCM, the default on CPUs with
   AES instructions) against the same transport with the integrity-only ``blake3-mac``
   suite (what frames were before they were encrypted), and against a plain
   blocking-socket pair between two processes moving the same volume (length prefix +
   ``sendall`` / ``recv_into`` a reused buffer). Goals: encrypted >= 0.95x MAC-only, and
   >= 0.6x the plain pair.
3. Acceptor CPU per stranger HELLO: what one that fails the cheap checks costs now,
   against the same with the key generation the previous version spent first on every
   connection.
4. The RSS of a node process while attackers flood it with random bytes, oversize length
   prefixes and half-finished handshakes, against its RSS when idle.

Timestamps come from ``time.perf_counter`` (CLOCK_MONOTONIC, shared by processes on Linux):
the sender stamps the start, the receiver the arrival of the last byte.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import multiprocessing
import os
import random
import socket
import statistics
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection

import blake3
import nacl.public
import nacl.signing
import trio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from node import handshake
from node.frame_auth import SUITES
from node.roster import Roster, RosterEntry, dump_roster, new_nonce, parse_roster
from node.transport import TransportConfig, open_tcp_transport
from node.transport_config import TransportSettings

_LENGTH = struct.Struct("<I")
_GB = 1e9


def _key(node: int) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(blake3.blake3(b"bench-transport-%d" % node).digest())


# -- 1. frame protection speeds --------------------------------------------------------------


def measure_protections(size_bytes: int, repeats: int) -> dict[str, float]:
    data = os.urandom(size_bytes)
    key = os.urandom(32)
    target = bytearray(size_bytes)
    sealed = bytearray(size_bytes + 16)
    aes, chacha = AESGCM(key), ChaCha20Poly1305(key)

    def memcpy() -> None:
        target[:] = data

    candidates: dict[str, Callable[[], object]] = {
        "memcpy": memcpy,
        "AES-256-GCM (used with AES-NI)": lambda: aes.encrypt_into(bytes(12), data, b"", sealed),
        "ChaCha20-Poly1305 (without)": lambda: chacha.encrypt_into(bytes(12), data, b"", sealed),
        "blake3 keyed MAC (no secrecy)": lambda: blake3.blake3(data, key=key).digest(16),
        "blake2b keyed MAC (no secrecy)": lambda: hashlib.blake2b(
            data, key=key, digest_size=16
        ).digest(),
    }
    speeds = {}
    for name, run in candidates.items():
        run()
        start = time.process_time()  # CPU time: robust to other load on the machine
        for _ in range(repeats):
            run()
        speeds[name] = repeats * size_bytes / (time.process_time() - start) / _GB
    return speeds


# -- 2a. through TcpTransport -------------------------------------------------------------


def _transport_node(
    me: int, pipe: Connection, messages: int, size_bytes: int, warmup: int, suite: int
) -> None:
    logging.getLogger("jungle.transport").setLevel(logging.ERROR)  # the peer's exit is noise
    trio.run(_transport_node_async, me, pipe, messages, size_bytes, warmup, suite)


async def _transport_node_async(
    me: int, pipe: Connection, messages: int, size_bytes: int, warmup: int, suite: int
) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    pipe.send(listeners[0].socket.getsockname()[1])
    roster = parse_roster(await trio.to_thread.run_sync(pipe.recv))
    config = TransportConfig(
        me,
        _key(me),
        roster,
        settings=TransportSettings(queue_bytes_max=(messages + warmup + 1) * size_bytes),
        suites=(suite,),
    )
    payload = os.urandom(size_bytes)
    async with open_tcp_transport(config, listeners=listeners) as transport:
        await transport.wait_connected()
        if me == 0:  # sender: the same bytes object N times (the outbox holds references)
            for _ in range(warmup):
                transport.send_nowait(1, payload)
            await transport.wait_flushed()
            pipe.send("warm")
            await trio.to_thread.run_sync(pipe.recv)
            cpu_start, start = time.process_time(), time.perf_counter()
            for _ in range(messages):
                transport.send_nowait(1, payload)
            await transport.wait_flushed()
            pipe.send((start, time.process_time() - cpu_start))
        else:  # receiver
            for _ in range(warmup):
                await transport.receive()
            pipe.send("warm")
            await trio.to_thread.run_sync(pipe.recv)
            received, cpu_start = 0, time.process_time()
            for _ in range(messages):
                _src, data = await transport.receive()
                received += len(data)
            pipe.send((time.perf_counter(), received, time.process_time() - cpu_start))
        await trio.to_thread.run_sync(pipe.recv)  # stay up until both are done


@dataclass(frozen=True, slots=True)
class Throughput:
    gb_per_s: float
    #: CPU seconds per GB moved, in the sending and the receiving process: less sensitive
    #: than wall time to other load on the machine
    sender_cpu_s_per_gb: float
    receiver_cpu_s_per_gb: float

    def __str__(self) -> str:
        return (
            f"{self.gb_per_s:6.2f}   (CPU s/GB: sender {self.sender_cpu_s_per_gb:.2f}, "
            f"receiver {self.receiver_cpu_s_per_gb:.2f})"
        )


def measure_transport(messages: int, size_bytes: int, warmup: int, suite: str) -> Throughput:
    """Throughput through TcpTransport between two processes, frames under ``suite``."""
    spawn = multiprocessing.get_context("spawn")
    pipes, processes = [], []
    for me in (0, 1):
        parent_end, child_end = spawn.Pipe()
        process = spawn.Process(
            target=_transport_node,
            args=(me, child_end, messages, size_bytes, warmup, SUITES[suite]),
        )
        process.start()
        pipes.append(parent_end)
        processes.append(process)
    ports = [pipe.recv() for pipe in pipes]
    roster = Roster(
        "bench-transport",
        tuple(
            RosterEntry(me, bytes(_key(me).verify_key), "127.0.0.1", port)
            for me, port in enumerate(ports)
        ),
        new_nonce(),
    )
    for pipe in pipes:
        pipe.send(dump_roster(roster))
    for pipe in pipes:
        assert pipe.recv() == "warm"
    for pipe in pipes:
        pipe.send("go")
    start, sender_cpu_s = pipes[0].recv()
    end, received, receiver_cpu_s = pipes[1].recv()
    for pipe in pipes:
        pipe.send("done")
    for process in processes:
        process.join(30)
    assert received == messages * size_bytes
    gigabytes = received / _GB
    return Throughput(
        gigabytes / (end - start), sender_cpu_s / gigabytes, receiver_cpu_s / gigabytes
    )


# -- 2b. the baseline: a plain blocking socket pair ---------------------------------------


def _socket_receiver(pipe: Connection, total_messages: int, size_bytes: int, warmup: int) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    pipe.send(listener.getsockname()[1])
    sock, _ = listener.accept()
    view = memoryview(bytearray(size_bytes))
    header = bytearray(_LENGTH.size)
    received, cpu_start = 0, time.process_time()
    for index in range(total_messages):
        if index == warmup:
            pipe.send("warm")
            received, cpu_start = 0, time.process_time()
        sock.recv_into(header, _LENGTH.size, socket.MSG_WAITALL)
        (length,) = _LENGTH.unpack(header)
        got = 0
        while got < length:
            got += sock.recv_into(view[got:length])
        received += length
    pipe.send((time.perf_counter(), received, time.process_time() - cpu_start))
    sock.close()


def _socket_sender(
    pipe: Connection, port: int, total_messages: int, size_bytes: int, warmup: int
) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    payload = os.urandom(size_bytes)
    header = _LENGTH.pack(size_bytes)
    cpu_start = time.process_time()
    for index in range(total_messages):
        if index == warmup:
            pipe.send("warm")
            pipe.recv()
            cpu_start = time.process_time()
            pipe.send(time.perf_counter())
        sock.sendall(header)
        sock.sendall(payload)
    sock.close()
    pipe.send(time.process_time() - cpu_start)


def measure_socket_pair(messages: int, size_bytes: int, warmup: int) -> Throughput:
    """A plain blocking-socket pair between two processes: no framing work at all."""
    spawn = multiprocessing.get_context("spawn")
    receiver_pipe, child = spawn.Pipe()
    total = warmup + messages
    receiver = spawn.Process(target=_socket_receiver, args=(child, total, size_bytes, warmup))
    receiver.start()
    port = receiver_pipe.recv()
    sender_pipe, child = spawn.Pipe()
    sender = spawn.Process(target=_socket_sender, args=(child, port, total, size_bytes, warmup))
    sender.start()
    assert sender_pipe.recv() == "warm"
    assert receiver_pipe.recv() == "warm"
    sender_pipe.send("go")
    start = sender_pipe.recv()
    end, received, receiver_cpu_s = receiver_pipe.recv()
    sender_cpu_s = sender_pipe.recv()
    for process in (sender, receiver):
        process.join(30)
    gigabytes = received / _GB
    return Throughput(
        gigabytes / (end - start), sender_cpu_s / gigabytes, receiver_cpu_s / gigabytes
    )


# -- 3. what a stranger's HELLO costs the acceptor -------------------------------------------


def measure_stranger_hellos(repeats: int) -> dict[str, tuple[float, float]]:
    """Acceptor CPU microseconds per HELLO: (now, with the previous version's eager
    ephemeral key generation added back), for HELLOs that fail the cheap checks and for
    one that passes them (a stranger claiming a roster key: it cannot finish, and such
    connections are what the per-source rate limit is for)."""
    keys = [_key(i) for i in range(4)]
    entries = tuple(
        RosterEntry(i, bytes(k.verify_key), "127.0.0.1", 7400 + i) for i, k in enumerate(keys)
    )
    roster = Roster("bench-handshake", entries, new_nonce())
    other = Roster("another-run", entries, new_nonce())
    stranger = nacl.signing.SigningKey.generate()
    hellos = {
        "random bytes": os.urandom(134),
        "unknown key": handshake.DialerHandshake(roster, stranger, 0, bytes(16), 0).hello(),
        "another session": handshake.DialerHandshake(other, keys[1], 0, bytes(16), 0).hello(),
        "claims a roster key": handshake.DialerHandshake(roster, keys[1], 0, bytes(16), 0).hello(),
    }

    def per_hello_us(body: bytes, eager: bool) -> float:
        start = time.process_time()
        for _ in range(repeats):
            if eager:  # what the previous acceptor did before looking at anything
                nacl.public.PrivateKey.generate()
            acceptor = handshake.AcceptorHandshake(roster, 0, keys[0], bytes(16))
            try:
                acceptor.on_hello(body)
            except handshake.HandshakeError:
                pass
        return (time.process_time() - start) / repeats * 1e6

    return {
        name: (per_hello_us(body, False), per_hello_us(body, True)) for name, body in hellos.items()
    }


# -- 4. memory under a garbage flood --------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _flooded_node(pipe: Connection, flood_s: float) -> None:
    logging.getLogger("jungle.transport").setLevel(logging.ERROR)  # faults are counted below
    trio.run(_flooded_node_async, pipe, flood_s)


async def _flooded_node_async(pipe: Connection, flood_s: float) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    roster = Roster(
        "bench-flood",
        (
            RosterEntry(0, bytes(_key(0).verify_key), "127.0.0.1", 1),  # never dialed back
            RosterEntry(1, bytes(_key(1).verify_key), "127.0.0.1", 2),
        ),
        new_nonce(),
    )
    settings = TransportSettings(handshake_timeout_s=1.0, backoff_s_max=1.0)
    config = TransportConfig(0, _key(0), roster, settings=settings)
    async with open_tcp_transport(config, listeners=listeners) as transport:
        await trio.sleep(0.5)
        idle_rss = _rss_bytes()
        pipe.send(listeners[0].socket.getsockname()[1])
        peak_rss = idle_rss
        with trio.move_on_after(flood_s):
            while True:
                await trio.sleep(0.05)
                peak_rss = max(peak_rss, _rss_bytes())
        faults = transport.statistics().faults
    pipe.send((idle_rss, peak_rss, {kind: sum(by.values()) for kind, by in faults.items()}))


async def _attack(port: int, flood_s: float, seed: int) -> int:
    rng = random.Random(seed)
    attempts = 0

    async def one_attacker(kind: int) -> None:
        nonlocal attempts
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.01)
                continue
            attempts += 1
            try:
                if kind == 0:  # random bytes
                    await stream.send_all(rng.randbytes(64 * 1024))
                elif kind == 1:  # a huge length prefix, then a trickle of body
                    await stream.send_all(_LENGTH.pack(0xFFFFFFF0) + bytes(4096))
                else:  # the start of a frame, then silence until the handshake deadline
                    await stream.send_all(_LENGTH.pack(134) + bytes(50))
                    await trio.sleep(2.0)
            except (OSError, trio.BrokenResourceError):
                pass
            finally:
                await stream.aclose()

    with trio.move_on_after(flood_s):
        async with trio.open_nursery() as nursery:
            for index in range(96):
                nursery.start_soon(one_attacker, index % 3)
    return attempts


def measure_flood(flood_s: float) -> tuple[int, int, int, dict[str, int]]:
    spawn = multiprocessing.get_context("spawn")
    pipe, child = spawn.Pipe()
    node = spawn.Process(target=_flooded_node, args=(child, flood_s + 0.5))
    node.start()
    port = pipe.recv()
    attempts = trio.run(_attack, port, flood_s, 7)
    idle_rss, peak_rss, faults = pipe.recv()
    node.join(30)
    return idle_rss, peak_rss, attempts, faults


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run")
    parser.add_argument("--messages", type=int, default=None, help="timed messages (256)")
    parser.add_argument("--size-mib", type=float, default=4.0, help="message size (4 MiB)")
    parser.add_argument("--flood-s", type=float, default=None, help="flood duration (5 s)")
    parser.add_argument(
        "--rounds", type=int, default=None, help="baseline/transport triples, interleaved (3)"
    )
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    messages = args.messages or (48 if args.quick else 256)
    flood_s = args.flood_s or (1.5 if args.quick else 5.0)
    size_bytes = int(args.size_mib * 1024 * 1024)
    warmup = 4
    print(f"cpus: {os.cpu_count()}; {messages} messages of {size_bytes / 2**20:g} MiB")

    print("\n1. frame protection, one thread, 4 MiB buffers (GB per CPU second):")
    for name, speed in measure_protections(4 * 1024 * 1024, 8 if args.quick else 32).items():
        print(f"   {name:32s} {speed:6.2f}")

    print("\n2. loopback throughput between two processes (GB/s):")
    to_mac, to_plain, mac_to_plain = [], [], []
    for round_index in range(rounds):
        # Interleaved, so that other load on the machine hits all alike.
        plain = measure_socket_pair(messages, size_bytes, warmup)
        mac_only = measure_transport(messages, size_bytes, warmup, "blake3-mac")
        encrypted = measure_transport(messages, size_bytes, warmup, "aes-256-gcm")
        to_mac.append(encrypted.gb_per_s / mac_only.gb_per_s)
        to_plain.append(encrypted.gb_per_s / plain.gb_per_s)
        mac_to_plain.append(mac_only.gb_per_s / plain.gb_per_s)
        print(f"   round {round_index + 1}: plain blocking socket pair     {plain}")
        print(f"            TcpTransport, BLAKE3 MAC only     {mac_only}")
        print(f"            TcpTransport, AES-256-GCM         {encrypted}")
        print(
            f"            encrypted/MAC {to_mac[-1]:.2f}x, encrypted/plain {to_plain[-1]:.2f}x, "
            f"MAC/plain {mac_to_plain[-1]:.2f}x"
        )
    ratio_mac, ratio_plain = statistics.median(to_mac), statistics.median(to_plain)
    verdict_mac = "meets" if ratio_mac >= 0.95 else "MISSES"
    verdict_plain = "meets" if ratio_plain >= 0.6 else "MISSES"
    print(
        f"   median encrypted / MAC-only        {ratio_mac:5.2f}x  ({verdict_mac} the 0.95x goal)"
    )
    print(
        f"   median encrypted / plain pair      {ratio_plain:5.2f}x  "
        f"({verdict_plain} the 0.6x goal)"
    )
    print(f"   median MAC-only / plain pair       {statistics.median(mac_to_plain):5.2f}x")
    print(f"   load average (1, 5, 15 min)        {os.getloadavg()}")

    print("\n3. acceptor CPU per stranger HELLO (us): now / with the earlier eager key generation")
    for name, (now_us, before_us) in measure_stranger_hellos(200 if args.quick else 2000).items():
        print(f"   {name:22s} {now_us:7.1f} / {before_us:7.1f}")

    print(f"\n4. a node's memory while 96 attackers flood it for {flood_s:g} s:")
    idle_rss, peak_rss, attempts, faults = measure_flood(flood_s)
    print(f"   attacker connections           {attempts}")
    print(f"   RSS idle / peak (MiB)          {idle_rss / 2**20:.1f} / {peak_rss / 2**20:.1f}")
    print(f"   peak / idle                    {peak_rss / idle_rss:.2f}x")
    print(f"   faults counted                 {dict(sorted(faults.items()))}")


if __name__ == "__main__":
    main()
