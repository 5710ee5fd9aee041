"""Pre-aggregators: rules that rewrite the rows before an aggregator sees them (ByzFL 0.0.11).

``pre(vectors, f) -> rows``: an (m, d) float32 or float64 array in, an (m', d) array of the
same dtype out (m' = m but for bucketing), never the input itself; ValueError (only) for
invalid input, as the aggregators (not 2-D, another dtype, NaN/Inf, f < 0, m <= 2f). They
compose with an aggregator through protocol/aggregate.py ``compose``, which applies them in
order and then the aggregator, each with the same f, as ByzFL's RobustAggregator does.

Each matches ByzFL's class of the same name with ByzFL's defaults (NNM, Bucketing with s = 1,
Clipping with c = 2.0, ARC), checked on identical inputs by
tests/protocol/test_robust_aggregators.py. Norms and distances are float64 on rows scaled by
a power of two (protocol/_vectors.py), so no finite input overflows.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from protocol._select import kept_mean
from protocol._vectors import (
    FloatArray,
    check_rows,
    pairwise_distances,
    row_norms,
    widened,
)

BUCKET_SIZE = 1
"""ByzFL's default s. With s = 1 a bucket is one row: bucketing only reorders the rows, which
changes an aggregate only by rounding and the breaking of exact ties."""
CLIPPING_THRESHOLD = 2.0
"""ByzFL's static clipping threshold c, in the vectors' own units."""
BUCKETING_SEED_BYTES = 16
"""Bytes of the input's digest that seed bucketing's permutation."""


def nnm(vectors: np.ndarray, f: int) -> np.ndarray:
    """Nearest-neighbour mixing (Allouah et al., AISTATS 2023): row i becomes the mean of the
    m-f rows nearest to it (L2, itself included; ties to the lower index).

    Resilience: n >= 2f+1 (the paper's f < n/2).

    In the agreement (n = 10, f = 3): nnm + trimmed_mean kept every honest output within the
    honest range; nnm + krum did not against sign-flipped means (94%, the worst 0.1 honest
    diameters outside): Krum may still select a mixture dominated by the Byzantine vector."""
    check_rows(vectors, f)
    m = vectors.shape[0]
    rows, _ = widened(vectors)
    distances = pairwise_distances(rows)
    out = np.empty_like(vectors)
    for i in range(m):
        nearest = np.sort(np.argsort(distances[i], kind="stable")[: m - f])
        out[i] = kept_mean(vectors[nearest], 0)
    return out


def bucketing(
    vectors: np.ndarray,
    f: int,
    *,
    bucket_size: int = BUCKET_SIZE,
    permutation: np.ndarray | None = None,
) -> np.ndarray:
    """Bucketing (Karimireddy, He and Jaggi, ICLR 2022): permute the rows, cut them into
    ceil(m/s) buckets of s consecutive rows (the last one shorter if s does not divide m),
    return each bucket's mean.

    ByzFL draws the permutation from numpy's global generator. Here it is a function of the
    input: a Generator seeded from a digest of the rows' bytes (and shape and dtype), so every
    honest node holding the same rows makes the same buckets, and a run replays exactly.
    ``permutation`` (a permutation of range(m)) replaces it, e.g. to compare with ByzFL.

    Resilience: the rule after it sees ceil(m/s) rows of which up to f are Byzantine, so
    n >= s·(k-1)+1 where k is that rule's own requirement (protocol/aggregate.py min_nodes);
    the same k for s = 1."""
    check_rows(vectors, f)
    if isinstance(bucket_size, bool) or not isinstance(bucket_size, int) or bucket_size < 1:
        raise ValueError(f"bucket_size must be a positive integer, got {bucket_size!r}")
    m = vectors.shape[0]
    order = bucketing_permutation(vectors) if permutation is None else _checked(permutation, m)
    shuffled = vectors[order]
    buckets = math.ceil(m / bucket_size)
    out = np.empty((buckets, vectors.shape[1]), dtype=vectors.dtype)
    for b in range(buckets):
        out[b] = kept_mean(shuffled[b * bucket_size : (b + 1) * bucket_size], 0)
    return out


def bucketing_permutation(vectors: FloatArray) -> np.ndarray:
    """The permutation :func:`bucketing` uses for these rows: deterministic in their bytes."""
    digest = hashlib.blake2b(digest_size=BUCKETING_SEED_BYTES)
    digest.update(f"{vectors.shape}{vectors.dtype.str}".encode())
    digest.update(np.ascontiguousarray(vectors).tobytes())
    seed = int.from_bytes(digest.digest(), "little")
    return np.random.default_rng(seed).permutation(vectors.shape[0])


def _checked(permutation: object, m: int) -> np.ndarray:
    if not isinstance(permutation, np.ndarray) or permutation.dtype.kind not in "iu":
        raise ValueError("permutation must be an integer numpy array")
    if permutation.shape != (m,) or not np.array_equal(np.sort(permutation), np.arange(m)):
        raise ValueError(f"permutation must be a permutation of range({m})")
    return permutation


def clipping(vectors: np.ndarray, f: int, *, threshold: float = CLIPPING_THRESHOLD) -> np.ndarray:
    """Static clipping, as ByzFL's Clipping: each row whose L2 norm exceeds the threshold c
    is scaled down to norm c; the others are returned unchanged. f is only checked (m > 2f).

    Resilience: none of its own (n >= 1); clipping bounds every row's norm, Byzantine or not,
    and with c below the honest norms it biases the honest rows too."""
    check_rows(vectors, f)
    if not (isinstance(threshold, float | int) and threshold >= 0 and math.isfinite(threshold)):
        raise ValueError(f"threshold must be a non-negative finite number, got {threshold!r}")
    rows, shift = widened(vectors)
    return _clipped(vectors, rows, shift, row_norms(rows), math.ldexp(float(threshold), -shift))


def arc(vectors: np.ndarray, f: int) -> np.ndarray:
    """Adaptive robust clipping (Allouah et al., 2024, arXiv:2405.14432), as ByzFL's ARC: the
    k = floor(2·(f/m)·(m-f)) rows of largest norm are clipped to the norm of the largest
    remaining one (ties in norm keep the lower index among the unclipped).

    k is computed exactly, as 2f(m-f) // m; ByzFL evaluates the float expression, which is
    one less for a few (m, f) whose product is a multiple of m, e.g. (242, 33).

    Resilience: n >= 2f+1 (the paper's f < n/2; it preserves the robustness of the rule that
    follows)."""
    check_rows(vectors, f)
    m = vectors.shape[0]
    clipped = 2 * f * (m - f) // m
    if not clipped:
        return vectors.copy()
    rows, shift = widened(vectors)
    norms = row_norms(rows)
    order = np.argsort(norms, kind="stable")
    threshold = float(norms[order[m - clipped - 1]])
    return _clipped(vectors, rows, shift, norms, threshold, only=order[m - clipped :])


def _clipped(
    vectors: np.ndarray,
    rows: np.ndarray,
    shift: int,
    norms: np.ndarray,
    threshold: float,
    only: np.ndarray | None = None,
) -> np.ndarray:
    """``vectors`` with each row (of ``only``, if given) whose norm exceeds ``threshold``
    scaled down to it; ``rows``, ``norms`` and ``threshold`` are in widened units."""
    out = vectors.copy()
    candidates = np.arange(vectors.shape[0]) if only is None else only
    for i in candidates:
        if norms[i] > threshold:
            out[i] = np.ldexp(rows[i] * (threshold / norms[i]), shift)
    return out
