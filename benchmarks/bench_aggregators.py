"""Each aggregator inside averaging agreement: does it keep validity, how fast does it contract?

For every rule of protocol.aggregate.AGGREGATORS, and for trimmed_mean, median and krum after
nnm, at n = 10, f = 3 (a rule whose resilience condition refuses that runs at the smallest n it
admits, with fewer seeds: seeds·10/n; centered clipping also at n = 10, f = 1, which its
condition admits), over seeded schedules (tests/cluster.py, no network) of two kinds: random
per-link delays, and "split halves" (benchmarks/bench_agreement.py: vectors crossing between
the low-id and high-id halves arrive last, so honest nodes aggregate different sets), with f
Byzantine nodes that lie in every round, as the core's vector filter, in one of three ways:

* ``outliers``: +1e6 or -1e6 in every coordinate, the nodes split between the two sides;
* ``alie``: mean - 1.5·std, coordinate-wise, of the honest vectors of the round known when
  the Byzantine node enters it ("A little is enough", Baruch et al. 2019);
* ``sign_flip``: minus the mean of those honest vectors.

Honest inputs are N(0, 1) in d dimensions (float64). Per rule and attack it reports:

* box: the share of honest outputs of a round (node x round) within the per-coordinate range
  of the honest vectors entering that round, and the largest excess beyond that range,
  relative to their diameter: the validity a coordinate-wise rule promises;
* hull: the share within the convex hull of those honest vectors, and the largest distance
  to it, relative to their diameter: the validity a vector rule can promise. The distance
  comes from scipy.optimize.nnls on convex weights: minimise ||V^T w - y||² + λ²(1·w - 1)²
  over w >= 0 on centred, diameter-scaled points (λ = 1e4), then renormalise w to sum to 1,
  so the reported distance is that of a point of the hull: an upper bound on the true one
  (no linear program needed); "in" means within 1e-6 of the diameter;
* contraction: honest diameter after a round / before it, the largest over rounds and seeds
  (1 = no progress; the agreement needs it well below 1);
* averaging constant: ||mean(honest outputs) - mean(honest inputs)|| / diameter(honest
  inputs), mean and max over seeds (as benchmarks/bench_agreement.py).

    python -m benchmarks.bench_aggregators [--seeds 3] [--rounds 3] [--dim 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import random
import sys
import time
from collections.abc import Sequence

import numpy as np
from scipy.optimize import nnls

from benchmarks.bench_agreement import SplitGroups
from protocol.aggregate import AGGREGATORS, min_nodes
from protocol.agreement import VectorFilter
from protocol.core import GradientSchedule, NodeCore, ProtocolConfig, RoundSchedule
from protocol.crypto import SignatureScheme
from tests.cluster import Adversary, Behaviour, Cluster, RandomDelays, honest_diameter

N, F = 10, 3
KINDS = ("outliers", "alie", "sign_flip")
OUTLIER = 1e6
ALIE_Z = 1.5
HULL_PENALTY = 1e4
INSIDE = 1e-6
"""Relative to the honest diameter: what counts as inside the box or the hull."""


SCHEDULES = ("random delays", "split halves")


def systems() -> list[tuple[str, tuple[str, ...], int | None, int]]:
    """(aggregator, pre-aggregators, n or None for the smallest admitted >= N, f)."""
    measured: list[tuple[str, tuple[str, ...], int | None, int]] = [
        (name, (), None, F) for name in AGGREGATORS
    ]
    measured += [
        ("trimmed_mean", ("nnm",), None, F),
        ("median", ("nnm",), None, F),
        ("krum", ("nnm",), None, F),
    ]
    measured.append(("centered_clipping", (), N, 1))
    return measured


def schedule(name: str, seed: int, n: int) -> Adversary:
    return RandomDelays(seed) if name == "random delays" else SplitGroups(seed, n)


def label(aggregator: str, pres: tuple[str, ...]) -> str:
    return "+".join((*pres, aggregator))


def attack(kind: str, k: int, honest: np.ndarray) -> np.ndarray:
    """The k-th Byzantine node's vector, given the honest vectors it knows of (>= 1 row)."""
    if kind == "outliers":
        return np.full(honest.shape[1], OUTLIER if k % 2 else -OUTLIER)
    if kind == "alie":
        return honest.mean(axis=0) - ALIE_Z * honest.std(axis=0)
    if kind == "sign_flip":
        return -honest.mean(axis=0)
    raise ValueError(f"unknown attack {kind!r}")


def hull_distance(points: np.ndarray, y: np.ndarray) -> float:
    """Distance from y to the convex hull of the rows of ``points``, relative to their
    diameter (an upper bound: see the module docstring)."""
    centre = points.mean(axis=0)
    scale = honest_diameter(points) or 1.0
    v = (points - centre) / scale
    target = (y - centre) / scale
    a = np.vstack([v.T, np.full(len(points), HULL_PENALTY)])
    b = np.append(target, HULL_PENALTY)
    weights, _ = nnls(a, b)
    total = weights.sum()
    if total <= 0:
        return float(np.linalg.norm(target))
    return float(np.linalg.norm(v.T @ (weights / total) - target))


def box_excess(points: np.ndarray, y: np.ndarray) -> float:
    """Largest excess of y beyond the per-coordinate range of ``points``, relative to their
    diameter."""
    scale = honest_diameter(points) or 1.0
    excess = np.maximum(points.min(axis=0) - y, y - points.max(axis=0))
    return float(max(0.0, excess.max())) / scale


@dataclasses.dataclass
class Tally:
    checks: int = 0
    in_box: int = 0
    in_hull: int = 0
    box_excess_max: float = 0.0
    hull_distance_max: float = 0.0
    contraction_max: float = 0.0
    constants: list[float] = dataclasses.field(default_factory=list)


def run(
    aggregator: str,
    pres: tuple[str, ...],
    n: int,
    f: int,
    kind: str,
    seed: int,
    rounds: int,
    dim: int,
    tally: Tally,
    scheduler: str = "random delays",
) -> None:
    byzantine = sorted(random.Random(seed).sample(range(n), f))
    clusters: list[Cluster] = []

    def known(round_: int) -> list[np.ndarray]:
        cluster = clusters[0]
        seen = [cluster.nodes[i].rounds.get((0, 0), []) for i in cluster.honest]
        return [vectors[round_] for vectors in seen if len(vectors) > round_]

    def lying(k: int) -> VectorFilter:
        def vector_filter(step: int, phase: int, round_: int, vector: np.ndarray) -> np.ndarray:
            honest = known(round_) or [vector]
            return attack(kind, k, np.stack(honest)).astype(vector.dtype)

        return vector_filter

    filters = {i: lying(k) for k, i in enumerate(byzantine)}

    def core_factory(config: ProtocolConfig, scheme: SignatureScheme) -> NodeCore:
        config = dataclasses.replace(config, pre_aggregators=pres)
        return NodeCore(config, scheme, filters.get(config.me))

    cluster = Cluster(
        n,
        f,
        dim=dim,
        adversary=schedule(scheduler, seed, n),
        behaviours={i: Behaviour() for i in byzantine},  # honest messages, lying vectors
        crypto=False,
        aggregator=aggregator,
        schedule=RoundSchedule(GradientSchedule.CONSTANT, gradient_rounds=rounds),
        dtype="<f8",
        core_factory=core_factory,
    )
    clusters.append(cluster)
    inputs = np.random.default_rng(seed).standard_normal((n, dim))
    cluster.propose(0, 0, {i: inputs[i] for i in range(n)})
    cluster.run()
    honest = cluster.honest
    starts = [np.stack([cluster.nodes[i].rounds[(0, 0)][r] for i in honest]) for r in range(rounds)]
    outputs = np.stack([cluster.nodes[i].decided[(0, 0)] for i in honest])
    stages = [*starts, outputs]
    for r in range(rounds):
        before, after = stages[r], stages[r + 1]
        diameter = honest_diameter(before)
        tally.contraction_max = max(
            tally.contraction_max, honest_diameter(after) / diameter if diameter else 0.0
        )
        for y in after:
            tally.checks += 1
            excess, distance = box_excess(before, y), hull_distance(before, y)
            tally.in_box += excess <= INSIDE
            tally.in_hull += distance <= INSIDE
            tally.box_excess_max = max(tally.box_excess_max, excess)
            tally.hull_distance_max = max(tally.hull_distance_max, distance)
    error = np.linalg.norm(outputs.mean(axis=0) - inputs[honest].mean(axis=0))
    tally.constants.append(float(error / honest_diameter(inputs[honest])))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--n-max", type=int, default=30, help="refuse rules needing more nodes")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.bench_aggregators " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    print(f"$ {command.strip()}")
    print(
        f"{args.seeds} seeds (x10/n above n=10) x {len(SCHEDULES)} schedules "
        f"({', '.join(SCHEDULES)}) per attack, {args.rounds} rounds, d={args.dim}, float64; "
        "box/hull: share of honest round outputs inside (max excess / distance, relative "
        "to the honest diameter)"
    )
    print(
        f"\n| rule | n | f | attack | in box | box excess max | in hull | hull dist max "
        f"| contraction max | avg const mean / max |\n|{' --- |' * 10}"
    )
    started = time.perf_counter()
    for aggregator, pres, fixed_n, f in systems():
        name = label(aggregator, pres)
        n = fixed_n if fixed_n is not None else max(N, min_nodes(aggregator, f, pres))
        if n > args.n_max:
            print(f"| {name} | {n} | {f} | all | refused: needs n >= {n} |{' |' * 6}")
            continue
        seeds = max(1, round(args.seeds * N / n))
        for kind in KINDS:
            tally = Tally()
            for seed, scheduler in itertools.product(range(seeds), SCHEDULES):
                run(aggregator, pres, n, f, kind, seed, args.rounds, args.dim, tally, scheduler)
            constants = tally.constants
            print(
                f"| {name} | {n} | {f} | {kind} "
                f"| {100 * tally.in_box / tally.checks:.0f}% | {tally.box_excess_max:.2g} "
                f"| {100 * tally.in_hull / tally.checks:.0f}% | {tally.hull_distance_max:.2g} "
                f"| {tally.contraction_max:.3f} "
                f"| {np.mean(constants):.3f} / {max(constants):.3f} |"
            )
    print(f"\n{time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
