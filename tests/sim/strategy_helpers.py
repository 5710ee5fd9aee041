"""Fakes for strategy unit tests: a context without a node, bound strategies, and a
cluster attacked by one strategy spec."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from protocol.codec import encode
from protocol.core import GradientSchedule, RoundSchedule
from protocol.crypto import Ed25519Scheme, UnsignedScheme, digest
from protocol.messages import InstanceId, Kind, Message, Send, Tag
from sim.strategies import Strategy, StrategyContext, load_strategy
from tests.byzantine import strategy_cluster
from tests.cluster import SESSION, Cluster, RandomDelays, node_seed, public_keys

N, F, ME, DIM = 7, 2, 6, 4
#: the run length attacked clusters announce: a message for a later step is a fault
STEPS_TOTAL = 100
GRADIENT, MODEL = 0, 1


def make_ctx(
    *,
    n: int = N,
    me: int = ME,
    current_step: Callable[[], int] = lambda: 0,
    seed: int = 0,
    honest: Mapping[int, np.ndarray] | None = None,
    byzantine: Iterable[int] = (),
    signed: bool = True,
) -> StrategyContext:
    scheme = Ed25519Scheme(node_seed(me), public_keys(n)) if signed else UnsignedScheme()
    return StrategyContext(
        me=me,
        n=n,
        f=(n - 1) // 3,
        session=SESSION,
        dim=DIM,
        dtype=np.dtype("<f4"),
        scheme=scheme,
        rng=np.random.default_rng(seed),
        current_step=current_step,
        honest_vectors=lambda s, p, r: dict(honest or {}),
        byzantine=frozenset(byzantine),
    )


def bound(spec: Any, **ctx: Any) -> Strategy:
    strategy = load_strategy(spec)
    strategy.bind(make_ctx(**ctx))
    return strategy


def own_send(strategy: Strategy, payload: bytes, kind: int = Kind.VECTOR, step: int = 0) -> Send:
    ctx = strategy.ctx
    iid = InstanceId(ctx.me, Tag(step, GRADIENT, 0, kind))
    return Send(iid, payload, ctx.scheme.sign(ctx.session, iid, digest(payload)))


def vec(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def out(strategy: Strategy, dst: int, message: Message) -> list[bytes]:
    return list(strategy.outgoing(dst, message, encode(message)))


def attacked(
    n: int, f: int, spec: Any, seed: int, rounds: int = 2, encoding: str = "f32"
) -> Cluster:
    """Honest nodes with random vectors, f seeded Byzantine ids running ``spec``, random
    delivery delays, ``rounds`` agreement rounds, a run of :data:`STEPS_TOTAL` steps, vectors
    in ``encoding``: run to quiescence."""
    byzantine = sorted(random.Random(seed).sample(range(n), f))
    cluster = strategy_cluster(
        n,
        f,
        {i: spec for i in byzantine},
        seed=seed,
        adversary=RandomDelays(seed),
        schedule=RoundSchedule(GradientSchedule.CONSTANT, gradient_rounds=rounds),
        steps_total=STEPS_TOTAL,
        encoding=encoding,
    )
    rng = np.random.default_rng(seed)
    cluster.propose(0, 0, {i: rng.standard_normal(4).astype(np.float32) for i in range(n)})
    cluster.run()
    return cluster
