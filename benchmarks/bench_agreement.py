"""Contraction per round and the empirical averaging constant of RB-TM (DESIGN 7).

For each (n, f), over seeded schedules with random per-link delays and f Byzantine nodes
pulling to the extremes (half at +1e6, half at -1e6, one equivocating when f >= 2):

* contraction: honest diameter after a round / before it (1 = no progress, 0 = exact);
* averaging constant: ||mean(honest outputs) - mean(honest inputs)|| / diameter(honest
  inputs), the paper's own measure of how far Byzantine nodes drag the agreed vector.

    python -m benchmarks.bench_agreement [--seeds 20] [--rounds 5]
"""

from __future__ import annotations

import argparse
import random

import numpy as np

from protocol.codec import peek
from protocol.core import GradientSchedule, RoundSchedule
from tests.byzantine import Equivocate, fixed_value
from tests.cluster import (
    Adversary,
    Behaviour,
    Cluster,
    Deferring,
    InFlight,
    RandomDelays,
    honest_diameter,
)

SYSTEMS = [(4, 1), (7, 2), (10, 3), (13, 4)]


class SplitGroups(Deferring):
    """Any VECTOR broadcast message crossing between the low-id and high-id halves of the
    nodes waits until nothing else is in flight: each half sees the other's vectors as late
    as a fair scheduler allows."""

    def __init__(self, seed: int, n: int) -> None:
        super().__init__(seed)
        self._half = n // 2

    def defer(self, item: InFlight) -> bool:
        _, tag = peek(item.data)
        crossing = bool(tag) and (tag[0] < self._half) != (item.dst < self._half)
        return crossing and tag[4] == 0


def run(
    n: int, f: int, seed: int, rounds: int, dim: int, adversary: Adversary
) -> tuple[list[float], float]:
    byz = sorted(random.Random(seed).sample(range(n), f))
    behaviours: dict[int, Behaviour] = {
        i: fixed_value(1e6 if k % 2 else -1e6) for k, i in enumerate(byz)
    }
    if f >= 2:
        behaviours[byz[0]] = Equivocate()
    cluster = Cluster(
        n,
        f,
        dim=dim,
        adversary=adversary,
        behaviours=behaviours,
        crypto=False,
        schedule=RoundSchedule(GradientSchedule.CONSTANT, gradient_rounds=rounds),
    )
    inputs = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    cluster.propose(0, 0, {i: inputs[i] for i in range(n)})
    cluster.run()
    honest = cluster.honest
    starts = [[cluster.nodes[i].rounds[(0, 0)][r] for i in honest] for r in range(rounds)]
    outputs = [cluster.nodes[i].decided[(0, 0)] for i in honest]
    diams = [honest_diameter(vs) for vs in starts] + [honest_diameter(outputs)]
    contraction = [diams[r + 1] / diams[r] if diams[r] > 0 else 0.0 for r in range(rounds)]
    honest_inputs = inputs[honest].astype(np.float64)
    error = np.linalg.norm(np.mean(outputs, axis=0) - honest_inputs.mean(axis=0))
    return contraction, float(error / diams[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dim", type=int, default=16)
    args = parser.parse_args(argv)
    print(
        f"{args.seeds} seeds, {args.rounds} rounds, d={args.dim}, "
        "Byzantine at +-1e6 (one equivocating when f >= 2)"
    )
    schedules = {
        "random per-link delays": lambda seed: RandomDelays(seed),
        "uniformly random order": lambda seed: Adversary(seed),
        "split halves": None,
    }
    for label, make_adversary in schedules.items():
        print(f"\n{label}")
        print(
            f"{'n':>3} {'f':>2}  contraction per round: mean (max) over seeds"
            f"{'':<28} averaging constant mean / max"
        )
        for n, f in SYSTEMS:
            if label == "split halves":
                make_adversary = lambda seed, n=n: SplitGroups(seed, n)  # noqa: E731
            per_round: list[list[float]] = [[] for _ in range(args.rounds)]
            constants = []
            for seed in range(args.seeds):
                contraction, constant = run(n, f, seed, args.rounds, args.dim, make_adversary(seed))
                for r, c in enumerate(contraction):
                    per_round[r].append(c)
                constants.append(constant)
            cells = " ".join(f"{np.mean(c):.3f}({max(c):.3f})" for c in per_round)
            print(f"{n:>3} {f:>2}  {cells:<70} {np.mean(constants):.3f} / {max(constants):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
