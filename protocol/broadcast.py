"""Bracha reliable broadcast with digest echoes: one state machine per instance (DESIGN 4.1).

Rules, as the paper states them, for instance id = (origin, tag):

* the origin sends SEND(id, payload), signed over (session, id, digest(payload));
* on the first valid SEND from the origin: keep the payload, send ECHO(id, digest);
* on ECHO(id, h) from ``echo_quorum`` = ceil((n+f+1)/2) distinct nodes, or READY(id, h)
  from ``ready_amplify`` = f+1 distinct nodes: send READY(id, h), once;
* on READY(id, h) from ``deliver_quorum`` = 2f+1 distinct nodes: deliver h. Without the
  payload, fetch it from nodes that echoed h (at least f+1 of them are honest and hold it),
  one per :meth:`tick`: from the first tick on, so that a SEND that is merely late costs
  nothing (fetching at once doubled the payload bytes of ~20% of nodes in random-delay runs).

ECHO/READY carry the 32-byte digest only, so a node sends about (n-1)*|payload| bytes per
broadcast instead of Bracha's n*(n-1)*|payload|. Anything a peer does wrong becomes a
:class:`~protocol.step.Fault` in the returned step; nothing here raises because of a peer.
State per instance is bounded: one payload, one echo and one ready per node.

Crash-recovery (DESIGN 3). Every SEND this node accepts (its own included) and every
READY it sends goes into ``Step.durable``: the node persists them before anything of that
step leaves it. After a restart :meth:`BroadcastInstance.restore_send` and
:meth:`~BroadcastInstance.restore_ready` put them back, so the node echoes only the digest
it echoed before, votes READY only as before, and :meth:`~BroadcastInstance.send` resends
its own signed payload instead of signing anew. An identical copy of a message already
counted is dropped and counted in :class:`Ignored`, never a fault: restarted and
catching-up peers send them.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.crypto import EquivocationProof, SignatureScheme, digest
from protocol.messages import Echo, Fetch, FetchReply, InstanceId, Message, Ready, Send
from protocol.step import Delivered, FaultKind, Step


class Ignored:
    """What instances drop without blaming anyone, by sender (see
    :class:`~protocol.step.FaultKind` for why these are not faults). One per core."""

    __slots__ = ("duplicates", "stale_replies")

    def __init__(self, n: int) -> None:
        #: identical copies of a SEND, ECHO, READY or FETCH already handled
        self.duplicates = [0] * n
        #: fetch replies we were not (or no longer) waiting for
        self.stale_replies = [0] * n


@dataclass(frozen=True, slots=True)
class BroadcastParams:
    n: int
    f: int
    me: int
    session: bytes

    @property
    def echo_quorum(self) -> int:
        """ECHOs that make a digest READY-worthy: any two such quorums share an honest node."""
        return (self.n + self.f + 2) // 2  # ceil((n + f + 1) / 2)

    @property
    def ready_amplify(self) -> int:
        """READYs that prove one honest node is ready: join it (gives totality)."""
        return self.f + 1

    @property
    def deliver_quorum(self) -> int:
        """READYs that make f+1 honest READYs certain: every honest node will deliver."""
        return 2 * self.f + 1


class BroadcastInstance:
    """One reliable-broadcast instance, from this node's point of view."""

    __slots__ = (
        "_deliver_quorum",
        "_echo_counts",
        "_echo_quorum",
        "_echo_signatures",
        "_echoes",
        "_fetch_answered",
        "_fetch_asked",
        "_fetch_served",
        "_ignored",
        "_params",
        "_payload_bytes_max",
        "_readies",
        "_ready_amplify",
        "_ready_counts",
        "_scheme",
        "_send_digest",
        "_send_signature",
        "delivered_digest",
        "equivocation",
        "iid",
        "payload",
    )

    def __init__(
        self,
        iid: InstanceId,
        params: BroadcastParams,
        scheme: SignatureScheme,
        payload_bytes_max: int,
        ignored: Ignored | None = None,
    ) -> None:
        self.iid = iid
        self._ignored = ignored or Ignored(params.n)
        self._params = params
        self._scheme = scheme
        self._payload_bytes_max = payload_bytes_max
        # the quorums, read on every ECHO and READY: attributes, not properties
        self._echo_quorum = params.echo_quorum
        self._ready_amplify = params.ready_amplify
        self._deliver_quorum = params.deliver_quorum
        #: the payload whose digest we echoed (or fetched after delivering)
        self.payload: bytes | memoryview | None = None
        self._send_digest: bytes | None = None
        self._send_signature = b""
        self._echoes: list[bytes | None] = [None] * params.n  # by sender: lists are compact
        self._echo_counts: dict[bytes, int] = {}
        #: the first (echoer, origin signature) per echoed digest: evidence against an
        #: equivocating origin once our own SEND shows another digest
        self._echo_signatures: dict[bytes, tuple[int, bytes]] = {}
        self._readies: list[bytes | None] = [None] * params.n
        self._ready_counts: dict[bytes, int] = {}
        self.delivered_digest: bytes | None = None
        self._fetch_asked: list[int] = []
        self._fetch_answered: set[int] = set()
        self._fetch_served: set[int] = set()
        self.equivocation: EquivocationProof | None = None

    # ------------------------------------------------------------------ state queries

    @property
    def delivered(self) -> bool:
        return self.delivered_digest is not None and self.payload is not None

    @property
    def sent_ready(self) -> bool:
        return self._readies[self._params.me] is not None

    def drop_payload(self) -> None:
        """Free the payload (the instance is retired); late fetches for it go unanswered."""
        self.payload = None

    # ------------------------------------------------------------------ origin side

    def send(self, payload: bytes) -> Step:
        """Start this instance as its origin: sign and SEND to everyone.

        If this node signed a payload for this instance before a restart (restored), that
        one goes out again, byte for byte, and ``payload`` is ignored: an honest origin
        never signs two payloads for one instance."""
        step = Step()
        if self._send_digest is not None:
            assert self.payload is not None, "our own restored SEND keeps its payload"
            step.broadcast(Send(self.iid, self.payload, self._send_signature))
            step.broadcast(Echo(self.iid, self._send_digest, self._send_signature))
            return step
        payload_digest = digest(payload)
        signature = self._scheme.sign(self._params.session, self.iid, payload_digest)
        step.broadcast(Send(self.iid, payload, signature))
        self._accept_send(payload, payload_digest, signature, step)
        return step

    # ------------------------------------------------------------------ inputs

    def handle_send(self, sender: int, msg: Send) -> Step:
        step = Step()
        iid = self.iid
        if sender != iid.origin:
            step.fault(sender, FaultKind.NOT_ORIGIN, "SEND for another origin's instance", iid)
            return step
        if len(msg.payload) > self._payload_bytes_max:
            step.fault(
                sender,
                FaultKind.OVERSIZE,
                f"payload of {len(msg.payload)} bytes > {self._payload_bytes_max}",
                iid,
            )
            return step
        payload_digest = digest(msg.payload)
        if payload_digest == self._send_digest:
            self._ignored.duplicates[sender] += 1  # verified when first accepted
            return step
        if not self._scheme.verify(self._params.session, iid, payload_digest, msg.signature):
            step.fault(sender, FaultKind.BAD_SIGNATURE, "SEND signature does not verify", iid)
            return step
        if self._send_digest is not None:
            self._record_equivocation(step, payload_digest, msg.signature)
            return step
        self._accept_send(msg.payload, payload_digest, msg.signature, step)
        return step

    def handle_echo(self, sender: int, msg: Echo) -> Step:
        step = Step()
        self._echo(sender, msg.digest, msg.origin_signature, step)
        return step

    def handle_ready(self, sender: int, msg: Ready) -> Step:
        step = Step()
        previous = self._readies[sender]
        if previous is not None:
            if previous == msg.digest:
                self._ignored.duplicates[sender] += 1
            else:
                step.fault(
                    sender, FaultKind.CONFLICTING_READY, "second READY for one instance", self.iid
                )
            return step
        self._count_ready(sender, msg.digest, step)
        return step

    def _echo(self, sender: int, echo_digest: bytes, origin_signature: bytes, step: Step) -> None:
        previous = self._echoes[sender]
        if previous is not None:
            if previous == echo_digest:
                self._ignored.duplicates[sender] += 1
            else:
                step.fault(
                    sender, FaultKind.CONFLICTING_ECHO, "second ECHO for one instance", self.iid
                )
            return
        conflicts = self._send_digest is not None and echo_digest != self._send_digest
        if conflicts and self._scheme.enabled:
            # Either the origin equivocated (the echo carries its signature on another
            # digest: a proof) or the echoer lies (the signature does not verify). With
            # signatures off nobody can tell, so nobody is accused.
            if not self._scheme.verify(
                self._params.session, self.iid, echo_digest, origin_signature
            ):
                step.fault(
                    sender,
                    FaultKind.BAD_SIGNATURE,
                    "ECHO carries a forged origin signature",
                    self.iid,
                )
                return
            self._record_equivocation(step, echo_digest, origin_signature)
        self._echoes[sender] = echo_digest
        if echo_digest not in self._echo_signatures:
            self._echo_signatures[echo_digest] = (sender, origin_signature)
        count = self._echo_counts.get(echo_digest, 0) + 1
        self._echo_counts[echo_digest] = count
        if count >= self._echo_quorum:
            self._send_ready(echo_digest, step)

    def handle_fetch(self, sender: int, msg: Fetch) -> Step:
        step = Step()
        if sender in self._fetch_served:
            self._ignored.duplicates[sender] += 1  # served once per incarnation of the asker
        elif self._send_digest != msg.digest or self._echoes[self._params.me] is None:
            step.fault(sender, FaultKind.BAD_FETCH, "FETCH for a digest we never echoed", self.iid)
        elif self.payload is not None:
            self._fetch_served.add(sender)
            step.send(sender, FetchReply(self.iid, self.payload))
        # else: retired and freed; an honest asker moves on to the next echoer.
        return step

    def handle_fetch_reply(self, sender: int, msg: FetchReply) -> Step:
        step = Step()
        if sender not in self._fetch_asked or sender in self._fetch_answered:
            # Not a fault: the ask may come from our previous incarnation. Ignored before
            # hashing, so an unasked payload costs us nothing.
            self._ignored.stale_replies[sender] += 1
            return step
        self._fetch_answered.add(sender)  # one reply per ask: a liar cannot make us rehash
        if self.payload is not None:
            pass  # the SEND or an earlier reply won the race: nothing to do
        elif digest(msg.payload) != self.delivered_digest:
            step.fault(sender, FaultKind.FETCH_MISMATCH, "FETCH reply has another digest", self.iid)
        else:
            self.payload = msg.payload
            step.outputs.append(Delivered(self.iid, msg.payload))
        return step

    # ------------------------------------------------------------------ crash-recovery

    def restore_send(self, payload: bytes | memoryview, signature: bytes) -> None:
        """Before a restart this node accepted (and echoed) this SEND: hold it again.

        No messages and no outputs: :meth:`replay` resends what we had sent, and delivery
        happens again as READYs arrive."""
        if self._send_digest is not None:
            return
        payload_digest = digest(payload)
        self._send_digest = payload_digest
        self._send_signature = signature
        self.payload = payload
        me = self._params.me
        self._echoes[me] = payload_digest
        self._echo_signatures.setdefault(payload_digest, (me, signature))
        self._echo_counts[payload_digest] = self._echo_counts.get(payload_digest, 0) + 1

    def restore_ready(self, ready_digest: bytes) -> None:
        """Before a restart this node sent READY for ``ready_digest``: it is its vote still."""
        me = self._params.me
        if self._readies[me] is None:
            self._readies[me] = ready_digest
            self._ready_counts[ready_digest] = self._ready_counts.get(ready_digest, 0) + 1

    def replay(self) -> list[Message]:
        """Our own messages of this instance, exactly as sent: for a peer that lost them
        (it restarted) or dropped them (it was too far behind)."""
        me = self._params.me
        messages: list[Message] = []
        if self.iid.origin == me and self._send_digest is not None and self.payload is not None:
            messages.append(Send(self.iid, self.payload, self._send_signature))
        echoed = self._echoes[me]
        if echoed is not None:
            messages.append(Echo(self.iid, echoed, self._send_signature))
        ready = self._readies[me]
        if ready is not None:
            messages.append(Ready(self.iid, ready))
        return messages

    def progress(self) -> str:
        """Where this instance stands, in words (for a stall warning)."""
        held = "SEND held" if self._send_digest is not None else "no SEND"
        echoes = max(self._echo_counts.values(), default=0)
        readies = max(self._ready_counts.values(), default=0)
        return (
            f"{held}, {echoes} of {self._echo_quorum} echoes, "
            f"{readies} of {self._deliver_quorum} readies"
        )

    def forget_peer(self, peer: int) -> None:
        """``peer`` restarted: its fetches start afresh, and so do ours to it (an ask its
        previous incarnation never answered may be repeated)."""
        self._fetch_served.discard(peer)
        self._fetch_answered.discard(peer)
        if peer in self._fetch_asked:
            self._fetch_asked.remove(peer)

    def tick(self) -> Step:
        """Ask the next echoer for a payload we delivered without holding."""
        if self.delivered_digest is None or self.payload is not None:
            return Step()
        return self._fetch_next()

    # ------------------------------------------------------------------ internals

    def _accept_send(
        self, payload: bytes | memoryview, payload_digest: bytes, signature: bytes, step: Step
    ) -> None:
        self._send_digest = payload_digest
        self._send_signature = signature
        step.durable.append(Send(self.iid, payload, signature))
        if self.delivered_digest is None or self.delivered_digest == payload_digest:
            self.payload = payload
        if self._scheme.enabled:
            for echoed, (echoer, echo_signature) in sorted(self._echo_signatures.items()):
                if echoed == payload_digest or self.equivocation is not None:
                    continue
                if self._scheme.verify(self._params.session, self.iid, echoed, echo_signature):
                    self._record_equivocation(step, echoed, echo_signature)
                else:
                    step.fault(
                        echoer,
                        FaultKind.BAD_SIGNATURE,
                        "ECHO carried a forged origin signature",
                        self.iid,
                    )
        step.broadcast(Echo(self.iid, payload_digest, signature))
        if self._echoes[self._params.me] is None:
            self._echo(self._params.me, payload_digest, signature, step)
        if self.delivered_digest == payload_digest and self.payload is not None:
            step.outputs.append(Delivered(self.iid, payload))

    def _send_ready(self, ready_digest: bytes, step: Step) -> None:
        if self.sent_ready:
            return
        ready = Ready(self.iid, ready_digest)
        step.durable.append(ready)
        step.broadcast(ready)
        self._count_ready(self._params.me, ready_digest, step)

    def _count_ready(self, sender: int, ready_digest: bytes, step: Step) -> None:
        self._readies[sender] = ready_digest
        count = self._ready_counts.get(ready_digest, 0) + 1
        self._ready_counts[ready_digest] = count
        if count >= self._ready_amplify:
            self._send_ready(ready_digest, step)
        if count >= self._deliver_quorum and self.delivered_digest is None:
            self.delivered_digest = ready_digest
            if self._send_digest == ready_digest and self.payload is not None:
                step.outputs.append(Delivered(self.iid, self.payload))
            else:
                # We hold another digest (the origin equivocated) or nothing yet. The SEND
                # from an honest origin is usually just late: fetch on the next tick.
                self.payload = None

    def _fetch_next(self) -> Step:
        """Ask one more node that echoed the delivered digest; the origin first, then by
        id starting after our own so that fetch load spreads over the echoers."""
        step = Step()
        wanted = self.delivered_digest
        assert wanted is not None
        n, me, origin = self._params.n, self._params.me, self.iid.origin
        candidates = [origin] + [(me + k) % n for k in range(1, n)]
        for node in candidates:
            if node != me and self._echoes[node] == wanted and node not in self._fetch_asked:
                self._fetch_asked.append(node)
                step.send(node, Fetch(self.iid, wanted))
                break
        return step

    def _record_equivocation(self, step: Step, other_digest: bytes, other_signature: bytes) -> None:
        if self.equivocation is not None or self._send_digest is None:
            return
        proof = EquivocationProof(
            self._params.session,
            self.iid,
            self._send_digest,
            self._send_signature,
            other_digest,
            other_signature,
        )
        self.equivocation = proof
        step.fault(
            self.iid.origin,
            FaultKind.EQUIVOCATION,
            "origin signed two payloads for one instance",
            self.iid,
            proof if self._scheme.enabled else None,
        )
