"""One cell of a sweep: the unit of work a process pool or a Ray task runs (sim/sweep.py,
sim/sweep_ray.py)."""

from __future__ import annotations

import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sim.scenario import Scenario, strategy_label

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


def value_label(axis: str, value: Any) -> str:
    """How a cell's axis value is written in tables and directory names."""
    if axis.startswith("byzantine.") and not isinstance(value, int | float | bool):
        return strategy_label(value)
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass(frozen=True, slots=True)
class CellJob:
    """One run of a sweep: the base scenario (as data), the cell's axis values, the seed,
    and the name of its output folder. Plain data, so it pickles to any worker."""

    base: Mapping[str, Any]
    values: Mapping[str, Any]
    seed: int
    dirname: str

    def describe(self) -> str:
        cell = ", ".join(f"{k}={value_label(k, v)}" for k, v in self.values.items())
        return f"{cell}, seed {self.seed}"


#: the name of the file a failed cell leaves in its folder, with the traceback
ERROR_FILE: Final = "error.txt"


def run_cell(job: CellJob, out_dir: Path) -> dict[str, Any]:
    """Run one cell, its outputs into ``out_dir``; the RESULT_KEYS of its summary. A
    cell that raises comes back as ``{"completed": False, "stop_reason": "failed",
    "error": ...}`` with its traceback in ``out_dir/error.txt``: one bad cell does not
    stop a sweep."""
    from sim.engine import run_scenario

    name = f"{job.base.get('name', 'sweep')}/{job.dirname}"  # plot titles name the cell
    try:
        scenario = (
            Scenario.from_dict(dict(job.base))
            .with_values({**job.values, "name": name})
            .with_seed(job.seed)
        )
        summary = run_scenario(scenario, out_dir, progress=False)
    except Exception as error:  # reported, with its traceback, per cell
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / ERROR_FILE).write_text(traceback.format_exc(), encoding="utf-8")
        return {"completed": False, "stop_reason": "failed", "error": _one_line(error)}
    data = summary.to_json()
    data["bytes_sent_total"] = sum(summary.bytes_sent.values())
    data["faults_total"] = sum(summary.faults["by_accused"].values())
    return {key: data[key] for key in RESULT_KEYS}


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


#: (index into the jobs, results, where it ran or None) as cells finish, in any order
Finished = Iterator[tuple[int, dict[str, Any], str | None]]
