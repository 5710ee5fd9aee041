"""Sweeps on Ray: ``jungle sim --sweep GRID --ray [ADDRESS]`` (``pip install -e '.[ray]'``).

Each cell x seed is one Ray task (one CPU). The task runs the cell in a temporary folder
on whichever machine Ray picked, and returns its results with every output file as
bytes; the driver writes them into the cell's folder under ``--out``, so a sweep's outputs
look the same wherever its cells ran. jungle's own packages travel with the tasks (Ray's
``py_modules``): the machines need the dependencies (``scripts/setup.sh``), not this
checkout.

A cell is a pure function of its scenario and seed, so the table and every trace digest
equal a local run's, provided the workers compute with the same libraries: each task
reports its environment (Python, numpy, torch, ...), and a cell from a worker whose
environment differs from the driver's fails with the difference named, rather than
silently giving other numbers.

``ADDRESS`` is what ``ray.init`` takes: none for a local Ray instance (or the cluster
``RAY_ADDRESS`` names), ``auto`` for the cluster this machine is part of, ``HOST:6379``
for a cluster's head node, or ``ray://HOST:10001`` through the Ray client (which needs
``pip install "ray[client]==2.60.0"``). Custom plugins a grid names (``module:Class``
schedulers or strategies) must be importable on the workers too.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import platform
import socket
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sim.scenario import ScenarioError
from sim.sweep_cells import ERROR_FILE, CellJob, Finished, run_cell

#: distributions whose versions change what a cell computes
_VERSIONED = ("numpy", "torch", "scikit-learn", "msgpack", "blake3", "pynacl", "cryptography")
#: jungle's packages, shipped to the workers with every task
_PACKAGES = ("protocol", "node", "sim")


@functools.cache
def environment() -> dict[str, str]:
    """What a cell's results depend on besides its scenario: library versions and a
    digest of jungle's own source files (computed once per process)."""
    found = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "missing"
    code = hashlib.blake2b(digest_size=16)
    for package in _PACKAGES:
        root = _package_dir(package)
        for path in sorted(root.rglob("*")):
            if path.suffix in {".py", ".toml"} and "__pycache__" not in path.parts:
                code.update(str(path.relative_to(root.parent)).encode())
                code.update(path.read_bytes())
    found["jungle source"] = code.hexdigest()
    return found


def _package_dir(name: str) -> Path:
    module = sys.modules.get(name) or __import__(name)
    return Path(module.__file__ or "").parent


def _ray_cell(job: CellJob) -> tuple[dict[str, Any], dict[str, bytes], str, dict[str, str]]:
    """A Ray task: (results, output files by relative path, host, environment)."""
    with tempfile.TemporaryDirectory(prefix="jungle-cell-") as tmp:
        out_dir = Path(tmp) / job.dirname
        results = run_cell(job, out_dir)
        files = {
            str(path.relative_to(out_dir)): path.read_bytes()
            for path in sorted(out_dir.rglob("*"))
            if path.is_file()
        }
    return results, files, socket.gethostname(), environment()


def _differences(ours: dict[str, str], theirs: dict[str, str]) -> str:
    return ", ".join(
        f"{key} {theirs.get(key, 'missing')} (here {value})"
        for key, value in ours.items()
        if theirs.get(key) != value
    )


def ray_cells(
    jobs: Sequence[CellJob], out_dir: Path, address: str, workers: int | None, *, quiet: bool
) -> Finished:
    """Run ``jobs`` as Ray tasks; yield (index, results, host) as they finish, after
    writing each cell's files into ``out_dir``."""
    try:
        import ray
    except ImportError:
        raise ScenarioError(
            ["--ray needs Ray, an optional extra: pip install -e '.[ray]'"]
        ) from None
    started_here = not ray.is_initialized()
    if started_here:
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address:
            options["address"] = address
        elif workers and not os.environ.get("RAY_ADDRESS"):
            options["num_cpus"] = workers  # a local instance of this size
        options["runtime_env"] = {
            "py_modules": [str(_package_dir(name)) for name in _PACKAGES],
            "excludes": ["__pycache__"],
        }
        if address or os.environ.get("RAY_ADDRESS"):
            _check_reachable(address or os.environ["RAY_ADDRESS"])
        try:
            ray.init(**options)
        except Exception as error:  # unreachable address, ray:// without ray[client], ...
            where = address or os.environ.get("RAY_ADDRESS") or "a local instance"
            raise ScenarioError(
                [f"--ray: cannot start or reach Ray at {where}: {_brief(error)}"]
            ) from None
    try:
        yield from _run(ray, jobs, out_dir, quiet)
    finally:
        if started_here:
            ray.shutdown()


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast, in one line, on a ``HOST:PORT`` nobody listens at (``ray.init`` would
    retry for minutes); ``auto`` and ``ray://`` addresses are left to Ray."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise ScenarioError(
            [
                f"--ray: no Ray head answers at {address} ({error.strerror or error}); start one "
                "with `ray start --head --port=6379` on that machine, or check the address"
            ]
        ) from None


def _run(ray: Any, jobs: Sequence[CellJob], out_dir: Path, quiet: bool) -> Iterator[Any]:
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if not quiet:
        print(
            f"sweep: {len(jobs)} runs as Ray tasks on {cpus} CPU(s) -> {out_dir}",
            file=sys.stderr,
        )
    task = ray.remote(num_cpus=1, max_retries=0)(_ray_cell)
    pending = {task.remote(job): index for index, job in enumerate(jobs)}
    ours = environment()
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        index = pending.pop(ref)
        job = jobs[index]
        cell_dir = out_dir / job.dirname
        try:
            results, files, host, theirs = ray.get(ref)
        except Exception as error:  # the worker died, or Ray failed it
            yield index, _failed(cell_dir, _brief(error), str(error)), None
            continue
        if theirs != ours:
            # its outputs were computed with other libraries: none of them is kept
            why = (
                f"worker {host} computes with other versions: {_differences(ours, theirs)}; "
                "install the same on every machine (scripts/setup.sh)"
            )
            yield index, _failed(cell_dir, why, why), host
            continue
        try:
            _write_outputs(cell_dir, files)
        except ValueError as error:
            yield index, _failed(cell_dir, str(error), str(error)), host
            continue
        yield index, results, host


def _write_outputs(cell_dir: Path, files: dict[str, bytes]) -> None:
    """Write a task's output files into ``cell_dir``, refusing (before writing any) a
    name that would land outside it: absolute, with ``..``, or through a link."""
    root = cell_dir.resolve()
    targets = []
    for name in files:
        relative = Path(name)
        target = (cell_dir / relative).resolve()
        outside = not target.is_relative_to(root) or target == root
        if relative.is_absolute() or ".." in relative.parts or outside:
            raise ValueError(f"a Ray task returned an output outside its cell's folder: {name!r}")
        targets.append(target)
    for target, data in zip(targets, files.values(), strict=True):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def _failed(cell_dir: Path, error: str, details: str) -> dict[str, Any]:
    """The results of a cell that failed outside ``run_cell``, its ``error.txt`` written."""
    cell_dir.mkdir(parents=True, exist_ok=True)
    (cell_dir / ERROR_FILE).write_text(details + "\n", encoding="utf-8")
    return {"completed": False, "stop_reason": "failed", "error": error}


def _brief(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}".rstrip(": ")
