"""The random streams of a simulation, each derived from the scenario seed by purpose and
node id (DESIGN 6, rule 1), and what derives from them: node keys and the session id.
The decentralized engine (:mod:`sim.engine`) and the centralized reference
(:mod:`sim.server`) build the same data, trainers and attacks from these."""

from __future__ import annotations

from typing import Final

import blake3
import nacl.signing
import numpy as np

from node.tasks import derive_seed
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
