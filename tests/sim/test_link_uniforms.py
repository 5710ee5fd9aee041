"""The network's per-message draws: a pure function of (seed, src, dst, seq), uniform."""

from __future__ import annotations

import random
import statistics

import pytest

from sim.delays import LinkUniforms


@pytest.mark.parametrize("seed", [0, 1, 2**63 + 5])
def test_draws_are_a_pure_function_of_the_key_and_look_uniform(seed: int) -> None:
    draws = [
        LinkUniforms(seed, 3)(src, dst, seq) for src, dst in ((0, 1), (2, 0)) for seq in range(2000)
    ]
    # a fresh instance, asked in another order, gives the same draws
    other = LinkUniforms(seed, 3)
    again = [other(src, dst, seq) for src, dst in ((2, 0), (0, 1)) for seq in range(2000)]
    assert again[2000:] + again[:2000] == draws, f"seed {seed}"
    assert all(0.0 < u < 1.0 for u in draws)
    assert len(set(draws)) == len(draws)
    # 4000 uniforms: mean 0.5 with standard error 0.0046, deciles near 400 each
    assert abs(statistics.fmean(draws) - 0.5) < 0.025, f"seed {seed}"
    deciles = [0] * 10
    for u in draws:
        deciles[int(u * 10)] += 1
    assert all(300 < count < 500 for count in deciles), f"seed {seed}: {deciles}"


def test_seeds_and_links_give_different_streams() -> None:
    a = [LinkUniforms(1, 2)(0, 1, seq) for seq in range(8)]
    b = [LinkUniforms(2, 2)(0, 1, seq) for seq in range(8)]
    c = [LinkUniforms(1, 2)(1, 0, seq) for seq in range(8)]
    assert a != b and a != c


def _splitmix_unit(base: int, seq: int) -> float:
    """The draw written out with Python integers, one message at a time."""
    mask = 2**64 - 1
    z = (base + seq * 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return (((z ^ (z >> 31)) >> 11) + 0.5) * 2.0**-53


@pytest.mark.parametrize("seed", [0, 7, 2**63 + 5])
def test_block_draws_equal_the_scalar_formula_in_any_order(seed: int) -> None:
    uniforms = LinkUniforms(seed, 4)
    rng = random.Random(seed)
    asked = list(range(300)) + [rng.randrange(10**6) for _ in range(200)] + [63, 64, 0, 2**40]
    rng.shuffle(asked)
    for seq in asked:
        got = uniforms(1, 3, seq)
        base = uniforms._bases[1 * 4 + 3]
        assert base is not None
        assert got == _splitmix_unit(base, seq), f"seed {seed}, seq {seq}"
    with pytest.raises(ValueError, match="seq"):
        LinkUniforms(seed, 4)(0, 1, -1)
