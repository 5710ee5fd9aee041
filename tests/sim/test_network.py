"""The virtual network: delay models, schedulers, ordering, determinism, faults.

Simulations run under ``MockClock(autojump_threshold=0)`` (pytest-trio's
``autojump_clock`` fixture), so virtual seconds cost no real time.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import trio

from node.interfaces import Transport
from sim.delays import (
    Constant,
    DelaySpecError,
    Exponential,
    KeyedUniforms,
    LogNormal,
    Uniform,
    derive_uniform,
    keyed_uniform,
    parse_delay,
)
from sim.network import MIN_DELAY_S, StopReason, VirtualNetwork
from sim.schedulers import (
    DefaultScheduler,
    MessageMeta,
    Partition,
    Scheduler,
    SchedulerSpecError,
    load_scheduler,
)

SEEDS = [1, 2, 3]
DRAWS = 20_000

#: (virtual time, dst, src, data) of every delivery a handler saw
Log = list[tuple[float, int, int, bytes]]


def recording_handlers(
    network: VirtualNetwork, log: Log
) -> dict[int, Callable[[int, bytes], None]]:
    def handler(dst: int) -> Callable[[int, bytes], None]:
        def deliver(src: int, data: bytes) -> None:
            log.append((network.now_s, dst, src, data))

        return deliver

    return {node: handler(node) for node in range(network.n)}


def broadcast_all(network: VirtualNetwork, rounds: int = 1) -> None:
    """Every node sends ``rounds`` distinct messages to every other node, now."""
    for r in range(rounds):
        for src in range(network.n):
            for dst in range(network.n):
                if dst != src:
                    network.endpoint(src).send_nowait(dst, b"%d>%d#%d" % (src, dst, r))


async def gossip(seed: int, n: int = 8, hops: int = 3) -> tuple[Log, str]:
    """A workload whose traffic depends on delivery order: each node forwards what it
    receives to two peers until the hop budget runs out."""
    network = VirtualNetwork(n, seed, DefaultScheduler(duplicate_prob=0.1, reorder_jitter_s=0.001))
    log: Log = []

    def handler(dst: int) -> Callable[[int, bytes], None]:
        def deliver(src: int, data: bytes) -> None:
            log.append((network.now_s, dst, src, data))
            if data[0] > 0:
                for peer in ((dst + 1) % n, (dst + len(log)) % n):
                    if peer != dst:
                        network.endpoint(dst).send_nowait(peer, bytes([data[0] - 1]) + data[1:])
            network.record_output(dst, data)

        return deliver

    for src in range(n):
        network.endpoint(src).send_nowait((src + 1) % n, bytes([hops, src]))
    result = await network.run({i: handler(i) for i in range(n)}, lambda: False, 100.0)
    assert result.reason is StopReason.QUIESCENT
    return log, network.trace_digest()


# --- delay models and keyed draws -------------------------------------------------------


def draws(seed: int) -> list[float]:
    return [keyed_uniform(seed, i) for i in range(DRAWS)]


@pytest.mark.parametrize("seed", SEEDS)
def test_keyed_uniform_is_uniform_in_open_interval_and_a_pure_function(seed: int) -> None:
    us = draws(seed)
    assert all(0.0 < u < 1.0 for u in us)
    assert abs(statistics.fmean(us) - 0.5) < 0.01
    deciles = Counter(int(u * 10) for u in us)
    assert all(abs(deciles[d] - DRAWS / 10) < 0.05 * DRAWS / 10 for d in range(10))
    assert us[:100] == draws(seed)[:100]
    assert us[:100] != draws(seed + 1)[:100]
    draw = KeyedUniforms(seed)
    assert [draw(i) for i in range(100)] == us[:100]
    assert keyed_uniform(seed, 1, 2) != keyed_uniform(seed, 1, 2, 0)


def test_derive_uniform_gives_distinct_deterministic_draws() -> None:
    u = keyed_uniform(5, 1, 2, 3)
    derived = [derive_uniform(u, index) for index in range(4)]
    assert derived == [derive_uniform(u, index) for index in range(4)]
    assert len(set(derived)) == 4 and all(0.0 < d < 1.0 for d in derived)


@pytest.mark.parametrize("seed", SEEDS)
def test_delay_models_sample_their_distributions(seed: int) -> None:
    us = draws(seed)
    assert {Constant(0.02).sample(u) for u in us} == {0.02}

    uniform = [Uniform(0.01, 0.03).sample(u) for u in us]
    assert 0.01 <= min(uniform) and max(uniform) <= 0.03
    assert statistics.fmean(uniform) == pytest.approx(0.02, rel=0.01)

    exponential = [Exponential(mean_s=0.05, min_s=0.01).sample(u) for u in us]
    assert min(exponential) >= 0.01
    assert statistics.fmean(exponential) == pytest.approx(0.05, rel=0.03)
    # memoryless tail: median of the tail is its mean times ln 2
    assert statistics.median(exponential) - 0.01 == pytest.approx(0.04 * math.log(2), rel=0.03)

    lognormal = [LogNormal(median_s=0.05, sigma=0.5, min_s=0.01).sample(u) for u in us]
    assert min(lognormal) >= 0.01
    assert statistics.median(lognormal) == pytest.approx(0.05, rel=0.03)
    logs = [math.log(d - 0.01) for d in lognormal]
    assert statistics.stdev(logs) == pytest.approx(0.5, rel=0.03)


def test_parse_delay_reads_tables_strings_and_numbers() -> None:
    assert parse_delay({"model": "lognormal", "median_s": 0.05, "sigma": 0.5}) == LogNormal(
        0.05, 0.5
    )
    assert parse_delay("exponential mean_s=0.02 min_s=0.005") == Exponential(0.02, 0.005)
    assert parse_delay("uniform low_s=0.01 high_s=0.03") == Uniform(0.01, 0.03)
    assert parse_delay(0.25) == Constant(0.25)
    assert parse_delay("0.25") == Constant(0.25)


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ({"model": "pareto", "scale_s": 1.0}, "unknown delay model 'pareto'"),
        ({"median_s": 0.05}, "unknown delay model None"),
        ({"model": "lognormal", "median_s": 0.05}, "needs sigma"),
        ({"model": "constant", "delay_s": 1.0, "jitter_s": 1.0}, "does not take jitter_s"),
        ("uniform low_s=0.01 high_s=fast", "high_s must be a number"),
        ("uniform low_s=0.03 high_s=0.01", "low_s <= high_s"),
        ("exponential mean_s=0.01 min_s=0.02", "min_s <= mean_s"),
        ("-1", "delay_s must be finite and >= 0"),
        ("lognormal median_s", "expected key=value"),
        ("", "empty delay spec"),
        ({"model": "constant", "delay_s": True}, "delay_s must be a number"),
    ],
)
def test_parse_delay_explains_bad_specs(spec: dict[str, object] | str, complaint: str) -> None:
    with pytest.raises(DelaySpecError, match=complaint.replace("(", r"\(")):
        parse_delay(spec)


# --- schedulers -------------------------------------------------------------------------


def meta(src: int, dst: int, send_time_s: float = 0.0, kind: str = "msg") -> MessageMeta:
    return MessageMeta(src, dst, 0, kind, (), 10, send_time_s)


def test_partitions_hold_cross_group_messages_until_they_heal() -> None:
    early = Partition([{0, 1}, {2, 3}], start_s=1.0, heal_s=5.0)
    later = Partition([{0}], start_s=4.0, heal_s=9.0)  # node 0 against everyone else
    scheduler = DefaultScheduler(link_delay=Constant(0.1), partitions=[later, early])
    assert scheduler.delay_s(meta(0, 2, 0.5), 0.5) == pytest.approx(0.1)  # before it starts
    assert scheduler.delay_s(meta(0, 1, 2.0), 0.5) == pytest.approx(0.1)  # same side
    assert scheduler.delay_s(meta(1, 2, 2.0), 0.5) == pytest.approx(3.1)  # held until 5
    assert scheduler.delay_s(meta(1, 2, 5.0), 0.5) == pytest.approx(0.1)  # healed
    # held by the first partition until 5, which falls inside the second: held until 9
    assert scheduler.delay_s(meta(0, 2, 2.0), 0.5) == pytest.approx(7.1)
    with pytest.raises(ValueError, match="two partition groups"):
        Partition([{0, 1}, {1, 2}], start_s=0.0, heal_s=1.0)
    with pytest.raises(ValueError, match="finite"):
        Partition([{0}], start_s=0.0, heal_s=math.inf)


def test_slow_nodes_multiply_delays_to_and_from_them() -> None:
    scheduler = DefaultScheduler(link_delay=Constant(0.01), slow_nodes={2: 10.0, 3: 4.0})
    assert scheduler.delay_s(meta(0, 1), 0.5) == pytest.approx(0.01)
    assert scheduler.delay_s(meta(0, 2), 0.5) == pytest.approx(0.1)
    assert scheduler.delay_s(meta(2, 0), 0.5) == pytest.approx(0.1)
    assert scheduler.delay_s(meta(2, 3), 0.5) == pytest.approx(0.4)


def test_per_link_overrides_and_jitter() -> None:
    scheduler = DefaultScheduler(
        link_delay=Constant(0.01), per_link={(0, 1): Constant(0.5)}, reorder_jitter_s=0.002
    )
    assert 0.5 <= scheduler.delay_s(meta(0, 1), 0.3) < 0.502
    assert 0.01 <= scheduler.delay_s(meta(1, 0), 0.3) < 0.012
    jittered = {scheduler.delay_s(meta(1, 0), keyed_uniform(1, i)) for i in range(50)}
    assert len(jittered) == 50


def test_default_scheduler_from_spec() -> None:
    spec = {
        "link_delay": {"model": "constant", "delay_s": 0.02},
        "per_link": [{"src": 0, "dst": 1, "delay": "constant delay_s=0.2"}],
        "slow_nodes": {"3": 10.0},
        "duplicate_prob": 0.01,
        "partitions": [{"groups": [[0, 1], [2, 3]], "start_s": 1.0, "heal_s": 2.0}],
    }
    scheduler = load_scheduler("default", spec)
    assert isinstance(scheduler, DefaultScheduler)
    assert scheduler.link_delay == Constant(0.02)
    assert scheduler.per_link == {(0, 1): Constant(0.2)}
    assert scheduler.slow_nodes == {3: 10.0}
    assert scheduler.partitions[0].groups == (frozenset({0, 1}), frozenset({2, 3}))
    with pytest.raises(SchedulerSpecError, match="does not take loss_prob"):
        DefaultScheduler.from_spec({"loss_prob": 0.1})
    with pytest.raises(SchedulerSpecError, match="unknown delay model"):
        DefaultScheduler.from_spec({"link_delay": {"model": "fast"}})
    with pytest.raises(SchedulerSpecError, match="missing entry 'heal_s'"):
        DefaultScheduler.from_spec({"partitions": [{"groups": [[0]], "start_s": 1.0}]})
    with pytest.raises(SchedulerSpecError, match="duplicate_prob"):
        DefaultScheduler.from_spec({"duplicate_prob": 1.5})


class ByKind(Scheduler):
    """A scripted schedule: "slow" messages take a second, everything else a millisecond."""

    def __init__(self, slow_delay_s: float = 1.0) -> None:
        self.slow_delay_s = slow_delay_s

    def delay_s(self, meta: MessageMeta, u: float) -> float:
        return self.slow_delay_s if meta.kind == "slow" else 0.001


def test_load_scheduler_builds_named_classes_and_explains_failures() -> None:
    scheduler = load_scheduler(f"{__name__}:ByKind", {"slow_delay_s": 2.0})
    assert isinstance(scheduler, ByKind) and scheduler.slow_delay_s == 2.0
    for spec, complaint in [
        ("ByKind", "'default' or 'module:Class'"),
        ("no_such_module_here:X", "cannot import"),
        (f"{__name__}:meta", "not name a Scheduler subclass"),
    ]:
        with pytest.raises(SchedulerSpecError, match=complaint):
            load_scheduler(spec)
    with pytest.raises(SchedulerSpecError, match="cannot build"):
        load_scheduler(f"{__name__}:ByKind", {"speed": 1})


# --- the network --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
async def test_same_seed_same_run_different_seed_different_run(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    first_log, first_digest = await gossip(seed)
    second_log, second_digest = await gossip(seed)
    assert len(first_log) > 50
    assert second_log == first_log
    assert second_digest == first_digest
    other_log, other_digest = await gossip(seed + 100)
    assert other_digest != first_digest
    assert [entry[1:] for entry in other_log] != [entry[1:] for entry in first_log]


async def test_clock_lag_changes_nothing_but_trio_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runs = []
    for lag_s in (0.0, 0.05):
        network = VirtualNetwork(6, 11, DefaultScheduler())
        broadcast_all(network, rounds=3)
        log: Log = []
        start_s = trio.current_time()
        await network.run(
            recording_handlers(network, log), lambda: False, 10.0, clock_lag_max_s=lag_s
        )
        assert trio.current_time() - start_s == pytest.approx(network.now_s)
        runs.append((log, network.trace_digest()))
    assert runs[0] == runs[1]


async def test_simultaneous_deliveries_follow_the_dst_src_seq_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = VirtualNetwork(4, 0, DefaultScheduler(link_delay=Constant(0.01)))
    # sent in scrambled order, all at t=0, all delivered at t=0.01
    for r in (1, 0):
        for src in (2, 0, 3, 1):
            for dst in (1, 3, 0, 2):
                if dst != src:
                    network.endpoint(src).send_nowait(dst, bytes([src, dst, r]))
    log: Log = []
    await network.run(recording_handlers(network, log), lambda: False, 1.0)
    assert {time_s for time_s, *_ in log} == {0.01}
    keys = [(dst, src, data[2]) for _, dst, src, data in log]
    # seq on each link follows send order, and round 1 was sent first
    assert keys == sorted(keys, key=lambda key: (key[0], key[1], -key[2]))


@pytest.mark.parametrize("seed", SEEDS)
async def test_random_delays_reorder_but_time_never_goes_back(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    network = VirtualNetwork(5, seed, DefaultScheduler(link_delay=Exponential(0.01)))
    broadcast_all(network, rounds=20)
    log: Log = []
    await network.run(recording_handlers(network, log), lambda: False, 10.0)
    times = [time_s for time_s, *_ in log]
    assert times == sorted(times) and times[0] >= MIN_DELAY_S
    link = [data for _, dst, src, data in log if (src, dst) == (0, 1)]
    assert sorted(link) != link  # the link reordered
    assert len(log) == 5 * 4 * 20


class Echo(Scheduler):
    """Delivers instantly (the network floors it) and duplicates everything 3 times."""

    def delay_s(self, meta: MessageMeta, u: float) -> float:
        return 0.0 if u < 0.5 else 0.01 * u

    def copies(self, meta: MessageMeta, u: float) -> int:
        return 3


async def test_messages_sent_while_delivering_arrive_strictly_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = VirtualNetwork(2, 4, Echo())
    log: Log = []

    def ping_pong(dst: int) -> Callable[[int, bytes], None]:
        def deliver(src: int, data: bytes) -> None:
            log.append((network.now_s, dst, src, data))
            if data[0] < 20:
                network.endpoint(dst).send_nowait(src, bytes([data[0] + 1]))

        return deliver

    network.endpoint(0).send_nowait(1, b"\x00")
    await network.run({0: ping_pong(0), 1: ping_pong(1)}, lambda: False, 10.0)
    assert [data[0] for *_, data in log] == list(range(21))
    assert all(later[0] > earlier[0] for earlier, later in itertools.pairwise(log))


@pytest.mark.parametrize("seed", SEEDS)
async def test_duplicates_reach_the_handler_once_and_are_counted(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    network = VirtualNetwork(4, seed, DefaultScheduler(duplicate_prob=0.3))
    broadcast_all(network, rounds=25)
    log: Log = []
    await network.run(recording_handlers(network, log), lambda: False, 10.0)
    sent = 4 * 3 * 25
    assert len(log) == sent and len({(dst, src, data) for _, dst, src, data in log}) == sent
    stats = network.statistics()
    assert stats.messages_sent == sent and stats.messages_delivered == sent
    assert 0.2 * sent < stats.copies_injected < 0.4 * sent
    assert stats.duplicates_dropped == stats.copies_injected
    per_node = [network.endpoint(node).statistics().duplicates_dropped for node in range(4)]
    assert sum(per_node) == stats.copies_injected


async def test_many_reordered_copies_are_delivered_exactly_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = VirtualNetwork(3, 9, Echo())
    broadcast_all(network, rounds=40)
    log: Log = []
    await network.run(recording_handlers(network, log), lambda: False, 10.0)
    assert sorted(Counter((dst, src, data) for _, dst, src, data in log).values()) == [1] * 240
    assert network.statistics().duplicates_dropped == 2 * 240


async def test_partition_delivers_cross_group_messages_after_healing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    partition = Partition([{0, 1}, {2, 3}], start_s=0.0, heal_s=5.0)
    scheduler = DefaultScheduler(link_delay=Uniform(0.01, 0.02), partitions=[partition])
    network = VirtualNetwork(4, 3, scheduler)
    broadcast_all(network)
    log: Log = []
    result = await network.run(recording_handlers(network, log), lambda: False, 4.0)
    assert result.reason is StopReason.TIME_LIMIT and network.now_s == 4.0
    assert {(src, dst) for _, dst, src, _ in log} == {(0, 1), (1, 0), (2, 3), (3, 2)}
    result = await network.run(recording_handlers(network, log), lambda: False, 100.0)
    assert result.reason is StopReason.QUIESCENT and result.messages_delivered == 8
    assert all(5.01 <= time_s <= 5.02 for time_s, dst, src, _ in log[4:])
    assert len(log) == 12


async def test_slow_node_takes_longer_in_the_network(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = VirtualNetwork(
        3, 0, DefaultScheduler(link_delay=Constant(0.01), slow_nodes={2: 10.0})
    )
    broadcast_all(network)
    log: Log = []
    await network.run(recording_handlers(network, log), lambda: False, 1.0)
    arrival = {(src, dst): time_s for time_s, dst, src, _ in log}
    assert arrival[0, 1] == arrival[1, 0] == pytest.approx(0.01)
    assert arrival[0, 2] == arrival[2, 1] == pytest.approx(0.1)


async def test_custom_scheduler_sees_the_classified_kind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def classify(data: bytes) -> tuple[str, tuple[int, ...]]:
        return ("slow" if data.startswith(b"s") else "fast"), (data[-1],)

    network = VirtualNetwork(2, 0, ByKind(slow_delay_s=2.0), classify=classify)
    network.endpoint(0).send_nowait(1, b"s1")
    network.endpoint(0).send_nowait(1, b"f2")
    log: Log = []
    await network.run(recording_handlers(network, log), lambda: False, 10.0)
    assert [(time_s, data) for time_s, _, _, data in log] == [(0.001, b"f2"), (2.0, b"s1")]
    sent = network.endpoint(0).statistics()
    assert sent.bytes_sent_by_kind == {"fast": 2, "slow": 2}
    assert network.endpoint(1).statistics().messages_received_by_kind == {"fast": 1, "slow": 1}


async def test_timers_fire_in_order_and_stop_on_cancel_or_crash(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = VirtualNetwork(3, 0, DefaultScheduler())
    fired: list[tuple[float, str]] = []

    def timer(name: str) -> Callable[[float], None]:
        return lambda now_s: fired.append((now_s, name))

    network.call_every(2, 0.5, timer("c"))
    network.call_every(1, 0.25, timer("b1"), start_s=0.0)
    network.call_every(1, 0.5, timer("b2"), start_s=0.5)
    cancelled = network.call_every(0, 0.1, timer("a"))
    network.cancel_timer(cancelled)
    result = await network.run({i: lambda src, data: None for i in range(3)}, lambda: False, 1.0)
    assert result.reason is StopReason.TIME_LIMIT
    assert fired == [
        (0.0, "b1"),
        (0.25, "b1"),
        (0.5, "b1"),
        (0.5, "b2"),
        (0.5, "c"),
        (0.75, "b1"),
        (1.0, "b1"),
        (1.0, "b2"),
        (1.0, "c"),
    ]
    network.crash(1)
    fired.clear()
    await network.run({i: lambda src, data: None for i in range(3)}, lambda: False, 2.0)
    assert fired == [(1.5, "c"), (2.0, "c")]
    assert network.statistics().timer_firings == 11


async def test_crashed_node_receives_and_sends_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = VirtualNetwork(3, 0, DefaultScheduler())
    broadcast_all(network)
    network.crash(2)
    network.endpoint(2).send_nowait(0, b"from beyond")
    log: Log = []
    await network.run(
        {0: recording_handlers(network, log)[0], 1: lambda s, d: None}, lambda: False, 1.0
    )
    assert {src for _, _, src, _ in log} == {1, 2}  # 2's messages sent before crashing arrive
    assert network.statistics().messages_discarded == 2
    assert network.endpoint(2).statistics().messages_dropped == 1


async def test_run_stops_when_asked_and_resumes(autojump_clock: trio.testing.MockClock) -> None:
    network = VirtualNetwork(4, 5, DefaultScheduler())
    broadcast_all(network)
    log: Log = []
    handlers = recording_handlers(network, log)
    result = await network.run(handlers, lambda: len(log) >= 5, 10.0)
    assert (result.reason, result.messages_delivered, len(log)) == (StopReason.UNTIL, 5, 5)
    assert result.now_s == log[-1][0]
    result = await network.run(handlers, lambda: False, 10.0)
    assert (result.reason, result.messages_delivered) == (StopReason.QUIESCENT, 7)


async def test_endpoint_counts_per_peer_and_kind(autojump_clock: trio.testing.MockClock) -> None:
    network = VirtualNetwork(3, 0, DefaultScheduler())
    transport: Transport = network.endpoint(0)
    transport.send_nowait(1, b"abc")
    reused_buffer: Any = bytearray(b"de")
    transport.send_nowait(1, reused_buffer)
    reused_buffer[:] = b"XY"  # the sender reuses its buffer; what was sent must not change
    transport.send_nowait(2, b"f")
    log: Log = []
    await network.run(recording_handlers(network, log), lambda: False, 1.0)
    assert sorted(data for *_, data in log) == [b"abc", b"de", b"f"]
    sent = network.endpoint(0).statistics()
    assert (sent.messages_sent, sent.bytes_sent) == (3, 6)
    assert sent.bytes_sent_by_peer == {1: 5, 2: 1}
    assert sent.messages_sent_by_peer == {1: 2, 2: 1}
    assert sent.bytes_sent_by_kind == {"msg": 6}
    received = network.endpoint(1).statistics()
    assert (received.messages_received, received.bytes_received) == (2, 5)
    assert received.bytes_received_by_peer == {0: 5, 2: 0}
    totals = network.statistics()
    assert (totals.messages_delivered, totals.bytes_delivered, totals.events_processed) == (3, 6, 3)


def test_misuse_is_refused_clearly() -> None:
    network = VirtualNetwork(2, 0, DefaultScheduler())
    with pytest.raises(ValueError, match="no link to 0"):
        network.endpoint(0).send_nowait(0, b"self")
    with pytest.raises(ValueError, match="no link to 2"):
        network.endpoint(0).send_nowait(2, b"nobody")
    with pytest.raises(ValueError, match="interval_s"):
        network.call_every(0, 0.0, lambda now_s: None)

    class Backwards(Scheduler):
        def delay_s(self, meta: MessageMeta, u: float) -> float:
            return -1.0

    with pytest.raises(ValueError, match=r"gave delay -1\.0"):
        VirtualNetwork(2, 0, Backwards()).endpoint(0).send_nowait(1, b"x")


async def test_run_requires_a_handler_for_every_live_node(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = VirtualNetwork(3, 0, DefaultScheduler())
    with pytest.raises(ValueError, match=r"live nodes \[1, 2\]"):
        await network.run({0: lambda src, data: None}, lambda: False, 1.0)


async def test_trace_digest_covers_payloads_and_outputs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    digests = []
    for payload, output in [(b"a", b""), (b"b", b""), (b"a", b"out")]:
        network = VirtualNetwork(2, 0, DefaultScheduler())
        network.endpoint(0).send_nowait(1, payload)
        await network.run(recording_handlers(network, []), lambda: False, 1.0)
        if output:
            network.record_output(1, output)
        digests.append(network.trace_digest())
    assert len(set(digests)) == 3


async def test_send_many_is_send_nowait_to_each(autojump_clock: trio.testing.MockClock) -> None:
    """One broadcast through send_many: the same seqs, delays, order, counters and trace
    digest as the same sends one by one."""

    async def run(many: bool) -> tuple[Log, str, Any]:
        network = VirtualNetwork(6, 5, DefaultScheduler(duplicate_prob=0.2))
        for src in range(6):
            peers = [dst for dst in range(6) if dst != src]
            for r in range(3):
                data = b"%d#%d" % (src, r)
                if many:
                    network.endpoint(src).send_many(peers, data)
                else:
                    for dst in peers:
                        network.endpoint(src).send_nowait(dst, data)
        log: Log = []
        await network.run(recording_handlers(network, log), lambda: False, 10.0)
        return log, network.trace_digest(), network.endpoint(2).statistics()

    assert await run(True) == await run(False)


def test_send_many_refuses_a_bad_destination_before_sending_anything() -> None:
    network = VirtualNetwork(4, 1, DefaultScheduler())
    with pytest.raises(ValueError, match="no link to 7"):
        network.endpoint(0).send_many([1, 2, 7], b"x")
    with pytest.raises(ValueError, match="no link to 0"):
        network.endpoint(0).send_many([1, 0], b"x")
    assert network.statistics().messages_sent == 0
    network.crash(0)
    network.endpoint(0).send_many([1, 2, 3], b"x")
    assert network.endpoint(0).statistics().messages_dropped == 3
