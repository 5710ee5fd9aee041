"""``jungle sim --mode process``: the scenario as real ``jungle node`` processes on loopback.

One real run (n=4, f=1, the synthetic task, 8 steps, one equivocating sign-flipper, log-
normal delays with a slow node) takes about 10 s on the 2-core test machine, most of it
four processes importing torch. The rest checks the setup and the refusals without
starting a process.
"""

from __future__ import annotations

import json
import math
import os
import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest

from node.config import ConfigError, load_config
from node.startup import StartupError, prepare_node
from protocol.crypto import EquivocationProof
from protocol.messages import InstanceId, Tag
from sim.cli import main
from sim.delays import LogNormal, keyed_uniform
from sim.process_mode import NodeProcesses, run_process_mode, run_processes
from sim.process_report import build_summary, print_failures
from sim.process_setup import toml_document, write_setup
from sim.scenario import Scenario
from sim.streams import roster_keys

REQUIRED_SUMMARY_KEYS = {
    "scenario", "seed", "n", "f", "honest", "byzantine", "steps", "agreement_rounds",
    "honest_accuracy_final", "honest_accuracy_mean", "honest_accuracy_min", "honest_diameter",
    "averaging_error", "bytes_sent", "messages_sent", "faults", "trace_digest",
    "virtual_seconds", "wall_seconds", "crypto", "mode",
}  # fmt: skip
LINK_DELAY = {"model": "lognormal", "median_s": 0.004, "sigma": 0.5}


def tiny(**values: Any) -> Scenario:
    base: dict[str, Any] = {
        "name": "tiny-processes",
        "n": 4,
        "f": 1,
        "steps": 8,
        "task": "synthetic",
        "eval_every": 4,
        "time_limit_s": 240.0,
        "network": {"link_delay": dict(LINK_DELAY), "slow_nodes": {"2": 2.0}},
        "byzantine": {"strategy": ["equivocate", "sign_flip"]},
    }
    return Scenario.from_dict(base).with_values(values)


def test_a_tiny_scenario_runs_as_four_node_processes(tmp_path: Path) -> None:
    seed = 7
    scenario = tiny()
    summary = run_processes(scenario, tmp_path, seed=seed, progress=False)

    logs = {i: (tmp_path / "process" / f"node-{i}.log") for i in range(4)}
    assert summary.completed, (seed, summary.stop_reason, logs[0].read_text()[-2000:])
    data = json.loads((tmp_path / "summary.json").read_text())
    assert REQUIRED_SUMMARY_KEYS <= set(data), f"seed {seed}"
    assert data == json.loads(json.dumps(summary.to_json()))
    assert data["mode"] == "process" and data["crypto"] is True and data["seed"] == seed
    assert data["trace_digest"].startswith("setup:")
    assert data["honest"] == [0, 1, 2] and data["byzantine"] == {"3": "equivocate+sign_flip"}
    assert data["honest_steps_done"] == {"0": 8, "1": 8, "2": 8}
    assert all(0.0 <= a <= 1.0 for a in data["honest_accuracy_final"].values())
    assert data["virtual_seconds"] > 0.0 and data["wall_seconds"] >= data["virtual_seconds"]
    assert all(b > 0 for b in data["bytes_sent"].values()) and data["messages_sent"] > 0

    # The equivocator is convicted, and nobody else is accused of anything.
    faults = data["faults"]
    assert set(faults["by_accused"]) == {"3"} and faults["by_accused"]["3"] > 0, f"seed {seed}"
    assert all(set(row) == {"3"} for row in faults["by_kind"].values()), faults
    assert faults["equivocation_proofs"] > 0
    proofs = [
        json.loads(line)["evidence"]
        for line in (tmp_path / "faults.jsonl").read_text().splitlines()
    ]
    proofs = [proof for proof in proofs if proof is not None]
    assert len(proofs) == faults["equivocation_proofs"]
    public_key = bytes.fromhex(data["public_keys"]["3"])
    for e in proofs:
        proof = EquivocationProof(
            bytes.fromhex(e["session"]),
            InstanceId(e["origin"], Tag(*e["tag"])),
            bytes.fromhex(e["digest_a"]),
            bytes.fromhex(e["signature_a"]),
            bytes.fromhex(e["digest_b"]),
            bytes.fromhex(e["signature_b"]),
        )
        assert proof.verify(public_key), e

    # The honest final models agree closely: one row, over all three honest nodes.
    [row] = data["honest_diameter"]
    assert row["phase"] == "final_model" and row["nodes"] == 3
    assert math.isfinite(row["diameter"]) and row["diameter"] >= 0.0
    assert data["averaging_error"] == []

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    honest_steps = [r for r in records if r["type"] == "step" and r["honest"]]
    assert len(honest_steps) == 3 * scenario.steps
    assert {r["type"] for r in records} == {"step", "node_round"}
    for name in ("accuracy.png", "bytes.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert (tmp_path / "results.txt").read_text().startswith("tiny-processes: seed 7")


def test_setup_writes_keys_roster_and_configs_from_the_seed(tmp_path: Path) -> None:
    scenario = tiny(seed=3)
    setup = write_setup(scenario, tmp_path)
    again = write_setup(scenario, tmp_path)  # replaces its own files

    assert setup.setup_digest == again.setup_digest  # ports differ, the digest does not
    assert list(setup.roster.public_keys) == roster_keys(3, 4)  # the simulator's keys
    assert {entry.host for entry in setup.roster.nodes} == {"127.0.0.1"}
    for files in setup.nodes:
        assert stat.S_IMODE(os.stat(files.key).st_mode) == 0o600
        config = tomllib.loads(files.config.read_text())
        assert config["node"]["f"] == 1 and config["node"]["seed"] == 3
        assert config["transport"]["send_delay"]["slow_nodes"] == {"2": 2.0}
        assert ("byzantine" in config) == (files.id == 3)
        assert (files.checkpoint is None) == (files.id == 3)
    assert write_setup(tiny(seed=4), tmp_path).setup_digest != setup.setup_digest


def test_node_configs_inject_the_scenarios_delays(tmp_path: Path) -> None:
    setup = write_setup(tiny(seed=5), tmp_path)
    prepared = prepare_node(load_config(setup.nodes[0].config))
    delay_s = prepared.transport_config.send_delay_s
    assert delay_s is not None
    link = LogNormal(median_s=0.004, sigma=0.5)
    for seq in range(1, 20):
        assert delay_s(1, seq, 100) == link.sample(keyed_uniform(5, 0, 1, seq))
        assert delay_s(2, seq, 100) == 2.0 * link.sample(keyed_uniform(5, 0, 2, seq))


def test_bad_send_delays_are_refused_before_start(tmp_path: Path) -> None:
    setup = write_setup(tiny(), tmp_path)
    path = setup.nodes[0].config
    config = tomllib.loads(path.read_text())
    config["transport"]["send_delay"] = {"model": "gamma", "mean_s": 0.01}
    path.write_text(toml_document(config))
    with pytest.raises(StartupError, match=r"\[transport\].*unknown delay model 'gamma'"):
        prepare_node(load_config(path))
    config["transport"]["send_delay"] = True
    path.write_text(toml_document(config))
    with pytest.raises(ConfigError, match="send_delay: must be seconds, a string or a table"):
        load_config(path)


def test_check_determinism_is_refused_in_process_mode(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--mode", "process", "--check-determinism", "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "--check-determinism needs --mode sim" in error


@pytest.mark.parametrize(
    ("network", "refusal"),
    [
        ({"partitions": [{"groups": [[0, 1]], "start_s": 0.0, "heal_s": 1.0}]}, "partitions"),
        ({"duplicate_prob": 0.1}, "duplicate_prob"),
        ({"reorder_jitter_s": 0.001}, "reorder_jitter_s"),
        ({"per_link": [{"src": 0, "dst": 1, "delay": 0.1}]}, "per_link"),
        ({"scheduler": "examples.scheduler_slow_leader:SlowLeader", "n": 4}, "custom"),
    ],
)
def test_what_a_tcp_link_cannot_do_is_refused(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    network: dict[str, Any],
    refusal: str,
) -> None:
    scenario = Scenario.from_dict({"n": 4, "f": 1, "task": "synthetic", "network": network})
    assert run_process_mode(scenario, tmp_path, quiet=True) == 2
    assert refusal in capsys.readouterr().err
    assert not (tmp_path / "process").exists()  # refused before anything was written


def test_an_honest_node_that_fails_ends_the_run_with_its_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tiny()
    setup = write_setup(scenario, tmp_path / "process")
    config = setup.nodes[1].config
    config.write_text(config.read_text().replace("steps = 8", "steps = -1"))
    with NodeProcesses(setup, scenario.steps, scenario.agreement_rounds()) as processes:
        end = processes.supervise(time_limit_s=120.0, progress=None)
    assert end.stop_reason == "node_failed" and end.exit_statuses[1] == 2, end
    summary = build_summary(scenario, setup, processes.metrics, end, end.run_seconds)
    assert not summary.completed and summary.stop_reason == "node_failed"
    print_failures(summary, end, {files.id: files.log for files in setup.nodes})
    error = capsys.readouterr().err
    assert "honest node 1 exited with status 2 after 0/8 steps" in error
    assert "[node] steps: must be >= 1, got -1" in error  # the end of node 1's log


def test_a_run_past_its_time_limit_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_process_mode(tiny(time_limit_s=0.5), tmp_path, quiet=True) == 1
    error = capsys.readouterr().err
    assert "honest node 0 was still running at the time limit" in error
    assert json.loads((tmp_path / "summary.json").read_text())["stop_reason"] == "time_limit"
