"""What every aggregation rule shares: input checks, L2 distances and norms without overflow.

The rules of protocol/aggregate.py, protocol/vector_rules.py and protocol/preaggregate.py
validate their input here, identically (see protocol/aggregate.py's docstring), and measure
rows here: distances and norms are computed in float64, scaled where a square could overflow
or underflow, so that no finite input (float64 values up to 1.8e308 included) turns a
distance into inf or NaN or loses it to zero.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating]
Float64Array = npt.NDArray[np.float64]

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

SQUARED_DISTANCE_UNSCALED_MIN = float(np.finfo(np.float64).tiny / np.finfo(np.float64).eps)
"""Below this a squared distance may have lost terms to underflow (squares under 2^-1022 of
differences under ~1e-154): recompute it scaled. Float32 inputs never get here (unless equal).
"""
DISTANCE_BLOCK_COLUMNS = 8192
"""Columns widened to float64 at a time for distances: two (m, 8192) float64 buffers, at most
16 MiB (m = MDA_ROWS_MAX), stay in cache while every pair of rows is compared."""


def pairwise_distances(vectors: FloatArray) -> Float64Array:
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
    return _scaled_norm(difference)


def _scaled_norm(row: Float64Array) -> float:
    scale = float(np.max(np.abs(row), initial=0.0))
    if not 0.0 < scale < math.inf:
        return scale
    return scale * math.sqrt(float(np.vdot(row / scale, row / scale)))


def widened(vectors: FloatArray, *extra: FloatArray) -> tuple[Float64Array, int]:
    """``vectors`` as a float64 copy scaled by 2**-shift, and shift.

    shift > 0 only when some |value| of ``vectors`` or of the ``extra`` arrays exceeds 1: it
    brings every value into [-1, 1], so differences of two values stay within [-2, 2] and
    sums of their squares cannot overflow. Scaling by a power of two is exact (but for
    values that become subnormal, 2^1022 times smaller than the largest), so a rule run on
    the widened rows and scaled back computes what it would on the rows themselves; a
    rule's own constants (clipping thresholds, smoothing) are scaled alike with
    ``math.ldexp(constant, -shift)``."""
    rows = vectors.astype(np.float64)
    largest = max([_largest(rows), *(_largest(array) for array in extra)])
    if largest <= 1.0:
        return rows, 0
    shift = math.frexp(largest)[1]  # largest < 2**shift
    np.ldexp(rows, -shift, out=rows)
    return rows, shift


def _largest(array: FloatArray) -> float:
    if not array.size:
        return 0.0
    return max(float(array.max()), -float(array.min()))


def row_norms(rows: Float64Array) -> Float64Array:
    """L2 norm of each row of a float64 array whose values lie within [-2, 2] (so squares
    cannot overflow: see :func:`widened`); a row whose sum of squares may have lost terms
    to underflow is recomputed scaled by its largest value."""
    squared = np.einsum("ij,ij->i", rows, rows)
    norms: Float64Array = np.sqrt(squared)
    for i in np.flatnonzero(squared < SQUARED_DISTANCE_UNSCALED_MIN):
        norms[i] = _scaled_norm(rows[i])
    return norms


def check_f(f: int) -> None:
    if isinstance(f, bool) or not isinstance(f, int | np.integer) or f < 0:
        raise ValueError(f"f must be a non-negative integer, got {f!r}")


def check_structure(vectors: np.ndarray, f: int, rows_min: int) -> None:
    """Everything but finiteness (checked by the kernel while it reads the values)."""
    check_f(f)
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


def check_finite(vectors: FloatArray) -> None:
    if vectors.size and not (np.isfinite(vectors.min()) and np.isfinite(vectors.max())):
        raise ValueError("vectors contain NaN or infinite values")


def check_rows(vectors: np.ndarray, f: int) -> None:
    """The checks of every rule that needs a majority of honest rows: structure, m > 2f, and
    finiteness (one min and one max pass)."""
    check_structure(vectors, f, rows_min=2 * f + 1)
    check_finite(vectors)


def check_reference(reference: object, d: int) -> Float64Array:
    """A rule's reference vector (the node's own, in the agreement) as float64: a finite
    length-d float array, or ValueError."""
    if not isinstance(reference, np.ndarray) or reference.dtype not in SUPPORTED_DTYPES:
        raise ValueError("reference must be a float32 or float64 numpy array")
    if reference.shape != (d,):
        raise ValueError(f"reference must have shape ({d},), got {reference.shape}")
    if not np.isfinite(reference).all():
        raise ValueError("reference contains NaN or infinite values")
    return reference.astype(np.float64)
