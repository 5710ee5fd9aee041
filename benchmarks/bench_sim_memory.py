"""Memory of a large simulation: peak resident memory per simulated node.

    python -m benchmarks.bench_sim_memory                   # n = 256, 10 steps (~2 minutes)
    python -m benchmarks.bench_sim_memory --n 128 --steps 5

Digits (digits-mlp), IID partition, f = (n-1)//3, signatures off, every node honest, at
broadcast fidelity (the fidelity that reaches these sizes). The baseline, measured in the
same process before the simulation is built, is the interpreter with torch, numpy and
scikit-learn imported and the dataset loaded once; "per node" is what the simulation adds
above it, divided by n. Every node's trainer holds only its own part of the training set
(the parts are disjoint: one copy of the dataset in all) and shares the test set. Goal
(issue 11): n = 256 in well under 8 GB.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

from node.tasks import load_task
from sim.engine import run_scenario
from sim.scenario import Scenario

GOAL_BYTES = 8 << 30


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    load_task("digits-mlp", 0)  # the imports and one copy of the data: the baseline
    baseline = peak_mib()
    scenario = Scenario.from_dict(
        {
            "name": "memory",
            "n": args.n,
            "f": (args.n - 1) // 3,
            "steps": args.steps,
            "task": "digits-mlp",
            "eval_every": args.steps,
            "fidelity": "broadcast",
            "protocol": {"crypto": False},
            "partition": {"scheme": "iid"},
        }
    )
    started = time.perf_counter()
    summary = run_scenario(scenario, None, progress=False)
    wall_s = time.perf_counter() - started
    peak = peak_mib()
    print(
        f"n={args.n}, {args.steps} steps ({summary.agreement_rounds} agreement rounds), "
        f"broadcast fidelity; {platform.machine()}, {os.cpu_count()} cores"
    )
    print(
        f"completed {summary.completed}, honest accuracy {summary.honest_accuracy_mean:.3f}, "
        f"{wall_s:.1f} s wall ({wall_s / summary.agreement_rounds:.2f} s per round)"
    )
    print(
        f"peak RSS {peak:.0f} MiB; baseline (imports + dataset) {baseline:.0f} MiB; "
        f"per node {(peak - baseline) / args.n:.2f} MiB"
    )
    verdict = "met" if peak * (1 << 20) < GOAL_BYTES else "NOT met"
    print(f"    goal: n={args.n} well under 8 GB: {peak / 1024:.2f} GiB ({verdict})")


if __name__ == "__main__":
    main()
