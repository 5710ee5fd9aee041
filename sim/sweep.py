"""Sweeps: one scenario run over a grid of parameters, every cell in its own process.

A grid file names a base scenario, the axes to vary (dotted scenario fields) and the
table to print::

    base = "default"                      # a scenario file, or a built-in name
    seeds = [0]                           # optional: each cell runs once per seed
    [scenario]                            # optional: fields changed for every cell
    steps = 60
    [axes]
    "byzantine.strategy" = ["none", "alie", "sign_flip"]
    "protocol.aggregator" = ["trimmed_mean", "mean"]
    [table]                               # optional: defaults shown
    rows = ["byzantine.strategy"]         # every axis but the last
    columns = "protocol.aggregator"       # the last axis
    value = "honest_accuracy_min"

Cells are independent and deterministic per seed, so they run in a ``spawn`` process pool
(``workers`` defaults to every core) in any order and give the same table. Each cell
writes its full outputs to its own subdirectory; the sweep writes ``sweep.csv`` (one row
per cell and seed) and ``sweep.md`` (the table, averaged over seeds).
"""

from __future__ import annotations

import csv
import itertools
import math
import multiprocessing
import os
import re
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sim.scenario import Scenario, ScenarioError, read_toml, resolve_scenario
from sim.scenario_reader import suggest
from sim.sweep_cells import (
    ERROR_FILE,
    RESULT_KEYS,
    CellJob,
    Finished,
    run_cell,
    value_label,
)

_GRID_KEYS: Final = frozenset({"base", "seeds", "scenario", "axes", "table"})
_TABLE_KEYS: Final = frozenset({"rows", "columns", "value"})


@dataclass(frozen=True, slots=True)
class Grid:
    """A parsed grid file: the base scenario (with ``[scenario]`` applied), the axes in
    file order, the seeds, and how to lay the table out."""

    base: Scenario
    axes: Mapping[str, Sequence[Any]]
    seeds: tuple[int, ...]
    rows: tuple[str, ...]
    columns: str | None
    value: str

    @classmethod
    def from_toml(cls, path: str | Path) -> Grid:
        path = Path(path)
        data = read_toml(path)
        problems = [
            f"{path}: {key}: unknown key{suggest(key, _GRID_KEYS)}"
            for key in sorted(set(data) - _GRID_KEYS)
        ]
        base_spec = str(data.get("base", "default"))
        base_path = path.parent / base_spec  # a base next to the grid file first
        if not base_path.is_file():
            base_path = resolve_scenario(base_spec)
        axes = data.get("axes", {})
        if not isinstance(axes, Mapping) or not axes:
            problems.append(f"{path}: axes: expected a table of at least one field -> values")
            axes = {}
        for name, values in axes.items():
            if not isinstance(values, list) or not values:
                problems.append(f"{path}: axes.{name}: expected a non-empty list of values")
        table = data.get("table", {})
        if not isinstance(table, Mapping):
            problems.append(f"{path}: table: expected a table (rows, columns, value)")
            table = {}
        problems += [
            f"{path}: table.{key}: unknown key{suggest(key, _TABLE_KEYS)}"
            for key in sorted(set(table) - _TABLE_KEYS)
        ]
        names = list(axes)
        rows_spec = table.get("rows", names[:-1] if len(names) > 1 else names)
        rows = (rows_spec,) if isinstance(rows_spec, str) else tuple(rows_spec)
        columns = table.get("columns", names[-1] if len(names) > 1 else None)
        for axis in (*rows, *([columns] if columns else [])):
            if axis not in axes:
                problems.append(f"{path}: table: {axis!r} is not one of the axes {names}")
        seeds = data.get("seeds", None)
        if seeds is not None and (
            not isinstance(seeds, list) or not all(isinstance(s, int) and s >= 0 for s in seeds)
        ):
            problems.append(f"{path}: seeds: expected a list of non-negative integers")
        if problems:
            raise ScenarioError(problems)
        base = Scenario.from_toml(base_path)
        if data.get("scenario"):
            base = base.with_values(_flatten(data["scenario"]))
        for values in itertools.product(*axes.values()):  # every cell must be valid
            cell = dict(zip(names, values, strict=True))
            try:
                base.with_values(cell)
            except ScenarioError as error:
                where = ", ".join(f"{k}={value_label(k, v)}" for k, v in cell.items())
                raise ScenarioError(
                    [f"{path}: cell {where}: {p}" for p in error.problems]
                ) from None
        return cls(
            base=base,
            axes={name: list(values) for name, values in axes.items()},
            seeds=tuple(seeds) if seeds else (base.seed,),
            rows=rows,
            columns=columns,
            value=str(table.get("value", "honest_accuracy_min")),
        )

    def cells(self) -> list[dict[str, Any]]:
        """Every combination of axis values, in file order."""
        names = list(self.axes)
        return [
            dict(zip(names, values, strict=True))
            for values in itertools.product(*self.axes.values())
        ]


def _flatten(table: Mapping[str, Any]) -> dict[str, Any]:
    """{"protocol": {"crypto": false}} -> {"protocol.crypto": false}: a grid's
    ``[scenario]`` changes single fields of the base; values below a section (a strategy
    table, a delay model) are replaced whole."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}.{inner}": v for inner, v in value.items()})
        else:
            flat[key] = value
    return flat


def _cell_dirname(cell: Mapping[str, Any], seed: int) -> str:
    labels = [value_label(axis, value) for axis, value in cell.items()]
    name = "__".join([*labels, f"seed{seed}"])
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "-", name)


@dataclass(frozen=True, slots=True)
class CellResult:
    values: Mapping[str, Any]
    seed: int
    out_dir: Path
    results: Mapping[str, Any]

    @property
    def failed(self) -> bool:
        return "error" in self.results


def run_sweep(
    grid: Grid,
    out_dir: Path,
    workers: int | None = None,
    *,
    quiet: bool = False,
    ray: str | None = None,
) -> list[CellResult]:
    """Run every cell x seed and write sweep.csv and sweep.md into ``out_dir``; the
    results in grid order. Cells run in a spawn process pool (``workers`` processes,
    default every core), or as Ray tasks when ``ray`` is given: ``""`` for a local Ray
    instance (or the cluster ``RAY_ADDRESS`` names), else a cluster's address (see
    sim/sweep_ray.py). Either way each cell's outputs land in its own folder here."""
    out_dir.mkdir(parents=True, exist_ok=True)
    base = grid.base.to_dict()
    jobs = [
        CellJob(base, cell, seed, _cell_dirname(cell, seed))
        for cell in grid.cells()
        for seed in grid.seeds
    ]
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    finished: Finished
    if ray is not None:
        from sim.sweep_ray import ray_cells

        finished = ray_cells(jobs, out_dir, ray, workers, quiet=quiet)
        _collect(finished, jobs, results, quiet)
    else:
        workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
        if not quiet:
            print(f"sweep: {len(jobs)} runs on {workers} worker(s) -> {out_dir}", file=sys.stderr)
        if workers == 1:
            finished = (
                (i, run_cell(job, out_dir / job.dirname), None) for i, job in enumerate(jobs)
            )
            _collect(finished, jobs, results, quiet)
        else:
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                items = [(i, job, out_dir / job.dirname) for i, job in enumerate(jobs)]
                _collect(pool.imap_unordered(_indexed_cell, items), jobs, results, quiet)
    cells = [
        CellResult(job.values, job.seed, out_dir / job.dirname, result or {})
        for job, result in zip(jobs, results, strict=True)
    ]
    write_csv(out_dir / "sweep.csv", grid, cells)
    (out_dir / "sweep.md").write_text(markdown_table(grid, cells) + "\n", encoding="utf-8")
    return cells


def _indexed_cell(item: tuple[int, CellJob, Path]) -> tuple[int, dict[str, Any], None]:
    index, job, out_dir = item
    return index, run_cell(job, out_dir), None


def _collect(
    finished: Finished, jobs: Sequence[CellJob], results: list[dict[str, Any] | None], quiet: bool
) -> None:
    for done, (index, result, where) in enumerate(finished, start=1):
        results[index] = result
        if quiet:
            continue
        at = f" on {where}" if where else ""
        head = f"sweep [{done}/{len(jobs)}] {jobs[index].describe()}{at}"
        if "error" in result:
            print(f"{head}: FAILED: {result['error']}", file=sys.stderr)
            continue
        accuracy = result["honest_accuracy_min"]
        shown = "-" if accuracy is None else f"{accuracy:.3f}"
        print(
            f"{head}: honest_accuracy_min {shown}{'' if result['completed'] else ' (INCOMPLETE)'}",
            file=sys.stderr,
        )


def write_csv(path: Path, grid: Grid, cells: Sequence[CellResult]) -> None:
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow([*grid.axes, "seed", *RESULT_KEYS, "out_dir", "error"])
        for cell in cells:
            writer.writerow(
                [
                    *(value_label(axis, cell.values[axis]) for axis in grid.axes),
                    cell.seed,
                    *(cell.results.get(key) for key in RESULT_KEYS),
                    str(cell.out_dir),
                    cell.results.get("error", ""),
                ]
            )


def markdown_table(grid: Grid, cells: Sequence[CellResult]) -> str:
    """``value`` by rows x columns, averaged over seeds; '*' marks incomplete runs."""
    columns = (
        [value_label(grid.columns, v) for v in grid.axes[grid.columns]] if grid.columns else [""]
    )
    groups: dict[tuple[str, str], list[float]] = {}
    incomplete: set[tuple[str, str]] = set()
    failed: set[tuple[str, str]] = set()
    row_order: list[str] = []
    for cell in cells:
        row = ", ".join(value_label(axis, cell.values[axis]) for axis in grid.rows)
        column = value_label(grid.columns, cell.values[grid.columns]) if grid.columns else ""
        if row not in row_order:
            row_order.append(row)
        value = cell.results.get(grid.value)
        if isinstance(value, int | float) and math.isfinite(value):
            groups.setdefault((row, column), []).append(float(value))
        if not cell.results.get("completed", False):
            incomplete.add((row, column))
        if cell.failed:
            failed.add((row, column))
    header_row = " x ".join(grid.rows) or "run"
    title = f"{grid.value}" + (
        f" (mean over seeds {list(grid.seeds)})" if len(grid.seeds) > 1 else ""
    )
    lines = [
        f"{title}; rows: {header_row}" + (f"; columns: {grid.columns}" if grid.columns else ""),
        "",
        "| " + " | ".join([header_row, *(c or grid.value for c in columns)]) + " |",
        "|" + "|".join(["---"] + ["---:"] * len(columns)) + "|",
    ]
    for row in row_order:
        shown = []
        for column in columns:
            values = groups.get((row, column))
            text = f"{statistics.fmean(values):.3f}" if values else "-"
            shown.append(text + ("*" if (row, column) in incomplete else ""))
        lines.append("| " + " | ".join([row, *shown]) + " |")
    if incomplete:
        lines += ["", "\\* at least one run of this cell did not finish all steps"]
    if failed:
        lines += [f"(some cells failed: {ERROR_FILE} in their folders says why)"]
    return "\n".join(lines)
