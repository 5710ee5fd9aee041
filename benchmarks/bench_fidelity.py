"""One learning run three ways: full fidelity, broadcast fidelity, and a server loop.

    python -m benchmarks.bench_fidelity                 # 200 steps, all three (~4 minutes)
    python -m benchmarks.bench_fidelity --skip-full     # broadcast fidelity and the loop only
    python -m benchmarks.bench_fidelity --steps 50

The run is the default scenario's learning (digits-mlp, Dirichlet(0.5) data, n=10,
f=3, log-normal delays with one slow node) with signatures off and every node honest, so
that a parameter server can do the same learning: the decentralized runs agree on each
step's gradient (log2 rounds) and then on the model (one round), where the server loop
aggregates the ten gradients once with the same trimmed mean and hands every worker the
new model. Same task, partition, trainers and seeds as the simulator's; the wall times
include building them. Goal (issue 11): broadcast fidelity in 10 s or less at 200 steps,
within about 8x of the server loop.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from protocol.aggregate import trimmed_mean
from sim.engine import run_scenario
from sim.scenario import Scenario, resolve_scenario
from sim.streams import node_trainer, task_and_parts

GOAL_BROADCAST_S = 10.0
GOAL_VS_SERVER = 8.0


def scenario(steps: int, fidelity: str) -> Scenario:
    return Scenario.from_toml(resolve_scenario("default")).with_values(
        {
            "steps": steps,
            "eval_every": steps,
            "fidelity": fidelity,
            "protocol.crypto": False,
            "byzantine.nodes": [],
            "byzantine.per_node": {},
        }
    )


def server_loop(base: Scenario) -> tuple[float, float]:
    """(wall seconds, final test accuracy) of the same learning around one server."""
    started = time.perf_counter()
    task, parts = task_and_parts(base)
    workers = [node_trainer(base, task, parts[node], node, None) for node in range(base.n)]
    server = workers[0]
    for _ in range(base.steps):
        model = server.parameters()
        for worker in workers[1:]:
            worker.set_parameters(model)
        gradients = np.stack([worker.gradient() for worker in workers])
        server.apply_gradient(trimmed_mean(gradients, base.f))
    _, accuracy = server.evaluate()
    return time.perf_counter() - started, accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--skip-full", action="store_true", help="no full-fidelity run")
    args = parser.parse_args()
    print(
        f"default scenario's learning, n=10, f=3, {args.steps} steps, signatures off, all "
        f"honest; {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
    )
    rows = []
    # broadcast first: after a full-fidelity run (5.9 M messages) the same process runs
    # the broadcast fidelity 20-40% slower in our runs (its heap and collector remember it)
    for fidelity in ("broadcast",) if args.skip_full else ("broadcast", "full"):
        started = time.perf_counter()
        run = run_scenario(scenario(args.steps, fidelity), None, progress=False)
        wall_s = time.perf_counter() - started
        assert run.completed, f"{fidelity}: incomplete ({run.stop_reason}), seed {run.seed}"
        rows.append(
            (
                f"{fidelity} fidelity",
                wall_s,
                run.honest_accuracy_min,
                f"{run.messages_sent:,} messages, {run.agreement_rounds} agreement rounds",
            )
        )
    loop_s, loop_accuracy = server_loop(scenario(args.steps, "full"))
    rows.append(("server loop", loop_s, loop_accuracy, "one trimmed mean per step"))
    print(f"{'':<20} {'wall s':>8} {'vs loop':>8} {'accuracy':>9}")
    for name, wall_s, accuracy, detail in rows:
        print(f"{name:<20} {wall_s:>8.1f} {wall_s / loop_s:>7.1f}x {accuracy:>9.3f}  {detail}")
    broadcast_s = next(wall_s for name, wall_s, *_ in rows if name.startswith("broadcast"))
    if args.steps == 200:
        verdict = "met" if broadcast_s <= GOAL_BROADCAST_S else "NOT met"
        print(
            f"    goal: broadcast fidelity <= {GOAL_BROADCAST_S:g} s: {broadcast_s:.1f} ({verdict})"
        )
    ratio = broadcast_s / loop_s
    verdict = "met" if ratio <= GOAL_VS_SERVER else "NOT met"
    print(
        f"    goal: broadcast fidelity within {GOAL_VS_SERVER:g}x of the loop: "
        f"{ratio:.1f}x ({verdict})"
    )


if __name__ == "__main__":
    main()
