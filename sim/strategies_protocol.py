"""Protocol-level Byzantine strategies: what a node sends, to whom, and with what bytes.

Each one attacks a rule of DESIGN 4: reliable broadcast's quorums (silence, withholding,
equivocation, conflicting echoes), the bounds on state (flooding far-future tags), the
authentication of payloads (bad signatures, replays), the codec (garbage) and the
agreement's validation (wrong-length and non-finite vectors). Honest nodes must keep
deciding and must accuse only the attacker; ``tests/sim/test_strategies.py`` checks both
for every strategy here.

Vectors that an attack corrupts (``wrong_length``, ``nan_inf``) go through the vector
filter, so they are validly signed by the node's own core: the attack is on the
agreement's validation, not on the signature.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np

from protocol.codec import (
    CodecError,
    decode_array,
    decode_report,
    encode,
    encode_array,
    encode_report,
)
from protocol.crypto import digest
from protocol.messages import Echo, InstanceId, Kind, Message, Ready, Send, Tag
from sim.strategies_base import Strategy, StrategyContext, VectorAttack

#: extra copies per message a flooder may ask for (a bound on the simulator's own work)
FLOOD_RATE_MAX = 64.0
#: steps an equivocator keeps its alternative payloads for (its echoes and readies for
#: an instance stop once the instance leaves every honest window)
_EQUIVOCATION_STEPS_KEPT = 8


def _check_fraction(strategy: Strategy, name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise strategy.fail(name, f"must be a number in [0, 1], got {value!r}")


def _check_rate(strategy: Strategy, name: str, value: float, most: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= most:
        raise strategy.fail(name, f"must be a number in [0, {most}], got {value!r}")


def _check_targets(strategy: Strategy, targets: list[int] | None) -> None:
    if targets is None:
        return
    if not isinstance(targets, list | tuple) or not all(
        isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in targets
    ):
        raise strategy.fail("targets", f"must be a list of node ids, got {targets!r}")


def _copies(rng: np.random.Generator, rate: float) -> int:
    """``rate`` copies on average: its integer part, plus one with the fraction's odds."""
    whole = int(rate)
    return whole + int(rng.random() < rate - whole)


@dataclass
class Crash(Strategy):
    """Honest until its core reaches step ``at_step``, then silent forever (a crash-stop
    fault; the host also stops the node once :meth:`crashed` says so)."""

    name = "crash"
    at_step: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.at_step, bool) or not isinstance(self.at_step, int) or self.at_step < 0:
            raise self.fail("at_step", f"must be a non-negative integer, got {self.at_step!r}")

    def crashed(self, step: int) -> bool:
        return step >= self.at_step

    def outgoing(self, dst: int, message: Message, data: bytes) -> Iterable[bytes]:
        return () if self.crashed(self.ctx.current_step()) else (data,)


@dataclass
class Silent(Strategy):
    """Runs, receives, and never sends anything: the f missing voices every quorum of
    DESIGN 4 is sized to do without."""

    name = "silent"
    modelled_as = "silent"

    def outgoing(self, dst: int, message: Message, data: bytes) -> Iterable[bytes]:
        return ()


@dataclass
class _Targeted(Strategy):
    """A strategy aimed at some nodes: ``targets``, or else a seeded random ``fraction``
    of the others (its *victims*)."""

    targets: list[int] | None = None
    fraction: float = 0.5
    _victims: frozenset[int] = field(default=frozenset(), init=False, repr=False)

    def __post_init__(self) -> None:
        _check_targets(self, self.targets)
        _check_fraction(self, "fraction", self.fraction)

    def bind(self, ctx: StrategyContext) -> None:
        super().bind(ctx)
        self._victims = ctx.subset(self.targets, self.fraction)


@dataclass
class Withhold(_Targeted):
    """Honest, except that it sends nothing at all to a subset of nodes: ``targets``, or
    a seeded random ``fraction`` of the others. The victims must learn its broadcasts
    through the others' echoes and payload fetches."""

    name = "withhold"

    def outgoing(self, dst: int, message: Message, data: bytes) -> Iterable[bytes]:
        return () if dst in self._victims else (data,)


@dataclass
class Equivocate(_Targeted):
    """As an origin, SENDs one payload to some nodes and another, also validly signed,
    to the rest (``targets``, or a seeded random ``fraction`` of the others), and echoes
    and readies the second digest to that rest too, so each side sees a consistent
    origin. The other VECTOR is the negated vector (plus one if it is all zeros); the
    other REPORT is a different valid set of the same size (or one fewer origins when
    it lists everyone). Reliable broadcast lets at most one of the two be delivered,
    and any honest node that sees both signatures holds an equivocation proof."""

    name = "equivocate"
    _other: dict[InstanceId, Send] = field(default_factory=dict, init=False, repr=False)

    def outgoing(self, dst: int, message: Message, data: bytes) -> Iterable[bytes]:
        if dst not in self._victims or message.iid.origin != self.ctx.me:
            return (data,)
        match message:
            case Send():
                return (encode(self._other_send(message)),)
            case Echo():
                other = self._other.get(message.iid)
                if other is not None:
                    other_digest = digest(other.payload)
                    return (encode(Echo(message.iid, other_digest, other.signature)),)
            case Ready():
                other = self._other.get(message.iid)
                if other is not None:
                    return (encode(Ready(message.iid, digest(other.payload))),)
        return (data,)

    def _other_send(self, send: Send) -> Send:
        other = self._other.get(send.iid)
        if other is None:
            ctx = self.ctx
            payload = self._other_payload(send.iid.tag.kind, bytes(send.payload))
            signature = ctx.scheme.sign(ctx.session, send.iid, digest(payload))
            other = Send(send.iid, payload, signature)
            oldest = ctx.current_step() - _EQUIVOCATION_STEPS_KEPT
            for stale in [iid for iid in self._other if iid.tag.step < oldest]:
                del self._other[stale]
            self._other[send.iid] = other
        return other

    def _other_payload(self, kind: int, payload: bytes) -> bytes:
        try:
            if kind == Kind.VECTOR and self.ctx.encoding == "f32":
                vector = decode_array(payload)  # any shape: combined with wrong_length
                other = vector + 1 if not np.any(vector) else -vector
                return encode_array(other.astype(vector.dtype, copy=False))
            if kind == Kind.VECTOR:  # in the run's encoding, so that it decodes
                codec = self.ctx.vector_encoding
                vector = codec.decode(payload)
                other = vector + 1 if not np.any(vector) else -vector
                return codec.encode(other)
            return encode_report(self._other_report(decode_report(payload, self.ctx.n)))
        except CodecError:  # our payload was already mangled (combined strategies)
            return payload + b"\x00"

    def _other_report(self, origins: frozenset[int]) -> list[int]:
        held = sorted(origins)
        missing = sorted(set(range(self.ctx.n)) - origins)
        if missing:
            return sorted([*held[:-1], missing[0]])  # swap the highest for an absent one
        return held[:-1]


@dataclass
class ConflictingEchoes(_Targeted):
    """Before each of its true ECHOs and READYs to a subset of nodes (``targets``, or a
    seeded random ``fraction`` of the others), sends one for a random digest: the
    victims see a second, conflicting vote from it, which quorums of ceil((n+f+1)/2)
    echoes and 2f+1 readies are sized to outvote."""

    name = "conflicting_echoes"

    def outgoing(self, dst: int, message: Message, data: bytes) -> Iterable[bytes]:
        if dst not in self._victims or not isinstance(message, Echo | Ready):
            return (data,)
        fake = self.ctx.rng.bytes(32)
        forged: Message = (
            Echo(message.iid, fake, message.origin_signature)
            if isinstance(message, Echo)
            else Ready(message.iid, fake)
        )
        return (encode(forged), data)


@dataclass
class Flood(Strategy):
    """Honest, plus ``rate`` copies per message on average re-tagged ``ahead`` steps or
    more into the future. Honest nodes must refuse them as FAR_AHEAD faults instead of
    buffering them (DESIGN 4.4: "a message 1000 rounds ahead is a fault, not a buffer")."""

    name = "flood"
    ahead: int = 1000
    rate: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.ahead, bool) or not isinstance(self.ahead, int) or self.ahead < 1:
            raise self.fail("ahead", f"must be a positive integer, got {self.ahead!r}")
        _check_rate(self, "rate", self.rate, FLOOD_RATE_MAX)

    def outgoing(self, dst: int, message: Message, data: bytes) -> Iterable[bytes]:
        out = [data]
        tag = message.iid.tag
        for k in range(_copies(self.ctx.rng, self.rate)):
            future = Tag(tag.step + self.ahead + k, tag.phase, tag.round, tag.kind)
            out.append(encode(replace(message, iid=InstanceId(message.iid.origin, future))))
        return out


@dataclass
class Replay(Strategy):
    """With probability ``rate`` per message received, forwards it verbatim, as its own,
    to a random other node. Signatures bind the origin and session, so a replayed SEND
    convicts the replayer (NOT_ORIGIN) and a replayed vote counts as its own vote."""

    name = "replay"
    rate: float = 0.2

    def __post_init__(self) -> None:
        _check_fraction(self, "rate", self.rate)

    def on_receive(self, src: int, data: bytes | memoryview) -> Iterable[tuple[int, bytes]]:
        rng = self.ctx.rng
        if rng.random() >= self.rate:
            return ()
        others = self.ctx.others
        return ((others[int(rng.integers(len(others)))], bytes(data)),)


@dataclass
class BadSignature(Strategy):
    """Its own SENDs go out, with probability ``rate`` per destination, with one bit of
    the signature flipped. With signatures off (``UnsignedScheme``) there is nothing to
    corrupt and this strategy is honest."""

    name = "bad_signature"
    rate: float = 1.0

    def __post_init__(self) -> None:
        _check_fraction(self, "rate", self.rate)

    def outgoing(self, dst: int, message: Message, data: bytes) -> Iterable[bytes]:
        if not (isinstance(message, Send) and message.iid.origin == self.ctx.me):
            return (data,)
        if not message.signature or self.ctx.rng.random() >= self.rate:
            return (data,)
        signature = bytes([message.signature[0] ^ 1]) + message.signature[1:]
        return (encode(replace(message, signature=signature)),)


@dataclass
class Garbage(Strategy):
    """With probability ``rate`` per message, sends instead either random bytes (up to
    63) or a random truncation of the real message, half the time each: the codec must
    turn both into MALFORMED faults (or, for a truncated payload, a BAD_SIGNATURE)."""

    name = "garbage"
    rate: float = 1.0

    def __post_init__(self) -> None:
        _check_fraction(self, "rate", self.rate)

    def outgoing(self, dst: int, message: Message, data: bytes) -> Iterable[bytes]:
        rng = self.ctx.rng
        if rng.random() >= self.rate:
            return (data,)
        if rng.random() < 0.5:
            return (rng.bytes(int(rng.integers(0, 64))),)
        return (data[: int(rng.integers(0, max(1, len(data))))],)


@dataclass
class Duplicate(Strategy):
    """Sends every message twice: duplicates must be counted once (and as DUPLICATE
    faults), never as two votes."""

    name = "duplicate"

    def outgoing(self, dst: int, message: Message, data: bytes) -> Iterable[bytes]:
        return (data, data)


@dataclass(kw_only=True)
class WrongLength(VectorAttack):
    """Broadcasts its vector with ``extra`` more coordinates (fewer if negative), validly
    signed: every honest node must drop it identically (BAD_VECTOR). Every phase and
    round by default."""

    name = "wrong_length"
    phases: str = "both"
    extra: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.extra, bool) or not isinstance(self.extra, int) or self.extra == 0:
            raise self.fail("extra", f"must be a non-zero integer, got {self.extra!r}")

    def attack(self, step: int, phase: int, round_: int, vector: np.ndarray) -> np.ndarray:
        if self.extra < 0:
            return vector[: max(0, len(vector) + self.extra)].copy()
        return np.concatenate([vector, np.resize(vector, self.extra)])


@dataclass(kw_only=True)
class NanInf(VectorAttack):
    """Broadcasts its vector with a NaN first and an +Inf last coordinate, validly
    signed: every honest node must drop it identically (BAD_VECTOR), never average it.
    Every phase and round by default."""

    name = "nan_inf"
    phases: str = "both"

    def attack(self, step: int, phase: int, round_: int, vector: np.ndarray) -> np.ndarray:
        poisoned = np.array(vector, copy=True)
        poisoned[0] = np.nan
        poisoned[-1] = np.inf
        return poisoned


PROTOCOL_STRATEGIES: tuple[type[Strategy], ...] = (
    Crash,
    Silent,
    Withhold,
    Equivocate,
    ConflictingEchoes,
    Flood,
    Replay,
    BadSignature,
    Garbage,
    Duplicate,
    WrongLength,
    NanInf,
)
