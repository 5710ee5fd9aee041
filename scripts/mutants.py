"""Curated mutation testing: does the test suite notice a broken agreement?

Each mutant below is one small, deliberate bug in a rule the protocol's safety or the
simulator's crash model rests on: a quorum threshold one off, the trimmed mean cutting
f-1 values per side, a witness counted without its REPORT's origins held, a crash that
does nothing. The script copies the working tree (as git sees it: tracked files and
untracked ones that are not ignored) to a temporary directory, checks that the unmutated
copy passes the selected tests, then applies the mutants one at a time to that copy, runs
the selected tests against it with a JUnit XML report, and prints which tests failed:
"caught by N tests (M functions): ..." or "SURVIVED".

Every mutant of the groups in REQUIRED must be caught by at least two test functions (two
cases of one parametrized test count once); the script exits 1 if one is not. A mutant
whose snippet is no longer in its file (the code moved) is an error before anything runs.

Why not mutmut: mutmut 3 (3.8.1 checked) generates every mutant of every function of the
files it is given (hundreds for protocol/agreement.py alone) and runs pytest with ``-x``,
so it stops at the first failing test and cannot say which tests, and how many, catch a
mutant, which is the question here. This runner is a list of snippets and pytest.

Not part of CI: about 40 minutes for all of them on 2 busy cores (~75 s a protocol/ mutant,
~30 s a sim/ one). Run it through scripts/mutants.sh::

    bash scripts/mutants.sh --list              # the mutants, and whether each applies
    bash scripts/mutants.sh                     # all of them
    bash scripts/mutants.sh witness-unchecked   # one (or several) by name, or a group name
    bash scripts/mutants.sh --keep crash        # keep the copy and the pytest logs

The module doubles as a pytest plugin in the runs it starts (``-p mutants``): it checks
that the code under test is the copy's, bounds each test's time (a mutant may make a run
spin), and makes Hypothesis deterministic without an example database.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
#: groups whose every mutant must be caught by at least this many test functions
REQUIRED = {"quorum": 2, "trim": 2, "witness": 2, "crash": 2}
#: what the mutants are run against: the protocol's and the simulator's tests that can see
#: these rules at work (the 1,000-schedule broadcast tests only at their two smallest
#: chunks: the full set takes ~7 minutes per run)
PROTOCOL_TESTS = [
    "tests/protocol/test_aggregate.py",
    "tests/protocol/test_agreement.py",
    "tests/protocol/test_broadcast.py",
    "tests/protocol/test_quorums.py",
    "tests/protocol/test_trimming.py",
    "tests/protocol/test_recovery.py",
    "tests/protocol/test_rb_schedules.py::test_reliable_broadcast_over_seeded_schedules[4-1-0]",
    "tests/protocol/test_rb_schedules.py::test_reliable_broadcast_over_seeded_schedules[7-2-0]",
]
SIM_TESTS = [
    "tests/sim/test_broadcast_model.py",
    "tests/sim/test_crash.py",
    "tests/sim/test_engine.py",
    "tests/sim/test_network.py",
    "tests/sim/test_fidelity.py",
    "tests/sim/test_strategies_protocol.py",
]
#: per group: protocol/ mutants show in both; sim/ mutants only in the simulator's tests
#: (nothing under tests/protocol imports sim/engine.py, sim/network.py or sim/endpoint.py)
TESTS = {
    "quorum": PROTOCOL_TESTS + SIM_TESTS,
    "trim": PROTOCOL_TESTS + SIM_TESTS,
    "witness": PROTOCOL_TESTS + SIM_TESTS,
    "crash": SIM_TESTS,
}
#: slow and beside the point: a statistical comparison of the fidelities (10 s), and a
#: sweep that starts worker processes
DESELECT = [
    "tests/sim/test_fidelity.py::test_the_fidelities_agree_statistically",
    "tests/sim/test_engine.py::test_sweep_of_two_cells_on_two_workers_writes_one_table",
]
TEST_TIMEOUT_S = 300.0
#: ignored by the copy on top of .gitignore: nothing the tests need
COPY_SKIP = {".git", ".venv"}


@dataclass(frozen=True)
class Mutant:
    name: str
    group: str
    path: str
    original: str
    replacement: str
    description: str


MUTANTS: list[Mutant] = [
    # ------------------------------------------------------------------ quorum thresholds
    Mutant(
        "report-quorum-minus-1",
        "quorum",
        "protocol/agreement.py",
        '"""Valid vectors a node holds before it reports them."""\n'
        "        return self.broadcast.n - self.broadcast.f\n",
        '"""Valid vectors a node holds before it reports them."""\n'
        "        return self.broadcast.n - self.broadcast.f - 1\n",
        "report_quorum = n-f-1: REPORT one vector early, accept REPORTs one origin short",
    ),
    Mutant(
        "report-quorum-plus-1",
        "quorum",
        "protocol/agreement.py",
        '"""Valid vectors a node holds before it reports them."""\n'
        "        return self.broadcast.n - self.broadcast.f\n",
        '"""Valid vectors a node holds before it reports them."""\n'
        "        return self.broadcast.n - self.broadcast.f + 1\n",
        "report_quorum = n-f+1: wait for a vector that f silent nodes never send",
    ),
    Mutant(
        "report-trigger-minus-1",
        "quorum",
        "protocol/agreement.py",
        "if not state.reported and len(state.held) >= self._report_quorum:",
        "if not state.reported and len(state.held) >= self._report_quorum - 1:",
        "REPORT on the (n-f-1)-th valid vector (the REPORT check itself unchanged)",
    ),
    Mutant(
        "report-check-minus-1",
        "quorum",
        "protocol/agreement.py",
        "if len(report) < self._report_quorum:",
        "if len(report) < self._report_quorum - 1:",
        "accept a REPORT listing n-f-1 origins",
    ),
    Mutant(
        "witness-quorum-minus-1",
        "quorum",
        "protocol/agreement.py",
        '"""Witnesses a node waits for before it aggregates and moves on."""\n'
        "        return self.broadcast.n - self.broadcast.f\n",
        '"""Witnesses a node waits for before it aggregates and moves on."""\n'
        "        return self.broadcast.n - self.broadcast.f - 1\n",
        "witness_quorum = n-f-1: complete a round one witness early",
    ),
    Mutant(
        "witness-quorum-plus-1",
        "quorum",
        "protocol/agreement.py",
        '"""Witnesses a node waits for before it aggregates and moves on."""\n'
        "        return self.broadcast.n - self.broadcast.f\n",
        '"""Witnesses a node waits for before it aggregates and moves on."""\n'
        "        return self.broadcast.n - self.broadcast.f + 1\n",
        "witness_quorum = n-f+1: wait for a witness that f silent nodes never become",
    ),
    Mutant(
        "witness-check-minus-1",
        "quorum",
        "protocol/agreement.py",
        "if state.witnesses < self._witness_quorum:",
        "if state.witnesses < self._witness_quorum - 1:",
        "aggregate with n-f-1 witnesses (the quorum property itself unchanged)",
    ),
    Mutant(
        "echo-quorum-minus-1",
        "quorum",
        "protocol/broadcast.py",
        "return (self.n + self.f + 2) // 2  # ceil((n + f + 1) / 2)",
        "return (self.n + self.f) // 2",
        "RB: READY on ceil((n+f+1)/2)-1 ECHOs (two echo quorums may share no honest node)",
    ),
    Mutant(
        "echo-quorum-plus-1",
        "quorum",
        "protocol/broadcast.py",
        "return (self.n + self.f + 2) // 2  # ceil((n + f + 1) / 2)",
        "return (self.n + self.f + 4) // 2",
        "RB: READY only on ceil((n+f+1)/2)+1 ECHOs",
    ),
    Mutant(
        "echo-count-minus-1",
        "quorum",
        "protocol/broadcast.py",
        "if count >= self._echo_quorum:",
        "if count >= self._echo_quorum - 1:",
        "RB: the ECHO count compared one short (the quorum property unchanged)",
    ),
    Mutant(
        "ready-amplify-minus-1",
        "quorum",
        "protocol/broadcast.py",
        '"""READYs that prove one honest node is ready: join it (gives totality)."""\n'
        "        return self.f + 1\n",
        '"""READYs that prove one honest node is ready: join it (gives totality)."""\n'
        "        return self.f\n",
        "RB: join on f READYs (a Byzantine node alone can make honest nodes READY)",
    ),
    Mutant(
        "ready-amplify-plus-1",
        "quorum",
        "protocol/broadcast.py",
        '"""READYs that prove one honest node is ready: join it (gives totality)."""\n'
        "        return self.f + 1\n",
        '"""READYs that prove one honest node is ready: join it (gives totality)."""\n'
        "        return self.f + 2\n",
        "RB: join only on f+2 READYs (totality lost)",
    ),
    Mutant(
        "ready-count-minus-1",
        "quorum",
        "protocol/broadcast.py",
        "if count >= self._ready_amplify:",
        "if count >= self._ready_amplify - 1:",
        "RB: the READY amplification count compared one short",
    ),
    Mutant(
        "deliver-quorum-minus-1",
        "quorum",
        "protocol/broadcast.py",
        '"""READYs that make f+1 honest READYs certain: every honest node will deliver."""\n'
        "        return 2 * self.f + 1\n",
        '"""READYs that make f+1 honest READYs certain: every honest node will deliver."""\n'
        "        return 2 * self.f\n",
        "RB: deliver on 2f READYs",
    ),
    Mutant(
        "deliver-quorum-plus-1",
        "quorum",
        "protocol/broadcast.py",
        '"""READYs that make f+1 honest READYs certain: every honest node will deliver."""\n'
        "        return 2 * self.f + 1\n",
        '"""READYs that make f+1 honest READYs certain: every honest node will deliver."""\n'
        "        return 2 * self.f + 2\n",
        "RB: deliver only on 2f+2 READYs",
    ),
    Mutant(
        "deliver-count-minus-1",
        "quorum",
        "protocol/broadcast.py",
        "if count >= self._deliver_quorum and self.delivered_digest is None:",
        "if count >= self._deliver_quorum - 1 and self.delivered_digest is None:",
        "RB: the delivery count compared one short",
    ),
    # ------------------------------------------------------------------ the trimmed mean's cut
    Mutant(
        "trimmed-mean-cuts-f-minus-1",
        "trim",
        "protocol/aggregate.py",
        "    return kept_mean(vectors, f)\n",
        "    return kept_mean(vectors, max(f - 1, 0))\n",
        "trimmed_mean drops f-1 values per side",
    ),
    Mutant(
        "sort-path-cuts-f-minus-1",
        "trim",
        "protocol/_select.py",
        "_sorted_kept_mean(vectors, f, out)",
        "_sorted_kept_mean(vectors, max(f - 1, 0), out)",
        "kept_mean's sort path drops f-1 values per side",
    ),
    Mutant(
        "network-path-cuts-f-minus-1",
        "trim",
        "protocol/_select.py",
        "_network_kept_mean(vectors, selection_plan(m, f), out)",
        "_network_kept_mean(vectors, selection_plan(m, max(f - 1, 0)), out)",
        "kept_mean's comparator-network path drops f-1 values per side",
    ),
    Mutant(
        "sort-keeps-one-high",
        "trim",
        "protocol/_select.py",
        "np.add.reduce(lane[:, f : m - f], axis=1",
        "np.add.reduce(lane[:, f : m - f + 1], axis=1",
        "the sort path adds one value of the high side too many",
    ),
    Mutant(
        "batcher-groups-cut-f-minus-1",
        "trim",
        "protocol/_select.py",
        '"low" if p < f else "high" if p >= m - f else "kept"',
        '"low" if p < f - 1 else "high" if p >= m - f + 1 else "kept"',
        "Batcher's network keeps ranks f-1..m-f (one extra per side)",
    ),
    Mutant(
        "peel-rounds-f-minus-1",
        "trim",
        "protocol/_select.py",
        "    for _ in range(f):\n        lows, highs = live[0:-1:2], live[1::2]",
        "    for _ in range(f - 1):\n        lows, highs = live[0:-1:2], live[1::2]",
        "pair-and-peel peels f-1 extremes per side",
    ),
    # ------------------------------------------------------------------ the witness check
    Mutant(
        "witness-unchecked",
        "witness",
        "protocol/agreement.py",
        "lacking = _mask_of(report) & ~self.held_mask",
        "lacking = 0",
        "add_report counts every reporter as a witness at once, held origins or not",
    ),
    Mutant(
        "witness-on-first-held",
        "witness",
        "protocol/agreement.py",
        "self.missing[reporter] -= 1",
        "self.missing[reporter] = 0",
        "hold makes a reporter a witness once any one of its missing origins arrives",
    ),
    Mutant(
        "witness-missing-one-less",
        "witness",
        "protocol/agreement.py",
        "self.missing[reporter] = lacking.bit_count()",
        "self.missing[reporter] = lacking.bit_count() - 1",
        "a reporter's missing origins counted one short",
    ),
    Mutant(
        "witness-held-mask-unset",
        "witness",
        "protocol/agreement.py",
        "self.held_mask |= 1 << origin",
        "self.held_mask |= 0",
        "hold does not record the origin in the mask add_report checks against",
    ),
    Mutant(
        "aggregate-without-witnesses",
        "witness",
        "protocol/agreement.py",
        "if state.witnesses < self._witness_quorum:",
        "if len(state.held) < self._witness_quorum:",
        "a round completes on n-f vectors held, witnesses ignored",
    ),
    # ------------------------------------------------------------------ the crash hook
    Mutant(
        "engine-crash-does-nothing",
        "crash",
        "sim/engine.py",
        "    def _crash(self, node: int) -> None:\n",
        "    def _crash(self, node: int) -> None:\n        return\n",
        "Simulation._crash returns at once",
    ),
    Mutant(
        "engine-crash-keeps-runner",
        "crash",
        "sim/engine.py",
        "        self.runners[node].stop()\n        self.network.crash(node)\n",
        "        self.network.crash(node)\n",
        "_crash leaves the crashed node's runner running",
    ),
    Mutant(
        "engine-crash-keeps-links",
        "crash",
        "sim/engine.py",
        "        self.runners[node].stop()\n        self.network.crash(node)\n",
        "        self.runners[node].stop()\n",
        "_crash leaves the node alive on the network (it still receives, and votes)",
    ),
    Mutant(
        "engine-crash-keeps-voters",
        "crash",
        "sim/engine.py",
        "        self.network.crash(node)\n        self._voting = None\n",
        "        self.network.crash(node)\n",
        "_crash keeps the cached voters of modelled broadcasts (the crashed node votes on)",
    ),
    Mutant(
        "engine-crash-at-start-skipped",
        "crash",
        "sim/engine.py",
        "            if strategy.crashed(0):\n                self._crash(node)\n",
        "            if strategy.crashed(0):\n                self.runners[node].stop()\n",
        "a node crashed from step 0 is just not started, not crashed",
    ),
    Mutant(
        "engine-crashed-node-votes",
        "crash",
        "sim/engine.py",
        "return not self.network.is_crashed(node) and not (strategy and strategy.silent)",
        "return not (strategy and strategy.silent)",
        "modelled broadcasts count crashed nodes among their voters",
    ),
    Mutant(
        "network-crash-does-nothing",
        "crash",
        "sim/network.py",
        "        self._crashed[node] = True\n",
        "        pass\n",
        "VirtualNetwork.crash marks nothing",
    ),
    Mutant(
        "network-delivers-to-crashed",
        "crash",
        "sim/network.py",
        "        if self._crashed[dst]:\n            self._messages_discarded += 1\n"
        "            self._trace_add(",
        "        if False:\n            self._messages_discarded += 1\n"
        "            self._trace_add(",
        "messages reaching a crashed node are delivered, not discarded",
    ),
    Mutant(
        "network-models-to-crashed",
        "crash",
        "sim/network.py",
        "        if self._crashed[dst]:\n            self._messages_discarded += 1\n"
        "            return\n",
        "        if False:\n            self._messages_discarded += 1\n            return\n",
        "modelled broadcasts reaching a crashed node are delivered, not discarded",
    ),
    Mutant(
        "network-timers-outlive-crash",
        "crash",
        "sim/network.py",
        "        if self._crashed[node]:\n            del self._timers[timer_id]",
        "        if False:\n            del self._timers[timer_id]",
        "a crashed node's timers keep firing",
    ),
    Mutant(
        "endpoint-sends-after-crash",
        "crash",
        "sim/endpoint.py",
        "        if network._crashed[src]:\n",
        "        if False:\n",
        "what a crashed node sends is scheduled, not dropped",
    ),
]


# ---------------------------------------------------------------------- the pytest plugin


def _hypothesis_profile() -> None:
    try:
        from hypothesis import settings
    except ImportError:  # pragma: no cover - hypothesis is a dev dependency
        return
    settings.register_profile("mutants", database=None, derandomize=True)
    settings.load_profile("mutants")


if os.environ.get("MUTANTS_COPY"):  # loaded as the plugin of a run this script started
    _hypothesis_profile()


def pytest_configure(config: Any) -> None:
    copy = os.environ.get("MUTANTS_COPY")
    if not copy:
        return
    import node
    import protocol
    import sim

    root = Path(copy).resolve()
    for package in (protocol, sim, node):
        where = Path(package.__file__ or "").resolve()
        if root not in where.parents:
            raise RuntimeError(f"{package.__name__} imported from {where}, not from {root}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: Any) -> Iterator[None]:
    """Fail a test that runs past MUTANTS_TEST_TIMEOUT_S (SIGALRM, main thread only)."""
    limit = float(os.environ.get("MUTANTS_TEST_TIMEOUT_S") or 0)
    if limit <= 0 or threading.current_thread() is not threading.main_thread():
        return (yield)

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"the test ran past {limit:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        return (yield)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------- the runner


class MutantError(Exception):
    """A mutant that cannot be applied: the code it names has moved."""


@dataclass
class Result:
    failed: list[str]
    passed: int
    seconds: float
    note: str = ""

    @property
    def functions(self) -> list[str]:
        return sorted({test.split("[", 1)[0] for test in self.failed})


def working_tree_files(repo: Path) -> list[str]:
    """Tracked files and untracked ones git does not ignore, as they are now."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=repo,
        check=True,
        capture_output=True,
    ).stdout.decode()
    files = []
    for name in sorted(set(filter(None, listed.split("\0")))):
        if name.split("/", 1)[0] in COPY_SKIP or not (repo / name).is_file():
            continue  # deleted from the working tree, or a nested repository
        files.append(name)
    return files


def copy_tree(repo: Path, into: Path) -> None:
    for name in working_tree_files(repo):
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, target)


def check_imports(copy: Path) -> None:
    """The copy's packages, not the editable install's, are what its runs import."""
    probe = "import node, protocol, sim; print(protocol.__file__, sim.__file__, node.__file__)"
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")
    found = subprocess.run(
        [sys.executable, "-c", probe], cwd=copy, env=env, check=True, capture_output=True
    ).stdout.split()
    root = copy.resolve()
    strays = [p.decode() for p in found if root not in Path(p.decode()).resolve().parents]
    if strays or len(found) != 3:
        raise SystemExit(f"error: the copy's runs would import {strays or found}, not {root}")


def check_applies(copy: Path, mutant: Mutant) -> str:
    """The mutated text of the mutant's file; MutantError unless its snippet is there once."""
    path = copy / mutant.path
    if not path.is_file():
        raise MutantError(f"{mutant.name}: {mutant.path} does not exist")
    text = path.read_text()
    found = text.count(mutant.original)
    if found != 1:
        where = "not found" if found == 0 else f"found {found} times"
        raise MutantError(
            f"{mutant.name}: its snippet is {where} in {mutant.path} (the code moved? "
            f"update MUTANTS in scripts/mutants.py):\n{mutant.original}"
        )
    return text.replace(mutant.original, mutant.replacement)


def test_ids(report: Path, copy: Path) -> tuple[list[str], int]:
    """(failed or errored test ids, passed count) from a JUnit XML report."""
    failed, passed = [], 0
    for case in ET.parse(report).getroot().iter("testcase"):
        module = case.get("classname", "")
        parts = module.split(".")
        path, rest = module, []
        for cut in range(len(parts), 0, -1):  # tests.sim.test_engine[.TestClass]
            candidate = "/".join(parts[:cut]) + ".py"
            if (copy / candidate).is_file():
                path, rest = candidate, parts[cut:]
                break
        test = "::".join([path, *rest, case.get("name", "?")])
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(test)
        elif case.find("skipped") is None:
            passed += 1
    return sorted(failed), passed


def run_tests(copy: Path, args: argparse.Namespace, label: str, tests: list[str]) -> Result:
    logs = copy / ".mutants"
    logs.mkdir(exist_ok=True)
    report = logs / f"{label}.xml"
    report.unlink(missing_ok=True)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "mutants"]
    command += ["--tb=line", f"--junitxml={report}", "-o", "junit_family=xunit2"]
    if args.workers > 0:
        command += ["-n", str(args.workers)]
    command += [f"--deselect={test}" for test in DESELECT]
    command += tests
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(copy), str(copy / "scripts")]),
        PYTHONDONTWRITEBYTECODE="1",
        MUTANTS_COPY=str(copy),
        MUTANTS_TEST_TIMEOUT_S=str(args.test_timeout),
    )
    started = time.monotonic()
    with open(logs / f"{label}.log", "w") as log:
        try:
            completed = subprocess.run(
                command, cwd=copy, env=env, stdout=log, stderr=subprocess.STDOUT,
                timeout=args.run_timeout,
            )  # fmt: skip
            code: int | None = completed.returncode
        except subprocess.TimeoutExpired:
            code = None
    seconds = time.monotonic() - started
    if code is None:
        return Result([], 0, seconds, f"the run passed {args.run_timeout} s and was stopped")
    if not report.is_file():
        return Result([], 0, seconds, f"pytest exited {code} without a report")
    failed, passed = test_ids(report, copy)
    note = "" if code in (0, 1) or failed else f"pytest exited {code}"
    return Result(failed, passed, seconds, note)


def select(names: Sequence[str]) -> list[Mutant]:
    if not names:
        return list(MUTANTS)
    by_name = {mutant.name: mutant for mutant in MUTANTS}
    groups = {mutant.group for mutant in MUTANTS}
    chosen: list[Mutant] = []
    for name in names:
        if name in by_name:
            chosen.append(by_name[name])
        elif name in groups:
            chosen += [mutant for mutant in MUTANTS if mutant.group == name]
        else:
            raise SystemExit(f"no mutant or group {name!r}; see --list")
    return list(dict.fromkeys(chosen))


def describe(tests: list[str]) -> str:
    """Test ids, parametrized cases folded under their function."""
    cases: dict[str, list[str]] = {}
    for test in tests:
        function, _, case = test.partition("[")
        cases.setdefault(function, []).append(case.rstrip("]"))
    parts = []
    for function, ids in cases.items():
        ids = [i for i in ids if i]
        parts.append(function + (f"[{', '.join(ids)}]" if ids else ""))
    return "\n      ".join(parts)


def list_mutants(mutants: list[Mutant]) -> int:
    problems = 0
    for mutant in mutants:
        try:
            check_applies(REPO, mutant)
            status = "applies"
        except MutantError:
            status = "SNIPPET MISSING"
            problems += 1
        print(f"{mutant.group:8} {mutant.name:32} {mutant.path:22} {status}")
        print(f"{'':8} {mutant.description}")
    return 2 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutants or groups to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--workers", type=int, default=2, help="pytest-xdist workers (0: none)")
    parser.add_argument("--keep", action="store_true", help="keep the copy and its logs")
    parser.add_argument("--test-timeout", type=float, default=TEST_TIMEOUT_S)
    parser.add_argument("--run-timeout", type=float, default=1800.0)
    parser.add_argument(
        "--tests", nargs="+", metavar="TEST", help="tests to run instead of each group's own"
    )
    parser.add_argument(
        "--ignore-baseline-failures",
        action="store_true",
        help="go on when the unmutated copy fails some tests (they are then not counted)",
    )
    args = parser.parse_args(argv)
    mutants = select(args.names)
    if args.list:
        return list_mutants(mutants)

    started = time.monotonic()
    copy = Path(tempfile.mkdtemp(prefix="mutants-"))
    try:
        copy_tree(REPO, copy)
        check_imports(copy)
        originals = {m.path: (copy / m.path).read_text() for m in mutants}
        try:
            mutated = {m.name: check_applies(copy, m) for m in mutants}
        except MutantError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"copied the working tree to {copy}; {len(mutants)} mutants", flush=True)

        suites = {m.name: args.tests or TESTS[m.group] for m in mutants}
        every = list(dict.fromkeys(test for suite in suites.values() for test in suite))
        baseline = run_tests(copy, args, "baseline", every)
        counts = f"{baseline.passed} passed, {len(baseline.failed)} failed"
        print(f"baseline: {counts} in {baseline.seconds:.0f} s {baseline.note}", flush=True)
        if baseline.note or not baseline.passed:
            log = copy / ".mutants" / "baseline.log"
            print(f"error: the unmutated copy did not run cleanly; see {log}", file=sys.stderr)
            args.keep = True
            return 2
        if baseline.failed:
            print("the unmutated copy fails:\n  " + "\n  ".join(baseline.failed), flush=True)
            if not args.ignore_baseline_failures:
                print("error: fix these first, or pass --ignore-baseline-failures", file=sys.stderr)
                args.keep = True
                return 2
        broken = set(baseline.failed)

        results: dict[str, Result] = {}
        for number, mutant in enumerate(mutants, 1):
            target = copy / mutant.path
            target.write_text(mutated[mutant.name])
            try:
                result = run_tests(copy, args, mutant.name, suites[mutant.name])
            finally:
                target.write_text(originals[mutant.path])
            result.failed = [test for test in result.failed if test not in broken]
            results[mutant.name] = result
            head = f"[{number}/{len(mutants)}] {mutant.group:7} {mutant.name}"
            if result.note and not result.failed:
                verdict = f"caught? {result.note}"
            elif result.failed:
                verdict = (
                    f"caught by {len(result.failed)} tests ({len(result.functions)} functions)"
                    + (f"; {result.note}" if result.note else "")
                )
            else:
                verdict = "SURVIVED"
            print(f"{head}: {verdict} [{result.seconds:.0f} s]", flush=True)
            if result.failed:
                print("      " + describe(result.failed), flush=True)

        print("\nsummary (test functions that catch each mutant):")
        short = []
        for mutant in mutants:
            result = results[mutant.name]
            functions = len(result.functions)
            needed = REQUIRED.get(mutant.group, 0)
            mark = "ok" if functions >= needed else "TOO FEW"
            if functions < needed:
                short.append(mutant.name)
            print(f"  {mutant.group:7} {mutant.name:32} {functions:3}  {mark}")
        minutes = (time.monotonic() - started) / 60
        print(f"\n{len(mutants)} mutants in {minutes:.1f} min")
        if short:
            print(f"caught by fewer test functions than required: {', '.join(short)}")
            return 1
        return 0
    finally:
        if args.keep:
            print(f"kept {copy}")
        else:
            shutil.rmtree(copy, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
