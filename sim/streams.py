"""The random streams of a simulation, each derived from the scenario seed by purpose and
node id (DESIGN 6, rule 1), and what derives from them: node keys, the session id, the
task with its split and every node's trainer. The decentralized engine (:mod:`sim.engine`)
and the centralized reference (:mod:`sim.server`) build the same data, trainers and attacks
from these."""

from __future__ import annotations

from dataclasses import replace
from typing import Final

import blake3
import nacl.signing
import numpy as np

from node.partition import partition
from node.tasks import Task, derive_seed, load_task
from node.trainer import Trainer
from sim.scenario import Scenario

# Purposes keying the streams derived from the scenario seed (DESIGN 6, rule 1).
PURPOSE_TASK: Final = 1
PURPOSE_PARTITION: Final = 2
PURPOSE_TRAINER: Final = 3
PURPOSE_NETWORK: Final = 4
PURPOSE_KEYS: Final = 5
PURPOSE_MODELLED_BROADCAST: Final = 6


def stream_seed(seed: int, purpose: int, *ids: int) -> int:
    """The 64-bit seed of the stream ``(purpose, *ids)`` of a scenario seeded ``seed``."""
    return derive_seed(seed, purpose, *ids)


def signing_seed(seed: int, node: int) -> bytes:
    """Node ``node``'s deterministic Ed25519 seed (32 bytes) in a run seeded ``seed``."""
    state = np.random.SeedSequence([seed, PURPOSE_KEYS, node]).generate_state(8, dtype=np.uint32)
    return state.astype("<u4").tobytes()


def roster_keys(seed: int, n: int) -> list[bytes]:
    """Every node's public key: what an offline verifier of evidence needs."""
    return [bytes(nacl.signing.SigningKey(signing_seed(seed, i)).verify_key) for i in range(n)]


def session_id(scenario: Scenario, seed: int, public_keys: list[bytes]) -> bytes:
    """The run's 32-byte session id: a digest of its roster (DESIGN 3) and seed."""
    hasher = blake3.blake3(b"jungle/sim/v1\x00")
    hasher.update(f"{scenario.name}\x00{seed}\x00{scenario.n}\x00{scenario.f}\x00".encode())
    for key in public_keys:
        hasher.update(key)
    return hasher.digest(32)


def task_and_parts(scenario: Scenario) -> tuple[Task, list[np.ndarray]]:
    """The scenario's task and each node's sample indices (its partition)."""
    seed = scenario.seed
    task = load_task(scenario.task.name, stream_seed(seed, PURPOSE_TASK), scenario.task.data_dir)
    spec = scenario.partition
    parts = partition(
        task.train.y.numpy(),
        scenario.n,
        spec.scheme,
        stream_seed(seed, PURPOSE_PARTITION),
        alpha=spec.alpha,
        shards_per_node=spec.shards_per_node,
    )
    return task, parts


def node_trainer(
    scenario: Scenario, task: Task, part: np.ndarray, node: int, label_map: np.ndarray | None
) -> Trainer:
    """Node ``node``'s trainer over its ``part``, relabelled by ``label_map`` (a Byzantine
    label flipper's), seeded from the scenario; one torch thread, since many trainers
    share the process."""
    return Trainer(
        task,
        part,
        replace(scenario.training, torch_threads=1),
        node_seed=node,
        label_map=label_map,
        seed=stream_seed(scenario.seed, PURPOSE_TRAINER),
    )
