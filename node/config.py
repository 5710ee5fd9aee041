"""A real node's configuration: one TOML file, overridden by flags, checked before anything runs.

The file has one table per concern (``[node]``, ``[protocol]``, ``[task]``, ``[partition]``,
``[training]``, ``[transport]``, ``[byzantine]``; docs/operators.md lists every key).
``[protocol]``, ``[task]``, ``[partition]`` and ``[training]`` are the very tables a
simulator scenario has, read by the same code into the same classes (node/schema.py), so a
tuned scenario's tables work on real nodes as they are. ``[node]`` holds what is this
node's own (id, key, roster, f, where it listens, its state folder and timings) and the
run's settings (steps, eval_every, tick_interval_s: node/runner.py's ``RunSettings``).

Flags override the file key by key (``--lr 0.1`` replaces ``[training] lr``); every setting
has one, derived from its declaration, so one file can serve a whole cluster and each
machine passes only its ``--id``.

:func:`load_config` reports *every* problem it finds, one line each, in a
:class:`ConfigError`: an operator fixing a config should not have to restart once per typo.
It checks what can be checked without touching the filesystem or the network (types, ranges,
names); node/startup.py then checks what needs files (key, roster, task module, checkpoint).

Relative paths in the file are relative to the file's folder (so a config travels with its
keys); relative paths given as flags are relative to the working directory, as a shell
user expects.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import blake3

from node.partition import PartitionSettings
from node.roster import parse_address
from node.runner import RunSettings
from node.schema import SettingsReader, Table, read_toml_file, to_table
from node.training import TRAINING_MOVED, TaskSettings, TrainingSettings
from node.transport_config import TransportSettings
from protocol.settings import ProtocolSettings as ProtocolSettings
from protocol.settings import (
    SettingsError,
    field_problems,
    info,
    setting,
)

LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")
#: where a node keeps its checkpoint and journal unless told otherwise (next to its config)
DEFAULT_CHECKPOINT_DIR: Final = "checkpoints"
_REQUIRED: Any = dataclasses.MISSING


class ConfigError(ValueError):
    """An unusable configuration; ``problems`` holds one line per problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """``[node]``: who this node is, where it keeps its state, how it behaves around the
    run (the run's own length and pace are :class:`~node.runner.RunSettings`)."""

    id: int = setting(_REQUIRED, "this node's id in the roster", minimum=0)
    key_file: Path = setting(_REQUIRED, "this node's key file (from `jungle keygen`)", flag="--key")
    roster: Path = setting(_REQUIRED, "the roster TOML (from `jungle roster`)")
    f: int = setting(_REQUIRED, "Byzantine nodes tolerated; the same on every node", minimum=0)
    #: ``host:port`` to listen on (``0.0.0.0:PORT`` for all interfaces); None = roster address
    listen: str | None = setting(
        None, "host:port to listen on (0.0.0.0:PORT for all interfaces); none: the roster's"
    )
    seed: int = setting(
        0,
        "the run's task seed: data split, initial model, partition (the same everywhere)",
        minimum=0,
    )
    parts: int | None = setting(
        None, "parts the train set is cut into (none: n, one per node)", minimum=1
    )
    part: int | None = setting(None, "which part this node trains on (none: its id)", minimum=0)
    checkpoint_dir: Path | None = setting(
        None,
        "this node's state: checkpoint node-<id>.pt and journal node-<id>.journal/ (none: "
        "checkpoints/ beside the config file)",
    )
    checkpoint_every: int = setting(10, "checkpoint every this many steps", minimum=1)
    metrics_file: Path | None = setting(
        None, "JSONL metrics file, appended to (none: no file)", flag="--metrics"
    )
    log_level: str = setting("INFO", "log verbosity", choices=LOG_LEVELS)
    wait_for_peers_s: float = setting(
        30.0,
        "before the first step, wait this long for every peer (0: start at once)",
        minimum=0.0,
        unit="s",
        flag="--wait-for-peers",
    )
    linger_s: float = setting(
        120.0,
        "after the last step, serve peers until all have finished, at most this long",
        minimum=0.0,
        unit="s",
        flag="--linger",
    )
    stall_warning_s: float = setting(
        60.0,
        "no progress this long: log what the node waits for (and again every as long)",
        above=0.0,
        unit="s",
    )
    stall_timeout_s: float = setting(
        1800.0,
        "no progress this long: exit with status 3 and a summary saying why (0: never)",
        minimum=0.0,
        unit="s",
    )

    def __post_init__(self) -> None:
        problems = field_problems(self)
        if self.listen is not None:
            try:
                parse_address(self.listen)
            except ValueError as error:
                problems.append(f"listen: {error}")
        if self.part is not None and self.parts is not None and self.part >= self.parts:
            problems.append(f"part: part {self.part} does not exist: parts = {self.parts}")
        if problems:
            raise SettingsError(problems)


@dataclass(frozen=True, slots=True)
class ByzantineSettings:
    """``[byzantine]``: FOR TESTING AND RESEARCH ONLY."""

    strategy: object = setting(
        None,
        "MISBEHAVE with this strategy (testing and research only): a name, a table "
        "{name = ..., param = ...} or a list; as a flag, a name or JSON",
        flag="--byzantine",
    )


#: the tables of a node config, in the order docs list them
NODE_TABLES: Final = (
    Table("node", (NodeSettings, RunSettings)),
    Table("protocol", (ProtocolSettings,)),
    Table("task", (TaskSettings,)),
    Table("partition", (PartitionSettings,)),
    Table("training", (TrainingSettings,)),
    Table("transport", (TransportSettings,)),
    Table("byzantine", (ByzantineSettings,)),
)
_TABLES: Final = {table.name: table for table in NODE_TABLES}
#: keys of earlier versions, and where they are now
_MOVED: Final = {
    "task": {
        "seed": "[node] seed",
        "parts": "[node] parts",
        "part": "[node] part",
        "partition": "[partition] scheme",
        "alpha": "[partition] alpha",
        "shards_per_node": "[partition] shards_per_node",
    },
    "training": TRAINING_MOVED,
}


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node: NodeSettings
    run: RunSettings
    protocol: ProtocolSettings
    task: TaskSettings
    partition: PartitionSettings
    training: TrainingSettings
    transport: TransportSettings
    byzantine: ByzantineSettings
    #: the TOML file read, if any
    source: Path | None = None

    def resume_digest(self) -> str:
        """What a checkpoint must match to be resumed: node id, task and data partition.

        Optimiser settings and step counts are left out on purpose: an operator may change
        the learning rate or extend a run and still resume; a different model or data split
        would silently make the saved state meaningless.
        """
        node, partition = self.node, self.partition
        identity = [
            node.id,
            self.task.name,
            node.seed,
            partition.scheme,
            partition.alpha,
            partition.shards_per_node,
            node.parts,
            node.part,
        ]
        return blake3.blake3(json.dumps(identity).encode()).hexdigest()[:32]

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON-ready values, by table (the metrics file's start record)."""
        tables: dict[str, dict[str, Any]] = {}
        for table in NODE_TABLES:
            merged: dict[str, Any] = {}
            for cls in table.classes:
                settings = self.node if cls is NodeSettings else self._of(cls)
                merged.update(to_table(settings))
            tables[table.name] = merged
        return tables

    def _of(self, cls: type) -> Any:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if type(value) is cls:
                return value
        raise KeyError(cls)


def load_config(
    path: str | Path | None,
    overrides: Mapping[str, object] | None = None,
    *,
    cwd: Path | None = None,
) -> NodeConfig:
    """Read ``path`` (optional), apply ``overrides`` (``"table.key" -> value``), check it.

    Raises :class:`ConfigError` listing every problem found.
    """
    cwd = Path.cwd() if cwd is None else cwd
    source = None if path is None else Path(path)
    values: dict[type, dict[str, Any]] = {}
    from_file = SettingsReader("" if source is None else f"{source}: ")
    if source is not None:
        try:
            document = read_toml_file(source)
        except ValueError as error:
            raise ConfigError([str(error)]) from None  # the rest would only be noise
        for name, data in document.items():
            table = _TABLES.get(name)
            if table is None:
                hint = _did_you_mean_table(name)
                from_file.problems.append(f"{source}: unknown table [{name}]{hint}")
            elif not isinstance(data, dict):
                from_file.problems.append(f"{source}: [{name}] must be a table")
            else:
                from_file.read(table, data, base=source.parent, moved=_MOVED.get(name), into=values)
    from_flags = SettingsReader()
    by_table: dict[str, dict[str, object]] = {}
    for dotted, value in (overrides or {}).items():
        name, _, key = dotted.partition(".")
        by_table.setdefault(name, {})[key] = value
    for name, data in by_table.items():
        table = _TABLES.get(name)
        if table is None:
            from_flags.problems.append(f"unknown table [{name}]")
        else:
            from_flags.read(table, data, base=cwd, into=values)
    node_values = values.setdefault(NodeSettings, {})
    if node_values.get("checkpoint_dir") is None:
        folder = cwd if source is None else source.parent
        node_values["checkpoint_dir"] = folder / DEFAULT_CHECKPOINT_DIR
    reader = SettingsReader(from_file.where)
    reader.problems = from_file.problems + from_flags.problems
    reader.given = from_file.given | from_flags.given
    reader.origins = {**from_file.origins, **from_flags.origins}
    built: dict[type, Any] = {}
    for table in NODE_TABLES:
        for cls in table.classes:
            if cls is NodeSettings:
                built[cls] = _build_node(reader, table, values.get(cls, {}))
            else:
                built[cls] = reader.build(table, cls, values.get(cls, {}))
    if reader.problems or any(value is None for value in built.values()):
        raise ConfigError(reader.problems)
    for table in NODE_TABLES:
        for cls in table.classes:
            reader.problems += _node_refusals(reader.where, table, built[cls])
    if reader.problems:
        raise ConfigError(reader.problems)
    return NodeConfig(
        node=built[NodeSettings],
        run=built[RunSettings],
        protocol=built[ProtocolSettings],
        task=built[TaskSettings],
        partition=built[PartitionSettings],
        training=built[TrainingSettings],
        transport=built[TransportSettings],
        byzantine=built[ByzantineSettings],
        source=source,
    )


def _build_node(
    reader: SettingsReader, table: Table, values: Mapping[str, Any]
) -> NodeSettings | None:
    """NodeSettings, saying which flag gives a missing required key."""
    missing = [
        field
        for field in dataclasses.fields(NodeSettings)
        if field.default is dataclasses.MISSING
        and field.name not in values
        and (NodeSettings, field.name) not in reader.given
    ]
    for field in missing:
        flag = info(field).flag or "--" + field.name.replace("_", "-")
        reader.problems.append(
            f"missing [node] {field.name} (set it in the config file or pass {flag})"
        )
    given_badly = any(
        (NodeSettings, field.name) in reader.given and field.name not in values
        for field in dataclasses.fields(NodeSettings)
    )
    return None if missing or given_badly else reader.build(table, NodeSettings, values)


def _node_refusals(where: str, table: Table, settings: Any) -> list[str]:
    """Values only a simulation can honour (``nodes_require``), refused one line each."""
    problems = []
    for field in dataclasses.fields(settings):
        rules = info(field)
        if rules.nodes_require is not None and getattr(settings, field.name) != rules.nodes_require:
            problems.append(f"{where}{table.label(field.name)}: {rules.nodes_require_why}")
    return problems


def _did_you_mean_table(name: str) -> str:
    from node.schema import did_you_mean

    return did_you_mean(name, _TABLES)
