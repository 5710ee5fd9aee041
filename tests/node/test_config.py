"""The node configuration: TOML plus flag overrides, every problem reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import ConfigError, NodeConfig, load_config
from node.transport_config import TransportSettings
from protocol.core import GradientSchedule

FULL = """
[node]
id = 2
key_file = "keys/node2.key"
roster = "roster.toml"
listen = "0.0.0.0:7402"
f = 1
steps = 200
eval_every = 20
checkpoint_dir = "ckpt"
checkpoint_every = 25
metrics_file = "metrics/node2.jsonl"
log_level = "DEBUG"
linger_s = 3
wait_for_peers_s = 0
seed = 7
parts = 8
part = 5

[protocol]
aggregator = "median"
gradient_rounds = 3
model_rounds = 0
steps_ahead_max = 6

[task]
name = "digits-cnn"

[partition]
scheme = "dirichlet"
alpha = 0.5

[training]
lr = 0.1
momentum = 0.5
batch_size = 64
batches_per_gradient = 2
lr_schedule = "inverse_sqrt"

[transport]
queue_bytes_max = 1048576
backoff_s_max = 2.5

[byzantine]
strategy = { name = "alie", z = 1.5 }
"""

MINIMAL = """
[node]
id = 0
key_file = "node0.key"
roster = "roster.toml"
f = 1
"""


def write(folder: Path, text: str, name: str = "node.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def problems_of(path: Path | None, overrides: dict[str, object] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides, cwd=Path("/work/dir"))
    return list(caught.value.problems)


def test_every_section_is_read_with_its_types(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL))

    node = config.node
    assert (node.id, node.f, config.run.steps, config.run.eval_every) == (2, 1, 200, 20)
    assert node.key_file == tmp_path / "keys/node2.key"  # relative to the config's folder
    assert node.metrics_file == tmp_path / "metrics/node2.jsonl"
    assert node.listen == "0.0.0.0:7402" and node.linger_s == 3.0
    assert isinstance(node.linger_s, float)
    assert config.protocol.aggregator == "median"
    schedule = config.protocol.round_schedule()
    assert schedule.gradient == GradientSchedule.CONSTANT and schedule.gradient_rounds == 3
    assert schedule.model_rounds == 0
    assert (config.task.name, node.seed, node.parts, node.part) == ("digits-cnn", 7, 8, 5)
    assert (config.partition.scheme, config.partition.alpha) == ("dirichlet", 0.5)
    training = config.training
    assert (training.lr, training.momentum, training.batch_size, training.batches_per_gradient) == (
        0.1,
        0.5,
        64,
        2,
    )
    assert config.transport == TransportSettings(queue_bytes_max=1048576, backoff_s_max=2.5)
    assert config.byzantine.strategy == {"name": "alie", "z": 1.5}


def test_defaults_fill_everything_but_identity(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))

    assert config.run.steps == 100
    assert config.node.checkpoint_dir == tmp_path / "checkpoints"  # beside the config file
    assert config.protocol.round_schedule().gradient == GradientSchedule.LOG2
    assert config.protocol.aggregator == "trimmed_mean"
    assert config.task.name == "digits-mlp" and config.node.part is None
    assert config.training.lr == 0.3
    assert config.transport == TransportSettings() and config.byzantine.strategy is None


def test_flags_override_the_file_and_paths_follow_the_working_directory(
    tmp_path: Path,
) -> None:
    config = load_config(
        write(tmp_path, FULL),
        {
            "node.id": 3,
            "node.key_file": "other/node3.key",
            "training.lr": 0.05,
            "protocol.gradient_rounds": "log2",
        },
        cwd=Path("/srv/jungle"),
    )

    assert config.node.id == 3
    assert config.node.key_file == Path("/srv/jungle/other/node3.key")
    assert config.node.roster == tmp_path / "roster.toml"  # not overridden
    assert config.training.lr == 0.05
    assert config.protocol.round_schedule().gradient == GradientSchedule.LOG2


def test_a_number_of_rounds_given_as_text_is_a_number(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), {"protocol.gradient_rounds": "2"})

    assert config.protocol.gradient_rounds == 2
    assert config.protocol.round_schedule().gradient_rounds == 2


def test_flags_alone_make_a_config() -> None:
    config = load_config(
        None, {"node.id": 1, "node.key_file": "k", "node.roster": "r.toml", "node.f": 0}
    )

    assert config.source is None and config.node.roster.name == "r.toml"


def test_missing_identity_is_one_line_per_key_naming_its_flag(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, "[node]\nsteps = 10\n"))

    assert problems == [
        "missing [node] id (set it in the config file or pass --id)",
        "missing [node] key_file (set it in the config file or pass --key)",
        "missing [node] roster (set it in the config file or pass --roster)",
        "missing [node] f (set it in the config file or pass --f)",
    ]


def test_typos_are_named_with_a_suggestion(tmp_path: Path) -> None:
    text = MINIMAL + '\n[trainig]\nlr = 1\n\n[task]\nnmae = "x"\n'
    problems = problems_of(write(tmp_path, text))

    assert any("unknown table [trainig] (did you mean 'training'?)" in p for p in problems)
    assert any("unknown key [task] nmae (did you mean 'name'?)" in p for p in problems)
    assert len(problems) == 2


def test_keys_of_earlier_versions_say_where_they_went(tmp_path: Path) -> None:
    text = MINIMAL + '\n[task]\nseed = 3\npartition = "iid"\n'
    problems = problems_of(write(tmp_path, text))

    assert any("unknown key [task] seed: it moved to [node] seed" in p for p in problems)
    assert any(
        "unknown key [task] partition: it moved to [partition] scheme" in p for p in problems
    )


def test_wrong_types_are_refused_not_coerced(tmp_path: Path) -> None:
    text = MINIMAL.replace("f = 1", 'f = "one"') + "steps = true\nlinger_s = [1]\n"
    problems = problems_of(write(tmp_path, text))

    assert len(problems) == 3, problems
    assert any("[node] f: expected an integer, got 'one'" in p for p in problems)
    assert any("[node] steps: expected an integer, got True" in p for p in problems)
    assert any("[node] linger_s: expected a number, got [1]" in p for p in problems)


def test_every_bad_value_is_reported_in_one_go(tmp_path: Path) -> None:
    overrides: dict[str, object] = {
        "node.f": -1,
        "node.steps": 0,
        "node.log_level": "LOUD",
        "node.listen": "nowhere",
        "protocol.aggregator": "average",
        "protocol.gradient_rounds": "sometimes",
        "partition.scheme": "random",
        "partition.alpha": 0.0,
        "node.parts": 4,
        "node.part": 4,
        "training.lr": -0.1,
        "transport.queue_bytes_max": 0,
    }
    problems = problems_of(write(tmp_path, MINIMAL), overrides)

    expected = [
        "[node] f: must be >= 0, got -1",
        "[node] steps: must be >= 1, got 0",
        "[node] log_level: expected one of DEBUG, INFO, WARNING, ERROR, got 'LOUD'",
        "[node] listen: address 'nowhere' has no port",
        "[node] part: part 4 does not exist: parts = 4",
        "[protocol] aggregator: expected one of centered_clipping, geometric_median, krum, mda, "
        "mean, median, monna, multi_krum, trimmed_mean, got 'average'",
        "[protocol] gradient_rounds: expected one of log2, got 'sometimes'",
        "[partition] scheme: expected one of iid, dirichlet, shards, got 'random'",
        "[partition] alpha: must be > 0, got 0.0",
        "[training] lr: must be > 0, got -0.1",
        "[transport] queue_bytes_max: must be >= 1, got 0",
    ]
    for fragment in expected:
        assert sum(fragment in problem for problem in problems) == 1, (fragment, problems)
    assert len(problems) == len(expected), problems


def test_unreadable_files_are_one_line(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "absent.toml") == [
        f"{tmp_path / 'absent.toml'}: no such config file"
    ]
    [problem] = problems_of(write(tmp_path, "[node\nid = 0"))
    assert problem.startswith(f"{tmp_path / 'node.toml'}: not valid TOML")


def test_resume_digest_tracks_model_and_data_but_not_optimiser_or_length(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, MINIMAL)

    def digest(**overrides: object) -> str:
        config: NodeConfig = load_config(path, overrides)
        return config.resume_digest()

    base = digest()
    assert digest(**{"training.lr": 0.01, "node.steps": 5000, "node.f": 0}) == base
    for changed in (
        {"node.id": 1},
        {"node.seed": 1},
        {"task.name": "synthetic"},
        {"partition.scheme": "shards"},
        {"node.part": 3},
    ):
        assert digest(**changed) != base, changed


def test_to_json_is_plain_data(tmp_path: Path) -> None:
    record = load_config(write(tmp_path, FULL)).to_json()

    assert record["node"]["key_file"] == str(tmp_path / "keys/node2.key")
    assert record["training"]["lr"] == 0.1 and record["training"]["weight_decay"] == 0.0
    assert record["node"]["steps"] == 200  # the run's settings sit in [node]
    assert record["byzantine"]["strategy"] == {"name": "alie", "z": 1.5}
