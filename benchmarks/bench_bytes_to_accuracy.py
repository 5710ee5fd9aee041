"""Bytes to accuracy: local steps (H) x wire encoding against today's default (issue 12).

    .venv/bin/python -m benchmarks.bench_bytes_to_accuracy                 # all three parts
    .venv/bin/python -m benchmarks.bench_bytes_to_accuracy --part bytes    # one of them
    .venv/bin/python -m benchmarks.bench_bytes_to_accuracy --part processes --process-steps 4

Three parts, each printing its table with the command that made it:

1. **bytes**: the default scenario (`sim/scenarios/default.toml`: digits, n = 10, f = 3 with
   ALIE, equivocation + sign flipping and label flipping, log-normal delays, one slow node),
   at full fidelity, in today's configuration (H = 1, f32) and in H in {1, 4, 16} x
   encoding in {f32, bf16, int8}, evaluated after every step. For each: the bytes sent per
   honest node until ``honest_accuracy_min`` first reaches 0.85, the ratio to today's, and
   the final accuracy. H > 1 uses DiLoCo's outer optimiser (Nesterov, lr 0.7, momentum
   0.9); H = 1 today's (outer lr 1, no momentum). Then the same runs again with every link
   a constant 50 ms and a 100 Mbit/s uplink per node (``[network] bandwidth_mbps``): the
   virtual time to 0.85 and the time spent waiting on the uplinks. Goal: >= 50x fewer
   bytes than today's default.
2. **robustness**: the paper table's setting (`benchmarks/bench_robustness.py`: n = 10,
   f = 3, Dirichlet 0.5, rushing, broadcast fidelity) for every learning-level attack, the
   uncompressed f32/H = 1 run (200 steps) against the configuration of part 1 with the
   fewest bytes to 0.85 (``--best``), run for the same number of local batches (200 / H
   outer steps). Goal: within 0.03 of f32/H = 1 on every attack and seed.
3. **processes**: four real ``jungle node`` processes on loopback (``--mode process``) train
   the CIFAR CNN (>= 1M parameters) on CIFAR-shaped data this script writes in the
   CIFAR-10 binary format; bytes and wall time per step for f32/H = 1 against ``--best``.

Part 1 and 2 cells run in a process pool (``--workers``, default 2) and are cached in
``--out``/cells.jsonl (delete it to start over), so an interrupted run resumes. Wall times
depend on the machine and its load; bytes, accuracies and virtual times do not (same seed,
same digest).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import cells as cell_cache
from benchmarks.cells import cell_key

TARGET = 0.85
GOAL_RATIO = 50.0
WITHIN = 0.03
INNER_STEPS = (1, 4, 16)
ENCODINGS = ("f32", "bf16", "int8")
#: outer steps per H: enough for every configuration to pass 0.85 and settle
STEPS_FOR_H = {1: 100, 4: 40, 16: 20}
#: (outer_lr, outer_momentum) per H: H = 1 is today's loop; with local steps DiLoCo's outer
#: Nesterov SGD (Douillard et al. 2023: lr 0.7, momentum 0.9)
OUTER_FOR_H = {1: (1.0, 0.0), 4: (0.7, 0.9), 16: (0.7, 0.9)}
#: the WAN of part 1's timing pass
WAN_DELAY_S = 0.05
WAN_UPLINK_MBPS = 100.0
ROBUSTNESS_STEPS = 200
COMMAND = "python -m benchmarks.bench_bytes_to_accuracy"


# --------------------------------------------------------------------------- part 1


def bytes_cell(inner_steps: int, encoding: str, network: str) -> dict[str, Any]:
    return {
        "part": "bytes",
        "inner_steps": inner_steps,
        "encoding": encoding,
        "network": network,
        "steps": STEPS_FOR_H[inner_steps],
        "outer": list(OUTER_FOR_H[inner_steps]),
    }


def run_bytes_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """One default-scenario run: when honest_accuracy_min first reaches TARGET, at what
    cost in bytes and virtual time, and where it ends."""
    from sim.engine import run_scenario
    from sim.scenario import Scenario, resolve_scenario

    values: dict[str, Any] = {
        "steps": cell["steps"],
        "eval_every": 1,
        "training.inner_steps": cell["inner_steps"],
        "training.outer_lr": cell["outer"][0],
        "training.outer_momentum": cell["outer"][1],
        "protocol.encoding": cell["encoding"],
    }
    if cell["network"] == "wan":
        values["network.link_delay"] = {"model": "constant", "delay_s": WAN_DELAY_S}
        values["network.bandwidth_mbps"] = WAN_UPLINK_MBPS
    scenario = Scenario.from_toml(resolve_scenario("default")).with_values(values)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        summary = run_scenario(scenario, Path(out), progress=False)
        lines = (Path(out) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    records = [r for r in map(json.loads, lines) if r.get("type") == "step" and r["honest"]]
    by_step: dict[int, list[dict[str, Any]]] = {}
    for record in records:
        by_step.setdefault(record["step"], []).append(record)
    honest = len(summary.honest)
    hit: dict[str, Any] | None = None
    for step in sorted(by_step):
        rows = by_step[step]
        accuracies = [r["test_accuracy"] for r in rows]
        if len(rows) == honest and None not in accuracies and min(accuracies) >= TARGET:
            hit = {
                "step": step,
                "bytes_per_node": statistics.fmean(r["bytes_sent"] for r in rows),
                "virtual_s": max(r["time_s"] for r in rows),
                "batches": max(r["batches"] for r in rows),
            }
            break
    bandwidth = summary.to_json().get("bandwidth")
    return {
        **cell,
        "hit": hit,
        "final_accuracy": summary.honest_accuracy_min,
        "bytes_per_node_total": statistics.fmean(summary.bytes_sent[i] for i in summary.honest),
        "virtual_s": summary.virtual_seconds,
        "completed": summary.completed,
        "digest": summary.trace_digest,
        "bandwidth": bandwidth if isinstance(bandwidth, dict) else None,
        "wall_s": time.perf_counter() - started,
    }


# --------------------------------------------------------------------------- part 2


def robustness_cell(attack: str, seed: int, inner_steps: int, encoding: str) -> dict[str, Any]:
    from benchmarks.bench_robustness import CONFIGS, _cell

    extra: dict[str, Any] = {}
    if (inner_steps, encoding) != (1, "f32"):  # f32/H=1 is bench_robustness's own cell
        outer_lr, outer_momentum = OUTER_FOR_H.get(inner_steps, (1.0, 0.0))
        extra = {
            "training.inner_steps": inner_steps,
            "training.outer_lr": outer_lr,
            "training.outer_momentum": outer_momentum,
            "protocol.encoding": encoding,
        }
    steps = math.ceil(ROBUSTNESS_STEPS / inner_steps)
    return _cell(attack, CONFIGS["trimmed_mean agreement"], seed, steps, extra=extra)


# --------------------------------------------------------------------------- runner


def _run_any(cell: dict[str, Any]) -> dict[str, Any]:
    if cell.get("part") == "bytes":
        return run_bytes_cell(cell)
    from benchmarks.bench_robustness import run_cell

    return run_cell(cell)


def run_cells(cells: list[dict[str, Any]], out: Path, workers: int) -> dict[str, dict[str, Any]]:
    """Every cell's record, from the cache (``out``/cells.jsonl) or computed."""
    return cell_cache.run_cells(cells, out / "cells.jsonl", workers, _run_any, _describe)


def _describe(cell: dict[str, Any], record: dict[str, Any]) -> str:
    return f"{_label(cell)}: {_outcome(record)}"


def _label(cell: dict[str, Any]) -> str:
    if cell.get("part") == "bytes":
        return f"H={cell['inner_steps']} {cell['encoding']} ({cell['network']})"
    extra = cell["extra"]
    config = f"H={extra.get('training.inner_steps', 1)} {extra.get('protocol.encoding', 'f32')}"
    return f"{cell['attack']} seed {cell['seed']} {config}"


def _outcome(record: dict[str, Any]) -> str:
    if record.get("part") == "bytes":
        hit = record["hit"]
        reached = "never" if hit is None else f"step {hit['step']}"
        return f"0.85 at {reached}, final {record['final_accuracy']:.3f}"
    return f"{record['accuracy']:.3f}"


# --------------------------------------------------------------------------- tables


def _mb(value: float) -> str:
    return f"{value / 1e6:.2f} MB"


def bytes_table(results: dict[str, dict[str, Any]]) -> tuple[list[str], tuple[int, str] | None]:
    today = results[cell_key(bytes_cell(1, "f32", "default"))]
    base = today["hit"]["bytes_per_node"] if today["hit"] else math.nan
    lines = [
        f"`{COMMAND} --part bytes`: default scenario (n=10, f=3: ALIE, equivocation + sign "
        f"flip, label flip), full fidelity; bytes sent per honest node until "
        f"honest_accuracy_min >= {TARGET}; time: every link {WAN_DELAY_S * 1e3:.0f} ms, "
        f"{WAN_UPLINK_MBPS:.0f} Mbit/s uplinks",
        "",
        "| H | encoding | steps | 0.85 at step (0-based; local batches) | bytes/node to 0.85 | "
        "fewer than today | virtual s to 0.85 (WAN) | uplink busy s/node, whole run (WAN) | "
        "final acc |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    best: tuple[float, tuple[int, str]] | None = None
    for h in INNER_STEPS:
        for encoding in ENCODINGS:
            run = results[cell_key(bytes_cell(h, encoding, "default"))]
            wan = results[cell_key(bytes_cell(h, encoding, "wan"))]
            hit, wan_hit = run["hit"], wan["hit"]
            name = "today's default" if (h, encoding) == (1, "f32") else ""
            reached = "never" if hit is None else f"{hit['step']} ({hit['batches']})"
            spent = "-" if hit is None else _mb(hit["bytes_per_node"])
            ratio = "-" if hit is None else f"{base / hit['bytes_per_node']:.1f}x"
            wan_time = "never" if wan_hit is None else f"{wan_hit['virtual_s']:.1f}"
            lines.append(
                f"| {h} | {encoding} {name} | {run['steps']} | {reached} | {spent} | {ratio} | "
                f"{wan_time} | {_uplink_wait(wan)} | {run['final_accuracy']:.3f} |"
            )
            if hit is not None and (best is None or hit["bytes_per_node"] < best[0]):
                best = (hit["bytes_per_node"], (h, encoding))
    if best is not None:
        ratio = base / best[0]
        verdict = "MET" if ratio >= GOAL_RATIO else "NOT MET"
        lines += [
            "",
            f"fewest bytes to {TARGET}: H={best[1][0]} {best[1][1]}, {_mb(best[0])} against "
            f"{_mb(base)} today: {ratio:.1f}x fewer (goal {GOAL_RATIO:.0f}x: {verdict})",
        ]
    return lines, None if best is None else best[1]


def _uplink_wait(record: dict[str, Any]) -> str:
    bandwidth = record.get("bandwidth")
    if not bandwidth:
        return "-"
    return f"{bandwidth['honest_uplink_busy_s_mean']:.2f}"


def robustness_table(
    results: dict[str, dict[str, Any]], seeds: Sequence[int], best: tuple[int, str]
) -> list[str]:
    from benchmarks.bench_robustness import ATTACKS

    h, encoding = best
    lines = [
        f"`{COMMAND} --part robustness --best {h},{encoding}`: honest_accuracy_min, n=10, "
        f"f=3, Dirichlet(0.5), rushing attackers, seeds {list(seeds)}; f32/H=1 "
        f"{ROBUSTNESS_STEPS} steps against H={h} {encoding} "
        f"{math.ceil(ROBUSTNESS_STEPS / h)} outer steps (the same local batches)",
        "",
        f"| attack | f32, H=1 | H={h}, {encoding} | difference (min over seeds) |",
        "|---|---:|---:|---:|",
    ]
    met = True
    for attack in ATTACKS:
        base = [results[cell_key(robustness_cell(attack, s, 1, "f32"))]["accuracy"] for s in seeds]
        comp = [
            results[cell_key(robustness_cell(attack, s, h, encoding))]["accuracy"] for s in seeds
        ]
        worst = min(c - b for b, c in zip(base, comp, strict=True))
        if attack != "none":
            met &= worst >= -WITHIN
        lines.append(f"| {attack} | {_fmt(base)} | {_fmt(comp)} | {worst:+.3f} |")
    lines.append(
        f"goal (within {WITHIN} of f32/H=1 on every learning-level attack and seed): "
        f"{'MET' if met else 'NOT MET'}"
    )
    return lines


def _fmt(values: Sequence[float]) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.3f}"
    return f"{mean:.3f} [{min(values):.3f}, {max(values):.3f}]"


# --------------------------------------------------------------------------- part 3


def processes(best: tuple[int, str], steps: int, out: Path) -> list[str]:
    """Four real node processes on the CIFAR CNN: f32/H=1 against ``best``."""
    from node.datasets import write_synthetic_cifar10
    from sim.process_mode import run_processes
    from sim.scenario import Scenario

    data_dir = (out / "cifar10-synthetic").resolve()
    if not (data_dir / "test_batch.bin").exists():
        write_synthetic_cifar10(data_dir, seed=0)
    rows = []
    for h, encoding in ((1, "f32"), best):
        scenario = Scenario.from_dict(
            {
                "name": f"cifar-processes-H{h}-{encoding}",
                "n": 4,
                "f": 1,
                "steps": steps,
                "eval_every": steps,
                "task": {"name": "cifar10", "data_dir": str(data_dir)},
                "training": {
                    "lr": 0.05,
                    "batch_size": 32,
                    "inner_steps": h,
                    "outer_lr": OUTER_FOR_H.get(h, (1.0, 0.0))[0],
                    "outer_momentum": OUTER_FOR_H.get(h, (1.0, 0.0))[1],
                    "device": "cpu",
                },
                "protocol": {"encoding": encoding},
                "byzantine": {"nodes": []},
            }
        )
        run_dir = out / f"processes-H{h}-{encoding}"
        summary = run_processes(scenario, run_dir, progress=False)
        per_step = _process_step_times(run_dir)
        sent = statistics.fmean(summary.bytes_sent[i] for i in summary.honest)
        rows.append(
            (h, encoding, summary, sent / max(1, summary.steps), per_step, summary.completed)
        )
    base_bytes, base_time = rows[0][3], rows[0][4]
    lines = [
        f"`{COMMAND} --part processes --process-steps {steps}`: 4 `jungle node` processes on "
        f"loopback (signatures on), the CIFAR CNN, synthetic CIFAR-10 binary files, {steps} "
        "outer steps each",
        "",
        "| H | encoding | completed | bytes/node/step | wall s/step | bytes/node per local "
        "batch | wall s per local batch | fewer bytes per batch | faster per batch |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for h, encoding, _summary, per_bytes, per_time, completed in rows:
        lines.append(
            f"| {h} | {encoding} | {completed} | {_mb(per_bytes)} | {per_time:.2f} | "
            f"{_mb(per_bytes / h)} | {per_time / h:.3f} | "
            f"{base_bytes * h / per_bytes:.1f}x | {base_time * h / per_time:.1f}x |"
        )
    lines.append(
        "(a step of H local batches runs one gradient and one model agreement; per local "
        "batch is the cost of the same training compute)"
    )
    return lines


def _process_step_times(run_dir: Path) -> float:
    """Median wall seconds between consecutive steps of the honest nodes."""
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    times: dict[int, dict[int, float]] = {}
    for record in map(json.loads, lines):
        if record.get("type") == "step" and record.get("honest"):
            times.setdefault(record["node"], {})[record["step"]] = record["time_s"]
    gaps = [
        by_step[s] - by_step[s - 1]
        for by_step in times.values()
        for s in by_step
        if s - 1 in by_step
    ]
    return statistics.median(gaps) if gaps else math.nan


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("all", "bytes", "robustness", "processes"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--best", help="H,encoding for parts 2 and 3 (default: part 1's)")
    parser.add_argument("--process-steps", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/bytes_to_accuracy"))
    args = parser.parse_args(argv)
    part = args.part or "all"
    started = time.perf_counter()
    output: list[str] = []
    best: tuple[int, str] | None = None
    if args.best:
        h, _, encoding = args.best.partition(",")
        best = (int(h), encoding)
    if part in ("all", "bytes") or best is None:
        cells = [
            bytes_cell(h, e, network)
            for network in ("default", "wan")
            for h in INNER_STEPS
            for e in ENCODINGS
        ]
        results = run_cells(cells, args.out, args.workers)
        lines, found = bytes_table(results)
        best = best or found
        output += [*lines, ""]
    if best is None:
        print("no configuration reached the target: nothing to compare", file=sys.stderr)
        return 1
    if part in ("all", "robustness"):
        from benchmarks.bench_robustness import ATTACKS

        cells = [
            robustness_cell(attack, seed, h, e)
            for (h, e) in ((1, "f32"), best)
            for attack in ATTACKS
            for seed in args.seeds
        ]
        results = run_cells(cells, args.out, args.workers)
        output += [*robustness_table(results, args.seeds, best), ""]
    if part in ("all", "processes"):
        output += [*processes(best, args.process_steps, args.out), ""]
    print()
    print("\n".join(output))
    (args.out / "table.md").write_text("\n".join(output) + "\n", encoding="utf-8")
    print(f"({time.perf_counter() - started:.0f} s; tables in {args.out / 'table.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
