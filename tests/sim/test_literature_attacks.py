"""The literature's attacks (sim/strategies_literature.py) against ByzFL 0.0.11's classes on
identical inputs, their rushing (they wait for the honest vectors), and in a cluster."""

from __future__ import annotations

import dataclasses
import importlib
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from protocol import aggregate
from sim.strategies import STRATEGIES, StrategyContext, StrategySpecError, load_strategy
from sim.strategies_base import Strategy, VectorAttack
from sim.strategies_literature import LITERATURE_STRATEGIES, aggregation_rule
from tests.byzfl_reference import byzfl_aggregators, byzfl_attacks
from tests.sim.strategy_helpers import attacked, make_ctx

#: (n, f, Byzantine nodes, dim): the Byzantine count is ByzFL's attack f, f the rule's
SHAPES = [(4, 1, 1, 3), (7, 2, 2, 4), (10, 3, 2, 16), (13, 4, 4, 7), (22, 7, 5, 50)]
SEEDS = range(4)
CASES = [(shape, seed) for shape in SHAPES for seed in SEEDS]
RTOL = 1e-5


def case_id(case: Any) -> str:
    (n, f, b, dim), seed = case
    return f"n{n}-f{f}-b{b}-d{dim}-seed{seed}"


@dataclasses.dataclass
class Case:
    """Seeded honest vectors (float32, each node with its own mean: heterogeneous data) and
    a context whose coalition is the rest, this node among it."""

    n: int
    f: int
    seed: int
    honest: dict[int, np.ndarray]
    byzantine: list[int]
    own: np.ndarray

    @property
    def rows(self) -> np.ndarray:
        """The honest vectors in id order, float64: ByzFL's input (what jungle computes in)."""
        return np.stack([self.honest[i].astype(np.float64) for i in sorted(self.honest)])

    @property
    def where(self) -> str:
        return f"(n={self.n}, f={self.f}, byzantine={self.byzantine}, seed={self.seed})"

    def ctx(self, **changes: Any) -> StrategyContext:
        base = make_ctx(
            n=self.n,
            me=self.byzantine[-1],
            seed=self.seed,
            honest=self.honest,
            byzantine=self.byzantine,
            signed=False,
        )
        fields: dict[str, Any] = {
            "f": self.f,
            "dim": len(self.own),
            "honest": frozenset(self.honest),
        }
        return dataclasses.replace(base, **(fields | changes))

    def run(self, spec: Any, **changes: Any) -> np.ndarray:
        strategy = load_strategy(spec)
        strategy.bind(self.ctx(**changes))
        sent = strategy.vector(0, 0, 0, self.own)
        assert sent is not None and sent.dtype == np.float32, self.where
        return sent


def make_case(shape: tuple[int, int, int, int], seed: int) -> Case:
    n, f, b, dim = shape
    rng = np.random.default_rng(seed)
    byzantine = sorted(random.Random(seed).sample(range(n), b))
    centre = rng.normal(size=dim)
    honest = {
        i: (centre + rng.normal(scale=0.5, size=dim) + rng.normal(size=dim)).astype(np.float32)
        for i in range(n)
        if i not in byzantine
    }
    return Case(n, f, seed, honest, byzantine, rng.normal(size=dim).astype(np.float32))


def check(sent: np.ndarray, expected: Any, case: Case) -> None:
    np.testing.assert_allclose(
        sent, np.asarray(expected, dtype=np.float64), rtol=RTOL, atol=1e-6, err_msg=case.where
    )


# ------------------------------------------------------------------ against ByzFL's classes


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_plain_attacks_match_byzfl(case: Any) -> None:
    c = make_case(*case)
    attacks = byzfl_attacks()
    check(c.run("sign_flipping"), attacks.SignFlipping()(c.rows), c)
    check(c.run("inner_product_manipulation"), attacks.InnerProductManipulation()(c.rows), c)
    check(
        c.run({"name": "inner_product_manipulation", "tau": 0.3}),
        attacks.InnerProductManipulation(tau=0.3)(c.rows),
        c,
    )
    check(c.run("a_little_is_enough"), attacks.ALittleIsEnough()(c.rows), c)
    check(
        c.run({"name": "a_little_is_enough", "tau": -2.5}),
        attacks.ALittleIsEnough(tau=-2.5)(c.rows),
        c,
    )
    listed = [c.rows[k] for k in range(len(c.rows))]
    for epsilon in (0, len(listed) - 1):
        check(c.run({"name": "mimic", "epsilon": epsilon}), attacks.Mimic(epsilon)(listed), c)
    inf = c.run("inf")
    assert np.isposinf(inf).all() and np.isposinf(attacks.Inf()(c.rows)).all(), c.where


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("aggregator", ["trimmed_mean", "median"])
@pytest.mark.parametrize(
    ("name", "byzfl_class"),
    [
        ("optimal_a_little_is_enough", "Optimal_ALittleIsEnough"),
        ("optimal_inner_product_manipulation", "Optimal_InnerProductManipulation"),
    ],
)
def test_optimal_attacks_match_byzfl(
    case: Any, aggregator: str, name: str, byzfl_class: str
) -> None:
    c = make_case(*case)
    aggregators = byzfl_aggregators()
    rule = aggregators.TrMean(f=c.f) if aggregator == "trimmed_mean" else aggregators.Median()
    reference = getattr(byzfl_attacks(), byzfl_class)(agg=rule, pre_agg_list=[], f=len(c.byzantine))
    check(c.run(name, aggregator=aggregator), reference(c.rows), c)
    # ByzFL's other search parameters mean the same (smaller steps: interior optima)
    for params in (
        {"evals": 7, "start": -1.0, "delta": 3.0, "ratio": 0.6},
        {"evals": 30, "start": 0.0, "delta": 0.25, "ratio": 0.9},
    ):
        reference = getattr(byzfl_attacks(), byzfl_class)(
            agg=rule, pre_agg_list=[], f=len(c.byzantine), **params
        )
        check(c.run({"name": name, **params}, aggregator=aggregator), reference(c.rows), c)


#: jungle's vector rules and ByzFL's same rule, built for f (where protocol has them)
MORE_RULES = {
    "mean": lambda agg, f: agg.Average(),
    "krum": lambda agg, f: agg.Krum(f=f),
    "multi_krum": lambda agg, f: agg.MultiKrum(f=f),
    "geometric_median": lambda agg, f: agg.GeometricMedian(),
    "monna": lambda agg, f: agg.MoNNA(f=f),  # its trusted row idx = 0: the first honest
}


@pytest.mark.parametrize("case", CASES[::2], ids=case_id)
@pytest.mark.parametrize("aggregator", sorted(MORE_RULES))
@pytest.mark.parametrize(
    ("name", "byzfl_class"),
    [
        ("optimal_a_little_is_enough", "Optimal_ALittleIsEnough"),
        ("optimal_inner_product_manipulation", "Optimal_InnerProductManipulation"),
    ],
)
def test_optimal_attacks_match_byzfl_on_other_rules(
    case: Any, aggregator: str, name: str, byzfl_class: str
) -> None:
    if aggregator not in aggregate.AGGREGATORS:
        pytest.skip(f"protocol has no {aggregator!r} yet")
    c = make_case(*case)
    rule = MORE_RULES[aggregator](byzfl_aggregators(), c.f)
    reference = getattr(byzfl_attacks(), byzfl_class)(agg=rule, pre_agg_list=[], f=len(c.byzantine))
    check(c.run(name, aggregator=aggregator), reference(c.rows), c)


@pytest.mark.parametrize("case", CASES[::3], ids=case_id)
@pytest.mark.parametrize(
    ("name", "byzfl_class"),
    [
        ("optimal_a_little_is_enough", "Optimal_ALittleIsEnough"),
        ("optimal_inner_product_manipulation", "Optimal_InnerProductManipulation"),
    ],
)
def test_optimal_attacks_aim_at_the_pre_aggregators_too(
    case: Any, name: str, byzfl_class: str
) -> None:
    if not hasattr(aggregate, "compose"):
        pytest.skip("protocol.aggregate.compose (pre-aggregators) not there yet")
    c = make_case(*case)
    aggregators = byzfl_aggregators()
    for pre in (("nnm",), ("clipping",), ("nnm", "clipping")):
        byzfl_pre = [aggregators.NNM(f=c.f) if p == "nnm" else aggregators.Clipping() for p in pre]
        reference = getattr(byzfl_attacks(), byzfl_class)(
            agg=aggregators.TrMean(f=c.f), pre_agg_list=byzfl_pre, f=len(c.byzantine)
        )
        check(c.run(name, pre_aggregators=pre), reference(c.rows), c)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gaussian_matches_byzfl_draw_for_draw(case: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """ByzFL draws from numpy's global RNG; given the same generator as ours, its noise is
    ours bit for bit (both call ``normal(mu, sigma, size=d)``)."""
    c = make_case(*case)
    byzfl_attacks()
    module = importlib.import_module("byzfl.attacks.attacks")
    monkeypatch.setattr(module, "random_tool", lambda vectors: np.random.default_rng(c.seed))
    for mu, sigma in ((0.0, 1.0), (2.0, 0.5)):
        expected = module.Gaussian(mu=mu, sigma=sigma)(c.rows)
        params = {"mu": mu, "sigma": sigma}
        check(c.run({"name": "gaussian", **params}), expected, c)
        # jungle's variant adds the same noise to the node's own vector
        additive = c.run({"name": "gaussian", "additive": True, **params})
        check(additive, c.own.astype(np.float64) + expected, c)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_label_flipping_averages_the_flipped_honest_gradients_as_byzfl(case: Any) -> None:
    c = make_case(*case)
    rng = np.random.default_rng(c.seed + 1000)
    flipped = {i: rng.normal(size=len(c.own)).astype(np.float32) for i in c.honest}
    expected = byzfl_attacks().LabelFlipping()([flipped[i] for i in sorted(flipped)])
    steps: list[int] = []

    def view(step: int) -> Mapping[int, np.ndarray]:
        steps.append(step)
        return flipped

    check(c.run("label_flipping", flipped_gradients=view), expected, c)
    assert steps == [0]
    # a host that computes none: the node's own honest vector
    np.testing.assert_array_equal(c.run("label_flipping"), c.own)


# ------------------------------------------------------------------------- rushing and fallbacks

READS_HONEST = [cls.name for cls in LITERATURE_STRATEGIES if getattr(cls, "reads_honest", False)]


def test_every_attack_reading_honest_vectors_says_so() -> None:
    assert set(READS_HONEST) == {
        "sign_flipping",
        "inner_product_manipulation",
        "a_little_is_enough",
        "optimal_inner_product_manipulation",
        "optimal_a_little_is_enough",
        "mimic",
        "label_flipping",
    }
    for cls in LITERATURE_STRATEGIES:
        assert STRATEGIES[cls.name] is cls and cls.__doc__ and "ByzFL" in cls.__doc__
    assert getattr(STRATEGIES["label_flipping"], "uses_flipped_gradients", False)
    gaussian = load_strategy("gaussian")
    assert isinstance(gaussian, VectorAttack) and not gaussian.rushing


@pytest.mark.parametrize("name", READS_HONEST)
def test_rushing_attacks_wait_for_the_honest_vectors(name: str) -> None:
    c = make_case((7, 2, 2, 4), seed=3)  # five honest nodes; n - 2f = 3
    known: dict[int, np.ndarray] = {}
    c.honest, everything = known, dict(c.honest)

    def bound(spec: Any, can_wait: bool = True) -> Strategy:
        strategy = load_strategy(spec)
        strategy.bind(c.ctx(can_wait=can_wait, honest=frozenset(everything)))
        return strategy

    waiting = bound(name)
    quorum = bound({"name": name, "wait_for": "quorum"})
    never = bound({"name": name, "wait_for": "none"})
    blind = bound(name, can_wait=False)
    for node in sorted(everything):
        assert waiting.vector(0, 0, 0, c.own) is None, (name, len(known))
        assert (quorum.vector(0, 0, 0, c.own) is None) == (len(known) < 3), (name, len(known))
        assert never.vector(0, 0, 0, c.own) is not None
        assert blind.vector(0, 0, 0, c.own) is not None
        known[node] = everything[node]
    sent = waiting.vector(0, 0, 0, c.own)
    assert sent is not None
    c.honest = everything
    np.testing.assert_array_equal(sent, c.run(name))  # all known: the attack itself
    # the model phase is not attacked by default: never held
    assert waiting.vector(0, 1, 0, c.own) is c.own


def test_with_no_honest_vector_known_they_fall_back_to_the_own_vector() -> None:
    c = make_case((7, 2, 2, 4), seed=1)
    nodes = frozenset(c.honest)
    c.honest = {}
    own = c.own

    def run(name: str) -> np.ndarray:
        return c.run(name, honest=nodes)

    np.testing.assert_array_equal(run("sign_flipping"), -own)
    np.testing.assert_allclose(run("inner_product_manipulation"), -2 * own)
    np.testing.assert_array_equal(run("a_little_is_enough"), own)  # std 0
    np.testing.assert_array_equal(run("mimic"), own)
    # the rule cannot aggregate 1 + 2 vectors with f = 2: every tau scores -inf, tau = start
    np.testing.assert_array_equal(run("optimal_a_little_is_enough"), own)
    assert not np.any(run("optimal_inner_product_manipulation"))


def test_mimic_copies_by_rank_or_by_target_and_checks_epsilon() -> None:
    c = make_case((7, 2, 2, 4), seed=2)
    ranked = sorted(c.honest)
    np.testing.assert_array_equal(c.run("mimic"), c.honest[ranked[0]])
    np.testing.assert_array_equal(c.run({"name": "mimic", "epsilon": 2}), c.honest[ranked[2]])
    np.testing.assert_array_equal(
        c.run({"name": "mimic", "target": ranked[4], "epsilon": 9}), c.honest[ranked[4]]
    )
    with pytest.raises(ValueError, match="epsilon"):
        load_strategy({"name": "mimic", "epsilon": 5}).bind(c.ctx())


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ({"name": "optimal_a_little_is_enough", "ratio": 0.5}, "ratio"),
        ({"name": "optimal_inner_product_manipulation", "evals": 0}, "evals"),
        ({"name": "optimal_inner_product_manipulation", "delta": 0.0}, "delta"),
        ({"name": "gaussian", "sigma": -1.0}, "sigma"),
        ({"name": "mimic", "epsilon": -1}, "epsilon"),
        ({"name": "label_flipping", "phases": "model"}, "phases"),
        ({"name": "a_little_is_enough", "tau": float("nan")}, "tau"),
    ],
)
def test_bad_parameters_are_named(spec: dict[str, Any], says: str) -> None:
    with pytest.raises(StrategySpecError, match=says):
        load_strategy(spec)


def test_the_rule_is_composed_when_protocol_can_and_bare_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(aggregate, "compose", raising=False)
    assert aggregation_rule("median") is aggregate.median
    with pytest.raises(ValueError, match="compose"):
        aggregation_rule("median", ("clipping",))
    calls: list[tuple[str, tuple[str, ...]]] = []

    def compose(name: str, pre: tuple[str, ...] = ()) -> Any:
        calls.append((name, pre))
        return aggregate.mean

    monkeypatch.setattr(aggregate, "compose", compose, raising=False)
    assert aggregation_rule("median", ("nnm",)) is aggregate.mean
    c = make_case((7, 2, 2, 4), seed=0)
    c.run("optimal_a_little_is_enough", aggregator="trimmed_mean", pre_aggregators=("nnm",))
    assert calls[-1] == ("trimmed_mean", ("nnm",))


# --------------------------------------------------------------------------- in a cluster


@pytest.mark.parametrize("name", [cls.name for cls in LITERATURE_STRATEGIES])
def test_in_a_cluster_only_inf_is_accused(name: str) -> None:
    n, f = 7, 2
    for seed in range(2):
        cluster = attacked(n, f, name, seed)
        assert all((0, 0) in cluster.nodes[i].decided for i in cluster.honest), (name, seed)
        byzantine = set(random.Random(seed).sample(range(n), f))  # as attacked() draws them
        assert cluster.accused() == (byzantine if name == "inf" else set()), (name, seed)
