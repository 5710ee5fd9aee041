"""A real node's configuration: one TOML file, overridden by flags, checked before anything runs.

The file has one table per concern (``[node]``, ``[protocol]``, ``[task]``, ``[training]``,
``[transport]``, ``[byzantine]``; see docs/operators.md for every key). Flags override the
file key by key (``--lr 0.1`` replaces ``[training] lr``), so one file can serve a whole
cluster and each machine passes only its ``--id``.

:func:`load_config` reports *every* problem it finds, one line each, in a
:class:`ConfigError`: an operator fixing a config should not have to restart once per typo.
It checks what can be checked without touching the filesystem or the network (types, ranges,
names); node/startup.py then checks what needs files (key, roster, task module, checkpoint).

Relative paths in the file are relative to the file's folder (so a config travels with its
keys); relative paths given as flags are relative to the working directory, as a shell
user expects. Training and transport keys left out keep the defaults of
:class:`~node.trainer.TrainerConfig` and :class:`~node.transport_config.TransportConfig`,
which stay the single source of those defaults.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import blake3

from node.partition import SCHEMES
from node.roster import parse_address
from node.typed_toml import coerce, did_you_mean, field_types, is_required, read_toml_file
from protocol.aggregate import AGGREGATORS
from protocol.core import GradientSchedule, RoundSchedule

if TYPE_CHECKING:
    from node.trainer import TrainerConfig

LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")
#: where a node keeps its checkpoint and journal unless told otherwise (next to its config)
DEFAULT_CHECKPOINT_DIR: Final = "checkpoints"
#: the value of ``[protocol] gradient_rounds`` that selects ceil(log2(t + 1)) rounds at step t
GRADIENT_ROUNDS_LOG2: Final = "log2"


class ConfigError(ValueError):
    """An unusable configuration; ``problems`` holds one line per problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """``[node]``: who this node is and what it runs."""

    id: int
    key_file: Path
    roster: Path
    #: Byzantine nodes tolerated; every node of a session must use the same value
    f: int
    #: ``host:port`` to listen on (``0.0.0.0:PORT`` for all interfaces); None = roster address
    listen: str | None = None
    steps: int = 100
    #: evaluate on the test set every this many steps (and after the last)
    eval_every: int = 10
    #: this node's state: its checkpoint (``node-<id>.pt``) and its journal of what it
    #: signed and voted (``node-<id>.journal/``); None: ``checkpoints`` next to the config
    #: file (or in the working directory without one). A node always keeps one: a restart
    #: without it could sign a second payload for an instance.
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 10
    #: None: no metrics file
    metrics_file: Path | None = None
    log_level: str = "INFO"
    #: before the first step, wait up to this long for every peer to be reachable, so that
    #: nodes started by hand on several machines begin together (0: start at once)
    wait_for_peers_s: float = 30.0
    #: after the last step, keep serving peers until every one has finished, or this long
    linger_s: float = 120.0
    #: how often the protocol retries payload fetches
    tick_interval_s: float = 0.5
    #: no progress (no new round or step) for this long: log what the node waits for, and
    #: again every as long
    stall_warning_s: float = 60.0
    #: no progress for this long: exit with status 3 and a summary saying why (0: never)
    stall_timeout_s: float = 1800.0


@dataclass(frozen=True, slots=True)
class ProtocolSettings:
    """``[protocol]``: the agreement (signatures are always on for real nodes)."""

    aggregator: str = "trimmed_mean"
    #: "log2" (ceil(log2(t+1)) rounds at step t, for heterogeneous data) or a constant
    gradient_rounds: int | str = GRADIENT_ROUNDS_LOG2
    #: rounds of model agreement per step; 0 skips it
    model_rounds: int = 1
    rounds_max: int = 8
    steps_ahead_max: int = 4
    steps_retained: int = 2


@dataclass(frozen=True, slots=True)
class TaskSettings:
    """``[task]``: what is learnt and which data this node holds. Identical on every node
    except ``part``: the split is computed from ``seed`` on each node."""

    name: str = "digits-mlp"
    seed: int = 0
    partition: str = "iid"
    alpha: float = 1.0
    shards_per_node: int = 2
    #: number of parts the train set is cut into (None: n, one per node)
    parts: int | None = None
    #: which part this node trains on (None: its id)
    part: int | None = None


@dataclass(frozen=True, slots=True)
class TrainingSettings:
    """``[training]``: local learning; None keeps :class:`~node.trainer.TrainerConfig`'s
    default."""

    lr: float | None = None
    lr_schedule: str | None = None
    lr_decay_steps: int | None = None
    momentum: float | None = None
    batch_size: int | None = None
    local_steps: int | None = None
    weight_decay: float | None = None
    torch_threads: int | None = None


@dataclass(frozen=True, slots=True)
class TransportSettings:
    """``[transport]``: limits and timings; None keeps
    :class:`~node.transport_config.TransportConfig`'s default."""

    queue_bytes_max: int | None = None
    receive_queue_bytes_max: int | None = None
    frame_bytes_max: int | None = None
    backoff_s_min: float | None = None
    backoff_s_max: float | None = None
    handshake_timeout_s: float | None = None
    hello_timeout_s: float | None = None
    handshakes_pending_max: int | None = None
    handshakes_reserved_for_roster: int | None = None
    handshakes_per_source_max: int | None = None
    handshakes_per_source_per_s: float | None = None
    link_bytes_max: int | None = None
    ack_every_messages: int | None = None
    #: TESTING AND RESEARCH: a delay held before each message is sent (the simulator's
    #: ``--mode process`` injects its link delays here). A ``sim.delays`` spec (seconds, a
    #: string or a table); a table may add ``seed`` (of the per-message draws; default: the
    #: task seed) and ``slow_nodes`` ({id: factor}, from and to). None: no delay.
    send_delay: object = None


@dataclass(frozen=True, slots=True)
class ByzantineSettings:
    """``[byzantine]``: FOR TESTING AND RESEARCH ONLY. A strategy spec as
    ``sim.strategies.load_strategy`` reads it: a name, ``{name = ..., param = ...}`` or a list."""

    strategy: object = None


_SECTIONS: Final[Mapping[str, type]] = {
    "node": NodeSettings,
    "protocol": ProtocolSettings,
    "task": TaskSettings,
    "training": TrainingSettings,
    "transport": TransportSettings,
    "byzantine": ByzantineSettings,
}


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node: NodeSettings
    protocol: ProtocolSettings
    task: TaskSettings
    training: TrainingSettings
    transport: TransportSettings
    byzantine: ByzantineSettings
    #: the TOML file read, if any
    source: Path | None = None

    def round_schedule(self) -> RoundSchedule:
        rounds = self.protocol.gradient_rounds
        if rounds == GRADIENT_ROUNDS_LOG2:
            return RoundSchedule(
                GradientSchedule.LOG2,
                model_rounds=self.protocol.model_rounds,
                rounds_max=self.protocol.rounds_max,
            )
        return RoundSchedule(
            GradientSchedule.CONSTANT,
            gradient_rounds=int(rounds),
            model_rounds=self.protocol.model_rounds,
            rounds_max=self.protocol.rounds_max,
        )

    def trainer_config(self) -> TrainerConfig:
        """The :class:`~node.trainer.TrainerConfig` (imported lazily: it pulls in torch)."""
        from node.trainer import TrainerConfig

        return TrainerConfig(seed=self.task.seed, **_set_fields(self.training))

    def transport_options(self) -> dict[str, Any]:
        """The ``[transport]`` keys that were set, as TransportConfig keyword arguments
        (``send_delay`` is built into a function by node/startup.py)."""
        options = _set_fields(self.transport)
        options.pop("send_delay", None)
        return options

    def resume_digest(self) -> str:
        """What a checkpoint must match to be resumed: node id, task and data partition.

        Optimiser settings and step counts are left out on purpose: an operator may change
        the learning rate or extend a run and still resume; a different model or data split
        would silently make the saved state meaningless.
        """
        task = self.task
        identity = [
            self.node.id,
            task.name,
            task.seed,
            task.partition,
            task.alpha,
            task.shards_per_node,
            task.parts,
            task.part,
        ]
        return blake3.blake3(json.dumps(identity).encode()).hexdigest()[:32]

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON-ready values (for the metrics file's start record)."""
        return {
            name: {k: _jsonable(v) for k, v in dataclasses.asdict(getattr(self, name)).items()}
            for name in _SECTIONS
        }


def load_config(
    path: str | Path | None,
    overrides: Mapping[str, object] | None = None,
    *,
    cwd: Path | None = None,
) -> NodeConfig:
    """Read ``path`` (optional), apply ``overrides`` (``"section.key" -> value``), check it.

    Raises :class:`ConfigError` listing every problem found.
    """
    problems: list[str] = []
    cwd = Path.cwd() if cwd is None else cwd
    values: dict[str, dict[str, object]] = {name: {} for name in _SECTIONS}
    source = None if path is None else Path(path)
    if source is not None:
        try:
            document = read_toml_file(source)
        except ValueError as error:
            raise ConfigError([str(error)]) from None  # the rest would only be noise
        for section, table in document.items():
            if section not in _SECTIONS:
                problems.append(
                    f"{source}: unknown section [{section}]{did_you_mean(section, _SECTIONS)}"
                )
            elif not isinstance(table, dict):
                problems.append(f"{source}: [{section}] must be a table")
            else:
                for key, value in table.items():
                    _put(values, section, key, value, source.parent, f"{source}: ", problems)
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        _put(values, section, key, value, cwd, "", problems)
    rounds = values["protocol"].get("gradient_rounds")
    if isinstance(rounds, str) and rounds.isdigit():  # "3" from a flag or a quoted TOML value
        values["protocol"]["gradient_rounds"] = int(rounds)
    for name, cls in _SECTIONS.items():
        for field in dataclasses.fields(cls):
            given_badly = any(f"[{name}] {field.name}:" in problem for problem in problems)
            if is_required(field) and field.name not in values[name] and not given_badly:
                problems.append(
                    f"missing [{name}] {field.name} "
                    f"(set it in the config file or pass {_flag(field.name)})"
                )
    if problems:
        raise ConfigError(problems)
    if values["node"].get("checkpoint_dir") is None:
        folder = cwd if source is None else source.parent
        values["node"]["checkpoint_dir"] = folder / DEFAULT_CHECKPOINT_DIR
    sections = {name: cls(**values[name]) for name, cls in _SECTIONS.items()}
    config = NodeConfig(source=source, **sections)
    problems.extend(_check(config))
    if problems:
        raise ConfigError(problems)
    return config


# ------------------------------------------------------------------------------ parsing


def _put(
    values: dict[str, dict[str, object]],
    section: str,
    key: str,
    value: object,
    base: Path,
    where: str,
    problems: list[str],
) -> None:
    """Type-check one value and store it, resolving paths against ``base``."""
    cls = _SECTIONS.get(section)
    if cls is None:
        problems.append(f"{where}unknown section [{section}]")
        return
    hints = field_types(cls)
    if key not in hints:
        problems.append(f"{where}unknown key [{section}] {key}{did_you_mean(key, hints)}")
        return
    try:
        values[section][key] = coerce(value, hints[key], base)
    except TypeError as error:
        problems.append(f"{where}[{section}] {key}: {error}")


def _flag(key: str) -> str:
    return {"key_file": "--key"}.get(key, "--" + key.replace("_", "-"))


def _set_fields(section: object) -> dict[str, Any]:
    return {
        field.name: getattr(section, field.name)
        for field in dataclasses.fields(section)  # type: ignore[arg-type]
        if getattr(section, field.name) is not None
    }


def _jsonable(value: object) -> object:
    return str(value) if isinstance(value, Path) else value


# --------------------------------------------------------------------------- validation


def _check(config: NodeConfig) -> list[str]:
    """Range and name checks that need no file and no network."""
    problems: list[str] = []
    node, protocol, task = config.node, config.protocol, config.task

    def positive(section: str, name: str, value: float | None) -> None:
        if value is not None and not value > 0:
            problems.append(f"[{section}] {name} must be positive, got {value}")

    if node.id < 0:
        problems.append(f"[node] id must be a roster id (0, 1, ...), got {node.id}")
    if node.f < 0:
        problems.append(f"[node] f must be non-negative, got {node.f}")
    for name in ("steps", "eval_every", "checkpoint_every", "tick_interval_s", "stall_warning_s"):
        positive("node", name, getattr(node, name))
    for name in ("linger_s", "wait_for_peers_s", "stall_timeout_s"):
        if getattr(node, name) < 0:
            problems.append(f"[node] {name} must be non-negative, got {getattr(node, name)}")
    if node.log_level.upper() not in LOG_LEVELS:
        problems.append(f"[node] log_level must be one of {', '.join(LOG_LEVELS)}")
    if node.listen is not None:
        try:
            parse_address(node.listen)
        except ValueError as error:
            problems.append(f"[node] listen: {error}")

    if protocol.aggregator not in AGGREGATORS:
        problems.append(
            f"[protocol] aggregator {protocol.aggregator!r} is unknown; "
            f"valid: {', '.join(sorted(AGGREGATORS))}"
        )
    rounds = protocol.gradient_rounds
    if isinstance(rounds, str) and rounds != GRADIENT_ROUNDS_LOG2:
        problems.append(f'[protocol] gradient_rounds must be "log2" or an integer, got {rounds!r}')
    if protocol.steps_ahead_max < 0 or protocol.steps_retained < 0:
        problems.append("[protocol] steps_ahead_max and steps_retained must be non-negative")
    if not any("gradient_rounds" in problem for problem in problems):
        try:
            schedule = config.round_schedule()
            if schedule.gradient == GradientSchedule.CONSTANT and schedule.gradient_rounds == 0:
                problems.append("[protocol] gradient_rounds must be at least 1")
        except ValueError as error:
            problems.append(f"[protocol] {error}")

    if task.partition not in SCHEMES:
        problems.append(
            f"[task] partition {task.partition!r} is unknown; valid: {', '.join(SCHEMES)}"
        )
    positive("task", "alpha", task.alpha)
    positive("task", "shards_per_node", task.shards_per_node)
    positive("task", "parts", task.parts)
    if task.part is not None and task.part < 0:
        problems.append(f"[task] part must be non-negative, got {task.part}")
    if task.part is not None and task.parts is not None and task.part >= task.parts:
        problems.append(f"[task] part {task.part} does not exist: parts = {task.parts}")

    try:
        config.trainer_config()
    except ValueError as error:
        problems.append(f"[training] {error}")
    except TypeError as error:
        problems.append(f"[training] {error}")
    for name, value in config.transport_options().items():
        positive("transport", name, value)
    delay = config.transport.send_delay
    if delay is not None and (
        isinstance(delay, bool) or not isinstance(delay, int | float | str | dict)
    ):
        problems.append(
            f"[transport] send_delay must be seconds, a string or a table, got {delay!r}"
        )
    return problems
