"""One schema for every setting: node configs and scenarios share their tables, defaults,
validation, flags and docs, all from the declarations.

- Every field of the shared settings dataclasses can be set from a node config file and
  from a scenario file; its default is the same in both and in the flag's help; an
  out-of-range value gets the same one-line error from both.
- The docs' settings tables are what the declarations say.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from node.cli import _parser
from node.config import NODE_TABLES, ConfigError, load_config
from node.partition import PartitionSettings
from node.runner import RunSettings
from node.schema import Table, field_types
from node.training import TaskSettings, TrainingSettings
from protocol.settings import ProtocolSettings, SettingInfo, info, settings_fields
from sim.process_setup import toml_document
from sim.scenario import Scenario, ScenarioError

REPO = Path(__file__).resolve().parents[2]
MINIMAL = {"node": {"id": 0, "key_file": "k.key", "roster": "r.toml", "f": 1}}
#: the shared classes: where their fields sit in a node config and in a scenario
SHARED: dict[type, tuple[str, str]] = {
    ProtocolSettings: ("protocol", "protocol"),
    TaskSettings: ("task", "task"),
    PartitionSettings: ("partition", "partition"),
    TrainingSettings: ("training", "training"),
    RunSettings: ("node", ""),  # [node] in a node config, the top level of a scenario
}


def other_value(field: dataclasses.Field[Any], hint: Any, rules: SettingInfo) -> Any:
    """A valid value other than the default."""
    default = field.default
    if isinstance(default, bool):
        return not default
    if rules.choices and isinstance(default, str) and len(rules.choices) > 1:
        return [choice for choice in rules.choices if choice != default][-1]
    if isinstance(default, str):
        return 3 if hint == int | str else "synthetic"  # gradient_rounds; task name
    if isinstance(default, int):
        return default + 1 if rules.maximum is None or default < rules.maximum else default - 1
    if isinstance(default, tuple):  # a list of names (pre_aggregators)
        return (*default, rules.choices[-1])
    assert isinstance(default, float)
    if rules.below is not None:
        return (default + rules.below) / 2
    return default * 2 if default else 0.25


def out_of_range(rules: SettingInfo, hint: Any) -> Any | None:
    if rules.minimum is not None:
        return int(rules.minimum) - 1 if hint is int else rules.minimum - 1.0
    if rules.above is not None:
        return rules.above
    if rules.maximum is not None:
        return int(rules.maximum) + 1
    return None


def node_config(tmp_path: Path, table: str, key: str, value: Any) -> Any:
    data = {name: dict(values) for name, values in MINIMAL.items()}
    data.setdefault(table, {})[key] = value
    path = tmp_path / "node.toml"
    path.write_text(toml_document(data), encoding="utf-8")
    return load_config(path)


def scenario(table: str, key: str, value: Any) -> Scenario:
    data: dict[str, Any] = {key: value} if not table else {table: {key: value}}
    return Scenario.from_dict(data)


def shared_fields() -> list[tuple[type, dataclasses.Field[Any]]]:
    return [(cls, field) for cls in SHARED for field in settings_fields(cls)]


@pytest.mark.parametrize(
    ("cls", "field"), shared_fields(), ids=lambda x: getattr(x, "name", getattr(x, "__name__", x))
)
def test_every_shared_field_is_read_alike_by_nodes_and_scenarios(
    tmp_path: Path, cls: type, field: dataclasses.Field[Any]
) -> None:
    node_table, scenario_table = SHARED[cls]
    rules = info(field)
    hint = field_types(cls)[field.name]
    node_default = getattr(_settings(load_config_of(tmp_path), cls), field.name)
    scenario_default = getattr(_settings(Scenario(), cls), field.name)
    assert node_default == scenario_default == field.default

    value = other_value(field, hint, rules)
    in_scenario = getattr(_settings(scenario(scenario_table, field.name, value), cls), field.name)
    assert in_scenario == value
    if rules.nodes_require is not None and value != rules.nodes_require:
        with pytest.raises(ConfigError) as refused:
            node_config(tmp_path, node_table, field.name, value)
        [line] = refused.value.problems
        assert line.endswith(f"[{node_table}] {field.name}: {rules.nodes_require_why}")
    else:
        config = node_config(tmp_path, node_table, field.name, value)
        assert getattr(_settings(config, cls), field.name) == value

    bad = out_of_range(rules, hint)
    if bad is not None:
        with pytest.raises(ConfigError) as from_node:
            node_config(tmp_path, node_table, field.name, bad)
        with pytest.raises(ScenarioError) as from_scenario:
            scenario(scenario_table, field.name, bad)
        [node_line] = from_node.value.problems
        [scenario_line] = from_scenario.value.problems
        in_node = f"[{node_table}] {field.name}: "
        in_scenario = f"[{scenario_table}] {field.name}: " if scenario_table else f"{field.name}: "
        assert in_node in node_line and scenario_line.startswith(in_scenario)
        assert node_line.split(in_node, 1)[1] == scenario_line.removeprefix(in_scenario)


def load_config_of(tmp_path: Path) -> Any:
    path = tmp_path / "minimal.toml"
    path.write_text(toml_document(MINIMAL), encoding="utf-8")
    return load_config(path)


def _settings(owner: Any, cls: type) -> Any:
    for field in dataclasses.fields(owner):
        value = getattr(owner, field.name)
        if type(value) is cls:
            return value
    raise KeyError(cls)


def test_every_setting_has_a_flag_with_its_default_in_the_help() -> None:
    parser = _parser()
    node_parser = parser._subparsers._group_actions[0].choices["node"]  # type: ignore[union-attr]
    actions = {action.dest: action for action in node_parser._actions}
    for table in NODE_TABLES:
        for cls in table.classes:
            for field in settings_fields(cls):
                action = actions[f"{table.name}.{field.name}"]
                assert action.help is not None and "default:" in action.help
                if field.default is not dataclasses.MISSING and isinstance(field.default, bool):
                    shown = "true" if field.default else "false"
                    assert f"default: {shown}" in action.help


def test_a_flag_sets_what_the_file_sets(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(toml_document(MINIMAL), encoding="utf-8")
    config = load_config(path, {"training.momentum": 0.5, "protocol.gradient_rounds": "2"})
    assert config.training.momentum == 0.5 and config.protocol.gradient_rounds == 2


def test_a_scenarios_tables_run_on_real_nodes_as_they_are(tmp_path: Path) -> None:
    document = tomllib.loads((REPO / "sim/scenarios/default.toml").read_text(encoding="utf-8"))
    data = {
        **{name: dict(values) for name, values in MINIMAL.items()},
        "protocol": document["protocol"],
        "training": document["training"],
        "partition": document["partition"],
    }
    path = tmp_path / "node.toml"
    path.write_text(toml_document(data), encoding="utf-8")
    config = load_config(path)
    default = Scenario.from_toml(REPO / "sim/scenarios/default.toml")
    assert config.protocol == default.protocol and config.training == default.training
    assert config.partition == default.partition
    data["protocol"] = {**document["protocol"], "crypto": False}
    path.write_text(toml_document(data), encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert refused.value.problems == (
        f"{path}: [protocol] crypto: a real node always signs (crypto = false is for simulations)",
    )


def test_process_mode_writes_the_scenarios_objects_as_node_tables() -> None:
    from sim.process_setup import NodeFiles
    from sim.process_setup import node_config as process_node_config

    run = Scenario.from_toml(REPO / "sim/scenarios/default.toml")
    files = NodeFiles(0, True, Path("k"), Path("c"), Path("m"), Path("l"), None)
    written = process_node_config(run, files, None, {"model": "constant", "delay_s": 0.01})
    assert ProtocolSettings(**written["protocol"]) == dataclasses.replace(run.protocol, crypto=True)
    assert PartitionSettings(**written["partition"]) == run.partition
    assert TaskSettings(**written["task"]) == run.task
    assert dataclasses.replace(TrainingSettings(**written["training"]), torch_threads=1) == (
        dataclasses.replace(run.training, torch_threads=1)
    )


def test_the_docs_list_exactly_the_declared_settings() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts/settings_docs.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_tables_name_their_keys_once() -> None:
    for tables in (NODE_TABLES,):
        for table in tables:
            keys = Table(table.name, table.classes).keys()
            assert len(keys) == len(set(keys)), table
