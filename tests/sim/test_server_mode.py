"""``mode = "server"``: the centralized reference on the very data, trainers and attacks of
a decentralized run, one trusted server aggregating once per step."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sim.cli import main
from sim.engine import run_scenario
from sim.scenario import Scenario, ScenarioError
from sim.server import ServerRun
from sim.strategies_base import VectorAttack
from tests.sim.test_rushing import CountingALIE, seen  # noqa: F401  (a fixture)


@dataclass(kw_only=True)
class Infinite(VectorAttack):
    name = "test_infinite"

    def attack(self, step: int, phase: int, round_: int, vector: np.ndarray) -> np.ndarray:
        return np.full_like(vector, np.inf)


def server(**values: Any) -> Scenario:
    """n=7, f=2, the synthetic task, 6 steps, in server mode."""
    base: dict[str, Any] = {
        "name": "server",
        "n": 7,
        "f": 2,
        "steps": 6,
        "task": "synthetic",
        "eval_every": 2,
        "mode": "server",
        "protocol": {"crypto": False},
    }
    return Scenario.from_dict(base).with_values(values)


def recording(run: ServerRun) -> list[np.ndarray]:
    """Every (m, d) input the server's aggregator gets, in order."""
    inputs: list[np.ndarray] = []
    rule = run.aggregate

    def aggregate(vectors: np.ndarray, f: int) -> np.ndarray:
        inputs.append(vectors.copy())
        return rule(vectors, f)

    run.aggregate = aggregate
    return inputs


def test_the_server_aggregates_every_node_once_per_step() -> None:
    run = ServerRun(server(**{"protocol.aggregator": "mean"}))
    inputs = recording(run)
    run.run()
    assert len(inputs) == 6 and all(rows.shape[0] == 7 for rows in inputs)
    summary = run.summary(0.0)
    assert summary.completed and summary.mode == "server"
    # no attack, the mean: the aggregate is the honest mean, an averaging error of 0
    assert summary.averaging_error_max == pytest.approx(0.0, abs=1e-6)
    accuracies = set(summary.honest_accuracy_final.values())
    assert len(accuracies) == 1, "honest nodes hold the one server model"


def test_byzantine_vectors_are_aggregated_and_see_every_honest_gradient(
    seen: list[int],  # noqa: F811
) -> None:
    strategy = {"name": "tests.sim.test_rushing:CountingALIE"}
    run = ServerRun(server(**{"byzantine.nodes": [5, 6], "byzantine.strategy": strategy}))
    inputs = recording(run)
    run.run()
    assert all(rows.shape[0] == 7 for rows in inputs)
    assert seen == [5] * 12, "each attacker sees the 5 honest gradients at each of 6 steps"


def test_a_non_finite_vector_is_dropped_and_charged() -> None:
    strategy = "tests.sim.test_server_mode:Infinite"
    run = ServerRun(server(**{"byzantine.nodes": [6], "byzantine.strategy": strategy}))
    inputs = recording(run)
    run.run()
    assert all(rows.shape[0] == 6 and np.isfinite(rows).all() for rows in inputs)
    summary = run.summary(0.0)
    assert summary.faults["by_kind"]["bad_vector"][6] == 6 * 6  # 6 honest observers, 6 steps
    assert set(summary.faults["by_accused"]) == {6}


def test_silent_and_crashed_nodes_send_nothing() -> None:
    scenario = server(
        **{
            "byzantine.nodes": [5, 6],
            "byzantine.per_node": {"5": "silent", "6": {"name": "crash", "at_step": 2}},
        }
    )
    run = ServerRun(scenario)
    inputs = recording(run)
    run.run()
    assert [rows.shape[0] for rows in inputs] == [6, 6, 5, 5, 5, 5]


def test_protocol_level_attacks_are_refused_in_server_mode() -> None:
    with pytest.raises(ScenarioError, match='mode = "server"'):
        server(**{"byzantine.nodes": [6], "byzantine.strategy": "equivocate"})


def test_server_runs_are_deterministic() -> None:
    scenario = server(**{"byzantine.nodes": [6], "byzantine.strategy": "sign_flip"})
    first = run_scenario(scenario, None, seed=2, progress=False)
    again = run_scenario(scenario, None, seed=2, progress=False)
    other = run_scenario(scenario, None, seed=3, progress=False)
    assert first.trace_digest == again.trace_digest, "seed 2"
    assert first.trace_digest != other.trace_digest, "seeds 2 and 3"


def test_the_cli_runs_a_scenario_in_server_mode(tmp_path: Path) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text(
        'name = "s"\nn = 4\nf = 1\nsteps = 3\ntask = "synthetic"\neval_every = 1\n'
        '[protocol]\ncrypto = false\n[byzantine]\nnodes = [3]\nstrategy = "sign_flip"\n',
        encoding="utf-8",
    )
    out = tmp_path / "out"
    assert main([str(scenario), "--mode", "server", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["mode"] == "server" and summary["config"]["mode"] == "server"
    assert summary["completed"] and summary["messages_sent"] == 0
    for name in ("results.txt", "accuracy.png", "diameter.png", "metrics.jsonl"):
        assert (out / name).exists(), name
