"""Fixtures for transport tests: deterministic keys, clusters on loopback, a relay in the
middle that can cut, record or tamper, and a Byzantine roster member that speaks the
protocol by hand."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields, replace
from typing import Any

import blake3
import nacl.signing
import trio

from node import handshake
from node.frame_auth import FrameOpener, FrameSealer
from node.framing import FrameReader, send_buffers
from node.roster import Roster, RosterEntry
from node.transport import TcpTransport, TransportConfig, open_tcp_transport
from node.transport_config import TransportSettings

HOST = "127.0.0.1"
#: short backoff so reconnects in tests take milliseconds
FAST = {"backoff_s_min": 0.005, "backoff_s_max": 0.05, "handshake_timeout_s": 5.0}


def node_key(index: int, seed: int = 0) -> nacl.signing.SigningKey:
    """The same key for the same (index, seed) in every run."""
    return nacl.signing.SigningKey(blake3.blake3(b"test-node-%d-%d" % (seed, index)).digest())


def make_roster(
    ports: Sequence[int], session: str = "test", keys: Sequence[nacl.signing.SigningKey] = ()
) -> Roster:
    keys = keys or [node_key(index) for index in range(len(ports))]
    return Roster(
        session,
        tuple(
            RosterEntry(index, bytes(key.verify_key), HOST, port)
            for index, (key, port) in enumerate(zip(keys, ports, strict=True))
        ),
    )


async def bind() -> list[trio.SocketListener]:
    return await trio.open_tcp_listeners(0, host=HOST)


def port_of(listeners: Sequence[trio.SocketListener]) -> int:
    port: int = listeners[0].socket.getsockname()[1]
    return port


@dataclass
class Cluster:
    roster: Roster
    transports: list[TcpTransport | None]
    #: pre-bound listeners, consumed when a node first starts
    listeners: list[list[trio.SocketListener]]
    #: where each node really listens (the roster may point at a relay instead)
    listen_ports: list[int]
    configs: list[TransportConfig]
    nursery: trio.Nursery
    _scopes: dict[int, trio.CancelScope] = field(default_factory=dict)
    _stopped: dict[int, trio.Event] = field(default_factory=dict)

    async def start(self, index: int, config: TransportConfig | None = None) -> None:
        """Start (or restart, on the same port, as a new incarnation) node ``index``."""
        self._stopped[index] = trio.Event()
        self._scopes[index] = await self.nursery.start(run_node, self, index, config)

    async def stop(self, index: int) -> None:
        """Stop node ``index`` (its transport closes every connection) and wait for it."""
        self._scopes[index].cancel()
        await self._stopped[index].wait()

    def __getitem__(self, index: int) -> TcpTransport:
        transport = self.transports[index]
        assert transport is not None, f"node {index} is not running"
        return transport


@asynccontextmanager
async def open_cluster(
    n: int,
    *,
    running: Sequence[int] | None = None,
    session: str = "test",
    dial_ports: dict[int, int] | None = None,
    **config: Any,
) -> AsyncIterator[Cluster]:
    """n transports on loopback (only ``running`` are opened; the others' keys and ports
    exist, so a test can play them). ``dial_ports`` overrides roster ports, e.g. to route
    a node's inbound links through a :class:`Relay`."""
    listeners = [await bind() for _ in range(n)]
    listen_ports = [port_of(ls) for ls in listeners]
    ports = [(dial_ports or {}).get(index, port) for index, port in enumerate(listen_ports)]
    roster = make_roster(ports, session)
    base = TransportConfig(0, node_key(0), roster)
    configs = [
        with_overrides(replace(base, me=index, signing_key=node_key(index)), **{**FAST, **config})
        for index in range(n)
    ]
    async with trio.open_nursery() as nursery:
        cluster = Cluster(roster, [None] * n, listeners, listen_ports, configs, nursery)
        try:
            for index in range(n) if running is None else running:
                await cluster.start(index)
            yield cluster
        finally:
            # Shielded and before the cancel: an await in a cancelled scope would raise
            # Cancelled, which the nursery swallows, and with it whatever the test raised.
            with trio.CancelScope(shield=True):
                for unused in cluster.listeners:  # nodes that never started
                    for listener in unused:
                        await trio.aclose_forcefully(listener)
            nursery.cancel_scope.cancel()


async def run_node(
    cluster: Cluster,
    index: int,
    config: TransportConfig | None = None,
    *,
    task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run node ``index`` until the returned cancel scope is cancelled (a crash/stop)."""
    with trio.CancelScope() as scope:
        listeners = cluster.listeners[index]
        if not listeners:  # restarted: bind the same port again
            listeners = await trio.open_tcp_listeners(cluster.listen_ports[index], host=HOST)
        cluster.listeners[index] = []
        async with open_tcp_transport(
            config or cluster.configs[index], listeners=listeners
        ) as transport:
            cluster.transports[index] = transport
            task_status.started(scope)
            await trio.sleep_forever()
    cluster.transports[index] = None
    cluster._stopped[index].set()


def with_overrides(config: TransportConfig, **changes: Any) -> TransportConfig:
    """``config`` with fields replaced, [transport] settings (limits, timings) included."""
    settings = {key: changes.pop(key) for key in list(changes) if key in _SETTINGS}
    return replace(config, settings=replace(config.settings, **settings), **changes)


_SETTINGS = {field.name for field in fields(TransportSettings)}


# -- a man in the middle --------------------------------------------------------------------


@dataclass
class Relay:
    """Forwards loopback connections to ``target_port``; a test may cut them all, record
    what dialers sent, or flip one byte of what dialers send."""

    target_port: int
    port: int = 0
    connections: int = 0
    #: bytes each dialer sent, one bytearray per connection, in order
    recorded: list[bytearray] = field(default_factory=list)
    #: flip the byte at this offset of the next dialer stream to reach it
    tamper_offset: int | None = None
    _cut: trio.Event = field(default_factory=trio.Event)
    _freeze: trio.Event = field(default_factory=trio.Event)

    def cut(self) -> None:
        """Close every connection now open (new ones are relayed again)."""
        self._cut.set()
        self._cut = trio.Event()

    def freeze(self) -> None:
        """Black-hole every connection now open: nothing more passes, not even a close,
        as when a peer loses power. New connections are relayed again."""
        self._freeze.set()
        self._freeze = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await bind()
        self.port = port_of(listeners)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._relay, listeners)
                task_status.started()
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)

    async def _relay(self, client: trio.SocketStream) -> None:
        self.connections += 1
        record = bytearray()
        self.recorded.append(record)
        cut, freeze = self._cut, self._freeze
        try:
            server = await trio.open_tcp_stream(HOST, self.target_port)
        except OSError:
            await client.aclose()
            return
        async with client, server, trio.open_nursery() as nursery:

            async def pump(src: trio.SocketStream, dst: trio.SocketStream, upstream: bool) -> None:
                try:
                    async for chunk in src:
                        if freeze.is_set():
                            break
                        if upstream:
                            chunk = self._maybe_tamper(record, bytearray(chunk))
                            record.extend(chunk)
                        await dst.send_all(chunk)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                if freeze.is_set():
                    await trio.sleep_forever()
                nursery.cancel_scope.cancel()

            async def watch_cut() -> None:
                await cut.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(pump, client, server, True)
            nursery.start_soon(pump, server, client, False)
            nursery.start_soon(watch_cut)

    def _maybe_tamper(self, record: bytearray, chunk: bytearray) -> bytearray:
        offset = self.tamper_offset
        if offset is not None and len(record) <= offset < len(record) + len(chunk):
            chunk[offset - len(record)] ^= 0x01
            self.tamper_offset = None
        return chunk


# -- a Byzantine roster member speaking the protocol by hand --------------------------------


@dataclass
class ByzantineLink:
    """An authenticated connection to a live node, driven frame by frame by a test."""

    stream: trio.SocketStream
    reader: FrameReader
    sealer: FrameSealer
    opener: FrameOpener
    first_ack: int
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def send_data(self, payload: bytes, seq: int | None = None) -> None:
        seq = next(self._seq) if seq is None else seq
        await send_buffers(self.stream.socket, self.sealer.data_frame(seq, payload))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)


async def dial_as(
    port: int,
    roster: Roster,
    key: nacl.signing.SigningKey,
    to_id: int,
    *,
    incarnation: bytes = b"\x07" * handshake.INCARNATION_BYTES,
    seq_base: int = 0,
) -> ByzantineLink:
    """Complete a real handshake with the node at ``port`` (as whoever ``key`` is)."""
    stream = await trio.open_tcp_stream(HOST, port)
    try:
        reader = FrameReader(stream.socket, 1024)
        dialer = handshake.DialerHandshake(roster, key, to_id, incarnation, seq_base)
        secrets = await handshake.dial(stream.socket, reader, dialer)
        opener = FrameOpener(secrets.suite, secrets.receive_key)
        _kind, first_ack, _payload = opener.open(await reader.receive_frame())
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    sealer = FrameSealer(secrets.suite, secrets.send_key)
    return ByzantineLink(stream, reader, sealer, opener, first_ack)


async def wait_closed_by_peer(stream: trio.SocketStream) -> None:
    """Read until the node closes the connection (its verdict is recorded by then)."""
    try:
        async for _ in stream:
            pass
    except trio.BrokenResourceError:
        pass


async def exchange(cluster: Cluster, a: int, b: int, label: bytes = b"ping") -> None:
    """One message each way between two running nodes: both still work."""
    cluster[a].send_nowait(b, label + b" from %d" % a)
    cluster[b].send_nowait(a, label + b" from %d" % b)
    assert await cluster[b].receive() == (a, label + b" from %d" % a)
    assert await cluster[a].receive() == (b, label + b" from %d" % b)
