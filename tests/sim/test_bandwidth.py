"""Bandwidth in the simulator (sim/bandwidth.py): FIFO uplinks and downlinks on top of the
delay models, at both fidelities, what the summary reports, and what a scenario may say.

Link rates are chosen so that one byte takes a round number of microseconds: at 8 Mbps a
byte takes 1 us, so a 1000-byte message takes 1 ms to send.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import trio

from protocol.messages import InstanceId, Tag
from sim.bandwidth import Bandwidth, LinkQueues
from sim.broadcast_model import BroadcastModel
from sim.delays import Constant
from sim.engine import run_scenario
from sim.network import StopReason, VirtualNetwork
from sim.report import results_table
from sim.scenario import Scenario, ScenarioError
from sim.schedulers import DefaultScheduler, MessageMeta, Partition, Scheduler
from sim.summary import Summary

PROPAGATION_S = 0.01
SIZE_BYTES = 1000
#: 1000 bytes at 8 Mbps
TRANSMIT_S = SIZE_BYTES * 8 / 8e6

#: (virtual time, dst, src) of every delivery
Log = list[tuple[float, int, int]]


def network(n: int, bandwidth: Bandwidth, scheduler: Scheduler | None = None) -> VirtualNetwork:
    scheduler = scheduler or DefaultScheduler(link_delay=Constant(PROPAGATION_S))
    return VirtualNetwork(n, 1, scheduler, bandwidth=bandwidth)


async def run(net: VirtualNetwork) -> Log:
    log: Log = []

    def handler(dst: int) -> Callable[[int, bytes], None]:
        def deliver(src: int, data: bytes) -> None:
            log.append((net.now_s, dst, src))

        return deliver

    result = await net.run({node: handler(node) for node in range(net.n)}, lambda: False, 100.0)
    assert result.reason is StopReason.QUIESCENT
    return log


# --- the network, message by message ---------------------------------------------------------


async def test_a_message_on_an_idle_uplink_takes_transmission_then_propagation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = network(2, Bandwidth(uplink_mbps=8.0))
    net.endpoint(0).send_nowait(1, bytes(SIZE_BYTES))
    [(at_s, dst, src)] = await run(net)
    assert (dst, src) == (1, 0)
    assert at_s == pytest.approx(TRANSMIT_S + PROPAGATION_S, abs=1e-12)
    assert net.links is not None
    assert net.links.up_busy_s[0] == pytest.approx(TRANSMIT_S, abs=1e-12)


async def test_back_to_back_messages_queue_on_the_uplink_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two messages to one peer, then a broadcast to two: each waits for the one before."""
    net = network(4, Bandwidth(uplink_mbps=8.0))
    sender = net.endpoint(0)
    sender.send_nowait(1, bytes(SIZE_BYTES))
    sender.send_nowait(1, bytes(SIZE_BYTES))
    sender.send_many((2, 3), bytes(SIZE_BYTES))
    log = await run(net)
    assert [dst for _, dst, _ in log] == [1, 1, 2, 3]
    for k, (at_s, _, _) in enumerate(log):
        assert at_s == pytest.approx((k + 1) * TRANSMIT_S + PROPAGATION_S, abs=1e-12)
    assert net.links is not None
    # each message waited for those before it, then for its own transmission: 1+2+3+4 ms
    assert net.links.up_wait_s[0] == pytest.approx(10 * TRANSMIT_S, abs=1e-12)


async def test_a_message_sent_after_the_uplink_drained_does_not_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = network(2, Bandwidth(uplink_mbps=8.0))
    net.endpoint(0).send_nowait(1, bytes(SIZE_BYTES))
    net.call_every(0, 1.0, lambda now_s: net.endpoint(0).send_nowait(1, bytes(SIZE_BYTES)))
    log: Log = []

    def deliver(src: int, data: bytes) -> None:
        log.append((net.now_s, 1, src))

    await net.run({0: lambda s, d: None, 1: deliver}, lambda: len(log) == 2, 10.0)
    assert log[1][0] == pytest.approx(1.0 + TRANSMIT_S + PROPAGATION_S, abs=1e-12)


async def test_downlink_serialises_arrivals_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Three senders reach node 0 at once: its downlink takes them one after the other."""
    net = network(4, Bandwidth(downlink_mbps=8.0))
    for src in (3, 1, 2):
        net.endpoint(src).send_nowait(0, bytes(SIZE_BYTES))
    log = await run(net)
    times = [at_s for at_s, _, _ in log]
    expected = [PROPAGATION_S + k * TRANSMIT_S for k in (1, 2, 3)]
    assert times == pytest.approx(expected, abs=1e-12)
    assert net.links is not None
    assert net.links.down_busy_s[0] == pytest.approx(3 * TRANSMIT_S, abs=1e-12)
    assert net.links.down_messages[0] == 3


async def test_uplink_then_propagation_then_downlink(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = network(2, Bandwidth(uplink_mbps=8.0, downlink_mbps=4.0))
    net.endpoint(0).send_nowait(1, bytes(SIZE_BYTES))
    [(at_s, _, _)] = await run(net)
    assert at_s == pytest.approx(TRANSMIT_S + PROPAGATION_S + 2 * TRANSMIT_S, abs=1e-12)


async def test_per_node_overrides_replace_the_default_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Node 1 has a 2 Mbps uplink, node 2 an unlimited one (no default), node 0 a 1 Mbps
    downlink on top of the default 8."""
    bandwidth = Bandwidth(uplink_mbps=8.0, node_uplink_mbps={1: 2.0}, node_downlink_mbps={0: 1.0})
    net = network(3, bandwidth)
    net.endpoint(0).send_nowait(2, bytes(SIZE_BYTES))
    net.endpoint(1).send_nowait(2, bytes(SIZE_BYTES))
    log = await run(net)
    assert dict((src, at_s) for at_s, _, src in log) == pytest.approx(
        {0: TRANSMIT_S + PROPAGATION_S, 1: 4 * TRANSMIT_S + PROPAGATION_S}, abs=1e-12
    )
    net = network(3, Bandwidth(node_uplink_mbps={1: 2.0}, node_downlink_mbps={0: 1.0}))
    net.endpoint(2).send_nowait(0, bytes(SIZE_BYTES))  # unlimited up, 8 ms down
    net.endpoint(2).send_nowait(1, bytes(SIZE_BYTES))  # unlimited both ways
    log = await run(net)
    assert {dst: at_s for at_s, dst, _ in log} == pytest.approx(
        {0: PROPAGATION_S + 8 * TRANSMIT_S, 1: PROPAGATION_S}, abs=1e-12
    )


class Recording(Scheduler):
    """Constant delays; remembers when each message was said to be sent."""

    def __init__(self) -> None:
        self.send_times_s: list[float] = []

    def delay_s(self, meta: MessageMeta, u: float) -> float:
        self.send_times_s.append(meta.send_time_s)
        return PROPAGATION_S


async def test_the_scheduler_is_asked_as_of_when_the_message_leaves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A custom scheduler sees each message's departure as its send time, and a partition
    holds only what leaves before it heals."""
    scheduler = Recording()
    net = network(3, Bandwidth(uplink_mbps=8.0), scheduler)
    net.endpoint(0).send_many((1, 2), bytes(SIZE_BYTES))
    await run(net)
    assert scheduler.send_times_s == pytest.approx([TRANSMIT_S, 2 * TRANSMIT_S], abs=1e-12)
    # a partition that heals while the second copy is still queued holds the first only
    heal_s = 1.5 * TRANSMIT_S
    partitioned = DefaultScheduler(
        link_delay=Constant(PROPAGATION_S), partitions=[Partition([{0}], 0.0, heal_s)]
    )
    net = network(3, Bandwidth(uplink_mbps=8.0), partitioned)
    net.endpoint(0).send_many((1, 2), bytes(SIZE_BYTES))
    log = await run(net)
    assert [at_s for at_s, _, _ in log] == pytest.approx(
        [heal_s + PROPAGATION_S, 2 * TRANSMIT_S + PROPAGATION_S], abs=1e-12
    )


async def test_unlimited_bandwidth_is_no_bandwidth(autojump_clock: trio.testing.MockClock) -> None:
    digests = []
    for bandwidth in (None, Bandwidth()):
        net = VirtualNetwork(4, 3, DefaultScheduler(), bandwidth=bandwidth)
        assert net.links is None
        for src in range(4):
            net.endpoint(src).send_many([d for d in range(4) if d != src], b"x" * 100)
        await run(net)
        digests.append(net.trace_digest())
    assert digests[0] == digests[1]


# --- the broadcast model -------------------------------------------------------------------


def test_the_modelled_broadcast_charges_the_origins_uplink_for_n_minus_1_copies() -> None:
    """Constant delays d, 8 Mbps uplinks, n = 4: the origin's SENDs leave 1, 2, 3 ms after
    it broadcasts; its uplink is booked for them, then for every voter's ECHOs and READYs."""
    n, payload = 4, 4000
    transmit_s = payload * 8 / 8e6
    links = LinkQueues(n, Bandwidth(uplink_mbps=8.0))
    model = BroadcastModel(
        n, 1, 0, DefaultScheduler(link_delay=Constant(PROPAGATION_S)), lambda: np.arange(n)
    )
    unlimited = model.deliveries(InstanceId(1, Tag(0, 0, 0, 0)), payload, 0.0)
    planned = model.deliveries(InstanceId(1, Tag(0, 0, 0, 0)), payload, 0.0, links)
    assert (planned.deliver_at_s > unlimited.deliver_at_s + transmit_s).all()
    np.testing.assert_allclose(links.up_busy_s, planned.bytes_sent * 8 / 8e6, atol=1e-12)
    assert links.up_messages.tolist() == [6, 9, 6, 6]  # 3 ECHOs + 3 READYs each, 3 SENDs


# --- whole runs ----------------------------------------------------------------------------


def scenario(fidelity: str, seed: int = 0, steps: int = 4, **network: Any) -> Scenario:
    """n = 7, f = 2, the digits MLP (some 25 kB per vector), no attack."""
    return Scenario.from_dict(
        {
            "name": "links",
            "n": 7,
            "f": 2,
            "steps": steps,
            "task": "digits-mlp",
            "eval_every": steps,
            "seed": seed,
            "fidelity": fidelity,
            "protocol": {"crypto": False},
            "network": {
                "link_delay": {"model": "lognormal", "median_s": 0.01, "sigma": 0.5},
                **network,
            },
            "byzantine": {"nodes": [5, 6], "strategy": "none"},
        }
    )


def virtual_s(fidelity: str, seed: int, **network: Any) -> float:
    summary = run_scenario(scenario(fidelity, seed, **network), None, progress=False)
    assert summary.completed, f"{fidelity}, seed {seed}, {network}"
    return summary.virtual_seconds


def test_bandwidth_slows_a_broadcast_fidelity_run_as_it_does_a_full_one() -> None:
    """5 Mbps uplinks make the run 3.5x longer at both fidelities. Measured over seeds 0-7:
    broadcast / full virtual time 0.988-0.996 with limited uplinks, 0.939-0.965 with
    limited uplinks and downlinks (the model queues payloads at a downlink in the order
    broadcasts are modelled, and votes behind them without holding it)."""
    for seed in (0,):
        unlimited = virtual_s("broadcast", seed)
        modelled = virtual_s("broadcast", seed, bandwidth_mbps=5.0)
        full = virtual_s("full", seed, bandwidth_mbps=5.0)
        assert modelled > 3 * unlimited, f"seed {seed}"
        assert modelled == pytest.approx(full, rel=0.04), f"seed {seed}"
    modelled = virtual_s("broadcast", 0, bandwidth_mbps=5.0, downlink_mbps=5.0)
    full = virtual_s("full", 0, bandwidth_mbps=5.0, downlink_mbps=5.0)
    assert modelled == pytest.approx(full, rel=0.10), "seed 0"


@pytest.mark.parametrize("fidelity", ["full", "broadcast"])
def test_the_summary_reports_what_the_links_cost(fidelity: str) -> None:
    """An uplink's busy time is the bytes it sent x 8 / its rate; node 2's 1 Mbps uplink is
    the honest maximum, and its messages wait far longer than the others'."""
    rate = {node: 5e6 for node in range(7)} | {2: 1e6}
    summary = run_scenario(
        scenario(fidelity, bandwidth_mbps=5.0, node_bandwidth_mbps={"2": 1.0}),
        None,
        progress=False,
    )
    bandwidth = summary.bandwidth
    assert bandwidth is not None
    assert bandwidth["uplink_mbps"] == {node: rate[node] / 1e6 for node in range(7)}
    assert bandwidth["downlink_mbps"] == dict.fromkeys(range(7))
    for node in range(7):
        expected_s = summary.bytes_sent[node] * 8 / rate[node]
        assert bandwidth["uplink_busy_s"][node] == pytest.approx(expected_s, rel=1e-9)
        assert bandwidth["downlink_busy_s"][node] == 0.0
    assert bandwidth["honest_uplink_busy_s_max"] == bandwidth["uplink_busy_s"][2]
    honest = [bandwidth["uplink_busy_s"][node] for node in summary.honest]
    assert bandwidth["honest_uplink_busy_s_mean"] == pytest.approx(sum(honest) / len(honest))
    delays = bandwidth["uplink_delay_s"]
    assert delays[2] > 5 * max(delays[node] for node in (0, 1, 3, 4))
    data = summary.to_json()["bandwidth"]
    assert data["uplink_mbps"]["2"] == 1.0 and data["honest_uplink_delay_s_max"] == delays[2]
    table = results_table(summary)
    assert "bandwidth: uplink 5 Mbps (node 2: 1 Mbps), downlink unlimited" in table
    assert "honest uplinks: busy" in table and "honest downlinks" not in table


def test_downlink_figures_at_full_fidelity() -> None:
    """A downlink's busy time is the bytes it received x 8 / its rate."""
    from sim.engine import Simulation

    simulation = Simulation(scenario("full", downlink_mbps=5.0))
    outcome = trio.run(simulation.run, clock=trio.testing.MockClock(autojump_threshold=0))
    assert outcome.completed
    links = simulation.network.links
    assert links is not None
    for node in range(7):
        received = simulation.network.endpoint(node).statistics().bytes_received
        # (a Finished message may still be on its way when the run stops)
        assert links.down_busy_s[node] == pytest.approx(received * 8 / 5e6, rel=1e-4)
        assert links.down_busy_s[node] >= received * 8 / 5e6 - 1e-12
        assert links.up_busy_s[node] == 0.0


def test_same_seed_same_digest_with_bandwidth() -> None:
    for fidelity in ("full", "broadcast"):
        limited = {"bandwidth_mbps": 5.0, "downlink_mbps": 8.0, "node_bandwidth_mbps": {"2": 1.0}}
        runs = [
            run_scenario(scenario(fidelity, steps=2, **limited), None, progress=False)
            for _ in range(2)
        ]
        assert runs[0].trace_digest == runs[1].trace_digest, f"{fidelity}, seed 0"
        unlimited = run_scenario(scenario(fidelity, steps=2), None, progress=False)
        assert unlimited.trace_digest != runs[0].trace_digest, f"{fidelity}, seed 0"


def test_without_bandwidth_the_summary_says_null_and_the_keys_round_trip() -> None:
    summary: Summary = run_scenario(scenario("broadcast"), None, progress=False)
    assert summary.bandwidth is None and summary.to_json()["bandwidth"] is None
    assert "uplink" not in results_table(summary)
    limited = scenario("broadcast", bandwidth_mbps=5.0, node_downlink_mbps={"3": 2.0})
    assert Scenario.from_dict(limited.to_dict()) == limited
    assert limited.network.bandwidth == Bandwidth(uplink_mbps=5.0, node_downlink_mbps={3: 2.0})
    assert "bandwidth_mbps" not in limited.network.scheduler_params


class Fixed(Scheduler):
    """A custom scheduler whose constructor takes only its own settings."""

    def __init__(self, delay_s: float = 0.01) -> None:
        self.fixed_delay_s = delay_s

    def delay_s(self, meta: MessageMeta, u: float) -> float:
        return self.fixed_delay_s


def test_custom_schedulers_get_bandwidth_too() -> None:
    """The bandwidth keys are the network's: a custom scheduler is built without them, and
    its messages still queue on 0.1 Mbps uplinks."""
    base = {
        "name": "custom",
        "n": 4,
        "f": 1,
        "steps": 2,
        "task": "synthetic",
        "eval_every": 2,
        "protocol": {"crypto": False},
    }
    network = {"scheduler": f"{__name__}:Fixed", "delay_s": 0.01}
    free = Scenario.from_dict({**base, "network": network})
    slow = Scenario.from_dict({**base, "network": {**network, "bandwidth_mbps": 0.1}})
    assert slow.network.scheduler_params == {"delay_s": 0.01}
    free_s = run_scenario(free, None, progress=False).virtual_seconds
    summary = run_scenario(slow, None, progress=False)
    assert summary.virtual_seconds > 2 * free_s
    assert summary.bandwidth is not None
    assert summary.bandwidth["uplink_busy_s"][0] == pytest.approx(
        summary.bytes_sent[0] * 8 / 0.1e6, rel=1e-9
    )


@pytest.mark.parametrize(
    ("network", "complaint"),
    [
        (
            {"bandwidth_mbps": -1},
            "[network] bandwidth_mbps: expected a positive finite number of megabits/s, got -1",
        ),
        ({"bandwidth_mbps": 0}, "[network] bandwidth_mbps: expected a positive finite"),
        ({"bandwidth_mbps": math.inf}, "[network] bandwidth_mbps: expected a positive finite"),
        ({"downlink_mbps": "fast"}, "[network] downlink_mbps: expected a positive finite"),
        ({"downlink_mbps": True}, "[network] downlink_mbps: expected a positive finite"),
        ({"node_bandwidth_mbps": {"9": 1.0}}, "[network] node_bandwidth_mbps: no node '9' (n=4)"),
        ({"node_bandwidth_mbps": {"x": 1.0}}, "[network] node_bandwidth_mbps: no node 'x' (n=4)"),
        (
            {"node_downlink_mbps": {"1": math.nan}},
            "[network] node_downlink_mbps.1: expected a positive finite number",
        ),
        (
            {"node_bandwidth_mbps": 5},
            "[network] node_bandwidth_mbps: expected a table node id -> megabits/s, got 5",
        ),
    ],
)
def test_bad_bandwidth_settings_are_refused_one_line_each(
    network: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ScenarioError) as caught:
        Scenario.from_dict({"n": 4, "f": 1, "network": network})
    assert len(caught.value.problems) == 1, caught.value.problems
    assert caught.value.problems[0].startswith(complaint), caught.value.problems


def test_bandwidth_refuses_bad_values_in_python_too() -> None:
    with pytest.raises(ValueError, match="bandwidth_mbps: expected a positive finite"):
        Bandwidth(uplink_mbps=-2.0)
    with pytest.raises(ValueError, match="no node 5 \\(n=4\\)"):
        LinkQueues(4, Bandwidth(node_uplink_mbps={5: 1.0}))
