"""Aggregators: how a node turns the m vectors it holds into one, despite f of them being hostile.

Every aggregator has the same signature, `aggregate(vectors, f) -> vector`: `vectors` is an
(m, d) float32 or float64 array, one row per node; the result is a length-d vector of the same
dtype. All of them validate their input identically and raise `ValueError` (only ValueError)
when it is not a 2-D float32/float64 array, when f < 0, when m <= 2f (m < 1 for `mean`), or when
any value is NaN or infinite. A node therefore catches ValueError around one call and never has
to guess which malformed input an aggregator will tolerate.

* `trimmed_mean` (DESIGN 4.2, RB-TM): per coordinate, drop the f largest and f smallest values,
  average the rest. Needs n >= 3f+1.
* `median`: the coordinate-wise median (numpy's convention: mean of the two middle values when m
  is even). Needs n >= 3f+1.
* `mda`, minimum-diameter averaging: average the m-f vectors of smallest diameter. Needs
  n >= 6f+1 and a better averaging constant in return; exact search, so m and f are bounded.
* `mean`: the plain, non-robust mean, kept as the baseline that one Byzantine node can move
  arbitrarily far.

The results are within each coordinate's range of the values that were averaged (so trimmed
mean stays within the honest range whenever the trimmed values include every Byzantine one),
and sums never overflow: see `protocol/_select.py`, which holds the fast kernel.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from protocol._select import kept_mean

Aggregator = Callable[[np.ndarray, int], np.ndarray]
FloatArray = npt.NDArray[np.floating]

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

MDA_SUBSETS_MAX = 100_000
"""mda searches all C(m, f) subsets exactly; beyond this many it refuses instead of stalling a
node (C(20, 5) = 15504 is fine, C(31, 5) = 169911 is not)."""
MDA_ROWS_MAX = 128
"""Distances cost m²/2 passes over d coordinates whatever f is, so rows are bounded too (128
rows cover f <= 21 at n >= 6f+1; C(m, f) already stops f at 2 for m = 100)."""
SQUARED_DISTANCE_UNSCALED_MIN = float(np.finfo(np.float64).tiny / np.finfo(np.float64).eps)
"""Below this a squared distance may have lost terms to underflow (squares under 2^-1022 of
differences under ~1e-154): recompute it scaled. Float32 inputs never get here (unless equal).
"""
DISTANCE_BLOCK_COLUMNS = 8192
"""Columns widened to float64 at a time for distances: two (m, 8192) float64 buffers, at most
16 MiB (m = MDA_ROWS_MAX), stay in cache while every pair of rows is compared."""
MDA_INDEX_BLOCK_ENTRIES = 1 << 22
"""Subset diameters are computed a chunk of subsets at a time: at most this many pair entries
(chunk · (m-f)²) are gathered at once, so memory stays bounded (32 MiB of float64)."""


def trimmed_mean(vectors: np.ndarray, f: int) -> np.ndarray:
    """Coordinate-wise trimmed mean: per coordinate, the mean of all but the f largest and the f
    smallest values. Only the kept values are added, so an outlier of any finite size is simply
    dropped. Raises ValueError on invalid input (see the module docstring)."""
    _check_structure(vectors, f, rows_min=2 * f + 1)
    return kept_mean(vectors, f)


def median(vectors: np.ndarray, f: int) -> np.ndarray:
    """Coordinate-wise median (the mean of the two middle values for even m, as np.median).

    f only bounds how many rows may be hostile (m > 2f); the median itself trims
    floor((m-1)/2) from each side."""
    _check_structure(vectors, f, rows_min=2 * f + 1)
    return kept_mean(vectors, (vectors.shape[0] - 1) // 2)


def mean(vectors: np.ndarray, f: int) -> np.ndarray:
    """Plain coordinate-wise mean: the non-robust baseline. Ignores f beyond checking f >= 0."""
    _check_structure(vectors, f, rows_min=1)
    return kept_mean(vectors, 0)


def mda(vectors: np.ndarray, f: int) -> np.ndarray:
    """Minimum-diameter averaging: the mean of the m-f rows whose largest pairwise L2 distance
    is smallest. Ties go to the lexicographically lowest tuple of (sorted) row indices.

    Exact search over the C(m, f) subsets; for f > 0, raises ValueError beyond MDA_SUBSETS_MAX
    of them or beyond MDA_ROWS_MAX rows."""
    _check_structure(vectors, f, rows_min=2 * f + 1)
    if f == 0:  # one subset, all rows: no search, no limit
        return kept_mean(vectors, 0)
    m = vectors.shape[0]
    subsets = math.comb(m, f)
    if subsets > MDA_SUBSETS_MAX or m > MDA_ROWS_MAX:
        raise ValueError(
            f"mda would search C({m}, {f}) = {subsets} subsets of {m} rows; the limits are "
            f"MDA_SUBSETS_MAX = {MDA_SUBSETS_MAX} and MDA_ROWS_MAX = {MDA_ROWS_MAX}: use fewer "
            "rows or trimmed_mean"
        )
    _check_finite(vectors)
    chosen = min_diameter_subset(pairwise_distances(vectors), m - f)
    return kept_mean(vectors[list(chosen)], 0)


def pairwise_distances(vectors: FloatArray) -> npt.NDArray[np.float64]:
    """(m, m) L2 distances between rows, in float64.

    Column blocks are widened to float64 (exactly) and each row's differences to the rows after
    it are squared and summed at once, so the work is O(m²·d) vectorised passes over cached
    blocks. A pair whose sum overflowed, or is small enough to have lost terms to underflow, is
    recomputed scaled by its largest difference; a distance truly beyond the float64 range is
    +inf, which still orders correctly."""
    m, d = vectors.shape
    squared = np.zeros((m, m), dtype=np.float64)
    columns = max(1, min(d, DISTANCE_BLOCK_COLUMNS))
    block = np.empty((m, columns), dtype=np.float64)
    differences = np.empty((m, columns), dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # caught below, pair by pair
        for start in range(0, d, columns):
            width = min(start + columns, d) - start
            np.copyto(block[:, :width], vectors[:, start : start + width])
            for i in range(m - 1):
                later = differences[: m - i - 1, :width]
                np.subtract(block[i + 1 :, :width], block[i, :width], out=later)
                squared[i, i + 1 :] += np.einsum("ij,ij->i", later, later)
    distances = np.sqrt(squared)
    for i, j in itertools.combinations(range(m), 2):
        if not SQUARED_DISTANCE_UNSCALED_MIN <= squared[i, j] < math.inf:
            distances[i, j] = _scaled_distance(vectors[i], vectors[j])
        distances[j, i] = distances[i, j]
    return distances


def _scaled_distance(a: FloatArray, b: FloatArray) -> float:
    with np.errstate(over="ignore"):
        difference = np.subtract(a, b, dtype=np.float64)
    scale = float(np.max(np.abs(difference), initial=0.0))
    if not 0.0 < scale < math.inf:
        return scale
    difference /= scale
    return scale * math.sqrt(float(np.vdot(difference, difference)))


def min_diameter_subset(distances: npt.NDArray[np.float64], size: int) -> tuple[int, ...]:
    """The sorted index tuple of `size` rows with the smallest diameter (max pairwise distance);
    among equal diameters, the lexicographically lowest tuple (combinations come in that order,
    argmin keeps the first minimum, and a later chunk must be strictly better)."""
    m = distances.shape[0]
    chunk = max(1, MDA_INDEX_BLOCK_ENTRIES // max(1, size * size))
    combos = itertools.combinations(range(m), size)
    best: tuple[int, ...] = tuple(range(size))  # the lowest tuple wins if every diameter is inf
    best_diameter = math.inf
    while batch := list(itertools.islice(combos, chunk)):
        rows = np.array(batch, dtype=np.intp).reshape(len(batch), size)
        diameters = distances[rows[:, :, None], rows[:, None, :]].max(axis=(1, 2), initial=0.0)
        first = int(np.argmin(diameters))
        if diameters[first] < best_diameter:
            best, best_diameter = tuple(batch[first]), float(diameters[first])
    return best


AGGREGATORS: Mapping[str, Aggregator] = MappingProxyType(
    {"trimmed_mean": trimmed_mean, "median": median, "mda": mda, "mean": mean}
)

_RESILIENCE = MappingProxyType({"trimmed_mean": 3, "median": 3, "mean": 3, "mda": 6})
"""n >= k·f + 1 (DESIGN 3): RB-TM's optimal 3f+1; MDA's 6f+1 (El-Mhamdi et al. 2021)."""


def get_aggregator(name: str) -> Aggregator:
    """The aggregator registered under `name`; ValueError naming the valid ones otherwise."""
    try:
        return AGGREGATORS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown aggregator {name!r}; valid: {', '.join(sorted(AGGREGATORS))}"
        ) from None


def min_nodes(name: str, f: int) -> int:
    """Fewest nodes with which `name` tolerates f Byzantine ones: 3f+1, or 6f+1 for mda."""
    get_aggregator(name)
    _check_f(f)
    return _RESILIENCE[name] * f + 1


def _check_f(f: int) -> None:
    if isinstance(f, bool) or not isinstance(f, int | np.integer) or f < 0:
        raise ValueError(f"f must be a non-negative integer, got {f!r}")


def _check_structure(vectors: np.ndarray, f: int, rows_min: int) -> None:
    """Everything but finiteness (checked by the kernel while it reads the values)."""
    _check_f(f)
    if not isinstance(vectors, np.ndarray):
        raise ValueError(f"vectors must be a numpy array, got {type(vectors).__name__}")
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be 2-D (m rows, d coordinates), got shape {vectors.shape}")
    if vectors.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"vectors must be native float32 or float64, got {vectors.dtype}")
    m = vectors.shape[0]
    if m < rows_min:
        rule = f" to tolerate f={f} (m > 2f)" if rows_min > 1 else ""
        raise ValueError(f"need at least {rows_min} vectors{rule}, got {m}")


def _check_finite(vectors: FloatArray) -> None:
    if vectors.size and not (np.isfinite(vectors.min()) and np.isfinite(vectors.max())):
        raise ValueError("vectors contain NaN or infinite values")
