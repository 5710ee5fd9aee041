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

from sim.scenario import Scenario, ScenarioError, read_toml, resolve_scenario, strategy_label
from sim.scenario_reader import suggest

#: what a cell reports back to the sweep (from its summary), in sweep.csv column order
RESULT_KEYS: Final = (
    "completed",
    "stop_reason",
    "honest_accuracy_mean",
    "honest_accuracy_min",
    "averaging_error_mean",
    "averaging_error_max",
    "messages_sent",
    "bytes_sent_total",
    "faults_total",
    "virtual_seconds",
    "wall_seconds",
    "trace_digest",
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


def value_label(axis: str, value: Any) -> str:
    """How a cell's axis value is written in tables and directory names."""
    if axis.startswith("byzantine.") and not isinstance(value, int | float | bool):
        return strategy_label(value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def _cell_dirname(cell: Mapping[str, Any], seed: int) -> str:
    labels = [value_label(axis, value) for axis, value in cell.items()]
    name = "__".join([*labels, f"seed{seed}"])
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "-", name)


def _run_cell(job: tuple[dict[str, Any], dict[str, Any], int, str]) -> dict[str, Any]:
    """One cell in a worker process: returns the RESULT_KEYS of its summary."""
    from sim.engine import run_scenario

    base, values, seed, out_dir = job
    name = f"{base.get('name', 'sweep')}/{Path(out_dir).name}"  # plot titles name the cell
    scenario = Scenario.from_dict(base).with_values({**values, "name": name}).with_seed(seed)
    summary = run_scenario(scenario, Path(out_dir), progress=False)
    data = summary.to_json()
    data["bytes_sent_total"] = sum(summary.bytes_sent.values())
    data["faults_total"] = sum(summary.faults["by_accused"].values())
    return {key: data[key] for key in RESULT_KEYS}


@dataclass(frozen=True, slots=True)
class CellResult:
    values: Mapping[str, Any]
    seed: int
    out_dir: Path
    results: Mapping[str, Any]


def run_sweep(
    grid: Grid, out_dir: Path, workers: int | None = None, *, quiet: bool = False
) -> list[CellResult]:
    """Run every cell x seed (in a spawn pool when ``workers`` > 1), write sweep.csv and
    sweep.md into ``out_dir``, and return the results in grid order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    base = grid.base.to_dict()
    jobs = [
        (base, cell, seed, str(out_dir / _cell_dirname(cell, seed)))
        for cell in grid.cells()
        for seed in grid.seeds
    ]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    if not quiet:
        print(f"sweep: {len(jobs)} runs on {workers} worker(s) -> {out_dir}", file=sys.stderr)
    if workers == 1:
        _collect(((i, _run_cell(job)) for i, job in enumerate(jobs)), jobs, results, quiet)
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            finished = pool.imap_unordered(_indexed_cell, list(enumerate(jobs)))
            _collect(finished, jobs, results, quiet)
    cells = [
        CellResult(job[1], job[2], Path(job[3]), result or {})
        for job, result in zip(jobs, results, strict=True)
    ]
    write_csv(out_dir / "sweep.csv", grid, cells)
    (out_dir / "sweep.md").write_text(markdown_table(grid, cells) + "\n", encoding="utf-8")
    return cells


def _indexed_cell(
    item: tuple[int, tuple[dict[str, Any], dict[str, Any], int, str]],
) -> tuple[int, dict[str, Any]]:
    index, job = item
    return index, _run_cell(job)


def _collect(
    finished: Any, jobs: Sequence[Any], results: list[dict[str, Any] | None], quiet: bool
) -> None:
    for done, (index, result) in enumerate(finished, start=1):
        results[index] = result
        if not quiet:
            _, values, seed, _ = jobs[index]
            cell = ", ".join(f"{k}={value_label(k, v)}" for k, v in values.items())
            accuracy = result["honest_accuracy_min"]
            shown = "-" if accuracy is None else f"{accuracy:.3f}"
            print(
                f"sweep [{done}/{len(jobs)}] {cell}, seed {seed}: honest_accuracy_min {shown}"
                f"{'' if result['completed'] else ' (INCOMPLETE)'}",
                file=sys.stderr,
            )


def write_csv(path: Path, grid: Grid, cells: Sequence[CellResult]) -> None:
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow([*grid.axes, "seed", *RESULT_KEYS, "out_dir"])
        for cell in cells:
            writer.writerow(
                [
                    *(value_label(axis, cell.values[axis]) for axis in grid.axes),
                    cell.seed,
                    *(cell.results.get(key) for key in RESULT_KEYS),
                    str(cell.out_dir),
                ]
            )


def markdown_table(grid: Grid, cells: Sequence[CellResult]) -> str:
    """``value`` by rows x columns, averaged over seeds; '*' marks incomplete runs."""
    columns = (
        [value_label(grid.columns, v) for v in grid.axes[grid.columns]] if grid.columns else [""]
    )
    groups: dict[tuple[str, str], list[float]] = {}
    incomplete: set[tuple[str, str]] = set()
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
    return "\n".join(lines)
