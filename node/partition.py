"""Split a training set among nodes: iid, Dirichlet(alpha) label skew, or label shards.

Heterogeneity is the point of the paper: with skewed data, honest gradients disagree, the
honest diameter grows, and a Byzantine node can hide inside it. These three schemes are the
usual ways to dial it (iid: none; Dirichlet: alpha -> 0 gives each node few labels; shards:
each node gets ``shards_per_node`` label-sorted slices, the McMahan et al. pathological split).

:func:`partition` is a pure function of its arguments (numpy only, one seeded Generator), so
every node computes the same partition and picks its own part by id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from protocol.settings import SettingsError, field_problems, setting

SCHEMES: Final = ("iid", "dirichlet", "shards")


@dataclass(frozen=True, slots=True)
class PartitionSettings:
    """``[partition]``: how the training set is split among the nodes (the same table in
    node configs and scenarios; every node computes the same split)."""

    scheme: str = setting(
        "iid",
        "iid, dirichlet (label skew, alpha) or shards (label-sorted slices)",
        choices=SCHEMES,
        flag="--partition",
    )
    alpha: float = setting(
        0.5, "Dirichlet concentration: smaller gives each node fewer labels", above=0.0
    )
    shards_per_node: int = setting(2, "label-sorted slices per node (shards)", minimum=1)

    def __post_init__(self) -> None:
        problems = field_problems(self)
        if problems:
            raise SettingsError(problems)


#: default floor on a Dirichlet part's size: with a small alpha some nodes would otherwise get
#: no data at all, and a node without data has no gradient to contribute
DIRICHLET_PART_SIZE_MIN: Final = 10


def partition(
    labels: np.ndarray,
    n_parts: int,
    scheme: str,
    seed: int,
    alpha: float = 1.0,
    shards_per_node: int = 2,
    part_size_min: int = DIRICHLET_PART_SIZE_MIN,
) -> list[np.ndarray]:
    """Disjoint sorted index arrays, one per part, whose union is ``range(len(labels))``.

    - ``"iid"``: a seeded shuffle cut into near-equal parts.
    - ``"dirichlet"``: each class is spread across parts in proportions drawn from
      Dirichlet(alpha); parts left under ``part_size_min`` are then topped up, one sample
      at a time, from the currently largest part (deterministic, always terminates).
    - ``"shards"``: indices sorted by label (random order within a label) are cut into
      ``n_parts * shards_per_node`` contiguous shards, dealt out at random.

    Raises ValueError for an unknown scheme or when there are too few samples to give every
    part its share.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    if n_parts < 1:
        raise ValueError(f"n_parts must be positive, got {n_parts}")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        _require_samples(len(labels), n_parts, "iid: one sample per part")
        return _sorted(np.array_split(rng.permutation(len(labels)), n_parts))
    if scheme == "dirichlet":
        if not alpha > 0:
            raise ValueError(f"dirichlet: alpha must be positive, got {alpha}")
        _require_samples(
            len(labels), n_parts * part_size_min, f"dirichlet: part_size_min={part_size_min}"
        )
        return _dirichlet(labels, n_parts, alpha, part_size_min, rng)
    if scheme == "shards":
        if shards_per_node < 1:
            raise ValueError(f"shards: shards_per_node must be positive, got {shards_per_node}")
        n_shards = n_parts * shards_per_node
        _require_samples(len(labels), n_shards, f"shards: {n_shards} non-empty shards")
        return _shards(labels, n_parts, shards_per_node, rng)
    raise ValueError(f"unknown partition scheme {scheme!r}: expected one of {', '.join(SCHEMES)}")


def describe(
    parts: list[np.ndarray], labels: np.ndarray, num_classes: int | None = None
) -> np.ndarray:
    """Per-part label histograms: an int64 array ``(len(parts), num_classes)`` of counts."""
    labels = np.asarray(labels)
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if len(labels) else 0
    histograms = np.zeros((len(parts), num_classes), dtype=np.int64)
    for i, part in enumerate(parts):
        histograms[i] = np.bincount(labels[part], minlength=num_classes)[:num_classes]
    return histograms


def _require_samples(n_samples: int, needed: int, why: str) -> None:
    if n_samples < needed:
        raise ValueError(f"{why} needs at least {needed} samples, got {n_samples}")


def _sorted(parts: list[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(part).astype(np.int64, copy=False) for part in parts]


def _dirichlet(
    labels: np.ndarray, n_parts: int, alpha: float, part_size_min: int, rng: np.random.Generator
) -> list[np.ndarray]:
    buckets: list[list[np.ndarray]] = [[] for _ in range(n_parts)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        shares = rng.dirichlet(np.full(n_parts, alpha))
        cuts = np.round(np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
        for bucket, chunk in zip(buckets, np.split(members, cuts), strict=True):
            bucket.append(chunk)
    parts = [np.concatenate(bucket) for bucket in buckets]

    # Top up small parts from the largest one. Each move lowers the total deficit by one and
    # the largest part always has more than part_size_min samples while a deficit remains
    # (n_samples >= n_parts * part_size_min), so this ends after at most that many moves.
    sizes = np.array([len(part) for part in parts])
    for needy in np.flatnonzero(sizes < part_size_min):
        taken: list[np.ndarray] = [parts[needy]]
        while sizes[needy] < part_size_min:
            donor = int(np.argmax(sizes))
            pick = int(rng.integers(sizes[donor]))
            taken.append(parts[donor][pick : pick + 1])
            parts[donor] = np.delete(parts[donor], pick)
            sizes[donor] -= 1
            sizes[needy] += 1
        parts[needy] = np.concatenate(taken)
    return _sorted(parts)


def _shards(
    labels: np.ndarray, n_parts: int, shards_per_node: int, rng: np.random.Generator
) -> list[np.ndarray]:
    shuffled = rng.permutation(len(labels))
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(by_label, n_parts * shards_per_node)
    order = rng.permutation(len(shards)).reshape(n_parts, shards_per_node)
    return _sorted([np.concatenate([shards[s] for s in row]) for row in order])
