"""Averaging agreement: contraction, validity, the witness step's necessity, bounds."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.agreement import AveragingAgreement, _Round
from protocol.codec import encode, peek
from protocol.core import GradientSchedule, NodeCore, RoundSchedule
from protocol.messages import InstanceId, Ready, Tag
from protocol.step import FaultKind
from tests.byzantine import Equivocate, Silent, behaviour_by_name, fixed_value
from tests.cluster import Adversary, Cluster, Deferring, InFlight, RandomDelays, honest_diameter

ROUNDS = 5
SYSTEMS = [(4, 1), (7, 2), (10, 3), (13, 4)]


def schedule(rounds: int = ROUNDS) -> RoundSchedule:
    return RoundSchedule(GradientSchedule.CONSTANT, gradient_rounds=rounds)


def diameters(cluster: Cluster, rounds: int) -> list[float]:
    """Honest diameter at the start of each round, then of the decisions."""
    per_round = [
        honest_diameter(cluster.nodes[i].rounds[(0, 0)][r] for i in cluster.honest)
        for r in range(rounds)
    ]
    return [*per_round, honest_diameter(cluster.nodes[i].decided[(0, 0)] for i in cluster.honest)]


def attacked_cluster(n: int, f: int, seed: int, dim: int = 6) -> tuple[Cluster, np.ndarray]:
    rng = np.random.default_rng(seed)
    byz_ids = sorted(random.Random(seed).sample(range(n), f))
    # the strongest value attack: pull every Byzantine vector to one far extreme
    behaviours = {i: fixed_value(1e6 if k % 2 else -1e6) for k, i in enumerate(byz_ids)}
    if f >= 2:
        behaviours[byz_ids[0]] = Equivocate()
    cluster = Cluster(
        n, f, dim=dim, adversary=RandomDelays(seed), behaviours=behaviours, schedule=schedule()
    )
    inputs = rng.standard_normal((n, dim)).astype(np.float32) * 10
    cluster.propose(0, 0, {i: inputs[i] for i in range(n)})
    cluster.run()
    return cluster, inputs


@pytest.mark.parametrize(("n", "f"), SYSTEMS)
def test_diameter_shrinks_and_outputs_stay_in_the_honest_range(n: int, f: int) -> None:
    for seed in range(10):
        cluster, inputs = attacked_cluster(n, f, seed)
        honest_inputs = inputs[cluster.honest]
        lo, hi = honest_inputs.min(axis=0), honest_inputs.max(axis=0)
        diams = diameters(cluster, ROUNDS)
        for r in range(ROUNDS):
            assert diams[r + 1] < diams[r] or diams[r + 1] == 0.0, (seed, diams)
        for i in cluster.honest:
            for vector in [*cluster.nodes[i].rounds[(0, 0)], cluster.nodes[i].decided[(0, 0)]]:
                assert np.all(vector >= lo) and np.all(vector <= hi), (n, f, seed)
        assert cluster.accused() <= set(cluster.byzantine), seed


@pytest.mark.parametrize("extreme", [1e6, -1e6])
@pytest.mark.parametrize(("n", "f"), SYSTEMS)
def test_f_byzantine_vectors_at_one_extreme_are_all_trimmed(n: int, f: int, extreme: float) -> None:
    """All f Byzantine nodes on one side, none equivocating: a node that holds all their
    vectors (most do, in most rounds) keeps the honest range only if it trims f values
    per side, not f-1 (the alternating attack above puts at most f-1 on a side)."""
    rounds = 3
    for seed in range(3):
        rng = np.random.default_rng(seed)
        byzantine = sorted(random.Random(seed).sample(range(n), f))
        cluster = Cluster(
            n,
            f,
            dim=6,
            adversary=RandomDelays(seed),
            behaviours={i: fixed_value(extreme) for i in byzantine},
            schedule=schedule(rounds),
        )
        inputs = rng.standard_normal((n, 6)).astype(np.float32) * 10
        cluster.propose(0, 0, {i: inputs[i] for i in range(n)})
        cluster.run()
        honest_inputs = inputs[cluster.honest]
        lo, hi = honest_inputs.min(axis=0), honest_inputs.max(axis=0)
        held_all = 0
        for i in cluster.honest:
            node = cluster.nodes[i]
            agreement = node.core.agreement(0, 0)
            assert agreement is not None
            held_all += sum(set(byzantine) <= set(agreement.held(r)) for r in range(rounds))
            for vector in [*node.rounds[(0, 0)], node.decided[(0, 0)]]:
                assert np.all(vector >= lo) and np.all(vector <= hi), (n, f, extreme, seed)
        assert held_all > 0, f"seed {seed}: no honest node ever held every Byzantine vector"


def test_every_bad_vector_is_dropped_identically_and_accused() -> None:
    n, f = 7, 2
    behaviours = {5: behaviour_by_name("wrong_length", 5), 6: behaviour_by_name("non_finite", 6)}
    cluster = Cluster(n, f, adversary=Adversary(3), behaviours=behaviours, schedule=schedule(2))
    cluster.propose(0, 0, {i: np.full(4, float(i), np.float32) for i in range(n)})
    cluster.run()
    for i in cluster.honest:
        agreement = cluster.nodes[i].core.agreement(0, 0)
        assert agreement is not None
        assert set(agreement.held(0)) == set(cluster.honest)
        kinds = {(fault.kind, fault.accused) for fault in cluster.nodes[i].faults}
        assert (FaultKind.BAD_VECTOR, 5) in kinds and (FaultKind.BAD_VECTOR, 6) in kinds
    decided = [cluster.nodes[i].decided[(0, 0)] for i in cluster.honest]
    assert honest_diameter(decided) == 0.0  # every honest node held exactly the honest five


class NaiveAgreement(AveragingAgreement):
    """The broken variant: aggregate the first n-f vectors delivered, no witnesses."""

    def _vectors_to_aggregate(self, state: _Round) -> list[np.ndarray] | None:
        quorum = self._params.witness_quorum
        if len(state.held) < quorum:
            return None
        return list(state.held.values())[:quorum]  # in delivery order


class NaiveCore(NodeCore):
    agreement_class = NaiveAgreement


class KeepApart(Deferring):
    """Holds origin 2's vectors from nodes 0 and 1, and origin 1's from node 2. Honest
    nodes 0, 1 start at 0, node 2 at 1, and the Byzantine node 3 always proposes 1."""

    held_back = {(2, 0), (2, 1), (1, 2)}  # (origin, destination)

    def defer(self, item: InFlight) -> bool:
        _, tag = peek(item.data)
        return bool(tag) and tag[4] == 0 and (tag[0], item.dst) in self.held_back

    def release(self, late: list[InFlight]) -> int:
        # Release the vectors kept from group {0, 1} first: node 2 needs their echoes for
        # its own vector, while 0 and 1 have already aggregated without node 2's.
        return min(range(len(late)), key=lambda k: (late[k].dst == 2, k))


def split_run(core_factory: type[NodeCore], rounds: int = 8) -> list[float]:
    cluster = Cluster(
        4,
        1,
        dim=1,
        adversary=KeepApart(0),
        behaviours={3: fixed_value(1.0)},
        schedule=schedule(rounds),
        core_factory=core_factory,
    )
    start = {0: 0.0, 1: 0.0, 2: 1.0, 3: 1.0}
    cluster.propose(0, 0, {i: np.full(1, v, np.float32) for i, v in start.items()})
    cluster.run()
    return diameters(cluster, rounds)


def test_without_witnesses_a_scheduler_keeps_two_honest_groups_apart_forever() -> None:
    diams = split_run(NaiveCore)
    assert diams == [1.0] * len(diams)  # never moves


def test_with_witnesses_the_same_scheduler_cannot() -> None:
    diams = split_run(NodeCore)
    assert diams[0] == 1.0
    for before, after in itertools.pairwise(diams):
        assert after < before or after == 0.0
    assert diams[-1] < 0.01


@pytest.mark.parametrize("steps_total", [None, 100])
def test_far_ahead_tags_are_dropped_and_nothing_is_buffered(steps_total: int | None) -> None:
    """A step beyond the window is what a slow node sees from faster honest peers: dropped
    and counted, not a fault. Past the run's last step (when known) no honest node goes:
    that is a fault."""
    behaviours = {3: behaviour_by_name("far_ahead", 0)}
    cluster = Cluster(4, 1, behaviours=behaviours, schedule=schedule(1), steps_total=steps_total)
    cluster.propose(0, 0, {i: np.zeros(4, np.float32) for i in range(4)})
    cluster.run()
    for i in cluster.honest:
        stats = cluster.nodes[i].core.statistics()
        if steps_total is None:
            assert not stats.faults and stats.far_ahead == {3: pytest.approx(10, abs=10)}
        else:
            assert stats.faults[FaultKind.FAR_AHEAD.value] == {3: pytest.approx(10, abs=10)}
        assert cluster.nodes[i].core.agreement(1000, 0) is None
        assert stats.live_instances == 1


def test_retired_instances_free_their_payloads_and_late_messages_are_stale() -> None:
    n, f = 4, 1
    cluster = Cluster(n, f, schedule=schedule(1))
    cluster.propose(0, 0, {i: np.zeros(4, np.float32) for i in range(n)})
    cluster.run()
    core = cluster.nodes[0].core
    agreement = core.agreement(0, 0)
    assert agreement is not None and agreement.deliveries()
    core.advance_to(0 + core.config.steps_retained + 1)
    assert core.agreement(0, 0) is None
    assert not agreement.deliveries()  # payloads dropped
    late = encode(Ready(InstanceId(1, Tag(0, 0, 0, 0)), b"\0" * 32))
    assert not core.receive(1, late)
    assert core.statistics().stale_messages == 1


def test_silent_byzantine_nodes_do_not_block_progress() -> None:
    n, f = 10, 3
    cluster = Cluster(n, f, adversary=RandomDelays(1), behaviours={i: Silent() for i in (1, 4, 7)})
    cluster.propose(0, 0, {i: np.full(4, float(i), np.float32) for i in range(n)})
    cluster.run()
    assert all((0, 0) in cluster.nodes[i].decided for i in cluster.honest)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_witnesses_are_counted_as_a_recount_from_scratch_would(data: st.DataObject) -> None:
    """Vectors and REPORTs arriving in any order: the incremental witness count (bit
    masks, per-origin waiting lists) always equals counting the covered reports anew."""
    n = data.draw(st.integers(1, 200), label="n")
    events = data.draw(
        st.lists(
            st.one_of(
                st.tuples(st.just("hold"), st.integers(0, n - 1)),
                st.tuples(
                    st.just("report"),
                    st.integers(0, n - 1),
                    st.frozensets(st.integers(0, n - 1), min_size=1),
                ),
            ),
            max_size=60,
        ),
        label="events",
    )
    state = _Round()
    vector = np.zeros(1, dtype=np.float32)
    for event in events:
        if event[0] == "hold":
            if event[1] not in state.held:
                state.hold(event[1], vector)
        elif event[1] not in state.reports:
            state.add_report(event[1], event[2])
        recount = sum(report <= state.held.keys() for report in state.reports.values())
        assert state.witnesses == recount
