"""The runner as a real node runs it: real TCP transports on loopback, journals on disk,
computations in a worker thread, finishing together.

Learners here are small numpy fakes (no torch), one of which takes a second per
gradient: the node must keep answering its peers meanwhile (its event loop is not the
thread that computes), and the fast nodes must keep serving it after they are done.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import trio

from node.journal import Journal
from node.runner import Runner
from node.transport import TcpTransport
from protocol.codec import decode
from protocol.core import NodeCore, ProtocolConfig, RoundSchedule
from protocol.crypto import Ed25519Scheme
from protocol.messages import Echo, Send
from tests.node.transport_helpers import node_key, open_cluster

N, F, DIM, STEPS = 4, 1, 8, 3
SLOW_NODE = 3
SLOW_COMPUTE_S = 1.0


class FakeLearner:
    """Gradients are constants (the node id); ``compute_s`` of wall time per gradient."""

    def __init__(self, me: int, compute_s: float = 0.0) -> None:
        self._me = me
        self._compute_s = compute_s
        self._params = np.zeros(DIM, np.float32)
        #: (start, end) wall times of every gradient computation
        self.busy: list[tuple[float, float]] = []

    @property
    def dim(self) -> int:
        return DIM

    @property
    def train_loss(self) -> float:
        return 0.0

    @property
    def batches(self) -> int:
        return 0

    def gradient(self) -> np.ndarray:
        start = time.monotonic()
        time.sleep(self._compute_s)  # a model taking a while (releases the GIL, as torch)
        self.busy.append((start, time.monotonic()))
        return np.full(DIM, float(self._me), np.float32)

    def apply_gradient(self, vec: np.ndarray) -> None:
        self._params -= 0.1 * vec

    def parameters(self) -> np.ndarray:
        return self._params.copy()

    def set_parameters(self, vec: np.ndarray) -> None:
        self._params[:] = vec

    def evaluate(self) -> tuple[float, float]:
        return 0.0, 0.0


class Watched:
    """A transport wrapper that notes when node 0 sends each SEND and when the ECHO of
    the slow node for it comes back."""

    def __init__(self, transport: TcpTransport) -> None:
        self._transport = transport
        self.sent_at: dict[object, float] = {}
        self.echo_at: dict[object, float] = {}

    def send_nowait(self, dst: int, data: bytes) -> None:
        self.send_many((dst,), data)

    def send_many(self, dsts: tuple[int, ...], data: bytes) -> None:
        message = decode(data)
        if isinstance(message, Send) and message.iid.origin == 0:
            self.sent_at.setdefault(message.iid, time.monotonic())
        self._transport.send_many(dsts, data)

    def statistics(self):  # type: ignore[no-untyped-def]
        return self._transport.statistics()

    async def receive(self) -> tuple[int, bytes]:
        src, data = await self._transport.receive()
        if src == SLOW_NODE:
            message = decode(data)
            if isinstance(message, Echo) and message.iid.origin == 0:
                self.echo_at.setdefault(message.iid, time.monotonic())
        return src, data


def core_for(me: int, roster_session: bytes) -> NodeCore:
    keys = tuple(bytes(node_key(i).verify_key) for i in range(N))
    config = ProtocolConfig(
        n=N,
        f=F,
        me=me,
        session=roster_session,
        dim=DIM,
        schedule=RoundSchedule("constant", 1),
        steps_total=STEPS,
    )
    return NodeCore(config, Ed25519Scheme(bytes(node_key(me)), keys))


async def test_a_node_computing_for_seconds_keeps_answering_and_is_waited_for(
    tmp_path: Path,
) -> None:
    async with open_cluster(N) as cluster:
        session = cluster.roster.session_id
        learners = [FakeLearner(i, SLOW_COMPUTE_S if i == SLOW_NODE else 0.0) for i in range(N)]
        watched = Watched(cluster[0])
        journals = [Journal(tmp_path / f"node-{i}.journal", session.hex()) for i in range(N)]
        runners = []
        for i in range(N):
            journals[i].open()
            transport = watched if i == 0 else cluster[i]
            runners.append(
                Runner(
                    core_for(i, session),
                    transport,  # type: ignore[arg-type]
                    learners[i],
                    steps=STEPS,
                    eval_every=STEPS,
                    journal=journals[i],
                )
            )
        finished_at: dict[int, float] = {}
        started = time.monotonic()

        async def run(i: int) -> None:
            receive = watched.receive if i == 0 else cluster[i].receive
            await runners[i].run(receive, tick_interval_s=0.1, linger_s=60.0)
            finished_at[i] = time.monotonic()

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(N):
                    nursery.start_soon(run, i)

    assert all(runner.done for runner in runners)
    # Echo latency of the slow node for node 0's SENDs, while it was computing.
    latencies = {iid: watched.echo_at[iid] - sent for iid, sent in watched.sent_at.items()}
    busy = learners[SLOW_NODE].busy
    during = [
        latency
        for iid, latency in latencies.items()
        if any(start <= watched.sent_at[iid] <= end for start, end in busy)
    ]
    print(
        f"slow node computes {SLOW_COMPUTE_S} s per gradient; its echoes of node 0's SENDs "
        f"came back in {[round(x * 1000, 1) for x in sorted(latencies.values())]} ms "
        f"({len(during)} sent while it computed)"
    )
    assert len(latencies) == len(watched.sent_at) >= STEPS
    assert during, "no SEND of node 0 reached the slow node while it computed"
    # Blocking compute would hold every echo back until the gradient is done (~1 s).
    assert max(during) < 0.25 * SLOW_COMPUTE_S, latencies
    # Finishing together: the fast nodes served the slow one to its end, then left at
    # once (every peer had said Finished), long before their 60 s linger.
    slow_end = finished_at[SLOW_NODE]
    for i in range(N):
        assert runners[i].statistics().peers_finished == frozenset(set(range(N)) - {i})
        assert finished_at[i] - started < 30.0
    assert min(finished_at.values()) >= slow_end - 1.0
    # Everything sent went through the journal first.
    for i, journal in enumerate(journals):
        stats = journal.statistics()
        assert stats.records_appended > 0 and stats.syncs > 0, (i, stats)
        journal.close()


async def test_messages_leave_only_after_the_journal_sync_of_what_they_promise() -> None:
    """Persist before you promise: the flusher fsyncs the journal (what the step marked
    durable: our own SEND), and only then does anything reach the transport."""
    events: list[str] = []

    class Recorder:
        def append(self, step: int, data: bytes) -> None:
            message = decode(data)
            events.append(f"append {type(message).__name__}")

        def sync(self) -> None:
            events.append("sync")

        def prune_below(self, step: int) -> None:
            pass

        def send_many(self, dsts: tuple[int, ...], data: bytes) -> None:
            events.append(f"send {type(decode(data)).__name__}")

        def send_nowait(self, dst: int, data: bytes) -> None:
            self.send_many((dst,), data)

        async def receive(self) -> tuple[int, bytes]:
            await trio.sleep_forever()
            raise AssertionError

    recorder = Recorder()
    runner = Runner(
        core_for(0, b"\x07" * 32),
        recorder,  # type: ignore[arg-type]
        FakeLearner(0),
        steps=STEPS,
        journal=recorder,
    )
    with trio.move_on_after(0.5):
        await runner.run(recorder.receive, tick_interval_s=10.0)
    assert events[:4] == ["append Send", "sync", "send Send", "send Echo"], events
