"""Crash-stop faults in the simulator: the network's side and the engine's.

A crashed node is gone for good: its timers stop, what reaches it is discarded (messages
and modelled broadcasts alike, including those already in flight when it crashed), what
it tries to send is dropped, and the engine stops its runner and leaves it out of the
voters of modelled broadcasts. The strategy of a crashing node also goes quiet on its
own (sim/strategies_protocol.py, ``Crash.outgoing``), so these tests look at what the
network and the runners did, not at whether the honest nodes got by.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from protocol.messages import InstanceId, Tag
from sim.engine import Simulation
from sim.network import VirtualNetwork
from sim.scenario import Scenario
from sim.schedulers import DefaultScheduler

IID = InstanceId(0, Tag(0, 0, 0, 0))


def modelled_log(
    network: VirtualNetwork, log: list[tuple[float, int]]
) -> dict[int, Callable[[InstanceId, bytes], None]]:
    def handler(dst: int) -> Callable[[InstanceId, bytes], None]:
        return lambda iid, payload: log.append((network.now_s, dst))

    return {node: handler(node) for node in range(network.n)}


def idle(n: int) -> dict[int, Callable[[int, bytes], None]]:
    return {node: lambda src, data: None for node in range(n)}


async def test_a_modelled_broadcast_is_discarded_at_a_crashed_node(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = VirtualNetwork(3, 0, DefaultScheduler())
    network.crash(2)
    at_s = np.array([0.1, 0.2, 0.3])
    network.schedule_broadcast(IID, b"payload", at_s, np.zeros(3, dtype=np.int64))
    log: list[tuple[float, int]] = []
    await network.run(idle(3), lambda: False, 1.0, deliver_broadcast=modelled_log(network, log))
    assert log == [(0.1, 0), (0.2, 1)]
    assert network.statistics().messages_discarded == 1


async def test_what_is_in_flight_to_a_node_that_crashes_is_discarded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Messages and modelled broadcasts sent while the node was alive, arriving after
    it crashed: none reaches it; the others still get theirs."""
    network = VirtualNetwork(3, 0, DefaultScheduler())
    at_s = np.array([0.1, 0.5, 0.3])
    network.schedule_broadcast(IID, b"payload", at_s, np.zeros(3, dtype=np.int64))
    network.endpoint(0).send_nowait(1, b"late")  # the default delay: 10 ms
    network.call_every(0, 0.25, lambda now_s: network.crash(1), start_s=0.005)
    log: list[tuple[float, int]] = []
    received: list[int] = []
    handlers = idle(3)
    handlers[1] = lambda src, data: received.append(src)
    await network.run(handlers, lambda: False, 1.0, deliver_broadcast=modelled_log(network, log))
    assert log == [(0.1, 0), (0.3, 2)] and received == []
    assert network.statistics().messages_discarded == 2


async def test_a_node_crashing_in_its_own_handler_stops_its_timers_and_sends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = VirtualNetwork(3, 0, DefaultScheduler())
    fired: list[float] = []
    network.call_every(1, 0.1, fired.append, start_s=0.0)
    network.call_every(2, 0.1, lambda now_s: None, start_s=0.0)

    def deliver(src: int, data: bytes) -> None:  # node 1 crashes on its message
        network.crash(1)
        network.endpoint(1).send_many([0, 2], b"after")

    network.endpoint(0).send_nowait(1, b"crash now")
    handlers = idle(3)
    handlers[1] = deliver
    await network.run(handlers, lambda: False, 0.5)
    assert fired == [0.0]  # the message came at 10 ms: no firing after it
    stats = network.statistics()
    assert stats.timer_firings == 1 + 6  # node 2's timer: 0.0 .. 0.5
    assert network.endpoint(1).statistics().messages_dropped == 2
    assert network.endpoint(0).statistics().messages_received == 0
    assert network.endpoint(2).statistics().messages_received == 0


def scenario(fidelity: str, **values: Any) -> Scenario:
    """n=7, f=2, the synthetic task, 2 steps; nodes 5 and 6 crashed from the start."""
    crash = {"name": "crash", "at_step": 0}
    base: dict[str, Any] = {
        "name": "crash",
        "n": 7,
        "f": 2,
        "steps": 2,
        "task": "synthetic",
        "eval_every": 2,
        "fidelity": fidelity,
        "protocol": {"crypto": False},
        "network": {"link_delay": {"model": "lognormal", "median_s": 0.01, "sigma": 0.8}},
        "byzantine": {"per_node": {"5": crash, "6": crash}},
    }
    return Scenario.from_dict(base).with_values(values)


@pytest.mark.parametrize("fidelity", ["full", "broadcast"])
def test_nodes_crashed_from_the_start_take_no_part(fidelity: str) -> None:
    """The honest five finish on their own (n-f of 7); the two crashed nodes were never
    started, are stopped, took nothing in and sent nothing, and every message or modelled
    broadcast for them was discarded."""
    simulation = Simulation(scenario(fidelity).with_seed(3))
    try:
        outcome = trio.run(simulation.run, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        simulation.log.close()
    assert outcome.completed, f"seed 3: {outcome.reason}"
    assert all(simulation.runners[i].done for i in range(5)), "seed 3"
    for node in (5, 6):
        runner = simulation.runners[node]
        assert runner.stopped and not runner.started, f"seed 3: node {node}"
        assert runner.statistics().messages_in == 0, f"seed 3: node {node}"
        stats = simulation.network.endpoint(node).statistics()
        assert stats.messages_sent == stats.messages_received == 0, f"seed 3: node {node}"
    assert list(simulation._voters()) == [0, 1, 2, 3, 4], "seed 3"
    # every honest broadcast reached both crashed nodes, and was discarded there
    discarded = simulation.network.statistics().messages_discarded
    # at least: 2 crashed nodes x 5 origins x (a VECTOR and a REPORT) x 2 steps
    assert discarded >= 2 * 5 * 2 * 2, f"seed 3: {discarded}"
