"""Byzantine behaviours for the test cluster: each rewrites a real core's outgoing traffic.

A Byzantine node still runs an honest :class:`~protocol.core.NodeCore` underneath, so it
takes part in the protocol exactly as much as its behaviour allows, with its real key.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import replace

import numpy as np

from protocol.codec import decode_array, encode, encode_array
from protocol.crypto import digest
from protocol.messages import Echo, InstanceId, Kind, Message, Ready, Send, Tag
from tests.cluster import Behaviour


def _resign(behaviour: Behaviour, iid: InstanceId, payload: bytes) -> Send:
    assert behaviour.node is not None
    scheme = behaviour.node.scheme
    return Send(iid, payload, scheme.sign(behaviour.node.core.config.session, iid, digest(payload)))


def _own_vector_send(behaviour: Behaviour, message: Message) -> bool:
    assert behaviour.node is not None
    return (
        isinstance(message, Send)
        and message.iid.origin == behaviour.node.me
        and message.iid.tag.kind == Kind.VECTOR
    )


class Silent(Behaviour):
    def outgoing(self, dst: int, message: Message, data: bytes) -> Iterable[bytes]:
        return ()


class Equivocate(Behaviour):
    """As origin, SEND one payload to low ids and another, also signed, to high ids."""

    def outgoing(self, dst: int, message: Message, data: bytes) -> Iterable[bytes]:
        assert self.node is not None
        if not (isinstance(message, Send) and message.iid.origin == self.node.me):
            return (data,)
        if dst < self.node.core.config.n // 2:
            return (data,)
        if message.iid.tag.kind == Kind.VECTOR:
            other = encode_array(np.asarray(decode_array(message.payload)) + 1.0)
        else:
            other = bytes(message.payload)[:-1]  # a shorter (invalid) report
        return (encode(_resign(self, message.iid, other)),)


class ConflictingEchoReady(Behaviour):
    """Echo/ready a random digest to half the nodes, then the true one to everyone."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.rng = random.Random(seed)

    def outgoing(self, dst: int, message: Message, data: bytes) -> Iterable[bytes]:
        if isinstance(message, Echo | Ready) and dst % 2 == 0:
            fake = self.rng.randbytes(32)
            forged = (
                Echo(message.iid, fake, message.origin_signature)
                if isinstance(message, Echo)
                else Ready(message.iid, fake)
            )
            return (encode(forged), data)
        return (data,)


class Garbage(Behaviour):
    """Every message replaced by random bytes; now and then a truncated real one."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.rng = random.Random(seed)

    def outgoing(self, dst: int, message: Message, data: bytes) -> Iterable[bytes]:
        if self.rng.random() < 0.5:
            return (self.rng.randbytes(self.rng.randrange(0, 64)),)
        return (data[: self.rng.randrange(0, max(1, len(data)))],)


class BadVector(Behaviour):
    """Own vectors replaced, validly signed, by a transformed array (wrong length, NaN...)."""

    def __init__(self, transform: Callable[[np.ndarray], np.ndarray]) -> None:
        super().__init__()
        self.transform = transform

    def outgoing(self, dst: int, message: Message, data: bytes) -> Iterable[bytes]:
        if not _own_vector_send(self, message):
            return (data,)
        assert isinstance(message, Send)
        bad = self.transform(np.array(decode_array(message.payload)))
        return (encode(_resign(self, message.iid, encode_array(bad))),)


def wrong_length() -> BadVector:
    return BadVector(lambda v: np.concatenate([v, v[:1]]))


def non_finite() -> BadVector:
    def poison(v: np.ndarray) -> np.ndarray:
        v[0] = np.nan
        v[-1] = np.inf
        return v

    return BadVector(poison)


def fixed_value(value: float) -> BadVector:
    return BadVector(lambda v: np.full_like(v, value))


class Duplicate(Behaviour):
    def outgoing(self, dst: int, message: Message, data: bytes) -> Iterable[bytes]:
        return (data, data)


class Replay(Behaviour):
    """Forwards what it receives from others to a random node, as its own message."""

    def __init__(self, seed: int, rate: float = 0.2) -> None:
        super().__init__()
        self.rng = random.Random(seed)
        self.rate = rate

    def on_receive(self, src: int, data: bytes) -> Iterable[tuple[int, bytes]]:
        assert self.node is not None
        if self.rng.random() >= self.rate:
            return ()
        dst = self.rng.choice([i for i in range(self.node.core.config.n) if i != self.node.me])
        return ((dst, data),)


class FarAhead(Behaviour):
    """Honest, plus copies of its messages re-tagged a thousand steps ahead."""

    def outgoing(self, dst: int, message: Message, data: bytes) -> Iterable[bytes]:
        tag = message.iid.tag
        ahead = Tag(tag.step + 1000, tag.phase, tag.round, tag.kind)
        future = replace(message, iid=InstanceId(message.iid.origin, ahead))
        return (data, encode(future))


def behaviour_by_name(name: str, seed: int) -> Behaviour:
    factories: dict[str, Callable[[], Behaviour]] = {
        "silent": Silent,
        "equivocate": Equivocate,
        "conflicting": lambda: ConflictingEchoReady(seed),
        "garbage": lambda: Garbage(seed),
        "wrong_length": wrong_length,
        "non_finite": non_finite,
        "duplicate": Duplicate,
        "replay": lambda: Replay(seed),
        "far_ahead": FarAhead,
    }
    return factories[name]()


BEHAVIOURS = (
    "silent",
    "equivocate",
    "conflicting",
    "garbage",
    "wrong_length",
    "non_finite",
    "duplicate",
    "replay",
    "far_ahead",
)
