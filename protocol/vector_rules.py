"""Aggregators that judge each vector as a whole (by L2 distances), as ByzFL 0.0.11 defines them.

Same contract as protocol/aggregate.py: ``rule(vectors, f) -> vector``, an (m, d) float32 or
float64 array in, a length-d vector of its dtype out, ValueError (only) for invalid input
(not 2-D, another dtype, NaN/Inf, f < 0, m <= 2f). Everything is computed in float64 on
rows scaled by a power of two (protocol/_vectors.py ``widened``), so no finite input
overflows; a rule's own constants (tau, nu) are scaled alike.

Each rule matches ByzFL's class of the same name with ByzFL's defaults, on identical inputs
(tests/protocol/test_robust_aggregators.py checks this). Where ByzFL needs a starting point
(CenteredClipping's m) or a trusted index (MoNNA's idx), the rule takes a keyword-only
``reference`` vector instead; inside averaging agreement it is the node's own vector of the
round (protocol/agreement.py passes it), and when none is given it is the coordinate-wise
median of the inputs, which every honest node holding the same vectors computes alike.

Resilience (the n a rule needs to tolerate f, before the agreement's own n >= 3f+1) sits in
protocol/aggregate.py's RESILIENCE, with its source. What the rules do inside the agreement
(benchmarks/bench_aggregators.py, n = 10, f = 3 unless said otherwise) is stated per rule.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from protocol._select import kept_mean
from protocol._vectors import (
    Float64Array,
    FloatArray,
    check_reference,
    check_rows,
    pairwise_distances,
    row_norms,
    widened,
)

GEOMETRIC_MEDIAN_NU = 0.1
"""ByzFL's smoothing: a distance below nu counts as nu, so no weight is infinite."""
GEOMETRIC_MEDIAN_ITERATIONS = 3
"""ByzFL's T: smoothed Weiszfeld iterations, from the origin."""
CENTERED_CLIPPING_TAU = 100.0
"""ByzFL's clipping radius tau, in the vectors' own units (not relative to their spread)."""
CENTERED_CLIPPING_ITERATIONS = 1
"""ByzFL's L."""


def krum(vectors: np.ndarray, f: int) -> np.ndarray:
    """Krum (Blanchard et al., NeurIPS 2017): the input row with the smallest score, a row's
    score being the mean squared L2 distance to its m-f-1 nearest other rows (ByzFL's count;
    the paper sums over m-f-2, which picks the same row only when no tie or near-tie differs).
    Ties go to the lowest row index. The result is one of the inputs, bit for bit.

    Resilience: n >= 2f+3 (the paper's 2f+2 < n).

    In the agreement (benchmarks/bench_aggregators.py, n = 10, f = 3): it BREAKS validity
    when the f Byzantine nodes send one common vector: their zero distances to each other
    give that vector the best score. With sign-flipped means, a third of the honest outputs
    were the Byzantine vector, outside the honest hull by up to 0.3 honest diameters (and
    outside the per-coordinate range for 22%). Against far outliers and ALIE every output
    was an honest row; the honest nodes picked the same row, so contraction was exact."""
    check_rows(vectors, f)
    index = int(np.argmin(krum_scores(vectors, f)))
    chosen: np.ndarray = vectors[index].copy()
    return chosen


def krum_scores(vectors: FloatArray, f: int) -> Float64Array:
    """Each row's Krum score (mean squared distance to its m-f-1 nearest other rows), in the
    units of the widened rows (scaled by a power of two: the order is the rows' own)."""
    m = vectors.shape[0]
    rows, _ = widened(vectors)
    squared = pairwise_distances(rows) ** 2  # distances <= 2·sqrt(d): no overflow
    nearest = np.sort(squared, axis=1)[:, 1 : m - f]  # column 0: the row itself (0)
    if not nearest.shape[1]:
        return np.zeros(m)
    scores: Float64Array = nearest.mean(axis=1)
    return scores


def multi_krum(vectors: np.ndarray, f: int) -> np.ndarray:
    """Multi-Krum (Blanchard et al., NeurIPS 2017; El Mhamdi et al., ICML 2018): the mean of
    the m-f rows with the smallest Krum scores (ties to the lower index).

    Resilience: n >= 2f+3, as Krum.

    In the agreement (n = 10, f = 3): every output stayed within the per-coordinate honest
    range and contraction was <= 0.09 per round, but Byzantine rows that score well (ALIE,
    sign-flipped means) are averaged in: up to a third of the outputs left the honest convex
    hull (by <= 0.08 diameters). Not a breach of box validity in these runs, but no hull
    guarantee either."""
    check_rows(vectors, f)
    m = vectors.shape[0]
    chosen = np.sort(np.argsort(krum_scores(vectors, f), kind="stable")[: m - f])
    return kept_mean(vectors[chosen], 0)


def geometric_median(
    vectors: np.ndarray,
    f: int,
    *,
    nu: float = GEOMETRIC_MEDIAN_NU,
    iterations: int = GEOMETRIC_MEDIAN_ITERATIONS,
) -> np.ndarray:
    """Approximate geometric median by ByzFL's smoothed Weiszfeld iteration: from z = 0,
    ``iterations`` times z := sum_i w_i x_i / sum_i w_i with w_i = 1 / max(nu, ||x_i - z||).
    f only bounds the hostile rows (m > 2f). The result is clipped to each coordinate's
    range of the inputs, which only removes rounding (a weighted mean lies within it).

    Resilience: n >= 2f+1, the geometric median's breakdown point of 1/2 (Lopuhaä and
    Rousseeuw 1991; Chen, Su and Xu 2017; Pillutla, Kakade and Harchaoui 2022, RFA).

    In the agreement (n = 10, f = 3) it BREAKS the guarantee: three smoothed iterations
    from the origin are not the geometric median, and a far Byzantine row still pulls the
    result by about a unit vector over the honest weights (honest rows within nu of z all
    weigh 1/nu), an absolute bias that does not shrink with the honest diameter. Against
    +-1e6 outliers only 40% of the honest outputs stayed within the honest range (the worst
    2.6e6 honest diameters outside it, once the honest nodes had nearly converged) and a
    round could widen the honest diameter a millionfold; sign-flipped means: 33% in range.
    Use it only with honest vectors spread far beyond nu."""
    check_rows(vectors, f)
    if not (isinstance(nu, float | int) and nu > 0 and math.isfinite(nu)):
        raise ValueError(f"nu must be a positive finite number, got {nu!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
    rows, shift = widened(vectors)
    nu_scaled = math.ldexp(float(nu), -shift)
    z = np.zeros(rows.shape[1])
    for _ in range(iterations):
        distances = np.maximum(row_norms(rows - z), nu_scaled)
        weights = distances.min() / distances  # in (0, 1]: 1/distances could overflow
        z = (weights @ rows) / weights.sum()
    return _back(z, shift, rows, vectors.dtype)


def centered_clipping(
    vectors: np.ndarray,
    f: int,
    *,
    reference: np.ndarray | None = None,
    tau: float = CENTERED_CLIPPING_TAU,
    iterations: int = CENTERED_CLIPPING_ITERATIONS,
) -> np.ndarray:
    """Centered clipping (Karimireddy, He and Jaggi, ICML 2021), as ByzFL: from v = the
    reference, ``iterations`` times v := v + mean_i (x_i - v) · min(1, tau / ||x_i - v||).

    ByzFL starts from its ``m`` (zero at the first call, then its previous output: the rule
    is stateful there). Here the start is ``reference``: the node's own vector inside the
    agreement; the coordinate-wise median of the inputs when None. ByzFL's first call is
    ``reference=np.zeros(d)``.

    Resilience: n >= 10f, the paper's Byzantine fraction delta <= 0.1 (its Theorem III).

    In the agreement it BREAKS the guarantee: tau is absolute (100), not relative to the
    honest spread, so each Byzantine row moves the result by up to tau/m wherever it is.
    Measured at n = 30, f = 3 (the n it needs) and at n = 10, f = 1: with honest vectors of
    spread ~1 and +-1e6 outliers, 0-33% of the honest outputs stayed within the honest range
    (7 and 63 honest diameters outside); with sign-flipped means the honest diameter grew
    round after round. Validity holds only if tau is small against the honest diameter."""
    check_rows(vectors, f)
    if not (isinstance(tau, float | int) and tau >= 0 and math.isfinite(tau)):
        raise ValueError(f"tau must be a non-negative finite number, got {tau!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be a non-negative integer, got {iterations!r}")
    center = _center(vectors, reference)
    rows, shift = widened(vectors, center)
    v = np.ldexp(center, -shift)
    tau_scaled = math.ldexp(float(tau), -shift)
    for _ in range(iterations):
        differences = rows - v
        distances = row_norms(differences)
        factors = np.ones_like(distances)
        far = distances > tau_scaled
        factors[far] = tau_scaled / distances[far]
        v = v + (factors @ differences) / rows.shape[0]
    return _back(v, shift, rows, vectors.dtype, also=np.ldexp(center, -shift))


def monna(vectors: np.ndarray, f: int, *, reference: np.ndarray | None = None) -> np.ndarray:
    """MoNNA's nearest-neighbour averaging (Farhadkhani et al., ICML 2023), as ByzFL: the mean
    of the m-f rows nearest (L2) to a trusted vector, ties to the lower index.

    ByzFL takes the trusted vector as a row index (idx = 0 by default; ``reference =
    vectors[idx]`` here). In the agreement it is the node's own vector of the round, as the
    paper's peer-to-peer nodes use theirs; the coordinate-wise median of the inputs when None
    (never row 0, which may be a Byzantine node's).

    Resilience: n >= 2f+1 (a majority of the rows averaged is honest only if m-f > f).

    In the agreement (n = 10, f = 3, own vector as reference) it BREAKS validity slightly
    and contracts slowly: each node averages the m-f rows nearest its own vector, which can
    include Byzantine rows close to it (ALIE, sign-flipped means): 90-92% of the honest
    outputs stayed within the honest range (the worst 0.07 diameters outside), and a round
    shrank the honest diameter only to 0.83 of itself at worst. Far outliers: no effect."""
    check_rows(vectors, f)
    center = _center(vectors, reference)
    rows, shift = widened(vectors, center)
    distances = row_norms(rows - np.ldexp(center, -shift))
    chosen = np.sort(np.argsort(distances, kind="stable")[: vectors.shape[0] - f])
    return kept_mean(vectors[chosen], 0)


def _center(vectors: FloatArray, reference: np.ndarray | None) -> Float64Array:
    """The reference as float64, or the coordinate-wise median (numpy's convention)."""
    if reference is None:
        return kept_mean(vectors, (vectors.shape[0] - 1) // 2).astype(np.float64)
    return check_reference(reference, vectors.shape[1])


def _back(
    result: Float64Array,
    shift: int,
    rows: Float64Array,
    dtype: np.dtype[np.floating],
    also: Float64Array | None = None,
) -> npt.NDArray[np.floating]:
    """A widened result scaled back, clipped to the coordinate ranges of ``rows`` and
    ``also`` (the points it is a convex combination of: this only removes rounding), in
    ``dtype``."""
    if rows.shape[1]:
        low, high = rows.min(axis=0), rows.max(axis=0)
        if also is not None:
            np.minimum(low, also, out=low)
            np.maximum(high, also, out=high)
        np.clip(result, low, high, out=result)
    out: npt.NDArray[np.floating] = np.ldexp(result, shift).astype(dtype)
    return out
