"""The broadcast fidelity's model of reliable broadcast (sim/broadcast_model.py), checked
against Bracha's broadcast run message by message over the same virtual network."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import trio
import trio.testing

from protocol.broadcast import BroadcastInstance, BroadcastParams
from protocol.codec import decode, encode
from protocol.crypto import UnsignedScheme
from protocol.messages import Echo, InstanceId, Ready, Send, Tag
from protocol.step import EVERYONE, Delivered, Step
from sim.adapters import BroadcastClassifier
from sim.broadcast_model import BroadcastModel
from sim.delays import Constant, DelayDraws, LogNormal
from sim.network import VirtualNetwork
from sim.schedulers import DefaultScheduler, MessageMeta, Scheduler

N, F = 10, 3
SEED = 5
SESSION = bytes(32)


def everyone(n: int = N) -> np.ndarray:
    return np.arange(n)


def iid(b: int, n: int = N) -> InstanceId:
    return InstanceId(b % n, Tag(b // n, 0, 0, 0))


def messaged_deliveries(
    scheduler: Scheduler, broadcasts: int, n: int = N, silent: frozenset[int] = frozenset()
) -> np.ndarray:
    """(broadcast x node) delivery times of ``broadcasts`` real broadcasts, all sent at
    virtual time 0 over the virtual network (every ECHO and READY a message); ``silent``
    nodes send nothing (their broadcasts stay undelivered)."""
    params = [BroadcastParams(n, (n - 1) // 3, me, SESSION) for me in range(n)]
    instances: list[dict[InstanceId, BroadcastInstance]] = [{} for _ in range(n)]
    delivered = np.full((broadcasts, n), np.inf)
    network = VirtualNetwork(n, SEED, scheduler, BroadcastClassifier())
    peers = [[p for p in range(n) if p != me] for me in range(n)]

    def instance(me: int, key: InstanceId) -> BroadcastInstance:
        found = instances[me].get(key)
        if found is None:
            found = instances[me][key] = BroadcastInstance(
                key, params[me], UnsignedScheme(), 1 << 16
            )
        return found

    def execute(me: int, step: Step) -> None:
        for outgoing in step.messages:
            dsts = peers[me] if outgoing.to == EVERYONE else [outgoing.to]
            network.endpoint(me).send_many(dsts, encode(outgoing.message))
        for output in step.outputs:
            if isinstance(output, Delivered):
                key = output.iid
                delivered[key.tag.step * n + key.origin, me] = network.now_s

    def handler(me: int) -> Callable[[int, bytes], None]:
        def deliver(src: int, data: bytes) -> None:
            if me in silent:
                return
            message = decode(data)
            assert isinstance(message, Send | Echo | Ready)
            rb = instance(me, message.iid)
            if isinstance(message, Send):
                execute(me, rb.handle_send(src, message))
            elif isinstance(message, Echo):
                execute(me, rb.handle_echo(src, message))
            else:
                execute(me, rb.handle_ready(src, message))

        return deliver

    async def main() -> None:
        for b in range(broadcasts):
            key = iid(b, n)
            if key.origin in silent:
                continue
            execute(key.origin, instance(key.origin, key).send(b"payload %d" % b))
        await network.run(
            {me: handler(me) for me in range(n)}, lambda: False, 1e6, clock_lag_max_s=1.0
        )

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return delivered


def modelled_deliveries(
    scheduler: Scheduler, broadcasts: int, voters: np.ndarray | None = None, n: int = N
) -> np.ndarray:
    chosen = everyone(n) if voters is None else voters
    model = BroadcastModel(n, (n - 1) // 3, SEED, scheduler, lambda: chosen)
    return np.stack([model.deliveries(iid(b, n), 100, 0.0).deliver_at_s for b in range(broadcasts)])


def assert_same_distribution(model: np.ndarray, messaged: np.ndarray) -> None:
    """(broadcast x node) delivery times: every one finite, the per-node means within 8%
    (over 300 broadcasts their spread is a few percent), the pooled 10th, 50th and 90th
    percentiles within 6%."""
    assert np.isfinite(model).all() and np.isfinite(messaged).all()
    np.testing.assert_allclose(model.mean(axis=0), messaged.mean(axis=0), rtol=0.08)
    for q in (0.1, 0.5, 0.9):
        modelled_q, messaged_q = np.quantile(model, q), np.quantile(messaged, q)
        assert modelled_q == pytest.approx(messaged_q, rel=0.06), f"quantile {q} (seed {SEED})"


def test_constant_delays_deliver_after_send_echo_and_ready() -> None:
    """Every node delivers at 3d, as Bracha's broadcast does with constant delay d."""
    scheduler = DefaultScheduler(link_delay=Constant(0.01))
    model = modelled_deliveries(scheduler, 20)
    messaged = messaged_deliveries(scheduler, 20)
    np.testing.assert_allclose(model, 0.03)
    np.testing.assert_allclose(messaged, 0.03)


@pytest.mark.parametrize(
    "scheduler",
    [
        DefaultScheduler(link_delay=LogNormal(median_s=0.02, sigma=0.8)),
        DefaultScheduler(link_delay=LogNormal(median_s=0.02, sigma=0.5), slow_nodes={2: 4.0}),
    ],
    ids=["lognormal", "slow-node"],
)
def test_delivery_times_match_the_messaged_broadcast(scheduler: DefaultScheduler) -> None:
    """The model's delivery times have the distribution that running every message gives:
    per node (so a slow node is slow in both) and pooled, at the median and the tail."""
    broadcasts = 300
    model = modelled_deliveries(scheduler, broadcasts)
    messaged = messaged_deliveries(scheduler, broadcasts)
    assert_same_distribution(model, messaged)


def test_with_f_silent_nodes_the_tight_quorums_match_too() -> None:
    """f of the n nodes silent: every quorum needs all but none of the rest, where the
    order statistics and READY amplification matter most."""
    scheduler = DefaultScheduler(link_delay=LogNormal(median_s=0.02, sigma=0.8))
    honest = np.arange(N - F)
    model = modelled_deliveries(scheduler, 300, honest)
    messaged = messaged_deliveries(scheduler, 300, silent=frozenset(range(N - F, N)))
    from_honest = np.arange(300) % N < N - F
    model, messaged = model[from_honest][:, honest], messaged[from_honest][:, honest]
    assert_same_distribution(model, messaged)


def test_an_incomplete_model_would_be_caught() -> None:
    """The comparison above can fail: a model that stopped at the echo quorum, without
    the READY hop, would deliver 30% early."""
    scheduler = DefaultScheduler(link_delay=LogNormal(median_s=0.02, sigma=0.8))
    messaged = messaged_deliveries(scheduler, 300)
    draws = DelayDraws(SEED)
    echo_quorum = BroadcastParams(N, F, 0, SESSION).echo_quorum
    zeros = np.zeros((N, N))
    links = np.broadcast_to(np.arange(N), (N, N))
    two_hops = []
    for b in range(300):
        draws.start(b)
        send = scheduler.draw_delays_s(draws, zeros[0], np.arange(N), zeros[0], "send", ())
        send[iid(b).origin] = 0.0
        echoes = send + scheduler.draw_delays_s(draws, links, links.T, zeros, "echo", ())
        two_hops.append(np.sort(echoes, axis=1)[:, echo_quorum - 1])
    assert np.median(two_hops) / np.median(messaged) < 0.8  # the faithful model: within 6%


def test_too_few_voters_means_no_delivery_and_voters_suffice() -> None:
    """With n-f voters (f crashed or silent) every node still delivers; with fewer than
    the quorums none does, as in the real protocol."""
    scheduler = DefaultScheduler()
    honest = np.arange(N - F)
    assert np.isfinite(modelled_deliveries(scheduler, 10, honest)).all()
    assert np.isinf(modelled_deliveries(scheduler, 10, honest[:-1])).all()


def test_draws_are_keyed_by_instance_not_by_call_order() -> None:
    scheduler = DefaultScheduler()
    fresh = BroadcastModel(N, F, SEED, scheduler, everyone).deliveries(iid(3), 100, 1.0)
    model = BroadcastModel(N, F, SEED, scheduler, everyone)
    model.deliveries(iid(4), 100, 1.0)
    after_another = model.deliveries(iid(3), 100, 1.0)
    np.testing.assert_array_equal(fresh.deliver_at_s, after_another.deliver_at_s)
    other_seed = BroadcastModel(N, F, SEED + 1, scheduler, everyone).deliveries(iid(3), 100, 1.0)
    assert not np.array_equal(fresh.deliver_at_s, other_seed.deliver_at_s)


class HeldEarlyReady(Scheduler):
    """n = 4, origin 0, 10 ms links, except: echoes from 1 and 2 reach node 3 after 1 s,
    READY 2 -> 0 takes 1 s, and READY 3 -> 0 sent before t = 0.5 s is held until 5 s.
    Node 3 becomes ready early by amplification (the others' READYs), so its READY to 0 is
    held, and node 0's third READY is 2's, at about 1.02 s."""

    def delay_s(self, meta: MessageMeta, u: float) -> float:
        link = (meta.kind, meta.src, meta.dst)
        if link in {("echo", 1, 3), ("echo", 2, 3), ("ready", 2, 0)}:
            return 1.0
        if link == ("ready", 3, 0) and meta.send_time_s < 0.5:
            return 5.0 - meta.send_time_s
        return 0.01


def test_a_ready_sent_early_by_amplification_gets_the_delay_of_its_real_send_time() -> None:
    """With a scheduler that looks at send times, the READY a node sends early (f+1
    READYs, before its echo quorum) is asked about at that earlier time: here it is held,
    so node 0 delivers at about 1.02 s, as message by message, not at 0.04 s."""
    n = 4
    modelled = modelled_deliveries(HeldEarlyReady(), 1, n=n)[0]
    messaged = messaged_deliveries(HeldEarlyReady(), 1, n=n)[0]
    assert messaged[0] == pytest.approx(1.02, abs=0.005)
    np.testing.assert_allclose(modelled, messaged, atol=0.005)


def test_a_scheduler_blind_to_send_times_needs_no_second_draw() -> None:
    """DefaultScheduler without partitions: the model skips the redraw, and the redraw
    would change nothing (the same draws give the same delays at any send time)."""
    plain = DefaultScheduler(link_delay=LogNormal(median_s=0.02, sigma=1.0))
    assert not plain.delays_depend_on_send_time

    class Asked(DefaultScheduler):
        @property
        def delays_depend_on_send_time(self) -> bool:
            return True

    asked = Asked(link_delay=LogNormal(median_s=0.02, sigma=1.0))
    np.testing.assert_array_equal(modelled_deliveries(plain, 50), modelled_deliveries(asked, 50))


def test_modelled_bytes_count_the_payload_echoes_and_readies() -> None:
    model = BroadcastModel(N, F, SEED, DefaultScheduler(), everyone)
    planned = model.deliveries(iid(2), 1000, 0.0)
    per_vote = planned.bytes_sent[0]
    assert per_vote > 0 and (planned.bytes_sent[np.arange(N) != 2] == per_vote).all()
    assert planned.bytes_sent[2] == per_vote + 1000 * (N - 1)


class HalfSpeedReadies(Scheduler):
    """A custom scheduler without a vectorized draw: READYs twice as slow."""

    def delay_s(self, meta: MessageMeta, u: float) -> float:
        return 0.02 if meta.kind == "ready" else 0.01


def test_a_custom_scheduler_is_asked_message_by_message() -> None:
    model = modelled_deliveries(HalfSpeedReadies(), 5)
    np.testing.assert_allclose(model, 0.01 + 0.01 + 0.02)
    assert math.isclose(messaged_deliveries(HalfSpeedReadies(), 5).max(), 0.04)


def test_delay_draws_are_a_function_of_seed_and_instance() -> None:
    draws = DelayDraws(SEED)
    draws.start(1, 2, 3)
    first = draws.picks((4, 5)), draws.uniforms((1000,))
    draws.start(7)
    draws.picks((3,))
    draws.start(1, 2, 3)
    np.testing.assert_array_equal(draws.picks((4, 5)), first[0])
    np.testing.assert_array_equal(draws.uniforms((1000,)), first[1])
    other = DelayDraws(SEED + 1)
    other.start(1, 2, 3)
    assert not np.array_equal(other.picks((4, 5)), first[0])
    uniforms = first[1]
    assert ((0.0 < uniforms) & (uniforms < 1.0)).all()
    assert abs(uniforms.mean() - 0.5) < 0.05
    with pytest.raises(ValueError, match="instance"):
        draws.start(-1)
