"""Bytes on the wire: about (n-1) x m per node per round, not Bracha's n x (n-1) x m."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.core import GradientSchedule, RoundSchedule
from tests.cluster import Cluster, RandomDelays

ROUNDS = 2
ARRAY_HEADER_BYTES = 64  # upper bound of encode_array's header


def run(n: int, dim: int, seed: int) -> Cluster:
    cluster = Cluster(
        n,
        (n - 1) // 3,
        dim=dim,
        adversary=RandomDelays(seed),
        schedule=RoundSchedule(GradientSchedule.CONSTANT, gradient_rounds=ROUNDS),
    )
    rng = np.random.default_rng(seed)
    cluster.propose(0, 0, {i: rng.standard_normal(dim).astype(np.float32) for i in range(n)})
    cluster.run()
    assert all((0, 0) in cluster.nodes[i].decided for i in range(n)), f"seed={seed}"
    return cluster


@pytest.mark.parametrize("n", [4, 10])
@pytest.mark.parametrize("seed", range(3))
def test_each_node_sends_at_most_1_25_times_n_minus_1_payloads_per_round(n: int, seed: int) -> None:
    m_bytes = 64 * 1024
    cluster = run(n, m_bytes // 4, seed)
    bound = (n - 1) * (m_bytes + ARRAY_HEADER_BYTES)
    for i in range(n):
        per_round = cluster.bytes_sent[i] / ROUNDS
        assert per_round <= 1.25 * bound, f"node {i}: {per_round / bound:.3f} x bound, seed={seed}"


@pytest.mark.parametrize("seed", range(3))
def test_control_traffic_does_not_grow_with_the_payload(seed: int) -> None:
    """ECHO/READY/REPORT/FETCH bytes are identical for 4 KB and 64 KB vectors: the same
    seeded schedule, only the payload size differs."""
    control = []
    for dim in (1024, 16 * 1024):
        cluster = run(7, dim, seed)
        kinds = [cluster.bytes_sent_by_kind[i] for i in range(7)]
        control.append([k["echo"] + k["ready"] + k["fetch"] for k in kinds])
    assert control[0] == control[1], f"seed={seed}"
