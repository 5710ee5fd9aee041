"""Who may hold a pending handshake (node/admission.py): the bookkeeping alone."""

from __future__ import annotations

import random

import pytest

from node.admission import Admission

ROSTER = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
HONEST, BYZANTINE = ROSTER[0], ROSTER[1:3]


def admission(roster_max: int = 16, per_source_max: int = 8) -> Admission:
    return Admission(
        ROSTER,
        strangers_max=64,
        roster_max=roster_max,
        per_source_max=per_source_max,
        rate_per_s=20.0,
    )


@pytest.mark.parametrize("seed", range(5))
def test_roster_members_flooding_the_roster_room_never_evict_a_reconnecting_peer(
    seed: int,
) -> None:
    """Two Byzantine roster members open connections as fast as they like (the roster's
    room has no rate limit); an honest peer's one pending handshake stays until it ends."""
    rng = random.Random(seed)
    gate = admission()
    for _ in range(100):  # they fill the room first
        gate.admit(rng.choice(BYZANTINE), 0.0)
    honest, _ = gate.admit(HONEST, 0.0)
    assert honest is not None
    for k in range(10_000):
        ticket, evicted = gate.admit(rng.choice(BYZANTINE), k * 1e-4)
        assert ticket is not None
        assert honest not in evicted, f"seed {seed}: evicted after {k} floods"
        for old in evicted:
            gate.release(old)
    assert gate.statistics().pending_roster == 16


def test_a_full_pool_evicts_the_oldest_of_the_source_holding_most() -> None:
    gate = admission(roster_max=4, per_source_max=3)
    first_b, _ = gate.admit(BYZANTINE[0], 0.0)
    a, _ = gate.admit(HONEST, 0.0)
    gate.admit(BYZANTINE[0], 0.0)
    c, _ = gate.admit(ROSTER[3], 0.0)
    _, evicted = gate.admit(ROSTER[3], 0.0)  # full: BYZANTINE[0] holds the most
    assert evicted == [first_b]
    assert a is not None and c is not None
    # equal holdings: the oldest of them goes
    _, evicted = gate.admit(HONEST, 0.0)
    assert evicted == [a]


def test_a_source_at_its_cap_replaces_its_own_oldest() -> None:
    gate = admission(per_source_max=2)
    first, _ = gate.admit(HONEST, 0.0)
    gate.admit(HONEST, 0.0)
    _, evicted = gate.admit(HONEST, 0.0)
    assert evicted == [first]


def test_strangers_are_rate_limited_per_source_and_the_roster_is_not() -> None:
    gate = admission()
    admitted = sum(gate.admit("192.0.2.7", 0.0)[0] is not None for _ in range(100))
    assert admitted == 20  # the burst, then nothing until tokens come back
    assert gate.admit("192.0.2.8", 0.0)[0] is not None  # another source has its own
    assert gate.admit("192.0.2.7", 0.1)[0] is not None  # 0.1 s later: 2 more tokens
    assert all(gate.admit(HONEST, 0.0)[0] is not None for _ in range(100))
