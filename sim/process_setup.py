"""Process mode's setup: a scenario as the files n ``jungle node`` processes start from.

In ``out_dir/process/``: one key file per node (derived from the scenario seed as the
in-process simulator derives its keys, so both modes have the same public keys; these are
test keys, public to anyone who knows the seed), a roster on 127.0.0.1 with ports free
right now, and one config TOML per node mapping the scenario onto ``jungle node``'s
settings (docs/operators.md). The scenario's link delays become each sender's
``[transport] send_delay``: a message is held for its drawn delay before it is written,
slow nodes scaling the delays from and to them. Partitions, duplication, per-link delays,
reorder jitter and custom schedulers have no counterpart on a FIFO TCP link and are
refused, one line each (:func:`unsupported_settings`).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import shutil
import socket
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import blake3

from node.roster import Roster, assemble_roster, dump_roster, public_key_b64_of
from node.schema import to_table
from sim.delays import Constant, Exponential, LogNormal, Uniform
from sim.scenario import FIDELITY_FULL, Scenario, StrategySpec
from sim.schedulers import DefaultScheduler, load_scheduler
from sim.streams import roster_keys, signing_seed

LOOPBACK_HOST: Final = "127.0.0.1"
#: every node's checkpoint and journal, under the process folder
STATE_DIR: Final = "checkpoints"
#: the largest integer a TOML file holds (the seed goes into every node's config)
TOML_INT_MAX: Final = 2**63 - 1
#: a node waits up to this for all its peers before step 0: every node process imports
#: torch first, which takes seconds each when many start at once on a few cores
WAIT_FOR_PEERS_S: Final = 60.0
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
_DELAY_MODEL_NAMES: Final[Mapping[type, str]] = {
    Constant: "constant",
    Uniform: "uniform",
    Exponential: "exponential",
    LogNormal: "lognormal",
}


def unsupported_settings(scenario: Scenario) -> list[str]:
    """What of the scenario real nodes cannot run, one line each: network settings a FIFO
    TCP link has no counterpart for, and seeds a node config cannot hold."""
    if scenario.seed > TOML_INT_MAX:
        return [f"seed {scenario.seed}: process mode needs seeds <= 2**63 - 1 (a TOML integer)"]
    if scenario.fidelity != FIDELITY_FULL:
        return [
            f'fidelity = "{scenario.fidelity}": process mode runs real nodes, every message '
            "on a real socket; the broadcast fidelity is --mode sim's"
        ]
    network = scenario.network
    if network.scheduler != "default":
        return [
            f"network.scheduler {network.scheduler!r}: custom schedulers cannot run in "
            "process mode (real links only delay messages in order); use --mode sim"
        ]
    if network.bandwidth.limited:
        return [
            "network bandwidth (bandwidth_mbps, downlink_mbps and the per-node maps): "
            "process mode runs on loopback and cannot limit it; remove it or use --mode sim"
        ]
    scheduler = load_scheduler(network.scheduler, network.scheduler_params)
    assert isinstance(scheduler, DefaultScheduler)
    reasons = {
        "per_link": "per-link delays",
        "partitions": "partitions",
        "duplicate_prob": "duplicated messages",
        "reorder_jitter_s": "reordering (TCP links are FIFO)",
    }
    return [
        f"network.{name}: process mode cannot inject {what}; remove it or use --mode sim"
        for name, what in reasons.items()
        if getattr(scheduler, name)
    ]


def send_delay_table(scenario: Scenario) -> dict[str, Any]:
    """The scenario's link delay and slow nodes as ``[transport] send_delay``."""
    scheduler = load_scheduler(scenario.network.scheduler, scenario.network.scheduler_params)
    assert isinstance(scheduler, DefaultScheduler)
    model = scheduler.link_delay
    table: dict[str, Any] = {"model": _DELAY_MODEL_NAMES[type(model)]}
    table.update(dataclasses.asdict(model))  # type: ignore[call-overload]
    table["seed"] = scenario.seed
    if scheduler.slow_nodes:
        table["slow_nodes"] = {str(k): v for k, v in sorted(scheduler.slow_nodes.items())}
    return table


@dataclass(frozen=True, slots=True)
class NodeFiles:
    """One node process's files, all under ``out_dir/process/``."""

    id: int
    honest: bool
    key: Path
    config: Path
    metrics: Path
    log: Path
    #: honest nodes write their final model here (checkpoint at the last step)
    checkpoint: Path | None


@dataclass(frozen=True, slots=True)
class ProcessSetup:
    folder: Path
    roster: Roster
    nodes: tuple[NodeFiles, ...]
    #: blake3 of what a seed fixes (session label, keys, configs); the ports are not in it
    setup_digest: str


def write_setup(scenario: Scenario, folder: Path) -> ProcessSetup:
    """Keys, roster and one config per node in ``folder``; replaces this mode's own files
    of an earlier run there (and nothing else)."""
    folder.mkdir(parents=True, exist_ok=True)
    byzantine = scenario.byzantine_strategies()
    nodes = tuple(_node_files(folder, i, i not in byzantine) for i in range(scenario.n))
    for files in nodes:
        for path in (files.key, files.config, files.metrics, files.log):
            path.unlink(missing_ok=True)
    # Every node's state (checkpoint and journal) of an earlier run: a new roster is a
    # new session, which that state does not belong to.
    shutil.rmtree(folder / STATE_DIR, ignore_errors=True)
    public_keys = roster_keys(scenario.seed, scenario.n)
    for files in nodes:
        _write_key(files.key, signing_seed(scenario.seed, files.id))
    label = f"{scenario.name} seed {scenario.seed} (jungle sim --mode process)"
    ports = _free_ports(scenario.n)
    roster = assemble_roster(
        label,
        [
            (public_key_b64_of(key), f"{LOOPBACK_HOST}:{port}")
            for key, port in zip(public_keys, ports, strict=True)
        ],
    )
    (folder / "roster.toml").write_text(dump_roster(roster), encoding="utf-8")
    hasher = blake3.blake3(b"jungle/sim/process/v1\x00" + label.encode() + b"\x00")
    for key in public_keys:
        hasher.update(key)
    delay = send_delay_table(scenario)
    for files in nodes:
        data = node_config(scenario, files, byzantine.get(files.id), delay)
        text = toml_document(data)
        if tomllib.loads(text) != data:  # the tiny writer below must never go unnoticed
            raise AssertionError(f"TOML round trip failed for {files.config}")
        files.config.write_text(text, encoding="utf-8")
        hasher.update(text.encode())
    return ProcessSetup(folder, roster, nodes, hasher.hexdigest())


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().absolute()) if path else path


def node_config(
    scenario: Scenario,
    files: NodeFiles,
    strategy: StrategySpec | None,
    send_delay: Mapping[str, Any],
) -> dict[str, Any]:
    """The ``jungle node`` config of one node: the scenario's own settings objects written
    as the node's tables (the same classes, node/schema.py), paths relative to the config's
    folder. The supervisor, not the node, ends the run: nodes linger for the whole time
    limit, serving slower peers, until they are stopped."""
    run = to_table(scenario.run)
    if not files.honest:  # Byzantine nodes' accuracy is not reported
        run["eval_every"] = scenario.steps
    node: dict[str, Any] = {
        "id": files.id,
        "key_file": files.key.name,
        "roster": "roster.toml",
        "f": scenario.f,
        "seed": scenario.seed,
        "metrics_file": files.metrics.name,
        "checkpoint_dir": STATE_DIR,
        "checkpoint_every": scenario.steps,  # only the final model (and step 0)
        "log_level": "INFO",
        "wait_for_peers_s": WAIT_FOR_PEERS_S,
        "linger_s": scenario.time_limit_s,
        **run,
    }
    config: dict[str, Any] = {
        "node": node,
        # real nodes always sign: the scenario's protocol, with signatures on
        "protocol": to_table(replace(scenario.protocol, crypto=True)),
        # a data_dir made absolute: the config is usable from any folder
        "task": to_table(replace(scenario.task, data_dir=_absolute(scenario.task.data_dir))),
        "partition": to_table(scenario.partition),
        "training": {**to_table(scenario.training), "torch_threads": 1},
        "transport": {"send_delay": dict(send_delay)},
    }
    if strategy is not None:
        config["byzantine"] = {"strategy": _plain(strategy)}
    return config


def _node_files(folder: Path, node: int, honest: bool) -> NodeFiles:
    return NodeFiles(
        id=node,
        honest=honest,
        key=folder / f"node-{node}.key",
        config=folder / f"node-{node}.toml",
        metrics=folder / f"node-{node}.metrics.jsonl",
        log=folder / f"node-{node}.log",
        checkpoint=folder / STATE_DIR / f"node-{node}.pt" if honest else None,
    )


def _write_key(path: Path, seed: bytes) -> None:
    """A key file as ``jungle keygen`` writes it: base64 seed and a newline, mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(base64.b64encode(seed) + b"\n")


def _free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports free right now (bound together, then released)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((LOOPBACK_HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _plain(value: Any) -> Any:
    """Scenario data (tuples, mappings) as plain TOML-ready lists and dicts."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(item) for item in value]
    return value


def toml_document(data: Mapping[str, Mapping[str, Any]]) -> str:
    """``{table: {key: value}}`` as TOML; nested values become inline tables and arrays."""
    lines: list[str] = []
    for table, values in data.items():
        lines += [f"[{_toml_key(table)}]"]
        lines += [f"{_toml_key(key)} = {_toml_value(value)}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines)


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_string(text: str) -> str:
    # A JSON string is a TOML basic string, but for DEL, which TOML wants escaped.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # repr(float) is valid TOML, inf and nan included
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, Mapping):
        items = ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")
