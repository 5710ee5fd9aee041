"""The agreement's quorums and its witness check, one delivery at a time.

A core with a modelled reliable broadcast (the simulator's broadcast fidelity) takes
deliveries straight from the test: which vectors and REPORTs it holds is the test's to
choose, so each rule of DESIGN 4.2 can be met exactly at its threshold:

* a node REPORTs once it holds ``n-f`` valid vectors, not one vector sooner;
* a REPORT that lists fewer than ``n-f`` origins is a fault and witnesses nothing;
* a reporter is a witness only once every origin its REPORT lists is held here;
* a round completes on the ``n-f``-th witness, not one witness sooner.

The last test checks the same rules on whole clusters under random delays, at the
moment each honest node completes each round.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable

import numpy as np
import pytest

from protocol.agreement import AveragingAgreement, _Round
from protocol.codec import decode_report, encode, encode_array, encode_report
from protocol.core import GradientSchedule, NodeCore, ProtocolConfig, RoundSchedule
from protocol.crypto import UnsignedScheme, digest
from protocol.messages import Echo, InstanceId, Kind, Message, Phase, Ready, Send, Tag
from protocol.step import Broadcast, Decided, FaultKind, Step
from tests.byzantine import Equivocate, Silent, fixed_value
from tests.cluster import SESSION, Behaviour, Cluster, RandomDelays

SYSTEMS = [(4, 1), (7, 2), (10, 3)]
DIM = 3


def modelled_core(n: int, f: int, me: int = 0, rounds: int = 1) -> NodeCore:
    config = ProtocolConfig(
        n=n,
        f=f,
        me=me,
        session=SESSION,
        dim=DIM,
        schedule=RoundSchedule(GradientSchedule.CONSTANT, gradient_rounds=rounds),
    )
    return NodeCore(config, UnsignedScheme(), modelled_broadcast=True)


def iid(origin: int, kind: Kind, round_: int = 0) -> InstanceId:
    return InstanceId(origin, Tag(0, int(Phase.GRADIENT), round_, int(kind)))


def vector_of(origin: int) -> np.ndarray:
    return np.full(DIM, float(origin), dtype=np.float32)


def deliver_vector(core: NodeCore, origin: int) -> Step:
    return core.deliver(iid(origin, Kind.VECTOR), encode_array(vector_of(origin)))


def deliver_report(core: NodeCore, reporter: int, origins: list[int]) -> Step:
    return core.deliver(iid(reporter, Kind.REPORT), encode_report(origins))


def reports_in(step: Step, n: int) -> list[tuple[int, list[int]]]:
    """The REPORTs a step asks the modelled broadcast to send: (origin, listed origins)."""
    return [
        (output.iid.origin, sorted(decode_report(output.payload, n)))
        for output in step.outputs
        if isinstance(output, Broadcast) and output.iid.tag.kind == Kind.REPORT
    ]


def decided(step: Step) -> list[np.ndarray]:
    return [output.vector for output in step.outputs if isinstance(output, Decided)]


def started(n: int, f: int) -> NodeCore:
    core = modelled_core(n, f)
    core.propose(0, Phase.GRADIENT, vector_of(0))
    return core


@pytest.mark.parametrize(("n", "f"), SYSTEMS)
def test_a_node_reports_on_its_n_minus_f_th_valid_vector_and_not_before(n: int, f: int) -> None:
    core = started(n, f)
    bad = core.deliver(iid(n - 1, Kind.VECTOR), encode_array(np.zeros(DIM + 1, np.float32)))
    assert [fault.kind for fault in bad.faults] == [FaultKind.BAD_VECTOR]
    assert not reports_in(bad, n)  # an invalid vector is no vector: it does not count
    for origin in range(n - f - 1):
        assert not reports_in(deliver_vector(core, origin), n), f"REPORT after {origin + 1} vectors"
    step = deliver_vector(core, n - f - 1)
    assert reports_in(step, n) == [(0, list(range(n - f)))]
    assert not reports_in(deliver_vector(core, n - f), n)  # once per round


@pytest.mark.parametrize(("n", "f"), SYSTEMS)
def test_a_report_of_fewer_than_n_minus_f_origins_is_a_fault_and_witnesses_nothing(
    n: int, f: int
) -> None:
    core = started(n, f)
    for origin in range(n):
        deliver_vector(core, origin)
    short = deliver_report(core, 1, list(range(n - f - 1)))
    assert [(fault.kind, fault.accused) for fault in short.faults] == [(FaultKind.BAD_REPORT, 1)]
    # n-f-1 more reporters with full REPORTs: with the short one counted, that would be n-f
    for reporter in range(2, n - f + 1):
        step = deliver_report(core, reporter, list(range(n - f)))
        assert not decided(step), f"decided on the short REPORT of 1 (reporter {reporter})"
    assert decided(deliver_report(core, 0, list(range(n - f))))


@pytest.mark.parametrize(("n", "f"), SYSTEMS)
def test_a_round_completes_on_the_n_minus_f_th_witness_and_not_before(n: int, f: int) -> None:
    core = started(n, f)
    for origin in range(n):
        deliver_vector(core, origin)
    reporters = list(range(n - 1, -1, -1))  # any n-f of them, in any order
    for reporter in reporters[: n - f - 1]:
        assert not decided(deliver_report(core, reporter, list(range(f, n))))
    agreement = core.agreement(0, Phase.GRADIENT)
    assert agreement is not None and not agreement.decided
    assert f"{n - f - 1} of {n - f} witnesses" in agreement.waiting_for()
    (decision,) = decided(deliver_report(core, reporters[n - f - 1], list(range(f, n))))
    # every held vector is aggregated: the trimmed mean of 0..n-1 drops f from each end
    np.testing.assert_array_equal(decision, np.full(DIM, (n - 1) / 2, np.float32))


@pytest.mark.parametrize(("n", "f"), [(7, 2), (10, 3)])
def test_a_reporter_is_no_witness_until_every_origin_it_lists_is_held(n: int, f: int) -> None:
    """Every REPORT lists the f origins this node does not hold yet: none is a witness
    until the last of them arrives, though n-f REPORTs and n-f vectors are there."""
    core = started(n, f)
    held, missing = list(range(n - f)), list(range(n - f, n))
    for origin in held:
        deliver_vector(core, origin)
    listed = [*held[f:], *missing]  # n-f origins, f of them not held
    for reporter in range(n):
        assert not decided(deliver_report(core, reporter, listed)), f"reporter {reporter}"
    agreement = core.agreement(0, Phase.GRADIENT)
    assert agreement is not None
    assert f"0 of {n - f} witnesses" in agreement.waiting_for()
    for origin in missing[:-1]:
        assert not decided(deliver_vector(core, origin)), f"decided with {missing[-1]} missing"
    (decision,) = decided(deliver_vector(core, missing[-1]))
    np.testing.assert_array_equal(decision, np.full(DIM, (n - 1) / 2, np.float32))


def test_the_witness_count_follows_each_report_and_each_held_origin() -> None:
    """The incremental count by hand: a REPORT lacking k origins turns into a witness on
    the k-th of them, a REPORT lacking none at once, and each reporter counts once."""
    state = _Round()
    vector = np.zeros(1, dtype=np.float32)
    state.hold(0, vector)
    state.add_report(10, frozenset({0}))
    assert state.witnesses == 1  # covered at once
    state.add_report(11, frozenset({0, 1, 2}))
    state.add_report(12, frozenset({1}))
    assert state.witnesses == 1  # 11 lacks 1 and 2, 12 lacks 1
    state.hold(1, vector)
    assert state.witnesses == 2  # 12 is covered, 11 still lacks 2
    state.hold(3, vector)
    assert state.witnesses == 2  # 3 is listed by nobody
    state.hold(2, vector)
    assert state.witnesses == 3
    state.add_report(13, frozenset({3, 4}))
    state.hold(5, vector)
    assert state.witnesses == 3
    state.hold(4, vector)
    assert state.witnesses == 4
    assert state.witnesses == sum(r <= state.held.keys() for r in state.reports.values())


class _Completions:
    """Each honest completion of a round, as the round's state stood at that moment."""

    def __init__(self) -> None:
        self.records: list[tuple[int, int, frozenset[int], list[frozenset[int]]]] = []

    def core_class(self) -> type[NodeCore]:
        records = self.records

        class Recording(AveragingAgreement):
            def _vectors_to_aggregate(self, state: _Round) -> list[np.ndarray] | None:
                vectors = super()._vectors_to_aggregate(state)
                if vectors is not None:
                    me = self._params.broadcast.me
                    reports = list(state.reports.values())
                    records.append((me, self.current_round or 0, frozenset(state.held), reports))
                return vectors

        class RecordingCore(NodeCore):
            agreement_class = Recording

        return RecordingCore


@pytest.mark.parametrize(("n", "f"), SYSTEMS)
def test_every_honest_round_completes_on_n_minus_f_covered_reports(n: int, f: int) -> None:
    """Under random delays, with equivocating, lying and silent nodes: whenever an honest
    node completes a round, n-f REPORTs it holds are covered by the vectors it holds,
    every REPORT it accepted lists n-f origins, and any two honest nodes aggregated
    sets that share n-f vectors (the witness step's guarantee)."""
    rounds = 3
    for seed in range(3):
        completions = _Completions()
        byzantine = sorted(random.Random(seed).sample(range(n), f))
        behaviours = {i: fixed_value(1e6 * (-1) ** k) for k, i in enumerate(byzantine)}
        behaviours[byzantine[0]] = Equivocate()
        if f >= 2:
            behaviours[byzantine[1]] = Silent()
        cluster = Cluster(
            n,
            f,
            dim=DIM,
            adversary=RandomDelays(seed),
            behaviours=behaviours,
            schedule=RoundSchedule(GradientSchedule.CONSTANT, gradient_rounds=rounds),
            core_factory=completions.core_class(),
        )
        rng = np.random.default_rng(seed)
        cluster.propose(0, 0, {i: rng.standard_normal(DIM).astype(np.float32) for i in range(n)})
        cluster.run()
        where = f"n={n} f={f} seed={seed}"
        sets: dict[int, dict[int, frozenset[int]]] = {}
        for me, round_, held, reports in completions.records:
            if me not in cluster.honest:
                continue
            assert me not in sets.get(round_, {}), f"{where}: node {me} completed {round_} twice"
            sets.setdefault(round_, {})[me] = held
            covered = [report for report in reports if report <= held]
            assert len(covered) >= n - f, f"{where}: node {me} round {round_}: {len(covered)}"
            assert all(len(report) >= n - f for report in reports), f"{where}: short REPORT"
            assert len(held) >= n - f, where
        assert sorted(sets) == list(range(rounds)), where
        for round_, by_node in sets.items():
            assert sorted(by_node) == cluster.honest, f"{where}: round {round_}"
            for a, b in itertools.combinations(by_node.values(), 2):
                assert len(a & b) >= n - f, f"{where}: round {round_}: {sorted(a)} {sorted(b)}"


class ShortReports(Behaviour):
    """Every REPORT of its own lists one origin fewer, validly signed, and its ECHO and
    READY vouch for that one: the same to everyone (no equivocation), just a REPORT below
    the n-f origins it must list."""

    def __init__(self) -> None:
        super().__init__()
        self._sends: dict[InstanceId, Send] = {}

    def outgoing(self, dst: int, message: Message, data: bytes) -> Iterable[bytes]:
        node = self.node
        assert node is not None
        iid = message.iid
        if iid.tag.kind != Kind.REPORT or iid.origin != node.me:
            return (data,)
        if isinstance(message, Send):
            short = self._sends.get(iid)
            if short is None:
                origins = sorted(decode_report(message.payload, node.core.config.n))[:-1]
                payload = encode_report(origins)
                signature = node.scheme.sign(SESSION, iid, digest(payload))
                short = self._sends[iid] = Send(iid, payload, signature)
            return (encode(short),)
        short = self._sends[iid]  # our SEND goes out before our ECHO and READY
        if isinstance(message, Echo):
            return (encode(Echo(iid, digest(short.payload), short.signature)),)
        if isinstance(message, Ready):
            return (encode(Ready(iid, digest(short.payload))),)
        return (data,)


@pytest.mark.parametrize(("n", "f"), SYSTEMS)
def test_a_short_report_is_a_fault_at_every_honest_node(n: int, f: int) -> None:
    """A Byzantine node's REPORTs list n-f-1 origins: reliable broadcast delivers them to
    every honest node, each of which accuses it and decides without counting it."""
    byzantine = n - 1
    completions = _Completions()
    cluster = Cluster(
        n,
        f,
        dim=DIM,
        adversary=RandomDelays(n),
        behaviours={byzantine: ShortReports()},
        schedule=RoundSchedule(GradientSchedule.CONSTANT, gradient_rounds=2),
        core_factory=completions.core_class(),
    )
    cluster.propose(0, 0, {i: vector_of(i) for i in range(n)})
    cluster.run()
    for i in cluster.honest:
        node = cluster.nodes[i]
        assert (0, 0) in node.decided, f"node {i}"
        faults = {(fault.kind, fault.accused) for fault in node.faults}
        assert faults == {(FaultKind.BAD_REPORT, byzantine)}, f"node {i}: {faults}"
    for me, _, _, reports in completions.records:
        if me in cluster.honest:
            assert all(len(report) >= n - f for report in reports), f"node {me}"
