"""The simulation engine end to end, on scenarios small enough to run in a second or two.

Every run here is a real one: real runners, cores, trainers and strategies over the
virtual network. Assertions print the seed, which reproduces the run exactly.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from protocol.crypto import EquivocationProof
from protocol.messages import InstanceId, Tag
from sim.adapters import DivergenceGuard
from sim.cli import main
from sim.endpoint import VirtualTransportStatistics
from sim.engine import Simulation, run_scenario
from sim.metrics import RoundBook
from sim.progress import Progress, ProgressSnapshot
from sim.scenario import Scenario
from sim.summary import Summary

REQUIRED_SUMMARY_KEYS = {
    "scenario", "seed", "n", "f", "honest", "byzantine", "steps", "agreement_rounds",
    "honest_accuracy_final", "honest_accuracy_mean", "honest_accuracy_min", "honest_diameter",
    "averaging_error", "bytes_sent", "messages_sent", "faults", "trace_digest",
    "virtual_seconds", "wall_seconds", "crypto", "mode",
}  # fmt: skip
RANDOM_DELAYS = {
    "link_delay": {"model": "lognormal", "median_s": 0.01, "sigma": 0.8},
    "reorder_jitter_s": 0.002,
    "duplicate_prob": 0.05,
}


def tiny(**values: Any) -> Scenario:
    """n=4, f=1, the synthetic task, 3 steps: about 2k messages."""
    base: dict[str, Any] = {
        "name": "tiny",
        "n": 4,
        "f": 1,
        "steps": 3,
        "task": "synthetic",
        "eval_every": 1,
        "protocol": {"crypto": False},
        "network": dict(RANDOM_DELAYS),
    }
    return Scenario.from_dict(base).with_values(values)


def test_same_seed_same_digest_other_seed_other_digest() -> None:
    scenario = tiny(**{"byzantine.strategy": "alie", "protocol.crypto": True})
    first = run_scenario(scenario, None, seed=11, progress=False)
    again = run_scenario(scenario, None, seed=11, progress=False)
    other = run_scenario(scenario, None, seed=12, progress=False)
    assert first.completed and again.completed and other.completed, "seeds 11, 12"
    assert first.trace_digest == again.trace_digest, "seed 11 did not repeat itself"
    assert first.honest_accuracy_final == again.honest_accuracy_final, "seed 11"
    assert other.trace_digest != first.trace_digest, "seeds 11 and 12 gave one digest"


def test_outputs_hold_every_required_key_and_sensible_values(tmp_path: Path) -> None:
    seed = 3
    scenario = tiny(**{"byzantine.strategy": "sign_flip", "protocol.crypto": True})
    summary = run_scenario(scenario, tmp_path, seed=seed, progress=False)
    for name in ("summary.json", "metrics.jsonl", "faults.jsonl", "results.txt", "sim.log"):
        assert (tmp_path / name).is_file(), f"{name} missing (seed {seed})"
    for name in ("accuracy.png", "diameter.png", "bytes.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    data = json.loads((tmp_path / "summary.json").read_text())
    assert REQUIRED_SUMMARY_KEYS <= set(data), f"seed {seed}"
    assert data == json.loads(json.dumps(summary.to_json()))
    assert data["completed"] and data["seed"] == seed and data["crypto"] is True
    assert data["mode"] == "sim" and data["honest"] == [0, 1, 2]
    assert data["byzantine"] == {"3": "sign_flip"}
    assert data["agreement_rounds"] == scenario.agreement_rounds() == (1 + 2 + 2) + 3
    assert set(data["honest_accuracy_final"]) == {"0", "1", "2"}
    assert all(0.0 <= a <= 1.0 for a in data["honest_accuracy_final"].values())
    assert data["honest_accuracy_min"] <= data["honest_accuracy_mean"] <= 1.0
    assert len(data["honest_diameter"]) == data["agreement_rounds"], f"seed {seed}"
    assert all(row["nodes"] == 3 and row["diameter"] >= 0.0 for row in data["honest_diameter"])
    assert len(data["averaging_error"]) == 2 * scenario.steps  # one per (step, phase)
    assert all(b > 0 for b in data["bytes_sent"].values()) and data["messages_sent"] > 0
    assert data["virtual_seconds"] > 0.0 and data["wall_seconds"] > 0.0
    assert len(data["public_keys"]) == 4 and len(bytes.fromhex(data["session"])) == 32
    assert Scenario.from_dict(data["config"]) == scenario.with_seed(seed)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    kinds = {record["type"] for record in records}
    assert kinds == {"step", "node_round", "round", "agreement"}, f"seed {seed}"
    steps = [r for r in records if r["type"] == "step" and r["honest"]]
    assert len(steps) == 3 * scenario.steps and all(r["test_accuracy"] is not None for r in steps)


def test_equivocating_silent_and_flooding_nodes_are_convicted_with_evidence(
    tmp_path: Path,
) -> None:
    """Acceptance (b): n=10, f=3 under random delays with duplicates; every honest node
    finishes every step; faults name only Byzantine nodes, and every equivocation proof
    verifies offline against the roster keys in summary.json."""
    seed = 5
    scenario = tiny(
        n=10,
        f=3,
        steps=2,
        **{
            "protocol.crypto": True,
            "byzantine.per_node": {"7": "equivocate", "8": "silent", "9": "flood"},
        },
    )
    summary = run_scenario(scenario, tmp_path, seed=seed, progress=False)
    assert summary.completed, f"seed {seed}: {summary.stop_reason}"
    assert summary.honest_steps_done == {node: 2 for node in range(7)}, f"seed {seed}"
    by_kind = summary.faults["by_kind"]
    assert set(by_kind["equivocation"]) == {7} and set(by_kind["far_ahead"]) == {9}, by_kind
    assert set(summary.faults["by_accused"]) <= {7, 8, 9}, f"seed {seed}: {by_kind}"
    data = json.loads((tmp_path / "summary.json").read_text())
    keys = {int(node): bytes.fromhex(key) for node, key in data["public_keys"].items()}
    proofs = 0
    for line in (tmp_path / "faults.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert record["accused"] in (7, 8, 9) and record["observer"] < 7, record
        evidence = record["evidence"]
        if evidence is None:
            continue
        proof = EquivocationProof(
            session=bytes.fromhex(evidence["session"]),
            iid=InstanceId(evidence["origin"], Tag(*evidence["tag"])),
            digest_a=bytes.fromhex(evidence["digest_a"]),
            signature_a=bytes.fromhex(evidence["signature_a"]),
            digest_b=bytes.fromhex(evidence["digest_b"]),
            signature_b=bytes.fromhex(evidence["signature_b"]),
        )
        assert proof.verify(keys[evidence["origin"]]), f"seed {seed}: {evidence}"
        assert not proof.verify(keys[0]), "a proof must not verify under another key"
        proofs += 1
    assert proofs == summary.faults["equivocation_proofs"] > 0, f"seed {seed}"


def test_a_partition_that_heals_delays_the_run_but_every_honest_node_finishes() -> None:
    seed = 2
    heal_s = 3.0
    partitions = [{"groups": [[0, 1], [2, 3]], "start_s": 0.0, "heal_s": heal_s}]
    summary = run_scenario(
        tiny(**{"network.partitions": partitions}), None, seed=seed, progress=False
    )
    assert summary.completed, f"seed {seed}: {summary.stop_reason}"
    assert summary.virtual_seconds > heal_s, f"seed {seed}: finished before the heal"


def test_a_run_that_cannot_finish_in_time_is_reported_incomplete() -> None:
    summary = run_scenario(tiny(time_limit_s=0.05), None, seed=1, progress=False)
    assert not summary.completed and summary.stop_reason == "time_limit"
    assert min(summary.honest_steps_done.values()) < 3
    assert summary.virtual_seconds == pytest.approx(0.05)


@dataclass
class CrashWatch:
    """What a node had sent and received when its strategy first said it had crashed:
    the moment the engine must stop it."""

    step: int | None = None
    at_crash: VirtualTransportStatistics | None = None
    #: messages (or modelled deliveries) its runner had taken in by then
    taken_in: int = -1


def run_with_crash_watch(scenario: Scenario, node: int) -> tuple[Simulation, CrashWatch]:
    """Run ``scenario`` as run_scenario does, noting ``node``'s transport counters the
    first time its strategy's ``crashed`` says yes (which the engine asks at the node's
    step ends, and before starting it)."""
    simulation = Simulation(scenario)
    strategy = simulation.strategies[node]
    endpoint = simulation.network.endpoint(node)
    runner = simulation.runners[node]
    watch = CrashWatch()
    says = strategy.crashed

    def crashed(step: int) -> bool:
        if says(step) and watch.at_crash is None:
            watch.step, watch.at_crash = step, endpoint.statistics()
            watch.taken_in = runner.statistics().messages_in
        return says(step)

    strategy.crashed = crashed  # type: ignore[method-assign]
    try:
        outcome = trio.run(simulation.run, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        simulation.log.close()
    assert outcome.completed, f"seed {scenario.seed}: {outcome.reason}"
    return simulation, watch


def assert_stopped_at_its_crash(simulation: Simulation, node: int, watch: CrashWatch) -> None:
    """The crashed node neither sends nor receives anything after its crash (messages,
    or modelled broadcasts and votes, which count in bytes_sent), its runner is stopped
    where it crashed, messages for it are discarded, and every honest node finishes."""
    seed, steps = simulation.scenario.seed, simulation.scenario.steps
    assert watch.at_crash is not None and watch.step is not None, f"seed {seed}: no crash"
    after = simulation.network.endpoint(node).statistics()
    assert after.messages_sent == watch.at_crash.messages_sent, f"seed {seed}: sent after crash"
    assert after.bytes_sent == watch.at_crash.bytes_sent, f"seed {seed}: sent after crash"
    assert after.messages_received == watch.at_crash.messages_received, f"seed {seed}"
    assert after.messages_sent_by_kind.get("finished", 0) == 0, f"seed {seed}"
    runner = simulation.runners[node]
    assert runner.statistics().messages_in == watch.taken_in, f"seed {seed}: taken in"
    assert runner.stopped and runner.step == watch.step < steps, f"seed {seed}: {runner.step}"
    assert simulation.network.statistics().messages_discarded > 0, f"seed {seed}"
    assert node not in simulation._voters(), f"seed {seed}: the crashed node still votes"
    assert all(simulation.runners[i].step == steps for i in simulation.honest), f"seed {seed}"


@pytest.mark.parametrize("fidelity", ["full", "broadcast"])
def test_a_crashing_byzantine_node_stops_and_the_rest_finish(fidelity: str) -> None:
    """Crash at step 1 of 3. The strategy itself goes quiet then (its outgoing filter),
    but only the engine's crash stops the runner, discards what reaches it, ends its
    modelled broadcasts and votes, and keeps it from finishing and saying so."""
    values = {"byzantine.strategy": {"name": "crash", "at_step": 1}, "fidelity": fidelity}
    scenario = tiny(**values).with_seed(4)
    simulation, watch = run_with_crash_watch(scenario, 3)
    assert watch.step == 1, "seed 4"
    assert watch.at_crash is not None and watch.at_crash.bytes_sent > 0, "seed 4"
    assert watch.taken_in > 0, "seed 4"  # it took part in step 0
    assert_stopped_at_its_crash(simulation, 3, watch)


@pytest.mark.parametrize("fidelity", ["full", "broadcast"])
def test_a_node_crashed_from_the_start_never_sends_or_receives(fidelity: str) -> None:
    values = {"byzantine.strategy": {"name": "crash", "at_step": 0}, "fidelity": fidelity}
    scenario = tiny(**values).with_seed(9)
    simulation, watch = run_with_crash_watch(scenario, 3)
    assert watch.step == 0 and watch.at_crash is not None, "seed 9"
    assert watch.at_crash.messages_sent == watch.taken_in == 0, "seed 9"
    assert_stopped_at_its_crash(simulation, 3, watch)
    assert not simulation.runners[3].started, "seed 9"


def test_a_node_crashed_from_the_start_casts_no_modelled_vote() -> None:
    values = {"byzantine.strategy": {"name": "crash", "at_step": 0}, "fidelity": "broadcast"}
    scenario = tiny(**values).with_seed(9)
    simulation, _ = run_with_crash_watch(scenario, 3)
    assert simulation.network.endpoint(3).statistics().bytes_sent == 0, "seed 9"


def test_a_collapsing_model_is_reported_not_raised() -> None:
    """Plain averaging with one node sending huge vectors drives the honest models to
    infinity: the run still completes, and says which honest nodes diverged."""
    attack = {"name": "constant", "value": 3e38}
    scenario = tiny(steps=4, **{"protocol.aggregator": "mean", "byzantine.strategy": attack})
    summary = run_scenario(scenario, None, seed=6, progress=False)
    assert summary.completed, "seed 6"
    assert set(summary.honest_diverged) == {0, 1, 2}, "seed 6"


# ---------------------------------------------------------------------------- the parts


def test_round_book_measures_diameters_and_averaging_error() -> None:
    book = RoundBook(honest=[0, 1, 2])
    inputs = {0: [0.0, 0.0], 1: [3.0, 0.0], 2: [0.0, 4.0]}
    for node, vector in inputs.items():
        book.round_started(node, 5, 0, 0, np.array(vector, dtype=np.float32), now_s=node)
    (measure,) = book.finished_rounds
    assert (measure.step, measure.diameter, measure.nodes) == (5, 5.0, 3)
    assert (measure.first_s, measure.last_s) == (0.0, 2.0)
    assert set(book.honest_vectors(5, 0, 0)) == {0, 1, 2}
    decision = np.array([2.0, 1.0], dtype=np.float32)  # input mean is (1, 4/3)
    for node in (0, 1, 2):
        book.decided(node, 5, 0, decision)
    (agreement,) = book.finished_agreements
    assert agreement.averaging_error == pytest.approx(math.hypot(1.0, 1 / 3) / 5.0, rel=1e-6)
    assert agreement.decision_diameter == 0.0
    book.release_below(8)
    assert book.honest_vectors(5, 0, 0) == {}


def test_round_book_diameters_with_shared_vectors() -> None:
    """Cores that aggregated the same vectors share one array: it is at distance 0 from
    itself, and the others are still measured against it."""
    book = RoundBook(honest=[0, 1, 2, 3])
    shared = np.array([1.0, 1.0], dtype=np.float32)
    vectors = {0: shared, 1: shared, 2: np.array([4.0, 5.0], dtype=np.float32), 3: shared}
    for node, vector in vectors.items():
        book.round_started(node, 5, 0, 1, vector, now_s=0.0)
    (measure,) = book.finished_rounds
    assert (measure.diameter, measure.nodes) == (5.0, 4)


def test_divergence_guard_zeroes_non_finite_vectors_and_remembers_when() -> None:
    class Exploding:
        dim = 2
        train_loss = 0.0
        batches = 0

        def gradient(self) -> np.ndarray:
            return np.array([np.inf, 1.0], dtype=np.float32)

        def apply_gradient(self, vec: np.ndarray) -> None: ...
        def parameters(self) -> np.ndarray:
            return np.array([1.0, 2.0], dtype=np.float32)

        def set_parameters(self, vec: np.ndarray) -> None: ...
        def evaluate(self) -> tuple[float, float]:
            return 0.0, 0.0

    guard = DivergenceGuard(Exploding())
    assert guard.parameters().tolist() == [1.0, 2.0] and guard.diverged_at_step is None
    guard.apply_gradient(np.zeros(2, dtype=np.float32))
    assert guard.gradient().tolist() == [0.0, 1.0] and guard.diverged_at_step == 1


def test_progress_draws_a_bar_on_a_terminal_and_lines_elsewhere() -> None:
    snapshot = ProgressSnapshot(50, 100, 5, 10, 12.5, 1000)
    now = [0.0]
    for tty, expected in ((True, "\r"), (False, "\n")):
        stream = io.StringIO()
        progress = Progress("demo", stream, tty=tty, clock=lambda: now[0])
        progress.poll(lambda: snapshot)
        assert stream.getvalue() == ""  # not due yet
        now[0] += 100.0
        progress.poll(lambda: snapshot)
        assert "50%" in stream.getvalue() and "5/10 honest steps" in stream.getvalue()
        assert expected in stream.getvalue()


# ---------------------------------------------------------------------------- the CLI


def write_scenario(directory: Path, **values: Any) -> Path:
    path = directory / "small.toml"
    lines = [
        'name = "small"', "n = 4", "f = 1", "steps = 2", 'task = "synthetic"',
        "[protocol]", "crypto = false", "[byzantine]", 'strategy = "ipm"',
    ]  # fmt: skip
    lines[1:1] = [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_cli_runs_checks_determinism_and_exits_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = write_scenario(tmp_path)
    out = tmp_path / "out"
    assert main([str(scenario), "--out", str(out), "--seed", "9", "--check-determinism"]) == 0
    captured = capsys.readouterr()
    assert "same trace digest" in captured.out and "honest accuracy" in captured.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seed"] == 9 and summary["completed"]


def test_cli_exit_codes_for_bad_input_and_incomplete_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = write_scenario(tmp_path, stepz=2)
    assert main([str(bad), "--quiet"]) == 2
    assert "unknown key stepz (did you mean 'steps'?)" in capsys.readouterr().err
    assert main([str(tmp_path / "nowhere.toml")]) == 2
    assert main(["--steps", "0"]) == 2
    with pytest.raises(SystemExit) as exited:
        main(["--mode", "thread"])
    assert exited.value.code == 2
    slow = write_scenario(tmp_path, time_limit_s=0.01)
    out = str(tmp_path / "slow")
    assert main([str(slow), "--out", out, "--quiet"]) == 1
    assert "incomplete" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "sim.process_mode", None)
    assert main([str(slow), "--out", out, "--mode", "process"]) == 2
    assert "not available" in capsys.readouterr().err


def test_sweep_of_two_cells_on_two_workers_writes_one_table(tmp_path: Path) -> None:
    base = write_scenario(tmp_path)
    grid = tmp_path / "grid.toml"
    grid.write_text(
        f'base = "{base}"\n[axes]\n"protocol.aggregator" = ["trimmed_mean", "mean"]\n',
        encoding="utf-8",
    )
    out = tmp_path / "sweep"
    assert main(["--sweep", str(grid), "--out", str(out), "--workers", "2", "--quiet"]) == 0
    rows = list(csv.DictReader(io.StringIO((out / "sweep.csv").read_text())))
    assert [row["protocol.aggregator"] for row in rows] == ["trimmed_mean", "mean"]
    assert all(row["completed"] == "True" for row in rows)
    for row in rows:
        cell = json.loads((Path(row["out_dir"]) / "summary.json").read_text())
        assert cell["trace_digest"] == row["trace_digest"]
    table = (out / "sweep.md").read_text().splitlines()
    assert "| protocol.aggregator | honest_accuracy_min |" in table
    for row in rows:
        accuracy = float(row["honest_accuracy_min"])
        assert f"| {row['protocol.aggregator']} | {accuracy:.3f} |" in table


def test_summary_is_a_frozen_record() -> None:
    summary = run_scenario(tiny(steps=1), None, seed=0, progress=False)
    assert isinstance(summary, Summary)
    with pytest.raises(AttributeError):
        summary.seed = 1  # type: ignore[misc]
