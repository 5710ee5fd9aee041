"""Trimmed mean's cut: exactly f values per side are dropped, never f-1.

Random inputs rarely put f hostile values on one side of a coordinate (each side then gets
about f/2 of them), so a trim of f-1 would pass most of them. Here f rows sit at one
extreme in every coordinate, or f at each extreme: anything less than a cut of f lets one
through and moves the result far outside the honest rows' range. Both selection methods
of protocol/_select.py are forced, and both candidate comparator networks are checked
whichever one the planner picks.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from protocol import _select
from protocol.aggregate import trimmed_mean

DTYPES = (np.float32, np.float64)
BIG = 1e30
SHAPES = [(4, 1), (7, 2), (10, 3), (13, 4), (9, 2), (20, 3), (31, 10), (64, 5)]


@pytest.fixture(params=["network", "sort"])
def method(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    use_network = request.param == "network"
    monkeypatch.setattr(_select, "uses_network", lambda m, d, f, dtype: use_network)
    yield request.param


def attacked(m: int, f: int, dtype: type, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, honest rows): m-f honest rows and f hostile ones. Column 0: the f hostile
    values at +BIG; column 1: at -BIG; column 2: at +BIG with the f smallest honest
    values pushed to -BIG (f extremes on each side, 2f trimmed and m-2f kept, all
    honest); the rest: hostile values split between the two extremes at random."""
    rng = np.random.default_rng(seed)
    honest = rng.standard_normal((m - f, 8))
    hostile = rng.choice([-BIG, BIG], size=(f, 8))
    hostile[:, 0], hostile[:, 1], hostile[:, 2] = BIG, -BIG, BIG
    lowest = np.argsort(honest[:, 2])[:f]
    honest[lowest, 2] = -BIG
    rows = np.concatenate([hostile, honest])[rng.permutation(m)]
    return rows.astype(dtype), honest.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_f_equal_extremes_on_a_side_are_all_trimmed(method: str, dtype: type) -> None:
    for seed, (m, f) in enumerate(SHAPES):
        rows, honest = attacked(m, f, dtype, seed)
        where = f"m={m} f={f} {method} {np.dtype(dtype)} seed={seed}"
        for got in (trimmed_mean(rows, f), _select.kept_mean(rows, f)):
            middle = np.sort(rows, axis=0)[f : m - f].astype(np.float64)
            np.testing.assert_allclose(got, middle.mean(axis=0), rtol=1e-5, err_msg=where)
            assert np.all(np.abs(got) < BIG / 1e6), where  # not one extreme got through
            plain = honest[np.abs(honest) < BIG]  # column 2's pushed values excepted
            assert np.all((plain.min() <= got) & (got <= plain.max())), where


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_kept_count_is_m_minus_2f(method: str, dtype: type) -> None:
    """With k² in row k (shuffled), the trimmed mean is the mean of k² for k in f..m-f-1;
    keeping one value too many or too few on either side changes it, and the extremes
    (row 0 at -BIG, row m-1 at +BIG) must always go."""
    for m, f in SHAPES:
        order = np.random.default_rng(m * 100 + f).permutation(m)
        values = (order**2).astype(dtype)
        values[order == 0], values[order == m - 1] = -BIG, BIG
        rows = np.repeat(values[:, None], 5, axis=1)
        want = np.mean([k**2 for k in range(f, m - f)])
        np.testing.assert_allclose(trimmed_mean(rows, f), np.full(5, want), rtol=1e-6)
        np.testing.assert_allclose(_select.kept_mean(rows, f), np.full(5, want), rtol=1e-6)


def test_both_candidate_networks_select_the_middle_for_every_zero_one_input() -> None:
    """The planner picks the cheaper of Batcher's network and pair-and-peel; each must keep
    ranks f..m-f-1 on its own (0-1 principle: every 0/1 input, as columns)."""
    for m in range(1, 12):
        columns = np.arange(2**m)
        x = ((columns[None, :] >> np.arange(m)[:, None]) & 1).astype(np.float64)
        want = np.sort(x, axis=0)
        for f in range((m + 1) // 2):
            groups = _select._sorted_groups(m, f)
            batcher = _select._compile(
                m, f, _select._prune(_select._odd_even_merge_sort(m), groups), groups
            )
            peel_comparators, peel_groups = _select._pair_and_peel(m, f)
            peel = _select._compile(
                m, f, _select._prune(peel_comparators, peel_groups), peel_groups
            )
            for name, plan in (("batcher", batcher), ("peel", peel)):
                assert len(plan.kept_slots) == m - 2 * f, f"{name} m={m} f={f}"
                out = np.empty(2**m)
                _select._network_kept_mean(x, plan, out)
                expected = want[f : m - f].mean(axis=0)
                np.testing.assert_allclose(out, expected, rtol=1e-12, err_msg=f"{name} {m} {f}")
