"""The literature's learning-level attacks under ByzFL 0.0.11's names and defaults.

ByzFL (EPFL DCL, ``byzfl.attacks``) is the field's reference implementation: each attack
there takes the honest vectors of a training step and returns the one Byzantine vector that
every Byzantine worker sends. The classes here compute exactly that, so a jungle run and a
ByzFL benchmark mean the same thing by the same name (``tests/sim/test_literature_attacks.py``
checks each against ByzFL's class on identical inputs):

* ``sign_flipping``: ByzFL ``SignFlipping`` (no parameters);
* ``inner_product_manipulation``: ``InnerProductManipulation``, ``tau`` = 2.0;
* ``a_little_is_enough``: ``ALittleIsEnough``, ``tau`` = 1.5;
* ``optimal_inner_product_manipulation``: ``Optimal_InnerProductManipulation`` and
  ``optimal_a_little_is_enough``: ``Optimal_ALittleIsEnough``, ``evals`` = 20,
  ``start`` = 0.0, ``delta`` = 10.0, ``ratio`` = 0.8 (the aggregator, pre-aggregators and
  f they aim at come from the context);
* ``mimic``: ``Mimic``, ``epsilon`` = 0;
* ``inf``: ``Inf`` (no parameters);
* ``gaussian``: ``Gaussian``, ``mu`` = 0.0, ``sigma`` = 1.0;
* ``label_flipping``: ``LabelFlipping`` (no parameters).

"The honest vectors" are those of the very (step, phase, round) the attacker is in, from
``ctx.honest_vectors``, in node-id order: the omniscient adversary ByzFL assumes. Every
attack that reads them is rushing (:attr:`~sim.strategies_base.VectorAttack.reads_honest`):
in the simulator it holds its vector until they are all known (``wait_for``, default
"all"). Where none is known (a host without omniscience, or ``wait_for = "none"`` and the
attacker first), they fall back to the node's own honest vector, as the jungle variants of
:mod:`sim.strategies_learning` do.

The jungle variants there (``sign_flip``, ``ipm``, ``alie``, ``label_flip``, ...) keep
their own definitions; each docstring says how it differs from the one here.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from protocol import aggregate
from sim.strategies_base import Strategy, StrategyContext, VectorAttack
from sim.strategies_learning import _check_number

#: An aggregation rule as the honest nodes run it: (m, d) rows and f -> one vector.
Rule = Callable[[np.ndarray, int], np.ndarray]


def aggregation_rule(aggregator: str, pre_aggregators: Sequence[str] = ()) -> Rule:
    """The honest nodes' rule: ``aggregator`` after ``pre_aggregators``, by name.

    Uses ``protocol.aggregate.compose`` where it exists; without it only a bare aggregator
    can be named (``get_aggregator``), and pre-aggregators raise ValueError."""
    compose = getattr(aggregate, "compose", None)
    if compose is not None:
        rule: Rule = compose(aggregator, tuple(pre_aggregators))
        return rule
    if pre_aggregators:
        raise ValueError(f"pre-aggregators {list(pre_aggregators)} need protocol.aggregate.compose")
    return aggregate.get_aggregator(aggregator)


def byzantine_copies(ctx: StrategyContext) -> int:
    """How many Byzantine vectors the optimal attacks add to the honest ones (ByzFL's
    ``f`` of the attack: every Byzantine worker sends the same vector): the coalition's
    size when the host reveals it (``ctx.byzantine``, with this node), else ``ctx.f``;
    at least one (this node)."""
    if ctx.byzantine:
        return len(ctx.byzantine | {ctx.me})
    return max(1, ctx.f)


def alie_vector(rows: np.ndarray, tau: float) -> np.ndarray:
    """ByzFL's ALIE: ``mean + tau * std`` coordinate-wise, std with ddof = 1 (the sample
    standard deviation); with a single row std is taken as 0 (ByzFL would give NaN)."""
    mean: np.ndarray = rows.mean(axis=0)
    if len(rows) < 2:
        return mean
    std: np.ndarray = np.sqrt(rows.var(axis=0, ddof=1))
    result: np.ndarray = mean + std * tau
    return result


def ipm_vector(rows: np.ndarray, tau: float) -> np.ndarray:
    """ByzFL's IPM: ``-tau * mean`` of the rows."""
    result: np.ndarray = rows.mean(axis=0) * -tau
    return result


def line_search(
    objective: Callable[[float], float], evals: int, start: float, delta: float, ratio: float
) -> float:
    """ByzFL's search for the attack factor (``Optimal_*._expansion_phase`` and
    ``_contraction_phase``), step for step: from ``start``, step by ``delta`` and double
    it while the objective strictly grows; at the first step that does not, shrink the
    step by ``ratio`` and keep trying ``best + step`` (keeping it when strictly better,
    shrinking the step each time) until ``evals`` evaluations are spent in all."""
    best_x = start
    best_y = objective(best_x)
    remaining = evals - 1
    while remaining > 0:  # expansion
        prop_x = best_x + delta
        prop_y = objective(prop_x)
        remaining -= 1
        if prop_y > best_y:
            best_x, best_y = prop_x, prop_y
            delta *= 2
        else:
            delta *= ratio
            break
    while remaining > 0:  # contraction
        prop_x = best_x + delta
        prop_y = objective(prop_x)
        remaining -= 1
        if prop_y > best_y:
            best_x, best_y = prop_x, prop_y
        delta *= ratio
    return best_x


def _check_int(strategy: Strategy, name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
        return
    raise strategy.fail(name, f"must be an integer >= {minimum}, got {value!r}")


@dataclass(kw_only=True)
class SignFlipping(VectorAttack):
    """Sends minus the mean of the honest vectors: ``-(1/n) sum_i x_i``.

    Allen-Zhu, Ebrahimian, Li & Alistarh, "Byzantine-resilient non-convex stochastic
    gradient descent", ICLR 2021. ByzFL: ``SignFlipping`` (no parameters). Unlike jungle's
    ``sign_flip`` (which negates the attacker's own vector) it reads the honest ones."""

    name = "sign_flipping"
    reads_honest = True

    def attack(self, step: int, phase: int, round_: int, vector: np.ndarray) -> np.ndarray:
        rows = self.reference(step, phase, round_, vector)
        return np.asarray(-rows.mean(axis=0), dtype=vector.dtype)


@dataclass(kw_only=True)
class InnerProductManipulation(VectorAttack):
    """Sends ``-tau`` times the mean of the honest vectors (IPM).

    Xie, Koyejo & Gupta, "Fall of empires: breaking Byzantine-tolerant SGD by inner
    product manipulation", UAI 2019. ByzFL: ``InnerProductManipulation(tau=2.0)``; ``tau``
    defaults to ByzFL's 2.0 (jungle's ``ipm`` is the same rule with ``epsilon`` = 0.1)."""

    name = "inner_product_manipulation"
    reads_honest = True
    tau: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_number(self, "tau", self.tau)

    def attack(self, step: int, phase: int, round_: int, vector: np.ndarray) -> np.ndarray:
        rows = self.reference(step, phase, round_, vector)
        return np.asarray(ipm_vector(rows, self.tau), dtype=vector.dtype)


@dataclass(kw_only=True)
class ALittleIsEnough(VectorAttack):
    """Sends ``mean + tau * std`` of the honest vectors, coordinate-wise (ALIE).

    Baruch, Baruch & Goldberg, "A little is enough: circumventing defenses for distributed
    learning", NeurIPS 2019. ByzFL: ``ALittleIsEnough(tau=1.5)``; ``tau`` defaults to
    ByzFL's 1.5 and std is ByzFL's, the sample standard deviation (ddof = 1). With one
    honest vector (or none known: the node's own) std is 0 and it sends that vector. Jungle's
    ``alie`` differs: ``mean - z * std`` with the paper's z and the population std."""

    name = "a_little_is_enough"
    reads_honest = True
    tau: float = 1.5

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_number(self, "tau", self.tau)

    def attack(self, step: int, phase: int, round_: int, vector: np.ndarray) -> np.ndarray:
        rows = self.reference(step, phase, round_, vector)
        return np.asarray(alie_vector(rows, self.tau), dtype=vector.dtype)


@dataclass(kw_only=True)
class _OptimalAttack(VectorAttack):
    """ByzFL's optimised attack factor: the tau whose vector, sent by every Byzantine node,
    moves the honest nodes' aggregate furthest from the honest mean.

    The objective, as ByzFL's ``_evaluate``: the L2 norm of
    ``rule(honest + [v(tau)] * copies, f) - mean(honest)``, where ``rule`` is the honest
    nodes' aggregator after their pre-aggregators (``ctx.aggregator``,
    ``ctx.pre_aggregators``), ``f`` the protocol's (ByzFL's declared f) and ``copies``
    :func:`byzantine_copies` (ByzFL's attack ``f``). The search is :func:`line_search` with
    ByzFL's parameters and defaults: ``evals`` = 20, ``start`` = 0.0, ``delta`` = 10.0,
    ``ratio`` = 0.8. A candidate the rule cannot aggregate (too few honest vectors known
    for its f) scores -inf, so with none aggregable it sends the ``start`` vector.
    Computed in float64 from the (float32) honest vectors. A rule that takes a reference
    (centered clipping, MoNNA: in the agreement each honest node passes its own vector) is
    evaluated as the lowest-id honest node runs it, with the first honest vector: ByzFL's
    MoNNA (``idx`` = 0) exactly; ByzFL's centered clipping instead starts from its own
    previous output (state its copy of the aggregator keeps), which no context has.
    """

    reads_honest = True
    evals: int = 20
    start: float = 0.0
    delta: float = 10.0
    ratio: float = 0.8

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_int(self, "evals", self.evals, minimum=1)
        _check_number(self, "start", self.start)
        _check_number(self, "delta", self.delta)
        if self.delta == 0:
            raise self.fail("delta", "must be non-zero")
        _check_number(self, "ratio", self.ratio)
        if not 0.5 < self.ratio < 1:
            raise self.fail("ratio", f"must be in (0.5, 1), got {self.ratio!r}")

    def best_tau(self, rows: np.ndarray) -> float:
        """The attack factor ByzFL's search settles on for these honest rows."""
        ctx = self.ctx
        rule = aggregation_rule(ctx.aggregator, ctx.pre_aggregators)
        taker = getattr(aggregate, "reference_taker", lambda rule: None)(rule)
        if taker is not None:
            rule = functools.partial(taker, reference=rows[0])
        copies = byzantine_copies(ctx)
        honest_mean = rows.mean(axis=0)
        base = self.base

        def damage(tau: float) -> float:
            byzantine = np.broadcast_to(base(rows, tau), (copies, rows.shape[1]))
            try:
                aggregated = rule(np.concatenate((rows, byzantine)), ctx.f)
            except ValueError:
                return -math.inf
            return float(np.linalg.norm(aggregated - honest_mean))

        return line_search(damage, self.evals, self.start, self.delta, self.ratio)

    def attack(self, step: int, phase: int, round_: int, vector: np.ndarray) -> np.ndarray:
        rows = self.reference(step, phase, round_, vector)
        ctx = self.ctx
        # Every attacker of a coalition searches the same rows for the same rule: search
        # once (the memo is keyed by everything the search reads, so a hit changes nothing)
        key = (
            type(self),
            self.evals,
            self.start,
            self.delta,
            self.ratio,
            ctx.aggregator,
            ctx.pre_aggregators,
            ctx.f,
            byzantine_copies(ctx),
            rows.shape,
            hashlib.blake2b(np.ascontiguousarray(rows).data, digest_size=16).digest(),
        )
        tau = _SEARCHED.get(key)
        if tau is None:
            tau = self.best_tau(rows)
            if len(_SEARCHED) >= _SEARCHED_MAX:
                del _SEARCHED[next(iter(_SEARCHED))]
            _SEARCHED[key] = tau
        return np.asarray(self.base(rows, tau), dtype=vector.dtype)

    def base(self, rows: np.ndarray, tau: float) -> np.ndarray:
        """The attack whose factor is searched: (honest rows, tau) -> vector."""
        raise NotImplementedError


#: the factors the optimal attacks found lately, by everything their search reads
_SEARCHED: dict[tuple[object, ...], float] = {}
_SEARCHED_MAX = 16


@dataclass(kw_only=True)
class OptimalInnerProductManipulation(_OptimalAttack):
    """IPM (``-tau * mean`` of the honest vectors) with the tau that most damages the
    honest nodes' aggregator, found by ByzFL's line search (see :class:`_OptimalAttack`:
    ``evals`` = 20, ``start`` = 0.0, ``delta`` = 10.0, ``ratio`` = 0.8).

    Xie, Koyejo & Gupta, UAI 2019 (IPM); the optimisation is ByzFL's, used in Allouah et
    al., "Fixing by mixing", AISTATS 2023. ByzFL: ``Optimal_InnerProductManipulation``
    (its ``agg``, ``pre_agg_list`` and ``f`` come from the context here)."""

    name = "optimal_inner_product_manipulation"

    def base(self, rows: np.ndarray, tau: float) -> np.ndarray:
        return ipm_vector(rows, tau)


@dataclass(kw_only=True)
class OptimalALittleIsEnough(_OptimalAttack):
    """ALIE (``mean + tau * std``, ddof = 1) with the tau that most damages the honest
    nodes' aggregator, found by ByzFL's line search (see :class:`_OptimalAttack`:
    ``evals`` = 20, ``start`` = 0.0, ``delta`` = 10.0, ``ratio`` = 0.8).

    Baruch, Baruch & Goldberg, NeurIPS 2019 (ALIE); the optimisation is ByzFL's, used in
    Allouah et al., "Fixing by mixing", AISTATS 2023. ByzFL: ``Optimal_ALittleIsEnough``
    (its ``agg``, ``pre_agg_list`` and ``f`` come from the context here)."""

    name = "optimal_a_little_is_enough"

    def base(self, rows: np.ndarray, tau: float) -> np.ndarray:
        return alie_vector(rows, tau)


@dataclass(kw_only=True)
class Mimic(VectorAttack):
    """Copies one honest node's vector of this round: with heterogeneous data it
    over-weights that node's data, and it cannot be told apart from an honest vector.

    Karimireddy, He & Jaggi, "Byzantine-robust learning on heterogeneous datasets via
    bucketing", ICLR 2022. ByzFL: ``Mimic(epsilon=0)``, which returns honest vector number
    ``epsilon``: here the honest node of rank ``epsilon`` in id order (``ctx.honest_nodes``),
    so the default copies the lowest honest id. ``target`` (jungle's, default None) names
    the node id to copy instead. Until the copied vector is known it sends its own honest
    vector."""

    name = "mimic"
    reads_honest = True
    epsilon: int = 0
    target: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_int(self, "epsilon", self.epsilon, minimum=0)
        if self.target is not None:
            _check_int(self, "target", self.target, minimum=0)

    def bind(self, ctx: StrategyContext) -> None:
        if self.target is None and self.epsilon >= len(ctx.honest_nodes):
            raise self.fail(
                "epsilon",
                f"must be below the {len(ctx.honest_nodes)} honest nodes, got {self.epsilon}",
            )
        super().bind(ctx)

    def copied(self) -> int:
        """The node whose vector this attack copies."""
        if self.target is not None:
            return self.target
        return sorted(self.ctx.honest_nodes)[self.epsilon]

    def attack(self, step: int, phase: int, round_: int, vector: np.ndarray) -> np.ndarray:
        copied = self.ctx.honest_vectors(step, phase, round_).get(self.copied())
        return vector if copied is None else np.array(copied, dtype=vector.dtype)


@dataclass(kw_only=True)
class Inf(VectorAttack):
    """Sends +inf in every coordinate.

    ByzFL: ``Inf`` (no parameters), the extreme vector that breaks any rule that averages
    it. In jungle it breaks nothing: every receiver checks that a delivered vector is
    finite and rejects this one as a ``BAD_VECTOR`` fault, so the node behaves like a
    silent node (its vector is never aggregated) that is also charged a fault (accused)."""

    name = "inf"

    def attack(self, step: int, phase: int, round_: int, vector: np.ndarray) -> np.ndarray:
        return np.full_like(vector, np.inf)


@dataclass(kw_only=True)
class Gaussian(VectorAttack):
    """Sends pure noise: each coordinate drawn from N(mu, sigma^2), independently of any
    honest vector (Blanchard et al., "Machine learning with adversaries", NeurIPS 2017).

    ByzFL: ``Gaussian(mu=0.0, sigma=1.0)``, the defaults here too. ``additive = true`` is
    jungle's variant: the noise is added to the node's own honest vector instead."""

    name = "gaussian"
    mu: float = 0.0
    sigma: float = 1.0
    additive: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_number(self, "mu", self.mu)
        _check_number(self, "sigma", self.sigma)
        if self.sigma < 0:
            raise self.fail("sigma", f"must be non-negative, got {self.sigma!r}")
        if not isinstance(self.additive, bool):
            raise self.fail("additive", f"must be true or false, got {self.additive!r}")

    def attack(self, step: int, phase: int, round_: int, vector: np.ndarray) -> np.ndarray:
        noise = self.ctx.rng.normal(self.mu, self.sigma, size=vector.shape)
        base = vector.astype(np.float64) if self.additive else 0.0
        return (base + noise).astype(vector.dtype)


@dataclass(kw_only=True)
class LabelFlipping(VectorAttack):
    """Sends the mean of the honest nodes' gradients of this step computed with every
    label y flipped to num_classes - 1 - y, on their own mini-batch at the current model.

    ByzFL: ``LabelFlipping`` (no parameters): its honest clients compute, on the same
    batch as their true gradient, the gradient with flipped labels (no momentum), and the
    attack averages them (``fed_framework/client.py`` ``compute_gradients``,
    ``benchmark/train.py``); the host provides them through ``ctx.flipped_gradients``
    (:meth:`node.trainer.Trainer.flipped_gradient`). Where it provides none (a host that
    does not compute them), the node sends its own honest vector. Gradient phase only; in
    every round of it the same mean. Jungle's ``label_flip`` differs: the node trains on
    its own flipped data and follows the protocol with the result."""

    name = "label_flipping"
    #: rushing: an honest node's flipped gradient is known once its vector is
    reads_honest = True
    uses_flipped_gradients = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.phases != "gradient":
            raise self.fail(
                "phases", f"must be 'gradient' (it sends gradients), got {self.phases!r}"
            )

    def attack(self, step: int, phase: int, round_: int, vector: np.ndarray) -> np.ndarray:
        flipped = self.ctx.flipped_gradients(step)
        if not flipped:
            return vector
        rows = np.stack([np.asarray(flipped[i], dtype=np.float64) for i in sorted(flipped)])
        return np.asarray(rows.mean(axis=0), dtype=vector.dtype)


LITERATURE_STRATEGIES: tuple[type[Strategy], ...] = (
    SignFlipping,
    InnerProductManipulation,
    ALittleIsEnough,
    OptimalInnerProductManipulation,
    OptimalALittleIsEnough,
    Mimic,
    Inf,
    Gaussian,
    LabelFlipping,
)
