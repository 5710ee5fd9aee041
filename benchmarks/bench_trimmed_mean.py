"""Trimmed mean and median against what common libraries do, on this machine.

    python -m benchmarks.bench_trimmed_mean            # the issue's three cases (1e7 values each)
    python -m benchmarks.bench_trimmed_mean --quick    # the same shapes with d / 10
    python -m benchmarks.bench_trimmed_mean --grid     # both selection methods over (m, f, dtype)

Baselines, timed in the same run: `np.sort(x, axis=0)[f:m-f].mean(axis=0)` for trimmed mean and
`np.median(x, axis=0)` for the median; a memcpy of the same input is printed for orientation.
Each time is the best of several interleaved runs (the machine is shared; the best run is the one
least disturbed). Results are checked against a float64 reference built from the sorted values;
the exit status is 1 if any result is off by more than the float tolerance. Speed goals are
reported, not enforced: timings move with the machine's load, correctness does not.

`--grid` times the network and sort methods of protocol/_select.py side by side, which is what
its CostModel constants were fitted to; rerun it to refit them on other hardware.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from protocol import _select
from protocol.aggregate import median, trimmed_mean

FloatArray = npt.NDArray[np.floating]

CASES = ((10, 1_000_000, 3), (31, 1_000_000, 10), (100, 100_000, 33))
SPEEDUP_GOAL_SMALL_F = 3.0  # the issue: >= 3x for f <= 3, no slower anywhere else
SMALL_F_MAX = 3
GRID_ROWS = (8, 16, 24, 31, 40, 50, 64, 80, 100, 128)
GRID_VALUES = 4_000_000


@dataclass(frozen=True, slots=True)
class Row:
    label: str
    baseline_s: float
    ours_s: float
    memcpy_s: float
    error_max: float
    tolerance: float
    method: str

    @property
    def speedup(self) -> float:
        return self.baseline_s / self.ours_s


def best_times(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best wall time of each callable over `repeats` interleaved rounds."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def reference_kept_mean(x: FloatArray, trim: int) -> npt.NDArray[np.float64]:
    """Float64 mean of the values of rank trim..m-trim-1, divided before adding (no overflow)."""
    m = x.shape[0]
    kept = np.sort(x, axis=0)[trim : m - trim].astype(np.float64)
    result: npt.NDArray[np.float64] = (kept / kept.shape[0]).sum(axis=0)
    return result


def tolerance(x: FloatArray, kept: int) -> float:
    """A few roundings of the largest magnitude: the result is one rounding of a k-term sum."""
    return float((kept + 2) * np.finfo(x.dtype).eps * np.abs(x).max())


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            names = [line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line]
        model = names[0] if names else model
    except OSError:
        pass
    return (
        f"{platform.platform()} | {model} | {os.cpu_count()} cores | "
        f"python {platform.python_version()} | numpy {np.__version__}"
    )


def method(m: int, d: int, trim: int, dtype: np.dtype[np.floating]) -> str:
    return "network" if _select.uses_network(m, d, trim, dtype) else "sort"


def run_case(m: int, d: int, f: int, repeats: int, seed: int) -> tuple[Row, Row]:
    x = np.random.default_rng([seed, m, d, f]).standard_normal((m, d), dtype=np.float32)
    copy = np.empty_like(x)
    times = best_times(
        {
            "memcpy": lambda: np.copyto(copy, x),
            "sort": lambda: np.sort(x, axis=0)[f : m - f].mean(axis=0),
            "trimmed_mean": lambda: trimmed_mean(x, f),
            "np.median": lambda: np.median(x, axis=0),
            "median": lambda: median(x, f),
        },
        repeats,
    )
    label = f"m={m} d={d} f={f} float32"
    ours = trimmed_mean(x, f)
    error = float(np.abs(ours - reference_kept_mean(x, f)).max())
    trimmed = Row(
        label,
        times["sort"],
        times["trimmed_mean"],
        times["memcpy"],
        error,
        tolerance(x, m - 2 * f),
        method(m, d, f, x.dtype),
    )
    middle = (m - 1) // 2
    median_error = float(np.abs(median(x, f) - np.median(x, axis=0)).max())
    medians = Row(
        label,
        times["np.median"],
        times["median"],
        times["memcpy"],
        median_error,
        tolerance(x, m - 2 * middle),
        method(m, d, middle, x.dtype),
    )
    return trimmed, medians


def print_table(title: str, baseline: str, rows: list[Row], goals: list[float] | None) -> None:
    print(f"\n{title}")
    print(
        f"{'case':32} {'memcpy ms':>9} {baseline + ' ms':>13} {'ours ms':>8} {'speed-up':>8} "
        f"{'ours/memcpy':>11} {'max abs err':>11} {'tolerance':>9}  method"
        + ("   goal" if goals else "")
    )
    for i, row in enumerate(rows):
        goal = ""
        if goals:
            met = "met" if row.speedup >= goals[i] else "MISSED"
            goal = f"   >={goals[i]:.0f}x {met}"
        print(
            f"{row.label:32} {row.memcpy_s * 1e3:9.2f} {row.baseline_s * 1e3:13.2f} "
            f"{row.ours_s * 1e3:8.2f} {row.speedup:7.2f}x {row.memcpy_s / row.ours_s:10.3f}x "
            f"{row.error_max:11.2e} {row.tolerance:9.1e}  {row.method}{goal}"
        )


def run_grid(repeats: int, seed: int) -> None:
    """Both selection methods for a spread of (m, f, dtype): ns per input value."""
    print(f"\n{'dtype':8} {'m':>4} {'f':>3} {'passes/value':>12} {'network ns/v':>12} ", end="")
    print(f"{'sort ns/v':>9}  chosen  (slower than the other by)")
    for dtype in (np.dtype(np.float32), np.dtype(np.float64)):
        for m in GRID_ROWS:
            for f in sorted({1, 3, (m - 1) // 3, (m - 1) // 2}):
                d = GRID_VALUES // m // dtype.itemsize * 4
                rng = np.random.default_rng([seed, m, f])
                x: FloatArray = rng.standard_normal((m, d)).astype(dtype)
                out = np.empty(d, dtype=dtype)
                plan = _select.selection_plan(m, f)
                times = best_times(
                    {
                        "network": functools.partial(_select._network_kept_mean, x, plan, out),
                        "sort": functools.partial(_select._sorted_kept_mean, x, f, out),
                    },
                    repeats,
                )
                chosen = method(m, d, f, dtype)
                loss = times[chosen] / min(times.values()) - 1
                print(
                    f"{dtype.name:8} {m:4d} {f:3d} {plan.passes_per_value:12.1f} "
                    f"{times['network'] / x.size * 1e9:12.2f} {times['sort'] / x.size * 1e9:9.2f}"
                    f"  {chosen:7} {f'({loss:.0%})' if loss > 0.1 else ''}",
                    flush=True,
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="d / 10 and fewer repeats")
    parser.add_argument("--grid", action="store_true", help="network vs sort over (m, f, dtype)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per case")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    repeats = args.repeats or (5 if args.quick else 11)
    print(f"machine: {machine()}")
    print(f"seed: {args.seed}, best of {repeats} interleaved runs, wall time")
    if args.grid:
        run_grid(repeats, args.seed)
        return 0
    trimmed_rows, median_rows = [], []
    for m, d, f in CASES:
        trimmed, medians = run_case(m, d // 10 if args.quick else d, f, repeats, args.seed)
        trimmed_rows.append(trimmed)
        median_rows.append(medians)
    goals = [SPEEDUP_GOAL_SMALL_F if f <= SMALL_F_MAX else 1.0 for _, _, f in CASES]
    title = "trimmed_mean vs np.sort(x, axis=0)[f:m-f].mean(axis=0)"
    print_table(title, "sort", trimmed_rows, goals)
    print_table("median vs np.median(x, axis=0)", "np.median", median_rows, None)
    wrong = [row.label for row in trimmed_rows + median_rows if row.error_max > row.tolerance]
    if wrong:
        print(f"\nMISMATCH against the reference (seed {args.seed}): {', '.join(wrong)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
