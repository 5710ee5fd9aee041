"""Protocol-level strategies: each does what it says, and honest nodes running next to
it still decide and accuse nobody but the attacker, with the fault its attack must raise."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from protocol.codec import (
    CodecError,
    decode,
    decode_array,
    decode_report,
    encode,
    encode_array,
    encode_report,
)
from protocol.crypto import EquivocationProof, digest
from protocol.messages import Echo, InstanceId, Kind, Ready, Send, Tag
from protocol.step import FaultKind
from tests.byzantine import strategy_cluster
from tests.cluster import SESSION, public_keys
from tests.sim.strategy_helpers import (
    DIM,
    GRADIENT,
    ME,
    MODEL,
    F,
    N,
    attacked,
    bound,
    out,
    own_send,
    vec,
)


def test_crash_is_honest_until_its_step_then_silent() -> None:
    step = [0]
    crash = bound({"name": "crash", "at_step": 2}, current_step=lambda: step[0])
    ready = Ready(InstanceId(0, Tag(0, 0, 0, 0)), b"\1" * 32)
    assert not crash.crashed(1) and crash.crashed(2) and crash.crashed(5)
    step[0] = 1
    assert out(crash, 0, ready) == [encode(ready)]
    step[0] = 2
    assert out(crash, 0, ready) == []


def test_silent_sends_nothing() -> None:
    silent = bound("silent")
    assert out(silent, 0, own_send(silent, b"x")) == []


def test_withhold_sends_nothing_to_its_targets_only() -> None:
    withhold = bound({"name": "withhold", "targets": [1, 3]})
    ready = Ready(InstanceId(0, Tag(0, 0, 0, 0)), b"\1" * 32)
    sent_to = [dst for dst in range(N - 1) if out(withhold, dst, ready)]
    assert sent_to == [0, 2, 4, 5]


def test_withhold_by_fraction_picks_a_seeded_subset_of_the_others() -> None:
    victims = []
    for seed in (0, 0, 1):
        withhold = bound({"name": "withhold", "fraction": 0.5}, seed=seed)
        ready = Ready(InstanceId(0, Tag(0, 0, 0, 0)), b"\1" * 32)
        victims.append({dst for dst in range(N - 1) if not out(withhold, dst, ready)})
    assert len(victims[0]) == 3 and victims[0] <= set(range(N - 1))
    assert victims[0] == victims[1]  # same seed, same victims


def test_equivocate_signs_a_negated_vector_for_its_victims() -> None:
    equivocate = bound({"name": "equivocate", "targets": [0, 1, 2]})
    honest = vec(1, -2, 3, 0.5)
    send = own_send(equivocate, encode_array(honest))
    (to_other,) = out(equivocate, 4, send)
    assert to_other == encode(send)
    (to_victim,) = out(equivocate, 1, send)
    other = decode(to_victim)
    assert isinstance(other, Send) and other.iid == send.iid
    np.testing.assert_array_equal(decode_array(other.payload), -honest)
    proof = EquivocationProof(
        SESSION,
        send.iid,
        digest(send.payload),
        send.signature,
        digest(other.payload),
        other.signature,
    )
    assert proof.verify(public_keys(N)[ME])  # both validly signed: an offline proof
    # its echo and ready to the victims vouch for the victims' payload
    (echo,) = out(equivocate, 2, Echo(send.iid, digest(send.payload), send.signature))
    (ready,) = out(equivocate, 2, Ready(send.iid, digest(send.payload)))
    assert decode(echo) == Echo(send.iid, digest(other.payload), other.signature)
    assert decode(ready) == Ready(send.iid, digest(other.payload))


def test_equivocate_on_a_zero_vector_and_on_reports_still_sends_valid_payloads() -> None:
    equivocate = bound({"name": "equivocate", "targets": [0]})
    (zero,) = out(equivocate, 0, own_send(equivocate, encode_array(vec(0, 0, 0, 0))))
    payload = decode(zero)
    assert isinstance(payload, Send)
    np.testing.assert_array_equal(decode_array(payload.payload), vec(1, 1, 1, 1))
    for held in ([0, 1, 2, 4, 6], list(range(N))):
        send = own_send(equivocate, encode_report(held), Kind.REPORT)
        (other,) = out(equivocate, 0, send)
        message = decode(other)
        assert isinstance(message, Send)
        report = decode_report(message.payload, N)
        assert report != set(held) and len(report) >= N - F


def test_equivocate_leaves_other_origins_alone() -> None:
    equivocate = bound({"name": "equivocate", "targets": [0]})
    send = Send(InstanceId(3, Tag(0, 0, 0, 0)), encode_array(vec(1, 2, 3, 4)), b"\0" * 64)
    assert out(equivocate, 0, send) == [encode(send)]


def test_conflicting_echoes_precede_true_votes_with_random_digests() -> None:
    conflicting = bound({"name": "conflicting_echoes", "targets": [2]})
    iid = InstanceId(0, Tag(0, 0, 0, 0))
    for vote in (Echo(iid, b"\1" * 32, b"\2" * 64), Ready(iid, b"\1" * 32)):
        forged, true = out(conflicting, 2, vote)
        assert true == encode(vote)
        fake = decode(forged)
        assert type(fake) is type(vote) and fake.iid == iid
        assert isinstance(fake, Echo | Ready) and fake.digest != b"\1" * 32
        assert out(conflicting, 3, vote) == [encode(vote)]
    send = own_send(conflicting, b"payload")
    assert out(conflicting, 2, send) == [encode(send)]


def test_flood_adds_copies_far_in_the_future() -> None:
    flood = bound({"name": "flood", "ahead": 1000, "rate": 1})
    ready = Ready(InstanceId(0, Tag(3, 1, 0, 1)), b"\1" * 32)
    original, copy = out(flood, 0, ready)
    assert original == encode(ready)
    assert decode(copy) == Ready(InstanceId(0, Tag(1003, 1, 0, 1)), b"\1" * 32)
    assert out(bound({"name": "flood", "rate": 0}), 0, ready) == [encode(ready)]
    fractional = bound({"name": "flood", "rate": 2.5})
    counts = [len(out(fractional, 0, ready)) - 1 for _ in range(400)]
    assert set(counts) == {2, 3} and 2.4 < np.mean(counts) < 2.6


def test_replay_forwards_what_it_receives_to_another_node() -> None:
    replay = bound({"name": "replay", "rate": 1.0})
    extras = [extra for _ in range(50) for extra in replay.on_receive(1, b"message")]
    assert len(extras) == 50
    assert {data for _, data in extras} == {b"message"}
    assert {dst for dst, _ in extras} <= set(range(N - 1)) and len({d for d, _ in extras}) > 1
    assert list(bound({"name": "replay", "rate": 0.0}).on_receive(1, b"message")) == []


def test_bad_signature_corrupts_own_sends_only() -> None:
    bad = bound("bad_signature")
    send = own_send(bad, b"payload")
    (corrupted,) = out(bad, 0, send)
    message = decode(corrupted)
    assert isinstance(message, Send) and message.payload == send.payload
    assert not bad.ctx.scheme.verify(SESSION, send.iid, digest(send.payload), message.signature)
    others = Send(InstanceId(2, send.iid.tag), b"payload", send.signature)
    assert out(bad, 0, others) == [encode(others)]
    unsigned = bound("bad_signature", signed=False)
    plain = own_send(unsigned, b"payload")
    assert out(unsigned, 0, plain) == [encode(plain)]  # nothing to corrupt


def test_garbage_never_sends_the_real_message() -> None:
    garbage = bound("garbage")
    send = own_send(garbage, encode_array(np.arange(DIM, dtype=np.float32)))
    data = encode(send)
    sent = [b for _ in range(100) for b in garbage.outgoing(0, send, data)]
    assert len(sent) == 100 and data not in sent
    undecodable = 0
    for blob in sent:
        try:
            decode(blob)
        except CodecError:
            undecodable += 1
    assert undecodable > 40  # random bytes and most truncations do not decode
    assert list(bound({"name": "garbage", "rate": 0}).outgoing(0, send, data)) == [data]


def test_duplicate_sends_everything_twice() -> None:
    duplicate = bound("duplicate")
    ready = Ready(InstanceId(0, Tag(0, 0, 0, 0)), b"\1" * 32)
    assert out(duplicate, 0, ready) == [encode(ready)] * 2


def test_wrong_length_and_nan_inf_poison_every_phase() -> None:
    honest = vec(1, 2, 3, 4)
    for phase in (GRADIENT, MODEL):
        assert bound("wrong_length").vector(0, phase, 1, honest).shape == (DIM + 1,)
        poisoned = bound("nan_inf").vector(0, phase, 1, honest)
        assert np.isnan(poisoned[0]) and np.isinf(poisoned[-1])
    assert bound({"name": "wrong_length", "extra": -1}).vector(0, 0, 0, honest).shape == (DIM - 1,)
    np.testing.assert_array_equal(honest, vec(1, 2, 3, 4))  # the input is not modified


# --------------------------------------------------------------------------- in a cluster

PROTOCOL_CASES: dict[str, tuple[Any, set[FaultKind] | None]] = {
    # spec, and the fault kinds honest nodes must raise against every attacker (None:
    # nothing detectable, such as silence)
    "crash": ("crash", None),
    "silent": ("silent", None),
    "withhold": ("withhold", None),
    "equivocate": ("equivocate", {FaultKind.EQUIVOCATION}),
    "conflicting_echoes": (
        "conflicting_echoes",
        {FaultKind.CONFLICTING_ECHO, FaultKind.CONFLICTING_READY, FaultKind.BAD_SIGNATURE},
    ),
    "flood": ("flood", {FaultKind.FAR_AHEAD}),
    "replay": ({"name": "replay", "rate": 1.0}, {FaultKind.NOT_ORIGIN}),
    "bad_signature": ("bad_signature", {FaultKind.BAD_SIGNATURE}),
    "garbage": ("garbage", {FaultKind.MALFORMED}),
    "duplicate": ("duplicate", None),  # copies change nothing (test below); not a fault
    "wrong_length": ("wrong_length", {FaultKind.BAD_VECTOR}),
    "nan_inf": ("nan_inf", {FaultKind.BAD_VECTOR}),
    "equivocate+ipm": (["equivocate", "ipm"], {FaultKind.EQUIVOCATION}),
}
SYSTEMS = [(4, 1), (7, 2)]
SEEDS = range(3)


@pytest.mark.parametrize(("n", "f"), SYSTEMS)
@pytest.mark.parametrize("case", sorted(PROTOCOL_CASES))
def test_honest_nodes_decide_and_accuse_only_attackers(case: str, n: int, f: int) -> None:
    spec, expected = PROTOCOL_CASES[case]
    for seed in SEEDS:
        cluster = attacked(n, f, spec, seed)
        where = f"(strategy={case}, n={n}, f={f}, seed={seed})"
        for i in cluster.honest:
            assert (0, 0) in cluster.nodes[i].decided, f"honest node {i} did not decide {where}"
        assert cluster.accused() <= set(cluster.byzantine), where
        if expected is None:
            continue
        kinds = {(fault.accused, fault.kind) for fault in cluster.honest_faults()}
        for attacker in cluster.byzantine:
            assert any((attacker, kind) in kinds for kind in expected), where
        for fault in cluster.honest_faults():
            if fault.evidence is not None:
                assert fault.evidence.verify(public_keys(n)[fault.accused]), where


@pytest.mark.parametrize("encoding", ["f16", "bf16", "int8"])
@pytest.mark.parametrize("case", ["equivocate", "wrong_length", "nan_inf", "equivocate+ipm"])
def test_vector_attacks_are_caught_under_every_lossy_encoding(case: str, encoding: str) -> None:
    """The attacks that rewrite vectors encode them as the run does (the filter's NaN and
    Inf survive encoding; an equivocator's second payload is in the run's encoding)."""
    spec, expected = PROTOCOL_CASES[case]
    assert expected is not None
    for seed in SEEDS:
        cluster = attacked(4, 1, spec, seed, encoding=encoding)
        where = f"(strategy={case}, encoding={encoding}, seed={seed})"
        for i in cluster.honest:
            assert (0, 0) in cluster.nodes[i].decided, f"honest node {i} did not decide {where}"
        assert cluster.accused() <= set(cluster.byzantine), where
        kinds = {(fault.accused, fault.kind) for fault in cluster.honest_faults()}
        for attacker in cluster.byzantine:
            assert any((attacker, kind) in kinds for kind in expected), where


@pytest.mark.parametrize(("n", "f"), SYSTEMS)
def test_copies_of_every_message_are_counted_once_and_nobody_is_accused(n: int, f: int) -> None:
    """Honest nodes send copies too (after a restart, or answering a catch-up), so a copy
    is never a fault; it must never count as a second vote either: the honest nodes
    still decide values inside the honest range."""
    for seed in SEEDS:
        cluster = attacked(n, f, "duplicate", seed)
        for i in cluster.honest:
            stats = cluster.nodes[i].core.statistics()
            assert not stats.faults, (stats.faults, seed)
            assert set(stats.duplicates) == set(cluster.byzantine), (stats.duplicates, seed)


def test_crash_at_a_later_step_takes_part_until_then() -> None:
    n, f = 4, 1
    cluster = strategy_cluster(n, f, {3: {"name": "crash", "at_step": 1}}, seed=0)
    for step in (0, 1):
        cluster.propose(step, 0, {i: np.full(4, float(i), np.float32) for i in range(n)})
        cluster.run()
    for i in cluster.honest:
        core = cluster.nodes[i].core
        first, second = core.agreement(0, 0), core.agreement(1, 0)
        assert first is not None and second is not None and (1, 0) in cluster.nodes[i].decided
        assert 3 in first.held(0) and 3 not in second.held(0)
