"""A synchronous test cluster: n pure cores, one seeded adversary choosing delivery order.

Like h11's ``ConnectionPair`` and hbbft's ``VirtualNet``: messages are real bytes (so the
codec runs and bytes on the wire are counted), nothing sleeps, and a run pumps messages
until nothing is left in flight, then ticks every node (payload-fetch retries) until
that too produces nothing. Byzantine nodes are ordinary cores whose outgoing messages a
:class:`Behaviour` rewrites (see ``tests/byzantine.py``); the default behaviour is honest.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import nacl.signing
import numpy as np

from protocol.codec import decode, encode, peek
from protocol.core import NodeCore, ProtocolConfig, RoundSchedule
from protocol.crypto import Ed25519Scheme, SignatureScheme, UnsignedScheme
from protocol.messages import (
    Catchup,
    Echo,
    Fetch,
    FetchReply,
    Finished,
    Message,
    Ready,
    Send,
)
from protocol.step import EVERYONE, Decided, Fault, RoundStarted, Step

SESSION = b"\x11" * 32
_KIND_NAMES = {
    Send: "send",
    Echo: "echo",
    Ready: "ready",
    Fetch: "fetch",
    FetchReply: "reply",
    Catchup: "catchup",
    Finished: "finished",
}


def node_seed(i: int) -> bytes:
    """A deterministic ed25519 seed per node id (tests only)."""
    return bytes([i + 1]) * 32


def public_keys(n: int) -> tuple[bytes, ...]:
    return tuple(bytes(nacl.signing.SigningKey(node_seed(i)).verify_key) for i in range(n))


@dataclass(slots=True)
class InFlight:
    src: int
    dst: int
    data: bytes
    kind: str  # "send", "echo", ... or "garbage" (protocol.codec.peek)
    seq: int


class Adversary:
    """Chooses which in-flight message is delivered next. Default: uniformly at random."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self._pool: list[InFlight] = []

    def push(self, item: InFlight) -> None:
        self._pool.append(item)

    def pop(self) -> InFlight:
        index = self.rng.randrange(len(self._pool))
        self._pool[index], self._pool[-1] = self._pool[-1], self._pool[index]
        return self._pool.pop()

    def __len__(self) -> int:
        return len(self._pool)

    def drop(self, lost: Callable[[InFlight], bool]) -> None:
        """Forget the in-flight messages ``lost`` picks (they died with a process)."""
        self._pool = [item for item in self._pool if not lost(item)]


class RandomDelays(Adversary):
    """Each message gets an exponential per-link delay; delivery in arrival-time order."""

    def __init__(self, seed: int, mean_delay: float = 1.0) -> None:
        super().__init__(seed)
        self._heap: list[tuple[float, int, InFlight]] = []
        self._now = 0.0
        self._mean = mean_delay

    def push(self, item: InFlight) -> None:
        at = self._now + self.rng.expovariate(1.0 / self._mean)
        heapq.heappush(self._heap, (at, item.seq, item))

    def pop(self) -> InFlight:
        self._now, _, item = heapq.heappop(self._heap)
        return item

    def __len__(self) -> int:
        return len(self._heap)

    def drop(self, lost: Callable[[InFlight], bool]) -> None:
        self._heap = [entry for entry in self._heap if not lost(entry[2])]
        heapq.heapify(self._heap)


class Deferring(Adversary):
    """Fair, but holds the messages :meth:`defer` picks until nothing else is in flight,
    then releases them one at a time, in :meth:`release` order. The base for adversarial
    schedulers that show nodes some vectors as late as fairness allows."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self._late: list[InFlight] = []

    def defer(self, item: InFlight) -> bool:
        raise NotImplementedError

    def release(self, late: list[InFlight]) -> int:
        """Index of the held message to deliver next; random by default."""
        return self.rng.randrange(len(late))

    def push(self, item: InFlight) -> None:
        if self.defer(item):
            self._late.append(item)
        else:
            super().push(item)

    def pop(self) -> InFlight:
        if super().__len__():
            return super().pop()
        return self._late.pop(self.release(self._late))

    def __len__(self) -> int:
        return super().__len__() + len(self._late)

    def drop(self, lost: Callable[[InFlight], bool]) -> None:
        super().drop(lost)
        self._late = [item for item in self._late if not lost(item)]


class Behaviour:
    """How a node treats its outgoing messages. Honest by default: sends them unchanged."""

    def __init__(self) -> None:
        self.node: ClusterNode | None = None

    def outgoing(self, dst: int, message: Message, data: bytes) -> Iterable[bytes]:
        """The bytes to send to ``dst`` instead of ``message`` (encoded as ``data``)."""
        return (data,)

    def on_receive(self, src: int, data: bytes) -> Iterable[tuple[int, bytes]]:
        """Extra (dst, bytes) to emit whenever this node receives something."""
        return ()


@dataclass
class ClusterNode:
    me: int
    core: NodeCore
    scheme: SignatureScheme
    behaviour: Behaviour
    faults: list[Fault] = field(default_factory=list)
    decided: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    rounds: dict[tuple[int, int], list[np.ndarray]] = field(default_factory=dict)
    #: what the core marked durable, encoded: this node's journal (survives restarts)
    journal: list[bytes] = field(default_factory=list)
    #: every SEND of its own this node ever sent, by instance, across incarnations
    signed: dict[object, set[bytes]] = field(default_factory=dict)

    def absorb(self, step: Step) -> None:
        self.journal += [encode(message) for message in step.durable]
        for outgoing in step.messages:
            message = outgoing.message
            if isinstance(message, Send) and message.iid.origin == self.me:
                self.signed.setdefault(message.iid, set()).add(bytes(message.payload))
        self.faults += step.faults
        for output in step.outputs:
            if isinstance(output, Decided):
                self.decided[(output.step, output.phase)] = output.vector
            elif isinstance(output, RoundStarted):
                self.rounds.setdefault((output.step, output.phase), []).append(output.vector)


class Cluster:
    def __init__(
        self,
        n: int,
        f: int,
        *,
        dim: int = 4,
        adversary: Adversary | None = None,
        behaviours: dict[int, Behaviour] | None = None,
        crypto: bool = True,
        aggregator: str = "trimmed_mean",
        schedule: RoundSchedule | None = None,
        dtype: str = "<f4",
        core_factory: Callable[[ProtocolConfig, SignatureScheme], NodeCore] = NodeCore,
        steps_total: int | None = None,
        encoding: str = "f32",
        error_feedback: bool = True,
    ) -> None:
        self.n, self.f = n, f
        self._core_factory = core_factory
        self.adversary = adversary if adversary is not None else Adversary(0)
        self.byzantine = dict(sorted((behaviours or {}).items()))
        keys = public_keys(n)
        self.nodes: list[ClusterNode] = []
        for i in range(n):
            config = ProtocolConfig(
                n=n,
                f=f,
                me=i,
                session=SESSION,
                dim=dim,
                dtype=dtype,
                aggregator=aggregator,
                schedule=schedule or RoundSchedule(),
                steps_total=steps_total,
                encoding=encoding,
                error_feedback=error_feedback,
            )
            scheme: SignatureScheme = (
                Ed25519Scheme(node_seed(i), keys) if crypto else UnsignedScheme()
            )
            behaviour = self.byzantine.get(i, Behaviour())
            node = ClusterNode(i, core_factory(config, scheme), scheme, behaviour)
            behaviour.node = node
            self.nodes.append(node)
        self.honest = [i for i in range(n) if i not in self.byzantine]
        self.bytes_sent: Counter[int] = Counter()
        self.bytes_sent_by_kind: dict[int, Counter[str]] = defaultdict(Counter)
        self.messages_delivered = 0
        self._seq = 0

    # ------------------------------------------------------------------ driving

    def propose(self, step: int, phase: int, vectors: dict[int, np.ndarray]) -> None:
        for i, vector in sorted(vectors.items()):
            node = self.nodes[i]
            out = node.core.propose(step, phase, vector)
            node.absorb(out)
            self._emit(i, out)

    def run(self, max_messages: int = 10_000_000) -> None:
        """Deliver until nothing is in flight and ticks produce nothing more."""
        while True:
            while len(self.adversary):
                if self.messages_delivered >= max_messages:
                    raise RuntimeError(f"no quiescence after {max_messages} messages")
                self._deliver(self.adversary.pop())
            for node in self.nodes:
                out = node.core.tick()
                node.absorb(out)
                self._emit(node.me, out)
            if not len(self.adversary):
                return

    def restart(self, i: int, checkpoint_step: int = 0) -> int:
        """Crash node ``i`` (what was in flight to it is lost) and start a fresh core from
        its journal, as a restarted ``jungle node`` does: it resumes at the step it had
        signed up to (or its checkpoint's, if later), resends its restored messages to
        everyone and asks everyone to catch it up. Its peers' transports notice the new
        incarnation. Returns the step it resumes at; proposing there is the caller's."""
        node = self.nodes[i]
        self.adversary.drop(lambda item: item.dst == i)
        persisted = [decode(data) for data in node.journal]
        own = [m.iid.tag.step for m in persisted if isinstance(m, Send) and m.iid.origin == i]
        resume = max([checkpoint_step, *own])
        core = self._core_factory(node.core.config, node.scheme)
        core.advance_to(resume)
        core.restore([m for m in persisted if isinstance(m, Send | Ready)])
        node.core = core
        node.decided.clear()
        node.rounds.clear()
        for other in self.nodes:
            if other.me != i:
                other.core.peer_restarted(i)
        step = core.replay(EVERYONE)
        step.broadcast(Catchup(resume))
        self._emit(i, step)
        return resume

    # ------------------------------------------------------------------ observation

    def honest_faults(self) -> list[Fault]:
        return [fault for i in self.honest for fault in self.nodes[i].faults]

    def accused(self) -> set[int]:
        return {fault.accused for fault in self.honest_faults()}

    # ------------------------------------------------------------------ internals

    def _deliver(self, item: InFlight) -> None:
        self.messages_delivered += 1
        node = self.nodes[item.dst]
        out = node.core.receive(item.src, item.data)
        node.absorb(out)
        self._emit(item.dst, out)
        for dst, data in node.behaviour.on_receive(item.src, item.data):
            self._push(item.dst, dst, data)

    def _emit(self, src: int, step: Step) -> None:
        behaviour = self.nodes[src].behaviour
        for outgoing in step.messages:
            targets = (
                [d for d in range(self.n) if d != src] if outgoing.to == EVERYONE else [outgoing.to]
            )
            message = outgoing.message
            encoded = encode(message)  # once per broadcast, shared by all links
            kind = _KIND_NAMES[type(message)]
            for dst in targets:
                if isinstance(message, Catchup | Finished):
                    self._push(src, dst, encoded, kind)
                    continue
                for data in behaviour.outgoing(dst, message, encoded):
                    self._push(src, dst, data, kind if data is encoded else None)

    def _push(self, src: int, dst: int, data: bytes, kind: str | None = None) -> None:
        if kind is None:
            kind, _ = peek(data)
        self.bytes_sent[src] += len(data)
        self.bytes_sent_by_kind[src][kind] += len(data)
        self._seq += 1
        self.adversary.push(InFlight(src, dst, data, kind, self._seq))


def honest_diameter(vectors: Iterable[np.ndarray]) -> float:
    """Max pairwise L2 distance (DESIGN 7)."""
    vs = [np.asarray(v, dtype=np.float64) for v in vectors]
    best = 0.0
    for a in range(len(vs)):
        for b in range(a + 1, len(vs)):
            best = max(best, float(np.linalg.norm(vs[a] - vs[b])))
    return best
