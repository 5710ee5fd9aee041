"""One reliable-broadcast instance, driven by hand: thresholds, faults, fetch, evidence."""

from __future__ import annotations

import pytest

from protocol.broadcast import BroadcastInstance, BroadcastParams
from protocol.crypto import Ed25519Scheme, EquivocationProof, digest
from protocol.messages import Echo, Fetch, FetchReply, InstanceId, Ready, Send, Tag
from protocol.step import Delivered, FaultKind, Step
from tests.cluster import SESSION, node_seed, public_keys

N, F = 4, 1
IID = InstanceId(origin=3, tag=Tag(0, 0, 0, 0))
KEYS = public_keys(N)


def scheme(i: int) -> Ed25519Scheme:
    return Ed25519Scheme(node_seed(i), KEYS)


def instance(me: int = 0, bytes_max: int = 1000) -> BroadcastInstance:
    return BroadcastInstance(IID, BroadcastParams(N, F, me, SESSION), scheme(me), bytes_max)


def signed_send(payload: bytes) -> Send:
    return Send(IID, payload, scheme(IID.origin).sign(SESSION, IID, digest(payload)))


def kinds(step: Step) -> list[FaultKind]:
    return [fault.kind for fault in step.faults]


def test_thresholds_follow_the_paper() -> None:
    for n, f, echo, amplify, deliver in [(4, 1, 3, 2, 3), (7, 2, 5, 3, 5), (10, 3, 7, 4, 7)]:
        params = BroadcastParams(n, f, 0, SESSION)
        assert (params.echo_quorum, params.ready_amplify, params.deliver_quorum) == (
            echo,
            amplify,
            deliver,
        )


def test_send_echo_ready_deliver() -> None:
    rb = instance()
    send = signed_send(b"payload")
    h = digest(b"payload")
    step = rb.handle_send(3, send)
    assert [type(o.message) for o in step.messages] == [Echo]  # our echo, counted locally too
    assert not step.faults
    assert not rb.handle_echo(1, Echo(IID, h, send.signature)).messages
    step = rb.handle_echo(2, Echo(IID, h, send.signature))  # 3 echoes = echo quorum
    assert [type(o.message) for o in step.messages] == [Ready]
    assert not rb.handle_ready(1, Ready(IID, h)).outputs
    step = rb.handle_ready(2, Ready(IID, h))  # 3 readies incl. ours = deliver quorum
    assert step.outputs == [Delivered(IID, send.payload)]
    assert rb.delivered


def test_ready_amplification_without_echoes() -> None:
    rb = instance()
    h = digest(b"x")
    assert not rb.handle_ready(1, Ready(IID, h)).messages
    step = rb.handle_ready(2, Ready(IID, h))  # f+1 readies: join
    assert [type(o.message) for o in step.messages] == [Ready]
    # delivered (3 readies) without the payload: fetch from an echoer
    assert not step.outputs
    assert rb.delivered_digest == h and not rb.delivered


def test_fetch_from_echoers_one_at_a_time() -> None:
    rb = instance(me=0)
    payload = b"the payload"
    send = signed_send(payload)
    h = digest(payload)
    for echoer in (1, 2):
        rb.handle_echo(echoer, Echo(IID, h, send.signature))
    rb.handle_ready(1, Ready(IID, h))
    step = rb.handle_ready(2, Ready(IID, h))  # deliver quorum (with our amplified ready)
    assert not [o for o in step.messages if isinstance(o.message, Fetch)]  # the SEND may be late
    assert [o.to for o in rb.tick().messages] == [1]  # origin 3 did not echo; next after us is 1
    assert [o.to for o in rb.tick().messages] == [2]
    assert not rb.tick().messages  # nobody else echoed h
    # a wrong reply is the replier's fault; an unasked one is unsolicited
    assert kinds(rb.handle_fetch_reply(1, FetchReply(IID, b"other"))) == [FaultKind.FETCH_MISMATCH]
    assert kinds(rb.handle_fetch_reply(3, FetchReply(IID, payload))) == [FaultKind.UNSOLICITED]
    step = rb.handle_fetch_reply(2, FetchReply(IID, payload))
    assert step.outputs == [Delivered(IID, payload)] and not step.faults
    # one reply per ask: a second one, even correct, is unsolicited
    assert kinds(rb.handle_fetch_reply(1, FetchReply(IID, payload))) == [FaultKind.UNSOLICITED]


def test_fetch_is_served_once_and_only_for_what_we_echoed() -> None:
    rb = instance()
    send = signed_send(b"p")
    rb.handle_send(3, send)
    h = digest(b"p")
    reply = rb.handle_fetch(1, Fetch(IID, h))
    assert [(o.to, type(o.message)) for o in reply.messages] == [(1, FetchReply)]
    assert kinds(rb.handle_fetch(1, Fetch(IID, h))) == [FaultKind.DUPLICATE]
    assert kinds(rb.handle_fetch(2, Fetch(IID, b"\0" * 32))) == [FaultKind.BAD_FETCH]


@pytest.mark.parametrize(
    ("sender", "message", "expected"),
    [
        (1, signed_send(b"p"), FaultKind.NOT_ORIGIN),
        (3, Send(IID, b"p", b"\x00" * 64), FaultKind.BAD_SIGNATURE),
        (3, signed_send(b"p" * 1001), FaultKind.OVERSIZE),
    ],
)
def test_bad_sends(sender: int, message: Send, expected: FaultKind) -> None:
    rb = instance()
    step = rb.handle_send(sender, message)
    assert kinds(step) == [expected] and not step.messages
    assert rb.payload is None


def test_duplicates_and_conflicts_are_faults_not_exceptions() -> None:
    rb = instance()
    send = signed_send(b"p")
    rb.handle_send(3, send)
    h = digest(b"p")
    assert kinds(rb.handle_send(3, send)) == [FaultKind.DUPLICATE]
    rb.handle_echo(1, Echo(IID, h, send.signature))
    assert kinds(rb.handle_echo(1, Echo(IID, h, send.signature))) == [FaultKind.DUPLICATE]
    assert kinds(rb.handle_echo(1, Echo(IID, b"\1" * 32, b""))) == [FaultKind.CONFLICTING_ECHO]
    rb.handle_ready(2, Ready(IID, h))
    assert kinds(rb.handle_ready(2, Ready(IID, h))) == [FaultKind.DUPLICATE]
    assert kinds(rb.handle_ready(2, Ready(IID, b"\1" * 32))) == [FaultKind.CONFLICTING_READY]


def test_equivocation_proof_from_a_second_send_and_from_an_echo() -> None:
    a, b = signed_send(b"A"), signed_send(b"B")
    rb = instance()
    rb.handle_send(3, a)
    step = rb.handle_send(3, b)
    assert kinds(step) == [FaultKind.EQUIVOCATION]
    proof = step.faults[0].evidence
    assert isinstance(proof, EquivocationProof)
    assert step.faults[0].accused == 3
    assert proof.verify(KEYS[3])  # offline, from the public key alone
    assert not proof.verify(KEYS[2])

    # the same evidence arrives inside an honest node's ECHO of the other payload
    rb = instance()
    rb.handle_send(3, a)
    step = rb.handle_echo(2, Echo(IID, digest(b"B"), b.signature))
    assert kinds(step) == [FaultKind.EQUIVOCATION] and step.faults[0].accused == 3
    assert step.faults[0].evidence is not None and step.faults[0].evidence.verify(KEYS[3])

    # and when the ECHO came first
    rb = instance()
    rb.handle_echo(2, Echo(IID, digest(b"B"), b.signature))
    step = rb.handle_send(3, a)
    assert FaultKind.EQUIVOCATION in kinds(step)


def test_forged_echo_signature_accuses_the_echoer() -> None:
    rb = instance()
    rb.handle_send(3, signed_send(b"A"))
    step = rb.handle_echo(2, Echo(IID, digest(b"B"), b"\x01" * 64))
    assert [(f.kind, f.accused) for f in step.faults] == [(FaultKind.BAD_SIGNATURE, 2)]


def test_tampered_proof_does_not_verify() -> None:
    a, b = signed_send(b"A"), signed_send(b"B")
    proof = EquivocationProof(SESSION, IID, digest(b"A"), a.signature, digest(b"B"), b.signature)
    assert proof.verify(KEYS[3])
    other_session = EquivocationProof(
        b"\x22" * 32, IID, digest(b"A"), a.signature, digest(b"B"), b.signature
    )
    assert not other_session.verify(KEYS[3])
    same = EquivocationProof(SESSION, IID, digest(b"A"), a.signature, digest(b"A"), a.signature)
    assert not same.verify(KEYS[3])
