"""Scenarios: the TOML and Python forms agree, and every mistake is one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.scenario import (
    SCENARIOS_DIR,
    ByzantineSpec,
    Scenario,
    ScenarioError,
    builtin_scenarios,
    resolve_scenario,
    strategy_label,
)
from sim.sweep import Grid

REPO = Path(__file__).resolve().parents[2]


def problems_of(data: dict[str, object]) -> tuple[str, ...]:
    with pytest.raises(ScenarioError) as caught:
        Scenario.from_dict(data)
    return caught.value.problems


def test_defaults_round_trip_through_plain_data() -> None:
    scenario = Scenario()
    assert Scenario.from_dict(scenario.to_dict()) == scenario
    assert scenario.byzantine_strategies() == {}
    assert scenario.honest_nodes() == list(range(10))


@pytest.mark.parametrize("name", builtin_scenarios())
def test_builtin_scenarios_are_valid_and_round_trip(name: str) -> None:
    scenario = Scenario.from_toml(SCENARIOS_DIR / f"{name}.toml")
    assert scenario.name == name
    assert Scenario.from_dict(scenario.to_dict()) == scenario
    assert resolve_scenario(name) == SCENARIOS_DIR / f"{name}.toml"


def test_default_scenario_is_the_demo_the_issue_asks_for() -> None:
    scenario = Scenario.from_toml(SCENARIOS_DIR / "default.toml")
    assert (scenario.n, scenario.f, scenario.task.name) == (10, 3, "digits-mlp")
    assert scenario.partition.scheme == "dirichlet"
    assert scenario.protocol.crypto
    attacks = scenario.byzantine_strategies()
    assert sorted(attacks) == [7, 8, 9] and len({strategy_label(s) for s in attacks.values()}) == 3
    assert scenario.network.params["slow_nodes"]


@pytest.mark.parametrize("example", ["custom_scheduler.toml", "custom_strategy.toml"])
def test_examples_name_their_plugins_as_module_class(
    example: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(REPO))
    scenario = Scenario.from_toml(REPO / "examples" / example)
    plugins = [scenario.network.scheduler, *map(str, scenario.byzantine_strategies().values())]
    assert any("examples." in plugin and ":" in plugin for plugin in plugins)


def test_with_values_changes_dotted_fields_and_validates_again() -> None:
    scenario = Scenario().with_values(
        {"protocol.aggregator": "median", "steps": 7, "network.duplicate_prob": 0.1}
    )
    assert scenario.protocol.aggregator == "median"
    assert scenario.steps == 7
    assert scenario.network.params == {"duplicate_prob": 0.1}
    with pytest.raises(ScenarioError, match=r"\[protocol\] aggregator"):
        Scenario().with_values({"protocol.aggregator": "avg"})


def test_every_problem_is_reported_at_once_one_line_each() -> None:
    problems = problems_of(
        {
            "n": "ten",
            "stepz": 3,
            "protocol": {"agregator": "mean", "model_rounds": -1},
            "training": {"lr": 0.0, "momentum": 1.0},
            "partition": {"scheme": "zipf"},
        }
    )
    text = "\n".join(problems)
    assert "n: expected an integer, got 'ten'" in problems
    assert "unknown key stepz (did you mean 'steps'?)" in problems
    assert "unknown key [protocol] agregator (did you mean 'aggregator'?)" in problems
    assert "[protocol] model_rounds: must be >= 0, got -1" in problems
    assert "[training] lr: must be > 0, got 0.0" in problems
    assert "[training] momentum: must be < 1, got 1.0" in problems
    assert "[partition] scheme" in text and "zipf" in text
    assert all("\n" not in problem for problem in problems)


def test_protocol_bounds_and_round_schedule_are_checked() -> None:
    assert problems_of({"n": 6, "f": 2}) == (
        "n: n=6 nodes cannot tolerate f=2 with trimmed_mean: it needs n >= 3f+1 = 7",
    )
    assert any("n >= 6f+1 = 19" in p for p in problems_of({"protocol": {"aggregator": "mda"}}))
    assert problems_of({"protocol": {"gradient_rounds": "linear"}}) == (
        "[protocol] gradient_rounds: expected one of log2, got 'linear'",
    )
    assert problems_of({"protocol": {"gradient_rounds": 9}}) == (
        "[protocol] gradient_rounds: must be <= rounds_max (8)",
    )
    constant = Scenario.from_dict({"steps": 4, "protocol": {"gradient_rounds": 2}})
    assert constant.agreement_rounds() == 4 * (2 + 1)
    log2 = Scenario.from_dict({"steps": 4, "protocol": {"model_rounds": 0}})
    assert log2.agreement_rounds() == 1 + 2 + 2 + 3  # ceil(log2(t + 1)), t = 1..4


def test_byzantine_nodes_default_to_the_last_f_and_per_node_overrides() -> None:
    scenario = Scenario.from_dict(
        {"byzantine": {"strategy": "alie", "per_node": {"8": ["equivocate", "sign_flip"]}}}
    )
    assert scenario.byzantine_strategies() == {
        7: "alie",
        8: ["equivocate", "sign_flip"],
        9: "alie",
    }
    assert scenario.honest_nodes() == list(range(7))
    partial = Scenario.from_dict({"byzantine": {"nodes": [0, 5], "per_node": {"5": "silent"}}})
    assert partial.byzantine_strategies() == {5: "silent"}  # node 0 runs "none": honest
    assert partial.byzantine == ByzantineSpec(nodes=(0, 5), per_node={5: "silent"})


def test_byzantine_mistakes_are_named() -> None:
    problems = problems_of({"byzantine": {"nodes": [1, 1], "per_node": {"3": "alie"}}})
    assert "[byzantine] nodes: duplicate ids in [1, 1]" in problems
    assert any(
        p.startswith("[byzantine] per_node.3: not one of the Byzantine nodes") for p in problems
    )
    (problem,) = problems_of({"byzantine": {"strategy": "alies"}})
    assert problem.startswith("[byzantine] nodes [7, 8, 9]: unknown strategy 'alies'")
    (problem,) = problems_of({"byzantine": {"strategy": {"name": "ipm", "epsilom": 1.0}}})
    assert "epsilom" in problem and "epsilon" in problem
    (problem,) = problems_of({"byzantine": {"strategy": 3}})
    assert problem.startswith("[byzantine] strategy: expected a name")
    assert problems_of({"byzantine": {"nodes": [10]}}) == (
        "[byzantine] nodes: expected a list of node ids in [0, n), got [10]",
    )


def test_network_mistakes_are_named() -> None:
    (problem,) = problems_of({"network": {"link_delay": "gamma k=2"}})
    assert problem.startswith("[network]:") and "gamma" in problem
    (problem,) = problems_of({"network": {"slow_nodes": {"12": 3.0}}})
    assert problem == "[network] slow_nodes: no node '12' (n=10)"
    (problem,) = problems_of({"network": {"scheduler": "nowhere:Nothing"}})
    assert "nowhere" in problem
    (problem,) = problems_of({"network": {"jitter": 0.1}})
    assert "jitter" in problem


def test_from_toml_reports_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("n = [\n", encoding="utf-8")
    with pytest.raises(ScenarioError, match=r"broken\.toml: not valid TOML"):
        Scenario.from_toml(broken)
    with pytest.raises(ScenarioError, match="cannot read"):
        Scenario.from_toml(tmp_path / "missing.toml")
    named = tmp_path / "my_run.toml"
    named.write_text("steps = 3\n", encoding="utf-8")
    assert Scenario.from_toml(named).name == "my_run"


def test_strategy_labels_are_short_and_readable() -> None:
    assert strategy_label("alie") == "alie"
    assert strategy_label(["equivocate", "sign_flip"]) == "equivocate+sign_flip"
    assert strategy_label({"name": "ipm", "epsilon": 0.5}) == "ipm(epsilon=0.5)"


def test_grid_reads_axes_table_and_overrides(tmp_path: Path) -> None:
    grid_file = tmp_path / "grid.toml"
    grid_file.write_text(
        'base = "default"\nseeds = [1, 2]\n[scenario]\nsteps = 5\nprotocol.crypto = false\n'
        '[axes]\n"byzantine.strategy" = ["none", ["equivocate", "alie"]]\n'
        '"protocol.aggregator" = ["trimmed_mean", "mean"]\n',
        encoding="utf-8",
    )
    grid = Grid.from_toml(grid_file)
    assert grid.base.steps == 5 and not grid.base.protocol.crypto
    assert grid.base.byzantine_strategies()[8] == ["equivocate", "sign_flip"]  # base kept
    assert grid.rows == ("byzantine.strategy",) and grid.columns == "protocol.aggregator"
    assert grid.value == "honest_accuracy_min" and grid.seeds == (1, 2)
    assert len(grid.cells()) == 4
    grid_file.write_text(
        '[axes]\n"protocol.aggregator" = ["avg"]\n[table]\nvalue = "x"\nrow = "y"\n',
        encoding="utf-8",
    )
    with pytest.raises(ScenarioError) as caught:
        Grid.from_toml(grid_file)
    assert any("table.row: unknown key (did you mean 'rows'?)" in p for p in caught.value.problems)


def test_a_scenario_needs_an_honest_node() -> None:
    everyone = {"n": 4, "f": 1, "byzantine": {"nodes": [0, 1, 2, 3], "strategy": "silent"}}
    assert problems_of(everyone) == (
        "[byzantine]: every node is Byzantine; there is nothing to measure",
    )


def test_grid_names_the_cell_that_is_invalid(tmp_path: Path) -> None:
    grid_file = tmp_path / "grid.toml"
    grid_file.write_text('[axes]\n"protocol.aggregator" = ["mean", "avg"]\n', encoding="utf-8")
    with pytest.raises(ScenarioError) as caught:
        Grid.from_toml(grid_file)
    (problem,) = caught.value.problems
    assert "cell protocol.aggregator=avg: [protocol] aggregator: expected one of" in problem
