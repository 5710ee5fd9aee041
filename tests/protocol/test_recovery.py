"""Crash-recovery of honest nodes, on pure cores: any subset, up to all n, at any moment.

Each case runs an agreement partway under a seeded random scheduler, crashes a subset
(what was in flight to them dies), restarts them from what they persisted
(``Step.durable``), has them propose *different* vectors (as a restarted node computes
another vector when messages arrive in another order), and runs to the end. The
invariant checked is DESIGN 3's: every node decides, no node is accused of anything,
and no node ever sent two payloads for one instance.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import numpy as np
import pytest

from protocol.codec import decode, encode
from protocol.core import CATCHUP_TICKS_MIN, NodeCore, RoundSchedule
from protocol.messages import Catchup, Message, Send
from protocol.step import EVERYONE
from tests.cluster import Behaviour, Cluster, RandomDelays, honest_diameter

GRADIENT = 0
SEEDS = range(6)
SYSTEMS = [(4, 1), (7, 2)]


def vectors(n: int, rng: random.Random, dim: int = 4) -> dict[int, np.ndarray]:
    return {i: np.array([rng.uniform(-1, 1) for _ in range(dim)], np.float32) for i in range(n)}


def deliver_some(cluster: Cluster, count: int) -> None:
    for _ in range(count):
        if not len(cluster.adversary):
            return
        cluster._deliver(cluster.adversary.pop())


def assert_recovered(cluster: Cluster, step: int, where: str) -> None:
    for node in cluster.nodes:
        assert (step, GRADIENT) in node.decided, f"node {node.me} did not decide {where}"
        assert not node.faults, f"node {node.me} accused someone: {node.faults} {where}"
        for iid, payloads in node.signed.items():
            assert len(payloads) == 1, f"node {node.me} sent two payloads for {iid} {where}"


@pytest.mark.parametrize(("n", "f"), SYSTEMS)
@pytest.mark.parametrize("crashed", ["one", "f+1", "all"])
def test_any_subset_restarted_mid_round_recovers_and_nobody_is_accused(
    n: int, f: int, crashed: str
) -> None:
    for seed in SEEDS:
        rng = random.Random(seed)
        cluster = Cluster(n, f, adversary=RandomDelays(seed), schedule=RoundSchedule("constant", 3))
        inputs = vectors(n, rng)
        cluster.propose(0, GRADIENT, inputs)
        total = 4 * n * n * 3  # about one round's worth of messages per node, times 3
        deliver_some(cluster, rng.randrange(total))
        size = {"one": 1, "f+1": f + 1, "all": n}[crashed]
        victims = sorted(rng.sample(range(n), size))
        for victim in victims:
            cluster.restart(victim)
        # The restarted nodes compute another vector; what they signed must win.
        cluster.propose(0, GRADIENT, {i: inputs[i] + 10.0 for i in victims})
        cluster.run()
        where = f"(n={n}, f={f}, victims={victims}, seed={seed})"
        assert_recovered(cluster, 0, where)
        decided = [node.decided[(0, GRADIENT)] for node in cluster.nodes]
        stacked = np.stack(list(inputs.values()))
        for vector in decided:  # validity: inside the range of the inputs actually signed
            assert np.all(vector >= stacked.min(axis=0) - 1e-6), where
            assert np.all(vector <= stacked.max(axis=0) + 1e-6), where
        assert honest_diameter(decided) <= honest_diameter(inputs.values()), where


def test_a_node_restarted_twice_and_then_all_of_them_still_finish() -> None:
    n, f = 4, 1
    for seed in SEEDS:
        rng = random.Random(seed)
        cluster = Cluster(n, f, adversary=RandomDelays(seed), schedule=RoundSchedule("constant", 2))
        inputs = vectors(n, rng)
        cluster.propose(0, GRADIENT, inputs)
        for victims in ([2], [2], list(range(n))):
            deliver_some(cluster, rng.randrange(60))
            for victim in victims:
                cluster.restart(victim)
            cluster.propose(0, GRADIENT, {i: inputs[i] - 3.0 for i in victims})
        cluster.run()
        assert_recovered(cluster, 0, f"(seed={seed})")


def test_a_restart_at_a_later_step_resumes_where_it_had_signed() -> None:
    """Step 0 decided everywhere, step 1 under way: all crash. The journal says how far
    each got, so each resumes at step 1, not at an older checkpoint (step 0), which peers
    retained but which would not help them finish step 1."""
    n, f = 4, 1
    rng = random.Random(3)
    cluster = Cluster(n, f, adversary=RandomDelays(3), schedule=RoundSchedule("constant", 2))
    cluster.propose(0, GRADIENT, vectors(n, rng))
    cluster.run()
    cluster.propose(1, GRADIENT, vectors(n, rng))
    deliver_some(cluster, 50)
    resumed = [cluster.restart(i, checkpoint_step=0) for i in range(n)]
    assert resumed == [1] * n
    cluster.propose(1, GRADIENT, vectors(n, rng))
    cluster.run()
    assert_recovered(cluster, 1, "")


def test_restore_skips_entries_outside_the_window_and_reports_the_own_step() -> None:
    n, f = 4, 1
    cluster = Cluster(n, f, schedule=RoundSchedule("constant", 1))
    rng = random.Random(0)
    for step in range(5):
        cluster.propose(step, GRADIENT, vectors(n, rng))
        cluster.run()
    node = cluster.nodes[0]
    persisted = [decode(data) for data in node.journal]
    core = NodeCore(node.core.config, node.scheme)
    core.advance_to(4)
    assert core.restore(persisted) == 4  # type: ignore[arg-type]
    retained = core.config.steps_retained
    assert core.agreement(4 - retained - 1, GRADIENT) is None
    assert core.agreement(4 - retained, GRADIENT) is not None
    # the restored node replays exactly what it had sent for the retained steps
    replayed = [m.message for m in core.replay(EVERYONE).messages]
    assert replayed and all(m.iid.tag.step >= 4 - retained for m in replayed)  # type: ignore[union-attr]
    own = [m for m in replayed if isinstance(m, Send) and m.iid.origin == 0]
    assert {m.iid.tag.step for m in own} == set(range(4 - retained, 5))
    for message in own:
        assert bytes(message.payload) in node.signed[message.iid]


def test_catchup_replays_are_rate_limited_per_peer_until_it_restarts() -> None:
    n, f = 4, 1
    cluster = Cluster(n, f, schedule=RoundSchedule("constant", 1))
    cluster.propose(0, GRADIENT, vectors(n, random.Random(1)))
    cluster.run()
    core = cluster.nodes[0].core
    ask = encode(Catchup(0))
    assert core.receive(1, ask).messages  # the first ask is answered
    assert not core.receive(1, ask).messages  # a repeat is not (it costs a window)
    assert core.receive(2, ask).messages  # other peers are counted apart
    for _ in range(CATCHUP_TICKS_MIN):
        core.tick()
    assert core.receive(1, ask).messages  # ... until enough ticks have passed
    assert not core.receive(1, ask).messages
    core.peer_restarted(1)
    assert core.receive(1, ask).messages  # or the peer restarted
    assert core.statistics().replays_sent == {1: 3, 2: 1}


def test_catchup_target_needs_f_plus_1_peers_beyond_the_retained_window() -> None:
    n, f = 4, 1
    cluster = Cluster(n, f, schedule=RoundSchedule("constant", 1), steps_total=20)
    core = cluster.nodes[0].core
    retained = core.config.steps_retained
    catchup = core.receive(1, encode(Catchup(10)))
    assert not catchup.faults
    assert core.catchup_target() is None  # one peer far ahead may be a liar
    core.receive(2, encode(Catchup(retained)))
    assert core.catchup_target() is None  # f+1 peers, but within what we still share
    core.receive(2, encode(Catchup(retained + 1)))
    assert core.catchup_target() == retained + 1  # the (f+1)-th highest: an honest one
    core.receive(3, encode(Catchup(50)))
    assert core.catchup_target() == 10  # never past what f+1 peers vouch for


class FallsSilent(Behaviour):
    """Honest until ``silent`` is set, then sends nothing (a Byzantine node that waits for
    every honest node to crash, then withholds what only it and they held)."""

    silent = False

    def outgoing(self, dst: int, message: Message, data: bytes) -> Iterable[bytes]:
        return () if self.silent else (data,)


def test_all_honest_restart_while_a_byzantine_origin_withholds_its_payloads() -> None:
    """The honest REPORTs made before the crash may list the Byzantine node's vectors;
    once it is silent, only the honest nodes' journals still hold them (every SEND a node
    echoes is persisted), so the witnesses can still be counted and the round ends."""
    n, f = 4, 1
    for seed in SEEDS:
        rng = random.Random(seed)
        liar = FallsSilent()
        cluster = Cluster(
            n,
            f,
            adversary=RandomDelays(seed),
            behaviours={3: liar},
            schedule=RoundSchedule("constant", 2),
        )
        inputs = vectors(n, rng)
        cluster.propose(0, GRADIENT, inputs)
        deliver_some(cluster, 40 + rng.randrange(80))
        liar.silent = True
        for victim in cluster.honest:
            cluster.restart(victim)
        cluster.propose(0, GRADIENT, {i: inputs[i] * 2 for i in cluster.honest})
        cluster.run()
        for i in cluster.honest:
            node = cluster.nodes[i]
            assert (0, GRADIENT) in node.decided, f"node {i} did not decide (seed={seed})"
            assert not node.faults, (node.faults, seed)
