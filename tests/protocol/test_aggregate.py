"""Aggregators against plain references: sorting for trimmed mean, np.median, exhaustive MDA.

Both selection methods of protocol/_select.py (comparator network, transposed sort) are run on
every randomized case by forcing `uses_network`, so the cost model's choice never hides a path.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from protocol import _select
from protocol.aggregate import (
    AGGREGATORS,
    MDA_ROWS_MAX,
    MDA_SUBSETS_MAX,
    get_aggregator,
    mda,
    mean,
    median,
    min_nodes,
    trimmed_mean,
)

DTYPES = (np.float32, np.float64)
RANDOM_CASES = 240


@pytest.fixture(params=["network", "sort"])
def method(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the test once per selection method, whatever the cost model would pick."""
    use_network = request.param == "network"
    monkeypatch.setattr(_select, "uses_network", lambda m, d, f, dtype: use_network)
    yield request.param


def reference(x: np.ndarray, f: int) -> npt.NDArray[np.longdouble]:
    """Mean of the sorted values f..m-f-1 in extended precision (x86: 64-bit mantissa, and an
    exponent range in which sums of float64 values cannot overflow)."""
    kept = np.sort(x, axis=0)[f : x.shape[0] - f].astype(np.longdouble)
    result: npt.NDArray[np.longdouble] = kept.sum(axis=0) / kept.shape[0]
    return result


def kept_range(x: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
    ordered = np.sort(x, axis=0)
    return ordered[f], ordered[x.shape[0] - f - 1]


def assert_close_to_reference(x: np.ndarray, f: int, got: np.ndarray, context: str) -> None:
    want = reference(x, f)
    kept = x.shape[0] - 2 * f
    scale = np.abs(np.sort(x, axis=0)[f : x.shape[0] - f]).max(axis=0, initial=0.0)
    finfo = np.finfo(x.dtype)
    tolerance = (kept + 2) * (finfo.eps * scale.astype(np.longdouble) + finfo.smallest_subnormal)
    error = np.abs(got.astype(np.longdouble) - want)
    assert np.all(error <= tolerance), f"{context}: max error {error.max()} > tolerance"
    low, high = kept_range(x, f)
    assert np.all((low <= got) & (got <= high)), f"{context}: outside the kept values' range"


def random_case(seed: int) -> tuple[np.ndarray, int, str]:
    """A seeded (vectors, f, kind): shapes m in 2f+1..40, f in 0..12, d up to 300."""
    rng = np.random.default_rng(seed)
    f = int(rng.integers(0, 13))
    m = int(rng.integers(2 * f + 1, max(2 * f + 2, 41)))
    d = int(rng.integers(1, 300))
    dtype = DTYPES[seed // 6 % 2]  # every kind in both dtypes
    huge = float(np.finfo(dtype).max) * 0.9  # 3e38 for float32, 1.6e308 for float64
    kind = ["normal", "ties", "constant", "huge", "outliers", "tiny"][seed % 6]
    x = rng.standard_normal((m, d))
    if kind == "ties":
        x = rng.integers(-2, 3, size=(m, d)).astype(float)
    elif kind == "constant":
        x[:, ::2] = rng.standard_normal(d)[::2]  # every other column constant
    elif kind == "huge":
        x = rng.choice([-huge, huge, 1.0, -1.0], size=(m, d))
    elif kind == "outliers":
        byzantine = rng.choice(m, size=f, replace=False)
        x[byzantine] = rng.choice([-huge, huge, 1e30, -1e30], size=(f, d))
    elif kind == "tiny":
        x *= 1e-40 if dtype == np.float32 else 1e-310  # subnormal
    return x.astype(dtype), f, kind


@pytest.mark.parametrize("seed_block", range(4))
def test_trimmed_mean_matches_sort_reference(method: str, seed_block: int) -> None:
    per_block = RANDOM_CASES // 4
    for seed in range(seed_block * per_block, (seed_block + 1) * per_block):
        x, f, kind = random_case(seed)
        got = trimmed_mean(x, f)
        assert got.dtype == x.dtype and got.shape == (x.shape[1],)
        assert_close_to_reference(x, f, got, f"seed {seed} ({kind}, {method}, m={x.shape[0]})")


@pytest.mark.parametrize("dtype", DTYPES)
def test_blocks_and_layouts_do_not_change_results(method: str, dtype: type) -> None:
    """Columns are independent: results do not depend on d, block boundaries, or strides."""
    rng = np.random.default_rng(7)
    for m, f in ((7, 2), (12, 3), (3, 0)):
        d = 70_001  # past BLOCK_COLUMNS_MAX and many sort blocks, with a ragged end
        x: np.ndarray = rng.standard_normal((m, d)).astype(dtype)
        whole = trimmed_mean(x, f)
        np.testing.assert_array_equal(trimmed_mean(x[:, 60_000:], f), whole[60_000:])
        np.testing.assert_array_equal(trimmed_mean(np.asfortranarray(x), f), whole)
        np.testing.assert_array_equal(trimmed_mean(x[:, ::3], f), whole[::3])
        aliased = np.ascontiguousarray(x[:, :8192])  # row stride a multiple of 4 KiB: staged
        np.testing.assert_array_equal(trimmed_mean(aliased, f), whole[:8192])
        assert_close_to_reference(x[:, :2000], f, whole[:2000], f"m={m} f={f} {method}")


def test_network_selects_the_middle_for_every_zero_one_input() -> None:
    """0-1 principle: a comparator network keeps the right multiset for every input iff it does
    for every 0/1 input. All 2^m such inputs at once, as columns, for every m <= 13 and f."""
    for m in range(1, 14):
        columns = np.arange(2**m)
        x = ((columns[None, :] >> np.arange(m)[:, None]) & 1).astype(np.float64)
        for f in range((m + 1) // 2):
            out = np.empty(2**m)
            _select._network_kept_mean(x, _select.selection_plan(m, f), out)
            # a wrong selection is off by >= 1/(m-2f); rounding only by ulps
            np.testing.assert_allclose(out, reference(x, f), rtol=1e-12, err_msg=f"m={m} f={f}")


def test_byzantine_rows_leave_result_within_honest_range(method: str) -> None:
    for seed in range(40):
        rng = np.random.default_rng(seed)
        f = int(rng.integers(1, 8))
        n = 3 * f + 1 + int(rng.integers(0, 5))
        dtype = DTYPES[seed % 2]
        honest = rng.standard_normal((n - f, 50)).astype(dtype)
        attack = rng.choice([1e30, -1e30], size=(f, 50)).astype(dtype)
        x = np.concatenate([attack, honest])[rng.permutation(n)]
        got = trimmed_mean(x, f)
        low, high = honest.min(axis=0), honest.max(axis=0)
        assert np.all((low <= got) & (got <= high)), f"seed {seed}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_largest_finite_values_neither_overflow_nor_poison(method: str, dtype: type) -> None:
    """One 3e38 must not become inf or NaN, whether it is trimmed or kept (the sum-minus-
    extremes trick fails both ways), and huge kept values average without overflow."""
    big = np.finfo(dtype).max
    rows = [[big, -big, 1.0], [1.0, 2.0, big], [2.0, 3.0, big], [3.0, big, big]]
    x: np.ndarray = np.array(rows, dtype)
    np.testing.assert_array_equal(trimmed_mean(x, 1), np.array([2.5, 2.5, big], dtype))
    np.testing.assert_array_equal(median(x, 1), np.array([2.5, 2.5, big], dtype))
    np.testing.assert_array_equal(mean(x[1:, 2:], 0), np.array([big], dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_median_matches_numpy(method: str, dtype: type) -> None:
    for seed in range(60):
        rng = np.random.default_rng(seed)
        m = int(rng.integers(1, 40))
        x: np.ndarray = rng.standard_normal((m, int(rng.integers(1, 200)))).astype(dtype)
        if seed % 3 == 0:
            x = np.round(x)  # ties
        got, want = median(x, (m - 1) // 2), np.median(x, axis=0)
        assert got.dtype == want.dtype
        assert np.all(np.abs(got - want) <= np.spacing(np.abs(want))), f"seed {seed}: > 1 ulp"


@pytest.mark.parametrize("dtype", DTYPES)
def test_mean_matches_numpy(dtype: type) -> None:
    x: np.ndarray = np.random.default_rng(3).standard_normal((9, 1000)).astype(dtype)
    got = mean(x, 4)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, x.astype(np.float64).mean(axis=0), rtol=0, atol=1e-6)


def test_constant_columns_are_returned_exactly() -> None:
    for dtype in DTYPES:
        x = np.full((7, 5), 0.1, dtype=dtype)
        for name, aggregate in AGGREGATORS.items():
            np.testing.assert_array_equal(aggregate(x, 1), x[0], err_msg=name)


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_aggregator_keeps_dtype_and_input_range(name: str, dtype: type) -> None:
    rng = np.random.default_rng(11)
    scales = 10.0 ** rng.integers(-5, 5, size=(7, 1))
    x: np.ndarray = (rng.standard_normal((7, 300)) * scales).astype(dtype)
    got = get_aggregator(name)(x, 1)
    assert got.dtype == dtype and got.shape == (300,)
    assert np.all((x.min(axis=0) <= got) & (got <= x.max(axis=0)))


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_trimmed_mean_property(data: st.DataObject) -> None:
    """Any finite input, including the largest and subnormal magnitudes, in any row order:
    matches the reference and stays in the kept range."""
    dtype = data.draw(st.sampled_from(DTYPES))
    f = data.draw(st.integers(0, 5))
    m = data.draw(st.integers(2 * f + 1, 2 * f + 8))
    d = data.draw(st.integers(1, 6))
    elements = st.floats(
        allow_nan=False, allow_infinity=False, width=32 if dtype == np.float32 else 64
    )
    x = data.draw(hnp.arrays(dtype, (m, d), elements=elements))
    assert_close_to_reference(x, f, trimmed_mean(x, f), "hypothesis")
    order = list(data.draw(st.permutations(range(m))))
    assert_close_to_reference(x, f, trimmed_mean(x[order], f), "hypothesis, rows permuted")


def test_mda_drops_the_far_vector() -> None:
    """Five points near the origin and one at (10, 10): the 5-subset without it has diameter
    sqrt(2); every other 5-subset contains (10, 10) and is at least 13 wide."""
    x = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [10, 10], [0.5, 0.5]], dtype=np.float64)
    np.testing.assert_array_equal(mda(x, 1), np.array([0.5, 0.5]))


def test_mda_breaks_ties_by_lowest_index_tuple() -> None:
    """Points 0, 1, 2 on a line, f = 1: subsets (0, 1) and (1, 2) both have diameter 1; (0, 1)
    is the lower tuple, so the mean is 0.5 (and 1.5 once the rows are swapped)."""
    x = np.array([[0.0], [1.0], [2.0]], dtype=np.float32)
    np.testing.assert_array_equal(mda(x, 1), np.array([0.5], np.float32))
    np.testing.assert_array_equal(mda(x[::-1].copy(), 1), np.array([1.5], np.float32))


def test_mda_matches_exhaustive_search() -> None:
    for seed in range(30):
        rng = np.random.default_rng(seed)
        f = int(rng.integers(0, 3))
        m = int(rng.integers(2 * f + 1, 2 * f + 6))
        x = rng.standard_normal((m, 4)).astype(DTYPES[seed % 2])
        wide = x.astype(np.float64)
        diameters = {
            rows: max(
                (np.linalg.norm(wide[i] - wide[j]) for i, j in itertools.combinations(rows, 2)),
                default=0.0,
            )
            for rows in itertools.combinations(range(m), m - f)
        }
        best = min(diameters, key=lambda rows: (diameters[rows], rows))
        want = x[list(best)].astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(mda(x, f), want, rtol=1e-6, err_msg=f"seed {seed}")


def test_mda_survives_distances_beyond_float64() -> None:
    """The distance between +-1.7e308 overflows float64: it must order as +inf, not NaN."""
    x = np.array([[1.7e308], [-1.7e308], [1.0], [2.0], [3.0], [4.0], [5.0]], dtype=np.float64)
    np.testing.assert_array_equal(mda(x, 2), np.array([3.0]))
    assert np.isfinite(mda(x, 1)).all()


def test_mda_tells_apart_distances_whose_squares_underflow() -> None:
    """Squares of 1e-200 underflow to 0; unscaled, all three pairs would tie and (0, 1) win."""
    x = np.array([[0.0], [4e-200], [5e-200]], dtype=np.float64)
    np.testing.assert_array_equal(mda(x, 1), np.array([4.5e-200]))


def test_mda_refuses_too_many_subsets() -> None:
    m, f = 31, 5
    assert math.comb(m, f) > MDA_SUBSETS_MAX
    with pytest.raises(ValueError, match="MDA_SUBSETS_MAX"):
        mda(np.zeros((m, 2), np.float32), f)
    with pytest.raises(ValueError, match="MDA_ROWS_MAX"):
        mda(np.zeros((MDA_ROWS_MAX + 1, 2), np.float32), 1)
    rows = np.zeros((MDA_ROWS_MAX + 1, 2), np.float32)
    np.testing.assert_array_equal(mda(rows, 0), rows[0])  # f = 0: the mean, no search


def invalid_inputs() -> Iterator[tuple[object, object, str]]:
    good = np.zeros((5, 3), np.float32)
    yield [[0.0, 1.0]] * 5, 1, "numpy array"
    yield np.zeros(5, np.float32), 1, "2-D"
    yield np.zeros((5, 3, 1), np.float32), 1, "2-D"
    yield np.zeros((5, 3), np.int64), 1, "float32 or float64"
    yield np.zeros((5, 3), np.float16), 1, "float32 or float64"
    yield np.zeros((5, 3), np.complex64), 1, "float32 or float64"
    yield np.zeros((5, 3), ">f4"), 1, "native"
    yield good, -1, "non-negative"
    yield good, True, "non-negative"
    yield good, 1.0, "non-negative"
    for value in (np.nan, np.inf, -np.inf):
        for row in (0, 2, 4):  # a trimmed position must not hide it
            x = np.arange(15, dtype=np.float64).reshape(5, 3)
            x[row, 1] = value
            yield x, 1, "NaN or infinite"
            yield x.astype(np.float32), 2, "NaN or infinite"


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_invalid_input_raises_value_error(method: str, name: str) -> None:
    aggregate = get_aggregator(name)
    for vectors, f, message in invalid_inputs():
        with pytest.raises(ValueError, match=message):
            aggregate(vectors, f)  # type: ignore[arg-type]
    for m, f in ((2, 1), (4, 2), (0, 0)):
        if name == "mean" and m > 0:
            continue  # mean needs only one vector
        with pytest.raises(ValueError, match=f"need at least {2 * f + 1} vectors"):
            aggregate(np.zeros((m, 3), np.float64), f)


def test_non_finite_beyond_the_first_block_is_found(method: str) -> None:
    x = np.zeros((5, 200_000), np.float32)
    x[3, -1] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        trimmed_mean(x, 2)


def test_many_rows_use_the_sort_without_building_a_network() -> None:
    m, f = _select.NETWORK_ROWS_MAX + 1, 1
    x = np.random.default_rng(5).standard_normal((m, 20)).astype(np.float32)
    before = _select.selection_plan.cache_info().currsize
    assert_close_to_reference(x, f, trimmed_mean(x, f), "many rows")
    assert _select.selection_plan.cache_info().currsize == before


def test_zero_columns() -> None:
    for name, aggregate in AGGREGATORS.items():
        got = aggregate(np.zeros((4, 0), np.float32), 1)
        assert got.shape == (0,) and got.dtype == np.float32, name


def test_registry_and_resilience() -> None:
    assert {"trimmed_mean", "median", "mda", "mean"} <= set(AGGREGATORS)  # and ByzFL's rules
    assert get_aggregator("median") is median
    with pytest.raises(ValueError, match="mda, mean, median, monna, multi_krum, trimmed_mean"):
        get_aggregator("bulyan")
    assert [min_nodes(name, 2) for name in ("trimmed_mean", "median", "mean", "mda")] == [
        7,
        7,
        7,
        13,
    ]
    assert min_nodes("mda", 0) == 1
    with pytest.raises(ValueError, match="unknown aggregator"):
        min_nodes("bulyan", 1)
    with pytest.raises(ValueError, match="non-negative"):
        min_nodes("mda", -1)


def test_plans_are_cheaper_than_sorting_networks() -> None:
    """Pruning pays: (10, 3) needs 46 min/max passes where the unpruned odd-even merge sort on
    10 wires has 32 comparators (64 passes); small f uses pair-and-peel (m=100, f=1: 294 passes
    where the merge sort would need over 1400)."""
    assert len(_select.selection_plan(10, 3).ops) == 46
    assert len(_select.selection_plan(100, 1).ops) == 294
    for m in range(1, 40):
        for f in range((m + 1) // 2):
            plan = _select.selection_plan(m, f)
            assert plan.scratch_rows <= m + 1 and len(plan.kept_slots) == m - 2 * f
