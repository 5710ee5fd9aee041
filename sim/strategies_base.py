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
from protocol.encoding import VectorEncoding
from protocol.messages import Catchup, Finished, Message, Phase

#: (step, phase, round) -> the honest nodes' vectors of that agreement round seen so far,
#: by node id (the omniscient adversary's view; empty when none is known yet).
HonestVectors = Callable[[int, int, int], Mapping[int, np.ndarray]]

#: step -> the honest nodes' gradients of that step computed on their own batch with every
#: label flipped (what ByzFL's label flipping averages), by node id; empty when unknown.
FlippedGradients = Callable[[int], Mapping[int, np.ndarray]]

#: How long an omniscient (rushing) attacker holds its vector of a round (``wait_for``):
#: until every honest node's vector of the round is known ("all"), until n-2f are (the
#: honest part of any quorum, "quorum"), or not at all ("none": it sends as soon as its own
#: node enters the round, seeing only the honest vectors already there).
WAIT_CHOICES = ("all", "quorum", "none")

#: SeedSequence spawn-key component that separates strategy randomness from every other
#: stream derived from the scenario seed (DESIGN 6: keyed by purpose and ids).
STRATEGY_STREAM_KEY = zlib.crc32(b"jungle/strategy")


def no_honest_vectors(step: int, phase: int, round_: int) -> Mapping[int, np.ndarray]:
    """The view of a host that offers no omniscience."""
    return {}


def no_flipped_gradients(step: int) -> Mapping[int, np.ndarray]:
    """The view of a host that computes no label-flipped honest gradients."""
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
    #: whether the host can hold this node's vector of a round until the honest vectors
    #: are known (a rushing adversary: the simulator can, a real node cannot) and wakes
    #: the node when more become known; without it an attack never waits
    can_wait: bool = False
    #: the honest nodes (those outside ``byzantine`` by default)
    honest: frozenset[int] | None = None
    #: the aggregation rule the honest nodes use, and its pre-aggregators, by name:
    #: attacks that search for the most damaging vector (optimal ALIE, IPM) aim at it
    aggregator: str = "trimmed_mean"
    pre_aggregators: tuple[str, ...] = ()
    flipped_gradients: FlippedGradients = no_flipped_gradients
    #: (step, phase, round) -> how many honest nodes have entered the round or still can
    #: (a waiting host knows; None: every honest node)
    honest_expected: Callable[[int, int, int], int] | None = None
    #: how the run's vectors travel (``[protocol] encoding``): to rewrite a payload
    encoding: str = "f32"

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
        can_wait: bool = False,
        flipped_gradients: FlippedGradients = no_flipped_gradients,
        honest_expected: Callable[[int, int, int], int] | None = None,
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
            can_wait=can_wait,
            aggregator=config.aggregator,
            pre_aggregators=tuple(config.pre_aggregators),
            flipped_gradients=flipped_gradients,
            honest_expected=honest_expected,
            encoding=config.encoding,
        )

    @property
    def vector_encoding(self) -> VectorEncoding:
        """Encodes and decodes this run's vectors as the node's core does."""
        return VectorEncoding(self.encoding, self.dim, self.dtype)

    @property
    def honest_nodes(self) -> frozenset[int]:
        """The honest nodes: ``honest`` if the host said, else all outside ``byzantine``."""
        if self.honest is not None:
            return self.honest
        return frozenset(range(self.n)) - self.byzantine - {self.me}

    def honest_needed(self, wait_for: str, step: int, phase: int, round_: int) -> int:
        """How many honest vectors of a round an attacker waiting ``wait_for`` holds out
        for: those of every honest node that has entered or can still enter the round
        (``honest_expected``), n-2f of them (at least one), or none."""
        if wait_for == "none":
            return 0
        if self.honest_expected is None:
            expected = len(self.honest_nodes)
        else:
            expected = self.honest_expected(step, phase, round_)
        return expected if wait_for == "all" else min(expected, max(1, self.n - 2 * self.f))

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
    #: whether the strategy reads ``ctx.flipped_gradients`` (the host then computes them)
    uses_flipped_gradients: ClassVar[bool] = False
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
    def may_hold_back(self) -> bool:
        """Whether :meth:`vector` may return None (a rushing attack): the host then wakes
        the node when honest vectors become known."""
        return False

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

    def vector(self, step: int, phase: int, round_: int, vector: np.ndarray) -> np.ndarray | None:
        """The vector to broadcast in this round instead of the honest ``vector``; None
        holds it back ("not yet": the host asks again when more honest vectors are known,
        see :attr:`VectorAttack.wait_for`; only when ``ctx.can_wait``)."""
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

    ``wait_for`` (attacks that read the honest vectors, :attr:`reads_honest`): the rushing
    adversary of the asynchronous model. "all" (default) holds the node's vector of a round
    until every honest node's vector of it is known, "quorum" until n-2f are, "none" sends
    at once with whatever is known. Honest nodes never need a Byzantine vector (n-f of them
    are honest), so holding back delays no honest node beyond what asynchrony allows, and
    the host counts only honest nodes that can still enter the round (one that jumped past
    it never will): a hold always ends. Only a host with ``ctx.can_wait`` (the simulator)
    holds; elsewhere the attack sends at once.
    """

    #: whether :meth:`attack` reads ``ctx.honest_vectors`` (and so may wait for them)
    reads_honest: ClassVar[bool] = False

    phases: str = "gradient"
    rounds: str = "all"
    wait_for: str = "all"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.phases not in PHASE_CHOICES:
            raise self.fail(
                "phases", f"must be one of {sorted(PHASE_CHOICES)}, got {self.phases!r}"
            )
        if self.rounds not in ROUND_CHOICES:
            raise self.fail("rounds", f"must be one of {list(ROUND_CHOICES)}, got {self.rounds!r}")
        if self.wait_for not in WAIT_CHOICES:
            raise self.fail(
                "wait_for", f"must be one of {list(WAIT_CHOICES)}, got {self.wait_for!r}"
            )

    def applies(self, phase: int, round_: int) -> bool:
        return phase in PHASE_CHOICES[self.phases] and (self.rounds == "all" or round_ == 0)

    @property
    def rushing(self) -> bool:
        """Whether this attack holds its vector until the honest ones are known."""
        return self.reads_honest and self.wait_for != "none"

    @property
    def may_hold_back(self) -> bool:
        return self.rushing

    def vector(self, step: int, phase: int, round_: int, vector: np.ndarray) -> np.ndarray | None:
        if not self.applies(phase, round_):
            return vector
        ctx = self.ctx
        if self.rushing and ctx.can_wait:
            known = len(ctx.honest_vectors(step, phase, round_))
            if known < ctx.honest_needed(self.wait_for, step, phase, round_):
                return None
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

    @property
    def may_hold_back(self) -> bool:
        return any(part.may_hold_back for part in self.parts)

    @property
    def uses_flipped_gradients(self) -> bool:  # type: ignore[override]
        return any(part.uses_flipped_gradients for part in self.parts)

    def bind(self, ctx: StrategyContext) -> None:
        super().bind(ctx)
        for part, rng in zip(self.parts, ctx.rng.spawn(len(self.parts)), strict=True):
            part.bind(replace(ctx, rng=rng))

    def vector(self, step: int, phase: int, round_: int, vector: np.ndarray) -> np.ndarray | None:
        result: np.ndarray | None = vector
        for part in self.parts:
            result = part.vector(step, phase, round_, vector)
            if result is None:  # a part holds it back: the whole chain waits
                return None
            vector = result
        return result

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
