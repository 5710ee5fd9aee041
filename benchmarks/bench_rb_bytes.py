"""Bytes on the wire per node per agreement round, against the (n-1) x m lower bound.

Reliable broadcast with digest echoes should cost each node about (n-1) x m bytes per
round for vectors of m bytes (its own SEND to everyone) plus a per-message overhead that
does not grow with m, instead of Bracha's n x (n-1) x m. Payload fetches (a node that
delivers before the SEND reached it) are the only other payload-sized traffic.

    python -m benchmarks.bench_rb_bytes            # n in {4, 10, 31}, m = 4 MB
    python -m benchmarks.bench_rb_bytes --quick    # m = 256 KB
"""

from __future__ import annotations

import argparse
import platform
import random
import time

import numpy as np

from protocol.core import GradientSchedule, RoundSchedule
from tests.byzantine import BEHAVIOURS, behaviour_by_name
from tests.cluster import Cluster, RandomDelays

BUDGET_FACTOR = 1.25  # the goal: at most 1.25 x (n-1) x m per node per round (+ overhead)


def measure(n: int, m_bytes: int, rounds: int, seed: int, byzantine: bool) -> dict[str, float]:
    f = (n - 1) // 3
    dim = m_bytes // 4
    behaviours = {}
    if byzantine:
        rng = random.Random(seed)
        for i in sorted(rng.sample(range(n), f)):
            behaviours[i] = behaviour_by_name(rng.choice(BEHAVIOURS), seed + i)
    cluster = Cluster(
        n,
        f,
        dim=dim,
        adversary=RandomDelays(seed),
        behaviours=behaviours,
        crypto=True,
        schedule=RoundSchedule(GradientSchedule.CONSTANT, gradient_rounds=rounds),
    )
    rng_np = np.random.default_rng(seed)
    cluster.propose(0, 0, {i: rng_np.standard_normal(dim).astype(np.float32) for i in range(n)})
    started = time.perf_counter()
    cluster.run()
    wall_s = time.perf_counter() - started
    assert all((0, 0) in cluster.nodes[i].decided for i in cluster.honest), "not all decided"
    per_node_round = [cluster.bytes_sent[i] / rounds for i in cluster.honest]
    fetch_bytes = sum(cluster.bytes_sent_by_kind[i]["reply"] for i in cluster.honest)
    bound = (n - 1) * (m_bytes + 64)  # the payload plus its array header
    return {
        "max_ratio": max(per_node_round) / bound,
        "mean_ratio": float(np.mean(per_node_round)) / bound,
        "overhead_bytes": (max(per_node_round) - bound) / (n - 1),
        "fetch_share": fetch_bytes / max(1, sum(cluster.bytes_sent[i] for i in cluster.honest)),
        "wall_s": wall_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 KB vectors instead of 4 MB")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args(argv)
    m_bytes = 256 * 1024 if args.quick else 4 * 1024 * 1024
    print(
        f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}"
    )
    print(f"m = {m_bytes} bytes per vector, {args.rounds} rounds, random per-link delays")
    print(
        f"{'n':>3} {'f':>3} {'schedule':<10} {'max bytes/node/round':>21} {'mean':>6} "
        f"{'overhead/msg-pair':>18} {'fetch share':>11} {'wall':>7}"
    )
    ok = True
    for n in (4, 10, 31):
        for byzantine in (False, True):
            for seed in range(args.seeds):
                r = measure(n, m_bytes, args.rounds, seed, byzantine)
                label = "byzantine" if byzantine else "fault-free"
                print(
                    f"{n:>3} {(n - 1) // 3:>3} {label:<10} {r['max_ratio']:>17.3f} x(n-1)m "
                    f"{r['mean_ratio']:>6.3f} {r['overhead_bytes']:>15.0f} B "
                    f"{r['fetch_share']:>10.1%} "
                    f"{r['wall_s']:>6.1f}s"
                )
                if not byzantine and r["max_ratio"] > BUDGET_FACTOR:
                    ok = False
    print(f"goal: fault-free max <= {BUDGET_FACTOR} x (n-1) x m: {'met' if ok else 'NOT MET'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
