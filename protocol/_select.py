"""Coordinate-wise mean of the middle order statistics of m rows: the kernel of trimmed mean.

For an (m, d) array and a trim f, `kept_mean` returns, per coordinate, the mean of the values of
rank f .. m-f-1 (the f smallest and f largest dropped). The kept values are selected, then added;
nothing is ever added and subtracted again, so an extreme value that is trimmed cannot overflow
or cancel into the result.

Two ways to select, chosen per (m, d, f, dtype) by `uses_network` from measured costs:

* A pruned **comparator network** over the rows. One comparator is `np.minimum` and/or
  `np.maximum` over two contiguous row segments, so each costs one pass at cache bandwidth,
  whatever m. The network starts from Batcher's odd-even merge sort (good when f is a constant
  fraction of m) or from "pair and peel" (better for small f: pair the rows up, then a max chain
  over the winners and a min chain over the losers peels one extreme from each end, f times).
  Pruning keeps only what decides *which set* of values ends up in the middle, not its order.
* For many rows, a **sort** of each coordinate's m values: a column block is transposed so each
  coordinate's values are contiguous and sorted by numpy's vectorised sort. A network costs
  O(log² m) passes per value, which outgrows the sort's slowly falling cost per value.
  `np.partition` was measured and is never the better choice here (its introselect is scalar:
  3-6x slower than np.sort on m = 10..100 rows).

Both work on column blocks, so the rows being combined stay in cache, and reuse their buffers.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

Group = Literal["low", "kept", "high"]
Comparator = tuple[int, int]
"""(low_wire, high_wire): afterwards low_wire holds the min and high_wire the max of the two."""

FloatArray = npt.NDArray[np.floating]

BLOCK_BYTES_TARGET = 8 << 20
"""Network working set per column block. Each ufunc call costs ~0.5-1 µs, so blocks
must be long; 8 MiB (L3-resident) measured best, or within noise of it, for m = 10..100 rows on
a 2-core EPYC, where 1 MiB blocks ran up to 3x slower (m = 100)."""
NETWORK_ROWS_MAX = 256
"""Networks are built (and cached) for at most this many rows. Their passes per value grow as
log²(m); the cost model already prefers sorting from m ~ 64 unless f is tiny, and building a
network for thousands of rows would cost a node seconds and megabytes for no gain."""
BLOCK_COLUMNS_MIN = 8192
BLOCK_COLUMNS_MAX = 65536
SORT_BLOCK_COLUMNS = 4096
"""Columns transposed and sorted at a time; measured best of 1K..16K for m = 64..100."""
CACHE_ALIASING_STRIDE_BYTES = 4096
"""Rows this far apart (or a multiple) share cache sets: transposing them thrashes (see below)."""
STAGING_PAD_COLUMNS = 16

EXACT_RANGE_KEPT_MAX = 4096
"""float32 inputs are summed in float64, and for k <= 4096 kept values the mean then provably lies
in their range without clipping: if all are equal the sum is exact; otherwise the mean is at
least (max-min)/k >= 2^-25·max|x|/k away from either extreme, more than the sum's error
(< k·2^-53·max|x|) while k² < 2^28. float64 results, or longer sums, are clipped explicitly."""


@dataclass(frozen=True, slots=True)
class CostModel:
    """Nanoseconds per input value of each selection method, for one dtype.

    network = fixed + pass · (ufunc passes per value), plus `call` per ufunc call; sort = value
    + lane / m. The network's fixed part is reading the input from memory plus the finiteness
    check; its calls matter for small d, where the sort wins. The sort's per-lane part is
    numpy's per-coordinate overhead around its SIMD kernel, which is why sorting gets cheaper
    per value as m grows while a network gets dearer (~log²(m) passes per value). Fitted to
    `benchmarks/bench_trimmed_mean.py --grid` (and d = 16..65536) on a 2-core EPYC (Zen 4)."""

    network_fixed_ns: float
    network_pass_ns: float
    network_call_ns: float
    sort_value_ns: float
    sort_lane_ns: float

    def prefers_network(self, plan: SelectionPlan, d: int, itemsize: int) -> bool:
        values = plan.rows * d
        calls = len(plan.ops) * -(-d // network_block_columns(plan, d, itemsize))
        network = (
            values * (self.network_fixed_ns + self.network_pass_ns * plan.passes_per_value)
            + calls * self.network_call_ns
        )
        return network <= values * (self.sort_value_ns + self.sort_lane_ns / plan.rows)


@dataclass(frozen=True, slots=True)
class SelectionPlan:
    """A comparator network compiled to ufunc calls over numbered buffers.

    Slots 0..m-1 are the input rows (read only); slots m.. are scratch rows. Each op is
    (ufunc, out_slot, a_slot, b_slot). After the ops, `kept_slots` hold the m-2f middle values.
    """

    rows: int
    trim: int
    ops: tuple[tuple[np.ufunc, int, int, int], ...]
    kept_slots: tuple[int, ...]
    scratch_rows: int

    @property
    def passes_per_value(self) -> float:
        """Ufunc passes (min/max plus the adds of the kept rows) per input value."""
        return (len(self.ops) + len(self.kept_slots)) / self.rows


def _odd_even_merge_sort(m: int) -> list[Comparator]:
    """Batcher's odd-even merge sort on the next power of two, restricted to m wires.

    Padding wires hold +inf forever (a comparator never moves a smaller value up to them), so
    every comparator touching a wire >= m is a no-op and is dropped."""
    size = 1
    while size < m:
        size *= 2
    comparators: list[Comparator] = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p) and i + j + k < m:
                        comparators.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return comparators


def _sorted_groups(m: int, f: int) -> tuple[Group, ...]:
    return tuple("low" if p < f else "high" if p >= m - f else "kept" for p in range(m))


def _pair_and_peel(m: int, f: int) -> tuple[list[Comparator], tuple[Group, ...]]:
    """f rounds of: pair up the live wires, chain the pair maxima to find the max and the pair
    minima to find the min, retire both. ~1.5·f·m comparators against ~2·f·m for bubbling."""
    comparators: list[Comparator] = []
    groups: list[Group] = ["kept"] * m
    live = list(range(m))
    for _ in range(f):
        lows, highs = live[0:-1:2], live[1::2]
        comparators.extend(zip(lows, highs, strict=True))
        if len(live) % 2:  # the unpaired wire competes in both chains
            lows.insert(0, live[-1])
            highs.insert(0, live[-1])
        comparators.extend(itertools.pairwise(highs))
        comparators.extend((b, a) for a, b in itertools.pairwise(lows))
        groups[highs[-1]], groups[lows[-1]] = "high", "low"
        live = [w for w in live if w not in (highs[-1], lows[-1])]
    return comparators, tuple(groups)


def _prune(
    comparators: list[Comparator], groups: tuple[Group, ...]
) -> list[tuple[int, int, bool, bool]]:
    """Drop what cannot change which values end in the kept group; mark which outputs are used.

    Walking backwards, a comparator whose wires are not read later and end in the same group, or
    both in dropped groups, only orders values whose fate is already decided: remove it. Of the
    rest, an output is needed only if a later comparator reads it or it ends in the kept group.
    Returns (low_wire, high_wire, need_min, need_max) in execution order."""
    read_later = [False] * len(groups)
    kept: list[tuple[int, int, bool, bool]] = []
    for lo, hi in reversed(comparators):
        if not read_later[lo] and not read_later[hi]:
            both_dropped = groups[lo] != "kept" and groups[hi] != "kept"
            if groups[lo] == groups[hi] or both_dropped:
                continue
        need_min = read_later[lo] or groups[lo] == "kept"
        need_max = read_later[hi] or groups[hi] == "kept"
        kept.append((lo, hi, need_min, need_max))
        read_later[lo] = read_later[hi] = True
    kept.reverse()
    return kept


def _compile(
    m: int, f: int, network: list[tuple[int, int, bool, bool]], groups: tuple[Group, ...]
) -> SelectionPlan:
    """Assign buffers: inputs are never written; a result overwrites a scratch input when it can,
    so scratch rows stay at most m + 1 and every op writes a buffer already in cache."""
    holder: list[int] = list(range(m))  # which slot holds each wire's current value
    free: list[int] = []
    scratch_rows = 0

    def fresh() -> int:
        nonlocal scratch_rows
        if free:
            return free.pop()
        scratch_rows += 1
        return m + scratch_rows - 1

    ops: list[tuple[np.ufunc, int, int, int]] = []
    for lo, hi, need_min, need_max in network:
        a, b = holder[lo], holder[hi]
        reusable = [s for s in (b, a) if s >= m]
        if need_min and need_max:
            low_slot = fresh()  # both inputs are still needed by the max
            high_slot = reusable[0] if reusable else fresh()
            ops.append((np.minimum, low_slot, a, b))
            ops.append((np.maximum, high_slot, a, b))
            free.extend(s for s in reusable[1:])
            holder[lo], holder[hi] = low_slot, high_slot
        else:
            out = reusable[0] if reusable else fresh()
            ops.append((np.minimum if need_min else np.maximum, out, a, b))
            free.extend(s for s in reusable[1:])
            holder[lo if need_min else hi] = out
    kept = tuple(holder[w] for w in range(m) if groups[w] == "kept")
    return SelectionPlan(m, f, tuple(ops), kept, scratch_rows)


@functools.lru_cache(maxsize=256)
def selection_plan(m: int, f: int) -> SelectionPlan:
    """The cheapest pruned network keeping ranks f..m-f-1 of m rows (cached: pure in (m, f))."""
    if not 0 <= 2 * f < m:
        raise ValueError(f"need 0 <= 2f < m, got m={m}, f={f}")
    groups = _sorted_groups(m, f)
    batcher = _compile(m, f, _prune(_odd_even_merge_sort(m), groups), groups)
    peel_comparators, peel_groups = _pair_and_peel(m, f)
    peel = _compile(m, f, _prune(peel_comparators, peel_groups), peel_groups)
    return min(batcher, peel, key=lambda plan: len(plan.ops))


COST_MODELS = {  # least-squares fits over m = 8..128, f in {1, 3, m/3, m/2}; see CostModel
    np.dtype(np.float32): CostModel(0.53, 0.165, 600.0, 1.8, 54.0),
    np.dtype(np.float64): CostModel(0.84, 0.42, 600.0, 3.8, 23.0),
}


def network_block_columns(plan: SelectionPlan, d: int, itemsize: int) -> int:
    """Columns per block: BLOCK_BYTES_TARGET over the input and scratch rows, within bounds."""
    columns = BLOCK_BYTES_TARGET // ((plan.rows + plan.scratch_rows) * itemsize)
    return max(1, min(max(columns, BLOCK_COLUMNS_MIN), BLOCK_COLUMNS_MAX, d))


def uses_network(m: int, d: int, f: int, dtype: np.dtype[np.floating]) -> bool:
    """Whether `kept_mean` selects with the network (else by sorting), by the cost model."""
    if m > NETWORK_ROWS_MAX:
        return False
    return COST_MODELS[dtype].prefers_network(selection_plan(m, f), d, dtype.itemsize)


def kept_mean(vectors: FloatArray, f: int) -> FloatArray:
    """Per coordinate, the mean of the values of rank f..m-f-1, in the input dtype.

    `vectors` must be a 2-D float32/float64 array with 0 <= 2f < m. Raises ValueError if it holds
    a NaN or an infinity: the check rides along the selection, block by block, instead of taking
    its own trip through memory. The result lies within the range of the kept values of each
    coordinate (see EXACT_RANGE_KEPT_MAX). Overflow is detected and handled, not warned about."""
    m, d = vectors.shape
    out = np.empty(d, dtype=vectors.dtype)
    if d == 0:
        return out
    with np.errstate(over="ignore", invalid="ignore"):
        if uses_network(m, d, f, vectors.dtype):
            _network_kept_mean(vectors, selection_plan(m, f), out)
        else:
            _sorted_kept_mean(vectors, f, out)
    return out


NON_FINITE = "vectors contain NaN or infinite values"


def _needs_clip(dtype: np.dtype[np.floating], kept: int) -> bool:
    return kept > 2 and (dtype == np.float64 or kept > EXACT_RANGE_KEPT_MAX)


def _overflowed(dtype: np.dtype[np.floating], total: FloatArray, kept: int) -> bool:
    """Whether the float64 sums in `total` of `kept` finite values overflowed. Sums of float32
    values cannot, and a single kept value is copied, not summed."""
    return dtype == np.float64 and kept > 1 and not math.isfinite(np.add.reduce(total))


def _network_kept_mean(vectors: FloatArray, plan: SelectionPlan, out: FloatArray) -> None:
    """Finiteness: one summing pass per block (a finite sum proves every term finite; an
    infinite one is double-checked, as finite terms can overflow it). Measured 2x cheaper than
    min/max reductions, and the pass leaves the block in cache for the network."""
    m, d = vectors.shape
    kept = len(plan.kept_slots)
    columns = network_block_columns(plan, d, vectors.dtype.itemsize)
    scratch = np.empty((plan.scratch_rows, columns), dtype=vectors.dtype)
    bounds = np.empty((2, columns), dtype=vectors.dtype)
    total = np.empty(columns, dtype=np.float64)
    for start in range(0, d, columns):
        stop = min(start + columns, d)
        width = stop - start
        block, result = vectors[:, start:stop], out[start:stop]
        if not math.isfinite(np.add.reduce(block, axis=None)) and not np.isfinite(block).all():
            raise ValueError(NON_FINITE)
        slots = [vectors[row, start:stop] for row in range(m)]
        slots.extend(scratch[row, :width] for row in range(plan.scratch_rows))
        for ufunc, out_slot, a, b in plan.ops:
            ufunc(slots[a], slots[b], out=slots[out_slot])
        rows = [slots[s] for s in plan.kept_slots]
        _mean_of_rows(rows, total[:width], result)
        if _overflowed(vectors.dtype, total[:width], kept):
            _safe_kept_mean(block, plan.trim, result)
            continue
        if not _needs_clip(vectors.dtype, kept):
            continue
        lowest, highest = bounds[0, :width], bounds[1, :width]
        np.minimum(rows[0], rows[1], out=lowest)
        np.maximum(rows[0], rows[1], out=highest)
        for row in rows[2:]:
            np.minimum(lowest, row, out=lowest)
            np.maximum(highest, row, out=highest)
        _clip(result, lowest, highest)


def _mean_of_rows(rows: list[FloatArray], total: FloatArray, out: FloatArray) -> None:
    """Mean of equally long rows, accumulated in float64, written in out's dtype."""
    if len(rows) == 1:
        np.copyto(out, rows[0])
        return
    np.add(rows[0], rows[1], out=total, dtype=np.float64)
    for row in rows[2:]:
        np.add(total, row, out=total)
    np.divide(total, len(rows), out=out)


def _clip(out: FloatArray, lowest: FloatArray, highest: FloatArray) -> None:
    np.maximum(out, lowest, out=out)
    np.minimum(out, highest, out=out)


def _sorted_kept_mean(vectors: FloatArray, f: int, out: FloatArray) -> None:
    """Sort each coordinate's values; the sorted ends double as the finiteness check.

    If the input's row stride is a multiple of 4 KiB, a block is first copied row by row into a
    staging buffer with a padded stride: transposing straight from such an input (d = 2^17
    float32) maps every value of a column to the same cache set, and ran over 3x slower."""
    m, d = vectors.shape
    kept = m - 2 * f
    columns = min(SORT_BLOCK_COLUMNS, d)
    aliased = vectors.strides[0] % CACHE_ALIASING_STRIDE_BYTES == 0
    staging = np.empty((m, columns + STAGING_PAD_COLUMNS) if aliased else 0, vectors.dtype)
    lanes = np.empty((columns, m), dtype=vectors.dtype)
    total = np.empty(columns, dtype=np.float64)
    for start in range(0, d, columns):
        stop = min(start + columns, d)
        width = stop - start
        block, result, lane = vectors[:, start:stop], out[start:stop], lanes[:width]
        if aliased:
            np.copyto(staging[:, :width], block)
            block = staging[:, :width]
        np.copyto(lane, block.T)
        lane.sort(axis=1)  # NaN sorts last, -inf first, +inf last but NaN
        if not (math.isfinite(lane[:, 0].min()) and math.isfinite(lane[:, m - 1].max())):
            raise ValueError(NON_FINITE)
        np.add.reduce(lane[:, f : m - f], axis=1, dtype=np.float64, out=total[:width])
        np.divide(total[:width], kept, out=result)
        if _overflowed(vectors.dtype, total[:width], kept):
            _safe_kept_mean(block, f, result)
        elif _needs_clip(vectors.dtype, kept):
            _clip(result, lane[:, f], lane[:, m - f - 1])


def _safe_kept_mean(block: FloatArray, f: int, out: FloatArray) -> None:
    """Slow path for float64 values so large that their sum could overflow: divide each kept
    value by the count before adding (the sum then stays below the largest value), clip to the
    kept range in case the last rounding crossed it."""
    m = block.shape[0]
    kept_values = np.sort(block, axis=0)[f : m - f]
    np.sum(kept_values / (m - 2 * f), axis=0, out=out)
    _clip(out, kept_values[0], kept_values[-1])
