"""Partitions are exact, seeded covers whose heterogeneity follows the scheme."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.partition import DIRICHLET_PART_SIZE_MIN, describe, partition

NUM_CLASSES = 10


def balanced_labels(n_samples: int, seed: int = 0) -> np.ndarray:
    """Shuffled labels, about n_samples / NUM_CLASSES of each class (like digits)."""
    return np.random.default_rng(seed).permutation(np.arange(n_samples) % NUM_CLASSES)


def assert_exact_cover(parts: list[np.ndarray], n_samples: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n_samples, "parts overlap or miss samples"
    assert np.array_equal(np.sort(joined), np.arange(n_samples))
    for part in parts:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0), "each part is sorted, without duplicates"


def mean_label_entropy_bits(parts: list[np.ndarray], labels: np.ndarray) -> float:
    histograms = describe(parts, labels, NUM_CLASSES).astype(np.float64)
    p = histograms / histograms.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log2(p), 0.0)
    return float(terms.sum(axis=1).mean())


@settings(max_examples=60, deadline=None)
@given(
    scheme=st.sampled_from(["iid", "dirichlet", "shards"]),
    n_parts=st.integers(1, 12),
    extra_samples=st.integers(0, 300),
    num_classes=st.integers(1, 6),
    alpha=st.floats(0.01, 100.0),
    shards_per_node=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_scheme_is_an_exact_cover(
    scheme: str,
    n_parts: int,
    extra_samples: int,
    num_classes: int,
    alpha: float,
    shards_per_node: int,
    seed: int,
) -> None:
    n_samples = n_parts * max(DIRICHLET_PART_SIZE_MIN, shards_per_node) + extra_samples
    labels = np.random.default_rng(seed).integers(0, num_classes, n_samples)
    parts = partition(labels, n_parts, scheme, seed, alpha=alpha, shards_per_node=shards_per_node)
    assert len(parts) == n_parts
    assert_exact_cover(parts, n_samples)
    assert min(len(part) for part in parts) >= 1


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_partition_is_a_pure_function_of_the_seed(scheme: str) -> None:
    labels = balanced_labels(1000)
    first = partition(labels, 7, scheme, seed=11, alpha=0.5)
    again = partition(labels.copy(), 7, scheme, seed=11, alpha=0.5)
    other = partition(labels, 7, scheme, seed=12, alpha=0.5)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_iid_parts_are_balanced_in_size_and_labels() -> None:
    labels = balanced_labels(1000)
    parts = partition(labels, 10, "iid", seed=3)
    assert {len(part) for part in parts} == {100}
    # every label shows up on every node when each node holds ~10 of each
    assert np.all(describe(parts, labels) > 0)


def test_small_alpha_dirichlet_is_skewed_and_large_alpha_is_not() -> None:
    labels = balanced_labels(2000)
    iid = mean_label_entropy_bits(partition(labels, 10, "iid", seed=5), labels)
    skewed = mean_label_entropy_bits(partition(labels, 10, "dirichlet", 5, alpha=0.1), labels)
    mild = mean_label_entropy_bits(partition(labels, 10, "dirichlet", 5, alpha=100.0), labels)
    assert iid > 3.2  # log2(10) = 3.32 for a perfectly uniform node
    assert skewed < iid - 1.0, (skewed, iid)
    assert mild > iid - 0.1, (mild, iid)


@pytest.mark.parametrize("seed", range(5))
def test_dirichlet_tops_up_every_part_to_the_minimum(seed: int) -> None:
    labels = balanced_labels(400, seed)
    parts = partition(labels, 20, "dirichlet", seed, alpha=0.01, part_size_min=15)
    assert_exact_cover(parts, 400)
    assert min(len(part) for part in parts) >= 15, f"seed={seed}"


def test_shards_give_each_node_about_shards_per_node_labels() -> None:
    labels = balanced_labels(2000)
    for shards_per_node in (1, 2, 3):
        parts = partition(labels, 10, "shards", seed=9, shards_per_node=shards_per_node)
        labels_per_node = (describe(parts, labels) > 0).sum(axis=1)
        # a shard is smaller than a class, so it spans at most two labels
        assert labels_per_node.max() <= 2 * shards_per_node
        assert labels_per_node.mean() <= shards_per_node + 1
        sizes = [len(part) for part in parts]
        assert max(sizes) - min(sizes) <= shards_per_node  # shards differ by at most one


def test_describe_counts_labels_per_part() -> None:
    labels = np.array([0, 0, 1, 2, 2, 2])
    parts = [np.array([0, 2]), np.array([1, 3, 4, 5])]
    assert describe(parts, labels).tolist() == [[1, 1, 0], [1, 0, 3]]
    assert describe(parts, labels, num_classes=4).tolist() == [[1, 1, 0, 0], [1, 0, 3, 0]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scheme": "random"}, "unknown partition scheme"),
        ({"scheme": "iid", "n_parts": 0}, "n_parts must be positive"),
        ({"scheme": "iid", "n_parts": 51}, "at least 51 samples"),
        ({"scheme": "dirichlet", "alpha": 0.0}, "alpha must be positive"),
        ({"scheme": "dirichlet", "n_parts": 6}, "part_size_min=10"),
        ({"scheme": "shards", "n_parts": 20, "shards_per_node": 3}, "60 non-empty shards"),
        ({"scheme": "shards", "shards_per_node": 0}, "shards_per_node must be positive"),
    ],
)
def test_impossible_requests_are_refused_with_a_reason(
    kwargs: dict[str, Any], message: str
) -> None:
    arguments = {"labels": balanced_labels(50), "n_parts": 4, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        partition(**arguments)
