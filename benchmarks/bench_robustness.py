"""Robustness against the literature's attacks at full strength, next to the centralized
reference: the research table of issue 10, and the f x alpha heatmap.

    .venv/bin/python -m benchmarks.bench_robustness                  # table, 3 seeds
    .venv/bin/python -m benchmarks.bench_robustness --heatmap        # + f x alpha, seed 0
    .venv/bin/python -m benchmarks.bench_robustness --seeds 0 --steps 40   # a quick look

Digits, Dirichlet(0.5), n = 10, all f = 3 Byzantine nodes running the row's attack (ByzFL's
definitions, rushing: each attacker waits for every honest vector of a round), 200 steps,
signatures off, broadcast fidelity (every attack here is learning-level). Columns: trimmed-
mean agreement, the best robust configuration (``--best``), mean agreement, and the
centralized reference (``mode = "server"``) with ByzFL's TrMean and the mean, on the very
same data, trainers and attacks. Each cell: ``honest_accuracy_min`` after the last step,
mean over seeds and [min, max]. The goal: on every seed, the best configuration within
0.05 of its attack-free run and never below server TrMean on the same seed; the script
prints it cell by cell, met or not.

Cells run in a process pool (``--workers``, default 2) and each result is cached in
``--out``/cells.jsonl (delete it to start over), so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import cells as cell_cache
from benchmarks.cells import cell_key

ATTACKS = (
    "none",
    "sign_flipping",
    "inner_product_manipulation",
    "a_little_is_enough",
    "optimal_a_little_is_enough",
    "optimal_inner_product_manipulation",
    "mimic",
    "inf",
    "gaussian",
    "label_flipping",
)
#: column -> (mode, aggregator, pre-aggregators); "best" is filled in from --best
CONFIGS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "trimmed_mean agreement": ("decentralized", "trimmed_mean", ()),
    "best": ("decentralized", "trimmed_mean", ("nnm",)),
    "mean agreement": ("decentralized", "mean", ()),
    "server TrMean": ("server", "trimmed_mean", ()),
    "server mean": ("server", "mean", ()),
}
HEATMAP_F = (1, 2, 3)
HEATMAP_ALPHA = (0.1, 0.5, 1.0, 10.0)
WITHIN = 0.05


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """One run, in a worker process: the scenario the cell names, its summary figures."""
    from sim.engine import run_scenario
    from sim.scenario import Scenario, resolve_scenario

    f = cell["f"]
    values: dict[str, Any] = {
        "steps": cell["steps"],
        "eval_every": cell["steps"],
        "fidelity": "broadcast",
        "mode": cell["mode"],
        "f": f,
        "partition.alpha": cell["alpha"],
        "protocol.crypto": False,
        "protocol.aggregator": cell["aggregator"],
        "protocol.pre_aggregators": list(cell["pre"]),
        "network.slow_nodes": {},
        "byzantine.nodes": list(range(10 - f, 10)),
        "byzantine.per_node": {},
        "byzantine.strategy": cell["attack"],
        **cell["extra"],
    }
    scenario = Scenario.from_toml(resolve_scenario("default")).with_values(values)
    started = time.perf_counter()
    summary = run_scenario(scenario, None, seed=cell["seed"], progress=False)
    return {
        **cell,
        "accuracy": summary.honest_accuracy_min,
        "completed": summary.completed,
        "digest": summary.trace_digest,
        "wall_s": time.perf_counter() - started,
    }


def run_cells(cells: list[dict[str, Any]], out: Path, workers: int) -> dict[str, dict[str, Any]]:
    """Every cell's result, from the cache (``out``/cells.jsonl) or computed."""
    return cell_cache.run_cells(cells, out / "cells.jsonl", workers, run_cell, _describe)


def _describe(cell: dict[str, Any], record: dict[str, Any]) -> str:
    pre = "+" + "+".join(record["pre"]) if record["pre"] else ""
    return (
        f"{record['attack']:<36} {record['mode']:<13} {record['aggregator']}{pre}"
        f" f={record['f']} alpha={record['alpha']} seed {record['seed']}: "
        f"{record['accuracy']:.3f}"
    )


def _cell(
    attack: str,
    config: tuple[str, str, tuple[str, ...]],
    seed: int,
    steps: int,
    f: int = 3,
    alpha: float = 0.5,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    mode, aggregator, pre = config
    return {
        "attack": attack,
        "mode": mode,
        "aggregator": aggregator,
        "pre": list(pre),
        "seed": seed,
        "steps": steps,
        "f": f,
        "alpha": alpha,
        "extra": dict(extra or {}),
    }


def _fmt(values: Sequence[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.3f}"
    return f"{mean:.3f} [{min(values):.3f}, {max(values):.3f}]"


def table(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> list[str]:
    def accuracy(attack: str, column: str, seed: int) -> float:
        record = results[cell_key(_cell(attack, CONFIGS[column], seed, args.steps))]
        return float(record["accuracy"]) if record["completed"] else math.nan

    best_name = "+".join((*CONFIGS["best"][2], CONFIGS["best"][1]))
    header = ["attack", *[c if c != "best" else f"best ({best_name})" for c in CONFIGS]]
    lines = [
        f"honest_accuracy_min after {args.steps} steps, n=10, f=3, Dirichlet(0.5), seeds "
        f"{args.seeds}: mean [min, max]",
        "",
        "| " + " | ".join(header) + " |",
        "|---" + "|---:" * len(CONFIGS) + "|",
    ]
    goal_lines = []
    met_all = True
    for attack in ATTACKS:
        cells = [_fmt([accuracy(attack, column, s) for s in args.seeds]) for column in CONFIGS]
        lines.append(f"| {attack} | " + " | ".join(cells) + " |")
        if attack == "none":
            continue
        for seed in args.seeds:
            best = accuracy(attack, "best", seed)
            free = accuracy("none", "best", seed)
            server = accuracy(attack, "server TrMean", seed)
            within = best >= free - WITHIN
            above = best >= server
            met_all &= within and above
            goal_lines.append(
                f"  {attack:<36} seed {seed}: best {best:.3f}, attack-free {free:.3f} "
                f"({'within' if within else 'NOT within'} {WITHIN}), server TrMean "
                f"{server:.3f} ({'not below' if above else 'BELOW'})"
            )
    lines += ["", f"goal (best within {WITHIN} of attack-free, never below server TrMean):"]
    lines += goal_lines
    lines.append(f"goal {'MET' if met_all else 'NOT MET'} on every attack and seed")
    return lines


def heatmap(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> list[str]:
    config = CONFIGS[args.heatmap_config]
    lines = [
        "",
        f"worst case over attacks of honest_accuracy_min, {args.heatmap_config} "
        f"({'+'.join((*config[2], config[1]))}, {config[0]}), n=10, {args.steps} steps, seed "
        f"{args.seeds[0]}; rows f, columns Dirichlet alpha (the attack that did it)",
        "",
        "| f | " + " | ".join(f"alpha {a:g}" for a in HEATMAP_ALPHA) + " |",
        "|---" + "|---:" * len(HEATMAP_ALPHA) + "|",
    ]
    grid = []
    for f in HEATMAP_F:
        row = []
        for alpha in HEATMAP_ALPHA:
            worst = min(
                (
                    results[
                        cell_key(_cell(a, config, args.seeds[0], args.steps, f=f, alpha=alpha))
                    ]["accuracy"],
                    a,
                )
                for a in ATTACKS
                if a != "none"
            )
            row.append(worst)
        grid.append(row)
        lines.append(f"| {f} | " + " | ".join(f"{v:.3f} ({a})" for v, a in row) + " |")
    _plot_heatmap(args.out / "heatmap.png", [[v for v, _ in row] for row in grid])
    lines.append(f"(plot: {args.out / 'heatmap.png'})")
    return lines


def _plot_heatmap(path: Path, grid: list[list[float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="RdYlGn")
    ax.set_xticks(range(len(HEATMAP_ALPHA)), [f"{a:g}" for a in HEATMAP_ALPHA])
    ax.set_yticks(range(len(HEATMAP_F)), [str(f) for f in HEATMAP_F])
    ax.set_xlabel("Dirichlet alpha (smaller: more heterogeneous)")
    ax.set_ylabel("f (Byzantine nodes of 10)")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, label="worst-case honest accuracy")
    ax.set_title("worst case over attacks", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/robustness"))
    parser.add_argument(
        "--best",
        default="nnm+trimmed_mean",
        help="the best robust configuration: pre-aggregators and aggregator joined by +",
    )
    parser.add_argument("--heatmap", action="store_true", help="also the f x alpha heatmap")
    parser.add_argument("--heatmap-config", default="best", choices=sorted(CONFIGS))
    args = parser.parse_args(argv)
    *pre, aggregator = args.best.split("+")
    CONFIGS["best"] = ("decentralized", aggregator, tuple(pre))
    args.out.mkdir(parents=True, exist_ok=True)
    cells = [
        _cell(attack, config, seed, args.steps)
        for seed in args.seeds
        for attack in ATTACKS
        for config in dict.fromkeys(CONFIGS.values())
    ]
    if args.heatmap:
        config = CONFIGS[args.heatmap_config]
        cells += [
            _cell(attack, config, args.seeds[0], args.steps, f=f, alpha=alpha)
            for f in HEATMAP_F
            for alpha in HEATMAP_ALPHA
            for attack in ATTACKS
            if (f, alpha) != (3, 0.5)
        ]
    started = time.perf_counter()
    results = run_cells(cells, args.out, args.workers)
    lines = table(args, results)
    if args.heatmap:
        lines += heatmap(args, results)
    given = sys.argv[1:] if argv is None else list(argv)
    command = " ".join([".venv/bin/python -m benchmarks.bench_robustness", *given])
    lines += ["", f"command: {command.strip()}", f"wall: {time.perf_counter() - started:.0f} s"]
    text = "\n".join(lines)
    print(text)
    (args.out / "table.md").write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
