"""Reliable broadcast's three properties over 1,000 seeded schedules per (n, f).

Each schedule draws f Byzantine nodes and a behaviour for each (silent, equivocating
origin, conflicting ECHO/READY, garbage, wrong-length and NaN/Inf vectors, duplicates,
replays, far-ahead tags) and a random delivery order, runs one agreement round (every
node broadcasts a VECTOR and a REPORT), delivers everything, and checks:

* agreement: no two honest nodes deliver different payloads for one instance;
* totality: if one honest node delivers an instance, every honest node does;
* validity: every honest origin's broadcasts are delivered by every honest node;
* and nobody accuses an honest node.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from protocol.core import GradientSchedule, RoundSchedule
from protocol.messages import InstanceId, Kind, Tag
from tests.byzantine import BEHAVIOURS, behaviour_by_name
from tests.cluster import Adversary, Cluster

SCHEDULES = 1000
CHUNKS = 4
SYSTEMS = [(4, 1), (7, 2), (10, 3), (13, 4)]


def run_schedule(n: int, f: int, seed: int) -> None:
    rng = random.Random(seed)
    byzantine = sorted(rng.sample(range(n), f))
    behaviours = {i: behaviour_by_name(rng.choice(BEHAVIOURS), seed * 31 + i) for i in byzantine}
    cluster = Cluster(
        n,
        f,
        dim=3,
        adversary=Adversary(seed),
        behaviours=behaviours,
        schedule=RoundSchedule(GradientSchedule.CONSTANT, gradient_rounds=1),
    )
    vectors = {i: np.full(3, float(i), dtype=np.float32) for i in range(n)}
    cluster.propose(0, 0, vectors)
    cluster.run()
    names = {i: type(b).__name__ for i, b in behaviours.items()}
    where = f"(n={n}, f={f}, seed={seed}, byzantine={names})"

    delivered: dict[InstanceId, dict[int, bytes]] = {}
    for i in cluster.honest:
        agreement = cluster.nodes[i].core.agreement(0, 0)
        assert agreement is not None, where
        for iid, digest in agreement.deliveries().items():
            delivered.setdefault(iid, {})[i] = digest
    for iid, by_node in delivered.items():
        assert len(set(by_node.values())) == 1, f"agreement violated for {iid} {where}"
        assert set(by_node) == set(cluster.honest), f"totality violated for {iid} {where}"
    for origin in cluster.honest:
        for kind in (Kind.VECTOR, Kind.REPORT):
            iid = InstanceId(origin, Tag(0, 0, 0, kind))
            assert set(delivered.get(iid, {})) == set(cluster.honest), f"validity: {iid} {where}"
    assert cluster.accused() <= set(byzantine), f"an honest node was accused {where}"
    for i in cluster.honest:
        assert (0, 0) in cluster.nodes[i].decided, f"honest node {i} did not decide {where}"


@pytest.mark.parametrize("chunk", range(CHUNKS))
@pytest.mark.parametrize(("n", "f"), SYSTEMS)
def test_reliable_broadcast_over_seeded_schedules(n: int, f: int, chunk: int) -> None:
    per_chunk = SCHEDULES // CHUNKS
    for seed in range(chunk * per_chunk, (chunk + 1) * per_chunk):
        run_schedule(n, f, seed)
