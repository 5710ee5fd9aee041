"""What a Byzantine strategy is, what it may see, and how several combine.

A Byzantine node in the simulator is an ordinary node (a real
:class:`~protocol.core.NodeCore` with its real key) plus one :class:`Strategy` that bends
it at five hook points. The host (the simulation engine, or the pure test cluster)
wires them:

* ``NodeCore(config, scheme, vector_filter=strategy.vector)``: learning-level attacks
  rewrite the node's vector when it enters each agreement round, *before* it is signed
  and broadcast, so the node's own core stays consistent with what it sent and a lying
  node is not also (mis)reported as equivocating;
* ``RunnerHooks(outgoing_filter=strategy.outgoing)``: protocol-level attacks rewrite
  each outgoing message, per destination, into zero or more byte strings;
* ``strategy.on_receive(src, data)`` after each message the node handles: extra
  ``(dst, bytes)`` to send (replays);
* ``strategy.crashed(step)``: the host stops the node for good once it says so;
* ``strategy.label_map(num_classes)``: the trainer relabels the node's own data (the
  host may ask before :meth:`Strategy.bind`, while it builds the trainer).

The base class is honest at every hook, so a custom strategy is a short subclass that
overrides one or two of them (see ``examples/strategy_double_agent.py``). Strategies
draw randomness only from ``ctx.rng``, which the host seeds per (scenario seed, node):
same seed, same attack, message for message.

This module imports only numpy and ``protocol/``: the pure test cluster uses it too.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from protocol.codec import CodecError, decode
from protocol.core import ProtocolConfig
from protocol.crypto import SignatureScheme
from protocol.messages import Catchup, Finished, Message, Phase

#: (step, phase, round) -> the honest nodes' vectors of that agreement round seen so far,
#: by node id (the omniscient adversary's view; empty when none is known yet).
HonestVectors = Callable[[int, int, int], Mapping[int, np.ndarray]]

#: SeedSequence spawn-key component that separates strategy randomness from every other
#: stream derived from the scenario seed (DESIGN 6: keyed by purpose and ids).
STRATEGY_STREAM_KEY = zlib.crc32(b"jungle/strategy")


def no_honest_vectors(step: int, phase: int, round_: int) -> Mapping[int, np.ndarray]:
    """The view of a host that offers no omniscience."""
    return {}


def strategy_rng(seed: int, node: int) -> np.random.Generator:
    """The random stream of node ``node``'s strategy in the scenario seeded ``seed``."""
    return np.random.default_rng(
        np.random.SeedSequence(seed, spawn_key=(STRATEGY_STREAM_KEY, node))
    )


@dataclass(frozen=True, slots=True)
class StrategyContext:
    """Everything a strategy may know about the node it controls; built by the host."""

    me: int
    n: int
    f: int
    session: bytes
    dim: int
    dtype: np.dtype[np.floating]
    #: the node's own signing scheme: to sign equivocations and re-sign payloads
    scheme: SignatureScheme
    #: the strategy's only source of randomness, seeded by the host
    rng: np.random.Generator
    #: the step the node's core is at (its acceptance window)
    current_step: Callable[[], int]
    honest_vectors: HonestVectors = no_honest_vectors
    #: the Byzantine coalition, when the host reveals it (omniscient strategies)
    byzantine: frozenset[int] = frozenset()
    num_classes: int | None = None

    @classmethod
    def from_config(
        cls,
        config: ProtocolConfig,
        scheme: SignatureScheme,
        rng: np.random.Generator,
        current_step: Callable[[], int],
        *,
        honest_vectors: HonestVectors = no_honest_vectors,
        byzantine: Iterable[int] = (),
        num_classes: int | None = None,
    ) -> StrategyContext:
        return cls(
            me=config.me,
            n=config.n,
            f=config.f,
            session=config.session,
            dim=config.dim,
            dtype=np.dtype(config.dtype),
            scheme=scheme,
            rng=rng,
            current_step=current_step,
            honest_vectors=honest_vectors,
            byzantine=frozenset(byzantine),
            num_classes=num_classes,
        )

    @property
    def others(self) -> list[int]:
        """Every node but this one, in id order."""
        return [i for i in range(self.n) if i != self.me]

    def subset(self, targets: Sequence[int] | None, fraction: float) -> frozenset[int]:
        """``targets`` if given, else a seeded random ``fraction`` of the other nodes."""
        if targets is not None:
            return frozenset(int(t) for t in targets)
        others = self.others
        count = round(fraction * len(others))
        return frozenset(int(i) for i in self.rng.choice(others, size=count, replace=False))


class Strategy:
    """A Byzantine behaviour. This base class is honest at every hook; override some.

    Subclasses are usually dataclasses whose fields are the strategy's parameters (so
    :func:`sim.strategies.load_strategy` can name a bad one); :meth:`__post_init__`
    checks them and raises ``ValueError`` naming the parameter.
    """

    name: ClassVar[str] = "honest"
    #: how the broadcast fidelity (sim/broadcast_model.py) runs a strategy that works on
    #: messages: "silent" (it never broadcasts or votes), or None: it cannot run there
    modelled_as: ClassVar[str | None] = None
    _ctx: StrategyContext | None = None

    @property
    def acts_on_messages(self) -> bool:
        """Whether the strategy rewrites, withholds or adds protocol messages (its
        :meth:`outgoing` or :meth:`on_receive` is its own) in a way the broadcast fidelity
        cannot model; learning-level attacks, crashes and silence it can."""
        cls = type(self)
        own = cls.outgoing is not Strategy.outgoing or cls.on_receive is not Strategy.on_receive
        return own and self.modelled_as is None and not self.crashes

    @property
    def crashes(self) -> bool:
        """Whether the strategy is a crash-stop (the host stops the node at some step)."""
        return type(self).crashed is not Strategy.crashed

    @property
    def silent(self) -> bool:
        """Whether the node never sends anything (it takes no part in any quorum)."""
        return self.modelled_as == "silent"

    def __post_init__(self) -> None:
        """Check parameters (dataclass subclasses get this called on construction)."""

    @property
    def ctx(self) -> StrategyContext:
        if self._ctx is None:
            raise RuntimeError(f"strategy {self.name!r} used before bind()")
        return self._ctx

    def bind(self, ctx: StrategyContext) -> None:
        """Attach to one node; called once by the host before the node starts."""
        self._ctx = ctx

    def vector(self, step: int, phase: int, round_: int, vector: np.ndarray) -> np.ndarray:
        """The vector to broadcast in this round instead of the honest ``vector``."""
        return vector

    def outgoing(self, dst: int, message: Message, data: bytes) -> Iterable[bytes]:
        """The bytes to send to ``dst`` instead of ``message`` (encoded as ``data``)."""
        return (data,)

    def on_receive(self, src: int, data: bytes | memoryview) -> Iterable[tuple[int, bytes]]:
        """Extra ``(dst, bytes)`` to send after receiving ``data`` from ``src``."""
        return ()

    def crashed(self, step: int) -> bool:
        """True once the node must stop for good (the host stops it at ``step``)."""
        return False

    def label_map(self, num_classes: int) -> np.ndarray | None:
        """``new_label = map[label]`` for the node's own training data; None keeps labels.
        May be called before :meth:`bind`: it must not need the context."""
        return None

    def fail(self, parameter: str, problem: str) -> ValueError:
        """The error for a bad parameter, naming the strategy and the parameter."""
        return ValueError(f"strategy {self.name!r}: parameter {parameter!r} {problem}")


PHASE_CHOICES = {
    "gradient": (Phase.GRADIENT,),
    "model": (Phase.MODEL,),
    "both": (Phase.GRADIENT, Phase.MODEL),
}
ROUND_CHOICES = ("all", "first")


@dataclass(kw_only=True)
class VectorAttack(Strategy):
    """A learning-level attack: rewrites the node's vector in the chosen phases/rounds.

    ``phases``: "gradient" (default), "model" or "both"; ``rounds``: "all" (default) or
    "first" (round 0 of each agreement only). Subclasses implement :meth:`attack`.
    """

    phases: str = "gradient"
    rounds: str = "all"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.phases not in PHASE_CHOICES:
            raise self.fail(
                "phases", f"must be one of {sorted(PHASE_CHOICES)}, got {self.phases!r}"
            )
        if self.rounds not in ROUND_CHOICES:
            raise self.fail("rounds", f"must be one of {list(ROUND_CHOICES)}, got {self.rounds!r}")

    def applies(self, phase: int, round_: int) -> bool:
        return phase in PHASE_CHOICES[self.phases] and (self.rounds == "all" or round_ == 0)

    def vector(self, step: int, phase: int, round_: int, vector: np.ndarray) -> np.ndarray:
        if not self.applies(phase, round_):
            return vector
        return self.attack(step, phase, round_, vector)

    def attack(self, step: int, phase: int, round_: int, vector: np.ndarray) -> np.ndarray:
        """The poisoned vector (same dtype as ``vector``)."""
        raise NotImplementedError

    def reference(
        self, step: int, phase: int, round_: int, own: np.ndarray, omniscient: bool = True
    ) -> np.ndarray:
        """The vectors an attack estimates honest statistics from, stacked as float64 rows:
        the honest vectors of this very round when ``omniscient`` and any are known yet,
        else the node's own honest vector alone."""
        honest = self.ctx.honest_vectors(step, phase, round_) if omniscient else {}
        rows = [honest[i] for i in sorted(honest)] or [own]
        return np.stack([np.asarray(row, dtype=np.float64) for row in rows])


class Combined(Strategy):
    """Several strategies at once, applied in order.

    Vector filters compose (the second sees the first's output); outgoing filters
    compose per message (every byte string one emits goes through the next, re-decoded;
    one that no longer decodes, such as garbage, passes the rest unchanged); replays
    add up; the node crashes when any part says so; label maps compose. Each part gets
    its own random stream spawned from the node's, so adding a part does not change
    what the others draw.
    """

    name = "combined"

    def __init__(self, parts: Sequence[Strategy]) -> None:
        self.parts = tuple(parts)

    def __repr__(self) -> str:
        return f"Combined({list(self.parts)!r})"

    @property
    def acts_on_messages(self) -> bool:
        return any(part.acts_on_messages for part in self.parts)

    @property
    def crashes(self) -> bool:
        return any(part.crashes for part in self.parts)

    @property
    def silent(self) -> bool:
        return any(part.silent for part in self.parts)

    def bind(self, ctx: StrategyContext) -> None:
        super().bind(ctx)
        for part, rng in zip(self.parts, ctx.rng.spawn(len(self.parts)), strict=True):
            part.bind(replace(ctx, rng=rng))

    def vector(self, step: int, phase: int, round_: int, vector: np.ndarray) -> np.ndarray:
        for part in self.parts:
            vector = part.vector(step, phase, round_, vector)
        return vector

    def outgoing(self, dst: int, message: Message, data: bytes) -> Iterable[bytes]:
        items: list[tuple[Message | None, bytes]] = [(message, data)]
        for part in self.parts:
            rewritten: list[tuple[Message | None, bytes]] = []
            for msg, raw in items:
                if msg is None:
                    rewritten.append((None, raw))
                    continue
                for out in part.outgoing(dst, msg, raw):
                    rewritten.append((msg if out is raw else _decode_or_none(out), out))
            items = rewritten
        return [raw for _, raw in items]

    def on_receive(self, src: int, data: bytes | memoryview) -> Iterable[tuple[int, bytes]]:
        return [extra for part in self.parts for extra in part.on_receive(src, data)]

    def crashed(self, step: int) -> bool:
        return any(part.crashed(step) for part in self.parts)

    def label_map(self, num_classes: int) -> np.ndarray | None:
        mapping: np.ndarray | None = None
        for part in self.parts:
            step_map = part.label_map(num_classes)
            if step_map is not None:
                mapping = step_map if mapping is None else step_map[mapping]
        return mapping


def _decode_or_none(data: bytes) -> Message | None:
    """The broadcast message ``data`` encodes; None for garbage or a control message."""
    try:
        message = decode(data)
    except CodecError:
        return None
    return None if isinstance(message, Catchup | Finished) else message
