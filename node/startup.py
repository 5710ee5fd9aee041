"""Start-up: everything a real node loads and checks before it opens a single socket.

:func:`prepare_node` checks the key file, the roster, this node's id and key in it, n
against f for the aggregator, the task (a user's module may be missing), the data
partition, the transport limits, a Byzantine strategy spec, and the node's state: its
checkpoint and its journal of what it signed (node/journal.py). A node resumes at the
later of its checkpoint's step and the last step it signed a vector for; it refuses to
start afresh in a session where its journal shows it already signed (state lost: it
could sign a second payload for an instance, which is equivocation).
Each problem is one line of a :class:`StartupError`, and as many are collected as can be
before one blocks the next, so an operator fixes them in one go. node/app.py runs what
this returns.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nacl.signing

from node.checkpoint import Checkpoint, CheckpointError, CheckpointStore
from node.config import DEFAULT_CHECKPOINT_DIR, NodeConfig
from node.journal import Journal, JournalError
from node.keys import KeyFileError, load_signing_key, public_key_b64
from node.plugins import PluginUnavailable, load_plugin
from node.roster import Roster, RosterError, load_roster, parse_address
from node.transport_config import TransportConfig

if TYPE_CHECKING:
    from node.trainer import Trainer
    from protocol.core import ProtocolConfig
    from protocol.messages import Message

log = logging.getLogger("jungle.node")


class StartupError(Exception):
    """The node cannot start; ``problems`` holds one line per problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True, slots=True)
class PreparedNode:
    """Everything checked and loaded; nothing opened yet."""

    config: NodeConfig
    signing_key: nacl.signing.SigningKey
    roster: Roster
    transport_config: TransportConfig
    protocol_config: ProtocolConfig
    trainer: Trainer
    checkpoints: CheckpointStore
    journal: Journal
    #: the step to start at (> 0 when resuming)
    start_step: int
    #: the step of the checkpoint loaded (None: a fresh start)
    checkpoint_step: int | None
    #: what the journal held (SENDs accepted, READYs sent), for the core to restore
    restored: list[Message]
    #: classes the task's model scores (for strategies that need it)
    num_classes: int
    #: the Byzantine strategy (from the node plugin), not bound yet; None for an honest node
    strategy: Any = None

    @property
    def public_key(self) -> str:
        return public_key_b64(self.signing_key)


def prepare_node(config: NodeConfig) -> PreparedNode:
    """Load and check everything :func:`run_node` needs; :class:`StartupError` otherwise."""
    problems: list[str] = []
    node = config.node
    signing_key = roster = None
    try:
        signing_key = load_signing_key(node.key_file)
    except KeyFileError as error:
        problems.append(str(error))
    try:
        roster = load_roster(node.roster)
    except RosterError as error:
        problems.extend(error.problems)
    strategy = _load_strategy(config, problems)
    problems.extend(_output_problems(config))
    if roster is not None:
        problems.extend(_membership_problems(config, roster, signing_key))
    if problems:
        raise StartupError(problems)
    assert signing_key is not None and roster is not None
    transport_config = _transport_config(config, roster, signing_key, problems)
    learner = _trainer(config, roster, strategy, problems)
    if problems or transport_config is None or learner is None:
        raise StartupError(problems)
    trainer, num_classes = learner

    protocol_config = config.protocol.config(
        n=roster.n,
        f=node.f,
        me=node.id,
        session=roster.session_id,
        dim=trainer.dim,
        steps_total=config.run.steps,
    )
    folder = node.checkpoint_dir or Path(DEFAULT_CHECKPOINT_DIR)
    checkpoints = CheckpointStore(folder, node.id)
    journal = Journal(folder / f"node-{node.id}.journal", roster.session_id.hex())
    state = _resume(config, checkpoints, journal, roster, signing_key, trainer, problems)
    if problems or state is None:
        raise StartupError(problems)
    checkpoint, restored, own_step = state
    checkpoint_step = None if checkpoint is None else checkpoint.step
    start_step = max(checkpoint_step or 0, own_step)
    return PreparedNode(
        config,
        signing_key,
        roster,
        transport_config,
        protocol_config,
        trainer,
        checkpoints,
        journal,
        start_step,
        checkpoint_step,
        restored,
        num_classes,
        strategy,
    )


def _output_problems(config: NodeConfig) -> list[str]:
    """The metrics file and checkpoint folder must be writable now, not at step 10."""
    problems = []
    metrics = config.node.metrics_file
    folder = config.node.checkpoint_dir or Path(DEFAULT_CHECKPOINT_DIR)
    try:
        if metrics is not None:
            metrics.parent.mkdir(parents=True, exist_ok=True)
            with open(metrics, "a", encoding="utf-8"):
                pass
    except OSError as error:
        problems.append(f"{metrics}: cannot write the metrics file: {error.strerror}")
    try:
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            if not os.access(folder, os.W_OK | os.X_OK):
                raise PermissionError(13, "Permission denied")
    except OSError as error:
        problems.append(f"{folder}: cannot write checkpoints there: {error.strerror}")
    return problems


def _membership_problems(
    config: NodeConfig, roster: Roster, signing_key: nacl.signing.SigningKey | None
) -> list[str]:
    node, problems = config.node, []
    roster_name = node.roster
    if not 0 <= node.id < roster.n:
        problems.append(
            f"node id {node.id} is not in the roster {roster_name} (ids 0..{roster.n - 1})"
        )
    elif signing_key is not None and bytes(signing_key.verify_key) != roster.public_keys[node.id]:
        holder = roster.id_of_key(bytes(signing_key.verify_key))
        where = "is not in the roster" if holder is None else f"is node {holder}'s"
        problems.append(
            f"key {node.key_file} (public key {public_key_b64(signing_key)}) {where}, "
            f"not node {node.id}'s in {roster_name}"
        )
    tolerance = config.protocol.tolerance_problem(roster.n, node.f)
    if tolerance is not None:
        problems.append(tolerance)
    return problems


def _transport_config(
    config: NodeConfig,
    roster: Roster,
    signing_key: nacl.signing.SigningKey,
    problems: list[str],
) -> TransportConfig | None:
    listen: dict[str, Any] = {}
    if config.node.listen is not None:
        host, port = parse_address(config.node.listen)  # checked by load_config
        listen = {"listen_host": host, "listen_port": port}
    try:
        send_delay_s = _send_delay(config)
        return TransportConfig(
            me=config.node.id,
            signing_key=signing_key,
            roster=roster,
            seed=config.node.seed,
            send_delay_s=send_delay_s,
            settings=config.transport,
            **listen,
        )
    except ValueError as error:
        problems.append(f"[transport] {error}")
        return None


def _send_delay(config: NodeConfig) -> Callable[[int, int, int], float] | None:
    """``[transport] send_delay`` as the transport's ``send_delay_s(dst, seq, size_bytes)``,
    built by the node plugin (node/plugins.py: the simulator's delay models), which is
    loaded only when a delay is configured. ValueError says what is wrong."""
    spec = config.transport.send_delay
    if spec is None:
        return None
    try:
        plugin = load_plugin()
    except PluginUnavailable as error:
        raise ValueError(f"send_delay: {error}") from None
    return plugin.send_delay(spec, seed=config.node.seed, me=config.node.id)


def _load_strategy(config: NodeConfig, problems: list[str]) -> Any:
    spec = config.byzantine.strategy
    if spec is None:
        return None
    if not isinstance(spec, str | dict | list):
        problems.append(f"[byzantine] strategy must be a name, a table or a list, got {spec!r}")
        return None
    try:
        plugin = load_plugin()
    except PluginUnavailable as error:
        problems.append(f"[byzantine] strategies are unavailable: {error}")
        return None
    try:
        return plugin.load_strategy(spec)
    except (ValueError, TypeError, ImportError, AttributeError) as error:
        problems.append(f"[byzantine] strategy {spec!r}: {error}")
        return None


def _trainer(
    config: NodeConfig, roster: Roster, strategy: Any, problems: list[str]
) -> tuple[Trainer, int] | None:
    """This node's trainer on its part of the task's train set, and the task's classes."""
    from node.partition import partition
    from node.tasks import load_task
    from node.trainer import Trainer

    node, split = config.node, config.partition
    try:
        task = load_task(config.task.name, node.seed, config.task.data_dir)
    except ValueError as error:
        problems.append(f"[task] {error}")
        return None
    parts = roster.n if node.parts is None else node.parts
    part = node.id if node.part is None else node.part
    if part >= parts:
        problems.append(f"[node] part {part} does not exist: the train set is cut in {parts} parts")
        return None
    try:
        # The same arguments on every node give the same split (partition is a pure function).
        indices = partition(
            task.train.y.numpy(),
            parts,
            split.scheme,
            node.seed,
            alpha=split.alpha,
            shards_per_node=split.shards_per_node,
        )[part]
        label_map = None if strategy is None else strategy.label_map(task.num_classes)
        trainer = Trainer(task, indices, config.training, node.id, label_map, seed=node.seed)
        return trainer, task.num_classes
    except ValueError as error:
        problems.append(f"[task] {error}")
        return None


def _resume(
    config: NodeConfig,
    store: CheckpointStore,
    journal: Journal,
    roster: Roster,
    signing_key: nacl.signing.SigningKey,
    trainer: Trainer,
    problems: list[str],
) -> tuple[Checkpoint | None, list[Message], int] | None:
    """(checkpoint or None, the journal's messages, the last step this node signed a
    vector for or -1); None with ``problems`` filled if the state cannot be used."""
    from protocol.codec import CodecError, decode
    from protocol.messages import Ready, Send

    me = config.node.id
    try:
        checkpoint = store.load()
        records = journal.load()
    except (CheckpointError, JournalError) as error:
        problems.append(str(error))
        return None
    restored: list[Message] = []
    for index, record in enumerate(records):
        try:
            message = decode(record)
        except CodecError as error:
            problems.append(f"{journal.folder}: record {index} does not decode ({error})")
            return None
        if not isinstance(message, Send | Ready):
            problems.append(f"{journal.folder}: record {index} is not a SEND or a READY")
            return None
        restored.append(message)
    own_step = max(
        (m.iid.tag.step for m in restored if isinstance(m, Send) and m.iid.origin == me),
        default=-1,
    )
    session = roster.session_name
    if checkpoint is None and restored:
        problems.append(
            f"{store.path}: missing, but node {me} already signed messages in session "
            f"{session!r} (journal {journal.folder}, up to step {own_step}): starting afresh "
            f"could sign a second payload for one instance. Put the checkpoint back to "
            f"resume, or start a new run with a new roster (jungle roster)"
        )
        return None
    if checkpoint is None:
        return None, [], -1
    try:
        store.check_belongs(
            checkpoint,
            session_id_hex=roster.session_id.hex(),
            public_key_b64=public_key_b64(signing_key),
            digest=config.resume_digest(),
        )
        trainer.load_state_dict(checkpoint.trainer_state)
    except CheckpointError as error:
        problems.append(str(error))
        return None
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as error:
        problems.append(f"{store.path}: checkpoint does not fit this model: {error!r}")
        return None
    if checkpoint.step > 0 and not restored:
        problems.append(
            f"{journal.folder}: missing or empty, but the checkpoint is at step "
            f"{checkpoint.step}: what node {me} signed in session {session!r} is unknown, so "
            f"it could sign a second payload for one instance. Put the journal back, or "
            f"start a new run with a new roster (jungle roster)"
        )
        return None
    return checkpoint, restored, own_step


def announce(prepared: PreparedNode) -> None:
    """Log who this node is and what it runs (the first lines an operator reads)."""
    config = prepared.config
    node, roster, task, protocol = config.node, prepared.roster, config.task, config.protocol
    log.info(
        "node %d starting: public key %s, session %r (id %s...), n=%d f=%d, listening on %s",
        node.id,
        prepared.public_key,
        roster.session_name,
        roster.session_id.hex()[:16],
        roster.n,
        node.f,
        node.listen or roster.entry(node.id).address,
    )
    log.info(
        "task %s (seed %d, %s partition), %d parameters; %s, gradient rounds %s, "
        "model rounds %d; %d steps",
        task.name,
        node.seed,
        config.partition.scheme,
        prepared.trainer.dim,
        protocol.aggregator,
        protocol.gradient_rounds,
        protocol.model_rounds,
        config.run.steps,
    )
    if prepared.checkpoint_step is not None:
        log.info(
            "resumed from checkpoint %s at step %d with the same public key %s",
            prepared.checkpoints.path,
            prepared.checkpoint_step,
            prepared.public_key,
        )
    if prepared.restored:
        log.info(
            "journal %s: %d messages restored; resuming at step %d, where this node had "
            "signed up to before the restart (it resends those bytes, never signs anew)",
            prepared.journal.folder,
            len(prepared.restored),
            prepared.start_step,
        )
    if prepared.strategy is not None:
        banner = "*" * 76
        log.warning(banner)
        log.warning(
            "BYZANTINE MODE: strategy %r: this node WILL MISBEHAVE against its peers.",
            config.byzantine.strategy,
        )
        log.warning("For testing and research only; never in a real deployment.")
        log.warning(banner)
