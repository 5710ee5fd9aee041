"""Benchmark cells run in a process pool and cached one JSON line each, so that an
interrupted benchmark resumes where it stopped (bench_robustness, bench_bytes_to_accuracy).

A cell is a JSON-ready dict naming one run; ``run(cell)`` (a module-level function, for the
spawned workers) returns its record. Records are cached by :func:`cell_key` of their cell.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

Cell = dict[str, Any]


def cell_key(cell: Cell) -> str:
    return json.dumps(cell, sort_keys=True)


def run_cells(
    cells: list[Cell],
    cache: Path,
    workers: int,
    run: Callable[[Cell], dict[str, Any]],
    describe: Callable[[Cell, dict[str, Any]], str],
) -> dict[str, dict[str, Any]]:
    """Every cell's record by :func:`cell_key`, from ``cache`` (a JSONL file) or computed
    in ``workers`` processes and appended to it; ``describe(cell, record)`` is the
    progress line of a finished cell."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    done: dict[str, dict[str, Any]] = {}
    if cache.exists():
        for line in cache.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            key = record.get("key")
            if key is None and cells and all(name in record for name in cells[0]):
                key = cell_key({name: record[name] for name in cells[0]})  # an older cache
            if key is not None:
                done[key] = record
    todo = [cell for cell in cells if cell_key(cell) not in done]
    print(f"{len(cells)} cells, {len(cells) - len(todo)} cached, {len(todo)} to run", flush=True)
    if not todo:
        return done
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool, cache.open("a") as sink:
        futures = {pool.submit(run, cell): cell for cell in todo}
        for index, future in enumerate(as_completed(futures), 1):
            cell = futures[future]
            record = {**future.result(), "key": cell_key(cell)}
            sink.write(json.dumps(record, sort_keys=True) + "\n")
            sink.flush()
            done[record["key"]] = record
            print(
                f"  [{index}/{len(todo)}] {describe(cell, record)} ({record['wall_s']:.0f} s; "
                f"{time.perf_counter() - started:.0f} s so far)",
                flush=True,
            )
    return done
