"""One reliable-broadcast instance, driven by hand: thresholds, faults, fetch, evidence."""

from __future__ import annotations

import pytest

from protocol.broadcast import BroadcastInstance, BroadcastParams, Ignored
from protocol.crypto import Ed25519Scheme, EquivocationProof, digest
from protocol.messages import Echo, Fetch, FetchReply, InstanceId, Ready, Send, Tag
from protocol.step import Delivered, FaultKind, Step
from tests.cluster import SESSION, node_seed, public_keys

N, F = 4, 1
IID = InstanceId(origin=3, tag=Tag(0, 0, 0, 0))
KEYS = public_keys(N)


def scheme(i: int) -> Ed25519Scheme:
    return Ed25519Scheme(node_seed(i), KEYS)


def instance(
    me: int = 0, bytes_max: int = 1000, ignored: Ignored | None = None
) -> BroadcastInstance:
    params = BroadcastParams(N, F, me, SESSION)
    return BroadcastInstance(IID, params, scheme(me), bytes_max, ignored)


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
    ignored = Ignored(N)
    rb = instance(me=0, ignored=ignored)
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
    # a wrong reply is the replier's fault; an unasked one is dropped (it may answer an
    # ask of our previous incarnation), counted, and never hashed or delivered
    assert kinds(rb.handle_fetch_reply(1, FetchReply(IID, b"other"))) == [FaultKind.FETCH_MISMATCH]
    assert not rb.handle_fetch_reply(3, FetchReply(IID, payload)) and not rb.delivered
    assert ignored.stale_replies == [0, 0, 0, 1]
    step = rb.handle_fetch_reply(2, FetchReply(IID, payload))
    assert step.outputs == [Delivered(IID, payload)] and not step.faults
    # one reply per ask: a second one, even correct, is dropped too
    assert not rb.handle_fetch_reply(1, FetchReply(IID, payload))
    assert ignored.stale_replies == [0, 1, 0, 1]


def test_a_restarted_peer_may_fetch_again_and_be_asked_again() -> None:
    rb = instance()
    rb.handle_send(3, signed_send(b"p"))
    h = digest(b"p")
    assert rb.handle_fetch(1, Fetch(IID, h)).messages
    assert not rb.handle_fetch(1, Fetch(IID, h)).messages  # served once per incarnation
    rb.forget_peer(1)
    assert [type(o.message) for o in rb.handle_fetch(1, Fetch(IID, h)).messages] == [FetchReply]


def test_fetch_is_served_once_and_only_for_what_we_echoed() -> None:
    rb = instance()
    send = signed_send(b"p")
    rb.handle_send(3, send)
    h = digest(b"p")
    reply = rb.handle_fetch(1, Fetch(IID, h))
    assert [(o.to, type(o.message)) for o in reply.messages] == [(1, FetchReply)]
    assert not rb.handle_fetch(1, Fetch(IID, h))  # once: a second ask gets nothing
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


def test_copies_are_counted_once_and_conflicts_are_faults_not_exceptions() -> None:
    ignored = Ignored(N)
    rb = instance(ignored=ignored)
    send = signed_send(b"p")
    rb.handle_send(3, send)
    h = digest(b"p")
    # identical copies (a restarted or catching-up peer resends them) change nothing
    assert not rb.handle_send(3, send)
    rb.handle_echo(1, Echo(IID, h, send.signature))
    assert not rb.handle_echo(1, Echo(IID, h, send.signature))
    assert kinds(rb.handle_echo(1, Echo(IID, b"\1" * 32, b""))) == [FaultKind.CONFLICTING_ECHO]
    rb.handle_ready(2, Ready(IID, h))
    assert not rb.handle_ready(2, Ready(IID, h))
    assert kinds(rb.handle_ready(2, Ready(IID, b"\1" * 32))) == [FaultKind.CONFLICTING_READY]
    assert ignored.duplicates == [0, 1, 1, 1]
    # counted once: one more READY (ours, amplified at f+1) is still needed to deliver
    assert rb.delivered_digest is None


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


def test_what_is_accepted_or_voted_is_marked_durable_and_restores_exactly() -> None:
    rb = instance()
    send = signed_send(b"p")
    h = digest(b"p")
    step = rb.handle_send(3, send)
    assert step.durable == [Send(IID, send.payload, send.signature)]
    rb.handle_echo(1, Echo(IID, h, send.signature))
    step = rb.handle_echo(2, Echo(IID, h, send.signature))
    assert step.durable == [Ready(IID, h)]

    # the same node after a restart, from what it persisted
    restored = instance()
    restored.restore_send(send.payload, send.signature)
    restored.restore_ready(h)
    assert restored.replay() == [Echo(IID, h, send.signature), Ready(IID, h)]
    assert restored.payload == b"p"  # it can serve fetches for what it echoed
    # a conflicting SEND now is the origin's equivocation, never a second echo of ours
    other = signed_send(b"q")
    step = restored.handle_send(3, other)
    assert kinds(step) == [FaultKind.EQUIVOCATION] and not step.messages
    # the READYs of two peers complete delivery of the payload held since before
    restored.handle_ready(1, Ready(IID, h))
    assert restored.handle_ready(2, Ready(IID, h)).outputs == [Delivered(IID, b"p")]


def test_a_restored_origin_resends_its_signed_payload_and_never_signs_another() -> None:
    iid = InstanceId(0, Tag(0, 0, 0, 0))
    params = BroadcastParams(N, F, 0, SESSION)
    first = BroadcastInstance(iid, params, scheme(0), 1000)
    step = first.send(b"before the crash")
    (send,) = [o.message for o in step.messages if isinstance(o.message, Send)]
    again = BroadcastInstance(iid, params, scheme(0), 1000)
    again.restore_send(send.payload, send.signature)
    step = again.send(b"computed again after the restart")
    sends = [o.message for o in step.messages if isinstance(o.message, Send)]
    assert sends == [send] and not step.durable  # persisted already
