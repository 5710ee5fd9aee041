"""``jungle sim --mode process``: a scenario as n real ``jungle node`` processes on loopback.

The in-process simulator runs every node in one process over a virtual network; this
mode runs the very same scenario as n operating-system processes, each the ``jungle node``
an operator runs, talking authenticated TCP over 127.0.0.1 with the scenario's link delays
injected by each sender's transport. What it adds is fidelity: real sockets, framing,
Ed25519 signatures (always on), operating-system scheduling. What it gives up is
determinism: the operating system decides the interleaving, so no seed fixes a run.

:mod:`sim.process_setup` writes the keys, roster and node configs to ``out_dir/process/``;
:class:`NodeProcesses` launches the nodes, follows their metrics files for the progress
display, and stops every process (SIGTERM, then SIGKILL) once every honest node has
finished its last step, one has died, or the scenario's time limit (wall seconds here) has
passed; :mod:`sim.process_report` turns the nodes' metrics into the simulator's outputs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

from sim.process_metrics import NodeMetrics, RunEnd
from sim.process_report import build_summary, print_failures, write_outputs
from sim.process_setup import ProcessSetup, unsupported_settings, write_setup
from sim.progress import Progress, ProgressSnapshot
from sim.report import results_table
from sim.scenario import Scenario, ScenarioError
from sim.summary import Summary

#: the node processes' files, under the run's output folder
PROCESS_DIR: Final = "process"
#: seconds between two looks at the processes and their metrics files
POLL_INTERVAL_S: Final = 0.2
#: after SIGTERM, how long the nodes get to write their summary record before SIGKILL
STOP_GRACE_S: Final = 15.0
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2


class NodeProcesses:
    """The n ``jungle node`` processes of one run; use as a context manager, which kills
    whatever is still running on the way out, whatever happened."""

    def __init__(self, setup: ProcessSetup, steps: int, rounds_per_node: int) -> None:
        self._setup = setup
        self._steps = steps
        self._rounds_per_node = rounds_per_node
        self._processes: dict[int, subprocess.Popen[bytes]] = {}
        self.metrics = {files.id: NodeMetrics(files.metrics) for files in setup.nodes}

    def __enter__(self) -> NodeProcesses:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for process in self._processes.values():
            if process.poll() is None:
                process.kill()
        for process in self._processes.values():
            process.wait()
        for metrics in self.metrics.values():
            metrics.close()

    def launch(self) -> float:
        """Start every node (``python -m node node CONFIG``); the Unix time of the launch."""
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])  # where node/ and sim/ live
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env.setdefault(name, "1")  # one thread per node, as in the simulator
        started_unix_s = time.time()
        for files in self._setup.nodes:
            with open(files.log, "wb") as log:
                self._processes[files.id] = subprocess.Popen(
                    [sys.executable, "-m", "node", "node", str(files.config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # a Ctrl-C reaches us, and we stop them
                )
        return started_unix_s

    def supervise(self, time_limit_s: float, progress: Progress | None) -> RunEnd:
        """Follow the run until every honest node is done, one died or time is up; then
        stop every process."""
        started_unix_s = self.launch()
        started_s = time.monotonic()
        honest = [files.id for files in self._setup.nodes if files.honest]
        reason = "time_limit"
        while time.monotonic() - started_s < time_limit_s:
            for metrics in self.metrics.values():
                metrics.poll()
            if all(self.metrics[node].finished(self._steps) for node in honest):
                reason = "until"
                break
            if any(self._processes[node].poll() is not None for node in honest):
                reason = "node_failed"
                break
            if progress is not None:
                progress.poll(lambda: self.snapshot(time.monotonic() - started_s))
            time.sleep(POLL_INTERVAL_S)
        statuses = self._stop()
        run_seconds = time.monotonic() - started_s
        for metrics in self.metrics.values():
            metrics.poll()
        if progress is not None:
            progress.finish(self.snapshot(run_seconds))
        return RunEnd(reason, run_seconds, started_unix_s, statuses)

    def snapshot(self, elapsed_s: float) -> ProgressSnapshot:
        """Where the run stands, from the honest nodes' metrics files (virtual = wall)."""
        honest = [self.metrics[files.id] for files in self._setup.nodes if files.honest]
        return ProgressSnapshot(
            rounds_done=sum(m.rounds_seen for m in honest),
            rounds_total=len(honest) * self._rounds_per_node,
            steps_done=sum(m.steps_seen for m in honest),
            steps_total=len(honest) * self._steps,
            virtual_s=elapsed_s,
            messages=sum(m.messages_sent for m in self.metrics.values()),
        )

    def _stop(self) -> dict[int, int | None]:
        """SIGTERM (each node writes its summary record), then SIGKILL after a grace."""
        for process in self._processes.values():
            if process.poll() is None:
                process.terminate()
        deadline_s = time.monotonic() + STOP_GRACE_S
        statuses: dict[int, int | None] = {}
        for node, process in sorted(self._processes.items()):
            try:
                statuses[node] = process.wait(max(0.0, deadline_s - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                statuses[node] = None
        return statuses


# ------------------------------------------------------------------------ entry points


def run_processes(
    scenario: Scenario, out_dir: Path, seed: int | None = None, progress: bool = True
) -> Summary:
    """Run ``scenario`` (with ``seed`` instead of its own, if given) as n node processes
    and write the simulator's outputs to ``out_dir``; the node files go to
    ``out_dir/process/``. Raises :class:`ScenarioError` for what process mode cannot run.
    Signatures are always on: ``summary.crypto`` is True whatever the scenario says."""
    started_s = time.perf_counter()
    if seed is not None:
        scenario = scenario.with_seed(seed)
    if problems := unsupported_settings(scenario):
        raise ScenarioError(problems)
    if not scenario.protocol.crypto:
        print("jungle sim: process mode always signs (real nodes): crypto on", file=sys.stderr)
        scenario = scenario.with_values({"protocol.crypto": True})
    out_dir.mkdir(parents=True, exist_ok=True)
    setup = write_setup(scenario, out_dir / PROCESS_DIR)
    display = Progress(f"{scenario.name} (processes)") if progress else None
    with NodeProcesses(setup, scenario.steps, scenario.agreement_rounds()) as processes:
        end = processes.supervise(scenario.time_limit_s, display)
    summary = build_summary(
        scenario, setup, processes.metrics, end, time.perf_counter() - started_s
    )
    write_outputs(out_dir, summary, processes.metrics, end.started_unix_s)
    if not summary.completed:
        print_failures(summary, end, {files.id: files.log for files in setup.nodes})
    return summary


def run_process_mode(
    scenario: Scenario, out_dir: Path, seed: int | None = None, *, quiet: bool = False
) -> int:
    """``jungle sim --mode process``: run, print the results table; the exit status
    (0 done, 1 an honest node failed or did not finish, 2 a scenario process mode
    cannot run)."""
    try:
        summary = run_processes(scenario, out_dir, seed, progress=not quiet)
    except ScenarioError as error:
        for problem in error.problems:
            print(f"jungle sim: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if not quiet:
        print(results_table(summary))
        print(f"outputs in {out_dir}/ (node configs, logs and metrics in {PROCESS_DIR}/)")
    if not summary.completed:
        print(
            f"jungle sim: run incomplete ({summary.stop_reason}); node logs in "
            f"{out_dir / PROCESS_DIR}/",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK
