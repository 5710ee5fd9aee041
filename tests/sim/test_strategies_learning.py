"""Learning-level strategies: each sends the vector its paper describes, from the honest
vectors of its round when omniscient, and is well-formed enough that nobody is accused."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest

from protocol.core import GradientSchedule, RoundSchedule
from sim.strategies import alie_z
from tests.byzantine import strategy_cluster
from tests.sim.strategy_helpers import DIM, GRADIENT, MODEL, F, N, attacked, bound, vec


def test_sign_flip_and_scaling_apply_to_chosen_phases_and_rounds() -> None:
    v = vec(1, -2, 3, 0)
    np.testing.assert_array_equal(bound("sign_flip").vector(0, GRADIENT, 2, v), -v)
    np.testing.assert_array_equal(
        bound({"name": "sign_flip", "scale": 2}).vector(0, 0, 0, v), -2 * v
    )
    assert bound("sign_flip").vector(0, MODEL, 0, v) is v  # gradient phase by default
    both = bound({"name": "sign_flip", "phases": "both"})
    np.testing.assert_array_equal(both.vector(0, MODEL, 0, v), -v)
    first = bound({"name": "sign_flip", "rounds": "first"})
    assert first.vector(0, GRADIENT, 1, v) is v
    np.testing.assert_array_equal(first.vector(0, GRADIENT, 0, v), -v)
    scaled = bound("scaling").vector(0, GRADIENT, 0, v)
    np.testing.assert_array_equal(scaled, 10 * v)
    assert scaled.dtype == v.dtype


def test_gaussian_noise_has_the_requested_spread_and_is_seeded() -> None:
    v = np.ones(20_000, dtype=np.float32)
    # jungle's variant: noise added to the node's own vector
    additive = {"name": "gaussian", "sigma": 2.0, "additive": True}
    noisy = bound(additive, seed=5).vector(0, 0, 0, v)
    assert noisy.dtype == np.float32
    assert abs(np.std(noisy - v) - 2.0) < 0.05 and abs(np.mean(noisy - v)) < 0.05
    np.testing.assert_array_equal(noisy, bound(additive, seed=5).vector(0, 0, 0, v))
    # by default ByzFL's: pure N(mu, sigma^2) noise, no trace of the honest vector
    pure = bound("gaussian", seed=5).vector(0, 0, 0, v)
    assert abs(np.mean(pure)) < 0.05 and abs(np.std(pure) - 1.0) < 0.05
    shifted = bound({"name": "gaussian", "mu": 3.0, "sigma": 0.5}, seed=5).vector(0, 0, 0, v)
    assert abs(np.mean(shifted) - 3.0) < 0.05 and abs(np.std(shifted) - 0.5) < 0.05


def test_alie_z_follows_the_paper() -> None:
    assert alie_z(7, 2) == pytest.approx(NormalDist().inv_cdf(5 / 7))  # s = 4 - 2 = 2
    assert alie_z(50, 12) == pytest.approx(NormalDist().inv_cdf(36 / 50))  # s = 26 - 12
    assert alie_z(4, 1) == 0.0  # s = 2, (n - s)/n = 1/2


def test_alie_sends_mean_minus_z_std_of_the_honest_vectors() -> None:
    rng = np.random.default_rng(1)
    honest = {i: rng.standard_normal(DIM).astype(np.float32) for i in range(5)}
    own = vec(9, 9, 9, 9)
    rows = np.stack(list(honest.values())).astype(np.float64)
    for z in (None, 1.5):
        alie = bound({"name": "alie", "z": z}, honest=honest)
        expected = rows.mean(axis=0) - (z or alie_z(N, F)) * rows.std(axis=0)
        np.testing.assert_allclose(alie.vector(0, 0, 0, own), expected, rtol=1e-6)
    # with nothing known yet, it falls back to its own vector (std 0)
    np.testing.assert_array_equal(bound("alie").vector(0, 0, 0, own), own)


def test_ipm_sends_minus_epsilon_times_the_honest_mean() -> None:
    honest = {0: vec(1, 2, 3, 4), 2: vec(3, 2, 1, 0)}
    own = vec(10, 0, 0, 0)
    np.testing.assert_allclose(
        bound("ipm", honest=honest).vector(0, 0, 0, own), -0.2 * vec(1, 1, 1, 1)
    )
    large = bound("ipm_large", honest=honest).vector(0, 0, 0, own)
    np.testing.assert_allclose(large, -200 * vec(1, 1, 1, 1))
    blind = bound({"name": "ipm", "omniscient": False}, honest=honest).vector(0, 0, 0, own)
    np.testing.assert_allclose(blind, -0.1 * own)


def test_mimic_copies_the_lowest_honest_node_or_its_target() -> None:
    honest = {1: vec(1, 1, 1, 1), 3: vec(3, 3, 3, 3)}
    own = vec(6, 6, 6, 6)
    mimic = bound("mimic", honest=honest, byzantine=(0, 6))
    np.testing.assert_array_equal(mimic.vector(0, 0, 0, own), honest[1])
    np.testing.assert_array_equal(
        bound({"name": "mimic", "target": 3}, honest=honest).vector(0, 0, 0, own), honest[3]
    )
    # node 0 is its default target when the coalition is unknown; not seen yet: own vector
    np.testing.assert_array_equal(bound("mimic", honest=honest).vector(0, 0, 0, own), own)


def test_constant_and_label_flip() -> None:
    v = vec(1, 2, 3, 4)
    np.testing.assert_array_equal(
        bound({"name": "constant", "value": -7}).vector(0, 0, 0, v), [-7] * 4
    )
    flip = bound("label_flip")
    np.testing.assert_array_equal(flip.label_map(10), np.arange(9, -1, -1))
    assert flip.vector(0, 0, 0, v) is v
    assert bound("sign_flip").label_map(10) is None


# --------------------------------------------------------------------------- in a cluster

LEARNING_CASES = [
    "sign_flip",
    "scaling",
    "gaussian",
    "alie",
    "ipm",
    "ipm_large",
    "mimic",
    "constant",
]
SEEDS = range(3)


@pytest.mark.parametrize("name", LEARNING_CASES)
def test_learning_attacks_are_well_formed_so_nobody_is_accused(name: str) -> None:
    for seed in SEEDS:
        cluster = attacked(7, 2, name, seed)
        assert all((0, 0) in cluster.nodes[i].decided for i in cluster.honest), (name, seed)
        assert cluster.accused() == set(), (name, seed)


@pytest.mark.parametrize("encoding", ["f16", "bf16", "int8"])
def test_learning_attacks_stay_well_formed_under_lossy_encodings(encoding: str) -> None:
    """A filter's vector (even scaling's large one) is encoded, saturated if need be,
    never turned into a bad payload: nobody is accused."""
    for name in ("scaling", "alie", "ipm_large", "constant"):
        for seed in SEEDS:
            cluster = attacked(4, 1, name, seed, encoding=encoding)
            assert all((0, 0) in cluster.nodes[i].decided for i in cluster.honest), (name, seed)
            assert cluster.accused() == set(), (name, encoding, seed)


def test_omniscient_alie_uses_the_honest_vectors_of_its_round() -> None:
    n, f = 7, 2
    cluster = strategy_cluster(
        n, f, {5: "alie", 6: "alie"}, schedule=RoundSchedule(GradientSchedule.CONSTANT, 1)
    )
    rng = np.random.default_rng(0)
    inputs = {i: rng.standard_normal(4).astype(np.float32) for i in range(n)}
    cluster.propose(0, 0, inputs)  # in id order: the honest 0..4 enter the round first
    cluster.run()
    honest = np.stack([inputs[i] for i in range(5)]).astype(np.float64)
    expected = honest.mean(axis=0) - alie_z(n, f) * honest.std(axis=0)
    for attacker in (5, 6):
        sent = cluster.nodes[attacker].rounds[(0, 0)][0]
        np.testing.assert_allclose(sent, expected, rtol=1e-5)
        held = cluster.nodes[0].core.agreement(0, 0)
        assert held is not None
        np.testing.assert_array_equal(held.held(0)[attacker], sent)  # what honest nodes got
