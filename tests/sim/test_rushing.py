"""The rushing adversary: an omniscient attacker holds its vector of a round until it has
seen the honest vectors it waits for (``wait_for``), and that never deadlocks a round."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytest

from protocol.codec import encode
from protocol.core import GradientSchedule, NodeCore, ProtocolConfig, RoundSchedule
from protocol.crypto import UnsignedScheme
from protocol.step import Decided, RoundStarted, Step
from sim.engine import run_scenario
from sim.scenario import Scenario
from sim.strategies_learning import ALIE
from tests.cluster import SESSION
from tests.sim.strategy_helpers import make_ctx

RANDOM_DELAYS = {"link_delay": {"model": "lognormal", "median_s": 0.02, "sigma": 0.8}}


@dataclass(kw_only=True)
class CountingALIE(ALIE):
    """ALIE that records how many honest vectors it saw each time it attacked."""

    name = "counting_alie"
    seen: ClassVar[list[int]] = []

    def attack(self, step: int, phase: int, round_: int, vector: np.ndarray) -> np.ndarray:
        CountingALIE.seen.append(len(self.ctx.honest_vectors(step, phase, round_)))
        return super().attack(step, phase, round_, vector)


@pytest.fixture
def seen() -> Iterator[list[int]]:
    CountingALIE.seen = []
    yield CountingALIE.seen
    CountingALIE.seen = []


def scenario(fidelity: str, wait_for: str, **values: Any) -> Scenario:
    """n=7, f=2, both Byzantine nodes running ALIE with ``wait_for``; one slow honest node."""
    base: dict[str, Any] = {
        "name": "rushing",
        "n": 7,
        "f": 2,
        "steps": 4,
        "task": "synthetic",
        "eval_every": 2,
        "fidelity": fidelity,
        "protocol": {"crypto": False},
        "network": {**RANDOM_DELAYS, "slow_nodes": {"1": 5.0}},
        "byzantine": {
            "nodes": [5, 6],
            "strategy": {"name": "tests.sim.test_rushing:CountingALIE", "wait_for": wait_for},
        },
    }
    return Scenario.from_dict(base).with_values(values)


@pytest.mark.parametrize("fidelity", ["full", "broadcast"])
def test_a_rushing_attacker_sees_every_honest_vector_before_it_sends(
    fidelity: str, seen: list[int]
) -> None:
    summary = run_scenario(scenario(fidelity, "all"), None, seed=3, progress=False)
    assert summary.completed, f"seed 3: {summary.stop_reason}"
    assert seen, "the attack never ran"
    assert set(seen) == {5}, f"seed 3: saw {sorted(set(seen))} honest vectors, not all 5"


@pytest.mark.parametrize("fidelity", ["full", "broadcast"])
def test_quorum_waits_for_n_minus_2f_and_none_does_not_wait(fidelity: str, seen: list[int]) -> None:
    summary = run_scenario(scenario(fidelity, "quorum"), None, seed=3, progress=False)
    assert summary.completed, f"seed 3: {summary.stop_reason}"
    assert seen and min(seen) >= 7 - 2 * 2, f"seed 3: saw {sorted(set(seen))}"
    seen.clear()
    summary = run_scenario(scenario(fidelity, "none"), None, seed=3, progress=False)
    assert summary.completed, f"seed 3: {summary.stop_reason}"
    assert min(seen) < 5, "seed 3: a non-waiting attacker saw every honest vector every time"


def test_a_rushing_attacker_changes_the_run_and_stays_deterministic(seen: list[int]) -> None:
    rushing = run_scenario(scenario("full", "all"), None, seed=5, progress=False)
    again = run_scenario(scenario("full", "all"), None, seed=5, progress=False)
    eager = run_scenario(scenario("full", "none"), None, seed=5, progress=False)
    assert rushing.trace_digest == again.trace_digest, "seed 5"
    assert rushing.trace_digest != eager.trace_digest, "seed 5"
    honest = {0, 1, 2, 3, 4}
    assert not set(rushing.faults["by_accused"]) & honest, "seed 5: an honest node accused"


def test_an_attacker_waiting_for_an_honest_node_that_jumped_past_stops_waiting() -> None:
    """The host counts only honest nodes that can still enter a round: the context's
    ``honest_expected``; the hold ends when what is known reaches it."""
    honest = {i: np.full(4, float(i), dtype=np.float32) for i in range(3)}
    expected = {"count": 5}
    ctx = make_ctx(n=7, me=6, honest=honest, byzantine=[5, 6])
    ctx = type(ctx)(**{**_fields(ctx), "can_wait": True, "honest_expected": _count(expected)})
    attack = ALIE(wait_for="all")
    attack.bind(ctx)
    own = np.zeros(4, dtype=np.float32)
    assert attack.vector(0, 0, 0, own) is None  # 3 of 5 known
    expected["count"] = 3  # two honest nodes jumped past this round
    assert attack.vector(0, 0, 0, own) is not None


def test_without_a_waiting_host_an_attack_never_holds_back() -> None:
    ctx = make_ctx(n=7, me=6, honest={}, byzantine=[5, 6])  # can_wait False: a real node
    attack = ALIE(wait_for="all")
    attack.bind(ctx)
    assert attack.vector(0, 0, 0, np.ones(4, dtype=np.float32)) is not None


def test_the_core_holds_a_round_back_until_resume_and_honest_nodes_do_not_wait() -> None:
    """n=4, f=1: node 3's filter holds its vector; the three honest nodes decide without
    it, node 3 neither sends nor completes its round, and after resume() it does both."""
    n, f = 4, 1
    release = {"go": False}

    def hold(step: int, phase: int, round_: int, vector: np.ndarray) -> np.ndarray | None:
        return vector if release["go"] else None

    schedule = RoundSchedule(GradientSchedule.CONSTANT, gradient_rounds=1, model_rounds=0)
    cores = [
        NodeCore(
            ProtocolConfig(n=n, f=f, me=i, session=SESSION, dim=2, schedule=schedule),
            UnsignedScheme(),
            hold if i == 3 else None,
        )
        for i in range(n)
    ]
    queue: list[tuple[int, int, bytes]] = []
    decided: dict[int, np.ndarray] = {}
    started: set[int] = set()

    def absorb(src: int, step: Step) -> None:
        for out in step.messages:
            targets = [t for t in range(n) if t != src] if out.to < 0 else [out.to]
            data = encode(out.message)
            queue.extend((src, dst, data) for dst in targets)
        for output in step.outputs:
            if isinstance(output, Decided):
                decided[src] = output.vector
            if isinstance(output, RoundStarted):
                started.add(src)

    for i, core in enumerate(cores):
        absorb(i, core.propose(0, 0, np.array([i, -i], dtype=np.float32)))
    assert cores[3].holding_back and 3 not in started
    while queue:
        src, dst, data = queue.pop(0)
        absorb(dst, cores[dst].receive(src, data))
    assert set(decided) == {0, 1, 2}, "honest nodes waited for the held-back vector"
    assert cores[3].holding_back and 3 not in decided
    release["go"] = True
    absorb(3, cores[3].resume())
    assert not cores[3].holding_back and 3 in started
    while queue:
        src, dst, data = queue.pop(0)
        absorb(dst, cores[dst].receive(src, data))
    assert 3 in decided
    for core in cores[:3]:
        assert not core.statistics().faults, "an honest core charged a fault"


def _fields(ctx: Any) -> dict[str, Any]:
    return {name: getattr(ctx, name) for name in ctx.__dataclass_fields__}


def _count(box: dict[str, int]) -> Any:
    return lambda step, phase, round_: box["count"]
