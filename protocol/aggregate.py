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
* ByzFL 0.0.11's vector rules (protocol/vector_rules.py): `krum`, `multi_krum`,
  `geometric_median`, `centered_clipping`, `monna`; the last two also take a keyword-only
  `reference` vector, which the agreement sets to the node's own vector of the round.

Pre-aggregators (protocol/preaggregate.py, `PRE_AGGREGATORS`: `nnm`, `bucketing`, `clipping`,
`arc`) rewrite the rows first; `compose(aggregator, pre_aggregators)` chains them as ByzFL
does. Each rule's resilience condition is in `RESILIENCE` / `PRE_RESILIENCE`; `min_nodes`
takes the largest of a composition's and the agreement's own n >= 3f+1. What each rule does
inside the agreement is measured by benchmarks/bench_aggregators.py (docs/simulator.md).

The results are within each coordinate's range of the values that were averaged (so trimmed
mean stays within the honest range whenever the trimmed values include every Byzantine one),
and sums never overflow: see `protocol/_select.py`, which holds the fast kernel.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

import numpy as np
import numpy.typing as npt

from protocol import preaggregate, vector_rules
from protocol._select import kept_mean
from protocol._vectors import check_f as _check_f
from protocol._vectors import check_finite as _check_finite
from protocol._vectors import check_structure as _check_structure
from protocol._vectors import pairwise_distances

Aggregator = Callable[[np.ndarray, int], np.ndarray]
"""``aggregate(vectors, f) -> vector``; a rule may take keyword-only options besides."""
PreAggregator = Callable[[np.ndarray, int], np.ndarray]
"""``pre(vectors, f) -> (m', d) rows`` of the input's dtype, handed on to the aggregator."""
FloatArray = npt.NDArray[np.floating]

MDA_SUBSETS_MAX = 100_000
"""mda searches all C(m, f) subsets exactly; beyond this many it refuses instead of stalling a
node (C(20, 5) = 15504 is fine, C(31, 5) = 169911 is not)."""
MDA_ROWS_MAX = 128
"""Distances cost m²/2 passes over d coordinates whatever f is, so rows are bounded too (128
rows cover f <= 21 at n >= 6f+1; C(m, f) already stops f at 2 for m = 100)."""
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
    """Plain coordinate-wise mean: the non-robust baseline. Ignores f beyond checking f >= 0.

    In the agreement it BREAKS validity, as expected: +-1e6 outliers put every honest output
    ~1e5 honest diameters outside the honest range (benchmarks/bench_aggregators.py)."""
    _check_structure(vectors, f, rows_min=1)
    return kept_mean(vectors, 0)


def mda(vectors: np.ndarray, f: int) -> np.ndarray:
    """Minimum-diameter averaging: the mean of the m-f rows whose largest pairwise L2 distance
    is smallest. Ties go to the lexicographically lowest tuple of (sorted) row indices.

    Exact search over the C(m, f) subsets; for f > 0, raises ValueError beyond MDA_SUBSETS_MAX
    of them or beyond MDA_ROWS_MAX rows.

    In the agreement (n = 19, f = 3, benchmarks/bench_aggregators.py): every honest output
    within the honest range; ALIE vectors are sometimes among the m-f averaged, so a third
    of the outputs left the honest convex hull (by <= 0.008 honest diameters)."""
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
    {
        "trimmed_mean": trimmed_mean,
        "median": median,
        "mda": mda,
        "mean": mean,
        "krum": vector_rules.krum,
        "multi_krum": vector_rules.multi_krum,
        "geometric_median": vector_rules.geometric_median,
        "centered_clipping": vector_rules.centered_clipping,
        "monna": vector_rules.monna,
    }
)

PRE_AGGREGATORS: Mapping[str, PreAggregator] = MappingProxyType(
    {
        "nnm": preaggregate.nnm,
        "bucketing": preaggregate.bucketing,
        "clipping": preaggregate.clipping,
        "arc": preaggregate.arc,
    }
)


class ReferenceAggregator(Protocol):
    """An aggregator that also takes a reference vector (the node's own, in the agreement)."""

    def __call__(
        self, vectors: np.ndarray, f: int, /, *, reference: np.ndarray | None = None
    ) -> np.ndarray: ...


_TAKES_REFERENCE: Mapping[str, ReferenceAggregator] = MappingProxyType(
    {"centered_clipping": vector_rules.centered_clipping, "monna": vector_rules.monna}
)


@dataclass(frozen=True, slots=True)
class Resilience:
    """n >= per_f·f + plus (and n >= 1): the fewest nodes a rule needs to tolerate f
    Byzantine ones, with where the condition comes from."""

    per_f: int
    plus: int
    source: str

    def nodes(self, f: int) -> int:
        return max(1, self.per_f * f + self.plus)

    def __str__(self) -> str:
        if not self.per_f:
            return str(max(1, self.plus))
        return f"{self.per_f}f" + (f"+{self.plus}" if self.plus else "")


AGREEMENT_RESILIENCE = Resilience(3, 1, "reliable broadcast and witnesses (DESIGN 3, 4.2)")
"""Every composition needs this too, whatever its rules tolerate on their own."""

RESILIENCE: Mapping[str, Resilience] = MappingProxyType(
    {
        "trimmed_mean": Resilience(3, 1, "RB-TM, optimal (El-Mhamdi et al., NeurIPS 2021)"),
        "median": Resilience(3, 1, "coordinate-wise, as RB-TM"),
        "mean": Resilience(3, 1, "none (not robust): the agreement's"),
        "mda": Resilience(6, 1, "MDA (El-Mhamdi et al., NeurIPS 2021)"),
        "krum": Resilience(2, 3, "2f+2 < n (Blanchard et al., NeurIPS 2017)"),
        "multi_krum": Resilience(2, 3, "as Krum (Blanchard et al., NeurIPS 2017)"),
        "geometric_median": Resilience(
            2, 1, "breakdown point 1/2 (Lopuhaä and Rousseeuw 1991; Pillutla et al. 2022)"
        ),
        "centered_clipping": Resilience(
            10, 0, "Byzantine fraction <= 0.1 (Karimireddy, He and Jaggi, ICML 2021)"
        ),
        "monna": Resilience(2, 1, "an honest majority among the m-f averaged (Farhadkhani et al.)"),
    }
)
"""Each aggregator's own condition (see its docstring); min_nodes adds the agreement's."""

PRE_RESILIENCE: Mapping[str, Resilience] = MappingProxyType(
    {
        "nnm": Resilience(2, 1, "f < n/2 (Allouah et al., AISTATS 2023)"),
        "bucketing": Resilience(2, 1, "m > 2f, and the next rule sees ceil(n/s) rows"),
        "clipping": Resilience(2, 1, "none of its own; m > 2f as every rule"),
        "arc": Resilience(2, 1, "f < n/2 (Allouah et al., 2024)"),
    }
)


def get_aggregator(name: str) -> Aggregator:
    """The aggregator registered under `name`; ValueError naming the valid ones otherwise."""
    try:
        return AGGREGATORS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown aggregator {name!r}; valid: {', '.join(sorted(AGGREGATORS))}"
        ) from None


def get_pre_aggregator(name: str) -> PreAggregator:
    """The pre-aggregator registered under `name`; ValueError naming the valid ones otherwise."""
    try:
        return PRE_AGGREGATORS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown pre-aggregator {name!r}; valid: {', '.join(sorted(PRE_AGGREGATORS))}"
        ) from None


@dataclass(frozen=True, slots=True)
class Composition:
    """Pre-aggregators in order, then an aggregator, each with the same f: ByzFL's
    RobustAggregator(aggregator_info, pre_agg_list). Built (once per names) by compose."""

    aggregator: str
    pre_aggregators: tuple[str, ...]

    def __call__(
        self, vectors: np.ndarray, f: int, /, *, reference: np.ndarray | None = None
    ) -> np.ndarray:
        for name in self.pre_aggregators:
            vectors = PRE_AGGREGATORS[name](vectors, f)
        taker = _TAKES_REFERENCE.get(self.aggregator)
        if taker is not None:
            return taker(vectors, f, reference=reference)
        return AGGREGATORS[self.aggregator](vectors, f)

    def __str__(self) -> str:
        return "+".join((*self.pre_aggregators, self.aggregator))


def compose(aggregator: str, pre_aggregators: Sequence[str] = ()) -> Aggregator:
    """The rule that applies `pre_aggregators` in order, then `aggregator`. Without
    pre-aggregators, exactly get_aggregator(aggregator); otherwise one Composition per
    names, the same object at every call (VectorMemo keys results by the rule's identity).
    ValueError for unknown names, naming the valid ones."""
    if isinstance(pre_aggregators, str) or not isinstance(pre_aggregators, Sequence):
        raise ValueError(f"pre_aggregators must be a sequence of names, got {pre_aggregators!r}")
    return _compose(aggregator, tuple(pre_aggregators))


@functools.lru_cache(maxsize=256)
def _compose(aggregator: str, pre_aggregators: tuple[str, ...]) -> Aggregator:
    rule = get_aggregator(aggregator)
    for name in pre_aggregators:
        get_pre_aggregator(name)
    if not pre_aggregators:
        return rule
    return Composition(aggregator, pre_aggregators)


def reference_taker(aggregator: Aggregator) -> ReferenceAggregator | None:
    """`aggregator` as a rule that takes ``reference=`` (centered clipping, MoNNA, or a
    composition ending in one), or None: the agreement passes those the node's own vector."""
    if isinstance(aggregator, Composition):
        return aggregator if aggregator.aggregator in _TAKES_REFERENCE else None
    for taker in _TAKES_REFERENCE.values():
        if aggregator is taker:
            return taker
    return None


def aggregate_with(
    aggregator: Aggregator, vectors: np.ndarray, f: int, reference: np.ndarray | None
) -> np.ndarray:
    """``aggregator(vectors, f)``, with ``reference=`` for the rules that take one (see
    reference_taker); the others ignore it."""
    taker = None if reference is None else reference_taker(aggregator)
    if taker is None:
        return aggregator(vectors, f)
    return taker(vectors, f, reference=reference)


def min_nodes(name: str, f: int, pre_aggregators: Sequence[str] = ()) -> int:
    """Fewest nodes with which `name` after `pre_aggregators` tolerates f Byzantine ones: the
    largest requirement of the agreement (3f+1) and of every rule (RESILIENCE,
    PRE_RESILIENCE), e.g. 6f+1 for mda, 2f+3 for krum at f = 1."""
    return _binding(name, f, pre_aggregators)[2]


def tolerance_problem(
    n: int, f: int, aggregator: str, pre_aggregators: Sequence[str] = ()
) -> str | None:
    """Why n nodes cannot tolerate f Byzantine ones with this composition (naming the rule
    that refuses), or None; ValueError for unknown names or f < 0."""
    stage, rule, needed = _binding(aggregator, f, pre_aggregators)
    if n >= needed:
        return None
    label = "+".join((*pre_aggregators, aggregator))
    whose = "" if stage == label else f" ({stage}: {rule.source})"
    return f"n={n} nodes cannot tolerate f={f} with {label}: it needs n >= {rule} = {needed}{whose}"


def _binding(name: str, f: int, pre_aggregators: Sequence[str]) -> tuple[str, Resilience, int]:
    """(stage, its condition, the n it implies) of the largest requirement; the aggregator's
    own wins ties, so plain names are reported by their own rule."""
    compose(name, pre_aggregators)  # validates the names
    _check_f(f)
    pres = tuple(pre_aggregators)
    stages = [(name, RESILIENCE[name], len(pres))]
    stages += [(pre, PRE_RESILIENCE[pre], i) for i, pre in enumerate(pres)]
    stages.append(("averaging agreement", AGREEMENT_RESILIENCE, 0))
    best: tuple[str, Resilience, int] | None = None
    for stage, rule, position in stages:
        needed = rule.nodes(f)
        for earlier in reversed(pres[:position]):  # rows each earlier stage needs
            if earlier == "bucketing":
                needed = preaggregate.BUCKET_SIZE * (needed - 1) + 1
        if best is None or needed > best[2]:
            best = (stage, rule, needed)
    assert best is not None
    return best
