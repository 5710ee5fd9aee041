"""Byzantine behaviours for the test cluster: thin adapters over :mod:`sim.strategies`.

A Byzantine node still runs an honest :class:`~protocol.core.NodeCore` underneath, so it
takes part in the protocol exactly as much as its strategy allows, with its real key.

:class:`StrategyBehaviour` runs any :class:`~sim.strategies.Strategy` on a cluster node.
Plain clusters build cores without a vector filter, so by default it applies the
strategy's vector filter to the node's own VECTOR SENDs on the way out and re-signs them
(the node's core keeps its honest vector: peers may then also see it equivocate).
:func:`strategy_cluster` wires strategies the way the simulator does instead: vector
filter inside the core, outgoing and receive hooks around it, and an omniscient view of
the honest nodes' vectors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import ClassVar

import numpy as np

from protocol.codec import encode
from protocol.core import NodeCore, ProtocolConfig, RoundSchedule
from protocol.crypto import SignatureScheme, digest
from protocol.messages import InstanceId, Kind, Message, Send
from sim.strategies import (
    HonestVectors,
    Strategy,
    StrategyContext,
    StrategySpec,
    load_strategy,
    strategy_rng,
)
from sim.strategies_base import no_honest_vectors
from sim.strategies_learning import Constant
from tests.cluster import Adversary, Behaviour, Cluster

#: steps a rewritten SEND is kept for, so that its retransmissions stay identical
_REWRITES_STEPS_KEPT = 8


class StrategyBehaviour(Behaviour):
    """A cluster node's outgoing traffic and replays, decided by ``strategy``.

    The strategy is bound lazily (the cluster attaches the node after construction),
    with a random stream derived from ``seed`` and the node id.
    """

    def __init__(
        self,
        strategy: Strategy,
        seed: int = 0,
        *,
        rewrite_vectors: bool = True,
        honest_vectors: HonestVectors = no_honest_vectors,
        byzantine: frozenset[int] = frozenset(),
    ) -> None:
        super().__init__()
        self.strategy = strategy
        self.rewrite_vectors = rewrite_vectors
        self._seed = seed
        self._honest_vectors = honest_vectors
        self._byzantine = byzantine
        self._bound = False
        self._rewritten: dict[InstanceId, Send] = {}

    def bound(self) -> Strategy:
        if not self._bound:
            node = self.node
            assert node is not None, "behaviour not attached to a cluster node"
            core = node.core
            self.strategy.bind(
                StrategyContext.from_config(
                    core.config,
                    node.scheme,
                    strategy_rng(self._seed, node.me),
                    lambda: core.current_step,
                    honest_vectors=self._honest_vectors,
                    byzantine=self._byzantine,
                )
            )
            self._bound = True
        return self.strategy

    def vector(self, step: int, phase: int, round_: int, vector: np.ndarray) -> np.ndarray:
        """The core's vector filter, for clusters that install it (strategy_cluster)."""
        return self.bound().vector(step, phase, round_, vector)

    def outgoing(self, dst: int, message: Message, data: bytes) -> Iterable[bytes]:
        strategy = self.bound()
        if self.rewrite_vectors and self._own_vector(message):
            assert isinstance(message, Send)
            rewritten = self._rewrite(message)
            if rewritten is not message:
                message, data = rewritten, encode(rewritten)
        return strategy.outgoing(dst, message, data)

    def on_receive(self, src: int, data: bytes) -> Iterable[tuple[int, bytes]]:
        return self.bound().on_receive(src, data)

    def _own_vector(self, message: Message) -> bool:
        assert self.node is not None
        return (
            isinstance(message, Send)
            and message.iid.origin == self.node.me
            and message.iid.tag.kind == Kind.VECTOR
        )

    def _rewrite(self, send: Send) -> Send:
        """The strategy's vector for this SEND, re-signed; once per instance, so that a
        randomized filter does not make the node equivocate by accident."""
        cached = self._rewritten.get(send.iid)
        if cached is None:
            tag = send.iid.tag
            ctx = self.strategy.ctx
            codec = ctx.vector_encoding  # the core's: its own vector decodes
            honest = np.array(codec.decode(send.payload))
            vector = self.strategy.vector(tag.step, tag.phase, tag.round, honest)
            cached = send
            if vector is not honest:
                payload = codec.encode(vector)
                signature = ctx.scheme.sign(ctx.session, send.iid, digest(payload))
                cached = Send(send.iid, payload, signature)
            oldest = tag.step - _REWRITES_STEPS_KEPT
            for stale in [iid for iid in self._rewritten if iid.tag.step < oldest]:
                del self._rewritten[stale]
            self._rewritten[send.iid] = cached
        return cached


class _Named(StrategyBehaviour):
    """A behaviour that runs one fixed strategy spec (its class name shows in messages)."""

    spec: ClassVar[StrategySpec]

    def __init__(self, seed: int = 0) -> None:
        super().__init__(load_strategy(self.spec), seed)


class Silent(_Named):
    spec = "silent"


class Equivocate(_Named):
    spec = "equivocate"


class ConflictingEchoReady(_Named):
    spec = "conflicting_echoes"


class Garbage(_Named):
    spec = "garbage"


class WrongLength(_Named):
    spec = "wrong_length"


class NonFinite(_Named):
    spec = "nan_inf"


class Duplicate(_Named):
    spec = "duplicate"


class Replay(_Named):
    spec = "replay"


class FarAhead(_Named):
    spec = "flood"


class Withhold(_Named):
    spec = "withhold"


class BadSignature(_Named):
    spec = "bad_signature"


def fixed_value(value: float) -> StrategyBehaviour:
    """Every own vector replaced, validly signed, by ``value`` in every coordinate."""
    return StrategyBehaviour(Constant(value=value, phases="both"))


_BY_NAME: dict[str, type[_Named]] = {
    "silent": Silent,
    "equivocate": Equivocate,
    "conflicting": ConflictingEchoReady,
    "garbage": Garbage,
    "wrong_length": WrongLength,
    "non_finite": NonFinite,
    "duplicate": Duplicate,
    "replay": Replay,
    "far_ahead": FarAhead,
    "withhold": Withhold,
    "bad_signature": BadSignature,
}

BEHAVIOURS = tuple(_BY_NAME)


def behaviour_by_name(name: str, seed: int) -> Behaviour:
    return _BY_NAME[name](seed)


def strategy_cluster(
    n: int,
    f: int,
    strategies: Mapping[int, StrategySpec],
    *,
    seed: int = 0,
    adversary: Adversary | None = None,
    dim: int = 4,
    schedule: RoundSchedule | None = None,
    crypto: bool = True,
    steps_total: int | None = None,
    encoding: str = "f32",
) -> Cluster:
    """A cluster whose Byzantine nodes are wired as the simulator wires them: the vector
    filter inside the core, and an omniscient view of the honest vectors of each round
    (those honest nodes have entered so far), with the coalition revealed."""
    byzantine = frozenset(strategies)
    clusters: list[Cluster] = []

    def honest_vectors(step: int, phase: int, round_: int) -> dict[int, np.ndarray]:
        cluster = clusters[0]
        seen = {i: cluster.nodes[i].rounds.get((step, phase), []) for i in cluster.honest}
        return {i: rounds[round_] for i, rounds in seen.items() if len(rounds) > round_}

    behaviours = {
        i: StrategyBehaviour(
            load_strategy(spec),
            seed,
            rewrite_vectors=False,
            honest_vectors=honest_vectors,
            byzantine=byzantine,
        )
        for i, spec in sorted(strategies.items())
    }

    def core_factory(config: ProtocolConfig, scheme: SignatureScheme) -> NodeCore:
        behaviour = behaviours.get(config.me)
        return NodeCore(config, scheme, None if behaviour is None else behaviour.vector)

    cluster = Cluster(
        n,
        f,
        dim=dim,
        adversary=adversary if adversary is not None else Adversary(seed),
        behaviours=dict(behaviours),
        crypto=crypto,
        schedule=schedule,
        core_factory=core_factory,
        steps_total=steps_total,
        encoding=encoding,
    )
    clusters.append(cluster)
    return cluster
