"""ByzFL 0.0.11's aggregators and pre-aggregators, cross-checked on identical inputs.

Every case is drawn from its seed (in the test id, so a failure names it): m in {7, 10, 13},
f in {1, 2, 3}, d in {1, 5, 50}, f rows pushed out as Byzantine-looking outliers (far in
random directions, or one point shared by all f), rows shuffled. ByzFL runs in float64 on
copies (its Clipping and ARC write into their input) with numpy's warnings silenced (its
CenteredClipping divides by a zero norm). Then properties: permutations, determinism,
resilience refusals, invalid input, extreme finite values, and the agreement passing the
node's own vector to the rules that take one.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import sys
import types
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from protocol import agreement as agreement_module
from protocol import preaggregate, vector_rules
from protocol.aggregate import (
    AGGREGATORS,
    PRE_AGGREGATORS,
    Aggregator,
    Composition,
    compose,
    get_aggregator,
    median,
    min_nodes,
    reference_taker,
    tolerance_problem,
)
from protocol.agreement import VectorMemo
from protocol.core import GradientSchedule, NodeCore, ProtocolConfig, RoundSchedule
from protocol.crypto import SignatureScheme
from protocol.settings import ProtocolSettings, SettingsError
from tests.byzfl_reference import byzfl_aggregators
from tests.cluster import Cluster, RandomDelays

SESSION = b"\x11" * 32
NEW_AGGREGATORS = ("krum", "multi_krum", "geometric_median", "centered_clipping", "monna")
SHAPES = list(itertools.product((7, 10, 13), (1, 2, 3), (1, 5, 50)))  # (m, f, d)
SEEDS = range(2 * len(SHAPES))
RTOL = 1e-5


def case(seed: int) -> tuple[np.ndarray, int]:
    """(vectors, f) for ``seed``: honest rows ~ N(0, 1) around a random centre, f outliers."""
    m, f, d = SHAPES[seed % len(SHAPES)]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, d)) + rng.uniform(-3, 3, size=d)
    if seed % 3 == 0:  # a coalition at one point, as ALIE-like attackers
        x[:f] = x[f:].mean(axis=0) - 1.5 * x[f:].std(axis=0)
    else:  # scattered, from just outside the honest cloud to far away
        directions = rng.standard_normal((f, d))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        x[:f] += directions * 10.0 ** rng.uniform(0.5, 6, size=(f, 1))
    return x[rng.permutation(m)], f


def byzfl(make: Callable[[], Callable[[np.ndarray], np.ndarray]], x: np.ndarray) -> np.ndarray:
    """ByzFL's rule on a copy of ``x``, its numpy warnings silenced."""
    rule = make()
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return np.asarray(rule(x.copy()))


def assert_close(got: np.ndarray, want: np.ndarray, x: np.ndarray, seed: int, what: str) -> None:
    scale = float(np.abs(x).max())
    np.testing.assert_allclose(
        got, want, rtol=RTOL, atol=1e-9 * scale, err_msg=f"{what}, seed {seed}"
    )


B = byzfl_aggregators()
BYZFL_PREAGGREGATORS = sys.modules["byzfl.aggregators.preaggregators"]


def fixed_permutation(monkeypatch: pytest.MonkeyPatch, perm: np.ndarray) -> None:
    """Make ByzFL's Bucketing shuffle its rows with ``perm`` instead of numpy's global RNG."""
    fixed = types.SimpleNamespace(permutation=lambda rows: rows[perm])
    monkeypatch.setattr(BYZFL_PREAGGREGATORS, "random_tool", lambda vectors: fixed)


@pytest.mark.parametrize("seed", SEEDS)
def test_aggregators_match_byzfl(seed: int) -> None:
    x, f = case(seed)
    m, d = x.shape
    idx = seed % m
    trusted = x[idx].copy()
    pairs = {
        "krum": (vector_rules.krum(x, f), byzfl(lambda: B.Krum(f), x)),
        "multi_krum": (vector_rules.multi_krum(x, f), byzfl(lambda: B.MultiKrum(f), x)),
        "geometric_median": (
            vector_rules.geometric_median(x, f),
            byzfl(lambda: B.GeometricMedian(), x),
        ),
        "monna": (vector_rules.monna(x, f, reference=trusted), byzfl(lambda: B.MoNNA(f, idx), x)),
    }
    for start, label in ((trusted, "own"), (np.zeros(d), "zero"), (np.median(x, axis=0), "median")):
        clipping = B.CenteredClipping()
        clipping.m = start.copy()  # ByzFL's constructor refuses any m (0.0.11's type check)
        pairs[f"centered_clipping from {label}"] = (
            vector_rules.centered_clipping(x, f, reference=start),
            byzfl(lambda clipping=clipping: clipping, x),
        )
    pairs["centered_clipping, no reference"] = (
        vector_rules.centered_clipping(x, f),
        pairs["centered_clipping from median"][1],
    )
    for name, (got, want) in pairs.items():
        assert got.dtype == x.dtype and got.shape == (d,), name
        assert_close(got, want, x, seed, name)
    np.testing.assert_array_equal(pairs["krum"][0], pairs["krum"][1], err_msg=f"seed {seed}")


@pytest.mark.parametrize("seed", SEEDS)
def test_pre_aggregators_match_byzfl(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    x, f = case(seed)
    m = x.shape[0]
    pairs = {
        "nnm": (preaggregate.nnm(x, f), byzfl(lambda: B.NNM(f), x)),
        "clipping": (preaggregate.clipping(x, f), byzfl(lambda: B.Clipping(), x)),
        "clipping c=0.5": (
            preaggregate.clipping(x, f, threshold=0.5),
            byzfl(lambda: B.Clipping(0.5), x),
        ),
        "arc": (preaggregate.arc(x, f), byzfl(lambda: B.ARC(f), x)),
    }
    perm = np.random.default_rng(seed + 1000).permutation(m)
    fixed_permutation(monkeypatch, perm)
    for s in (1, 2, 3, m):
        pairs[f"bucketing s={s}"] = (
            preaggregate.bucketing(x, f, bucket_size=s, permutation=perm),
            byzfl(lambda s=s: B.Bucketing(s), x),
        )
    for name, (got, want) in pairs.items():
        assert got.dtype == x.dtype and got.shape == want.shape, name
        assert_close(got, want, x, seed, name)


COMPOSITIONS: dict[str, tuple[str, tuple[str, ...], Callable[[int], list[object]]]] = {
    "nnm+trimmed_mean": ("trimmed_mean", ("nnm",), lambda f: [B.NNM(f), B.TrMean(f)]),
    "nnm+krum": ("krum", ("nnm",), lambda f: [B.NNM(f), B.Krum(f)]),
    "nnm+multi_krum": ("multi_krum", ("nnm",), lambda f: [B.NNM(f), B.MultiKrum(f)]),
    "nnm+geometric_median": (
        "geometric_median",
        ("nnm",),
        lambda f: [B.NNM(f), B.GeometricMedian()],
    ),
    "arc+trimmed_mean": ("trimmed_mean", ("arc",), lambda f: [B.ARC(f), B.TrMean(f)]),
    "arc+nnm+median": ("median", ("arc", "nnm"), lambda f: [B.ARC(f), B.NNM(f), B.Median()]),
    "clipping+mean": ("mean", ("clipping",), lambda f: [B.Clipping(), B.Average()]),
    # s = 1: any permutation gives the same median, so ByzFL's own random one will do
    "bucketing+median": ("median", ("bucketing",), lambda f: [B.Bucketing(), B.Median()]),
}


@pytest.mark.parametrize("name", sorted(COMPOSITIONS))
@pytest.mark.parametrize("seed", SEEDS[::3])
def test_compositions_match_byzfl(name: str, seed: int) -> None:
    aggregator, pres, chain = COMPOSITIONS[name]
    x, f = case(seed)
    rules = chain(f)
    want = x.copy()
    for rule in rules:
        want = byzfl(lambda rule=rule: rule, want)
    got = compose(aggregator, pres)(x, f)
    assert str(compose(aggregator, pres)) == name
    if aggregator in ("krum", "multi_krum") and not np.allclose(got, want, rtol=RTOL):
        # NNM makes rows with equal neighbourhoods equal: their Krum scores tie exactly, and
        # rounding picks among them. Accept only such a tie at the selection boundary.
        mixed = x.copy()
        for rule in rules[:-1]:
            mixed = byzfl(lambda rule=rule: rule, mixed)
        scores = np.sort(krum_scores_as_byzfl(mixed, f))
        k = 1 if aggregator == "krum" else mixed.shape[0] - f
        assert scores[k] - scores[k - 1] <= 1e-9 * scores[k], f"{name}, seed {seed}: no tie"
        return
    assert_close(got, want, x, seed, name)


def krum_scores_as_byzfl(rows: np.ndarray, f: int) -> np.ndarray:
    m = rows.shape[0]
    squared = ((rows[:, None, :] - rows[None, :, :]) ** 2).sum(axis=2)
    return np.sort(squared, axis=1)[:, 1 : m - f].mean(axis=1)


@pytest.mark.parametrize("seed", SEEDS[::5])
def test_bucketing_then_median_with_a_given_permutation(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """s = 2: the buckets matter; the same permutation given to both."""
    x, _ = case(seed)
    perm = np.random.default_rng(seed).permutation(x.shape[0])
    buckets = preaggregate.bucketing(x, 0, bucket_size=2, permutation=perm)
    fixed_permutation(monkeypatch, perm)
    want = byzfl(lambda: B.Median(), byzfl(lambda: B.Bucketing(2), x))
    assert_close(median(buckets, 0), want, x, seed, "bucketing s=2 then median")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float32_inputs_match_byzfl_in_float64(dtype: type) -> None:
    for seed in SEEDS[:12]:
        x64, f = case(seed)
        x = x64.astype(dtype)
        wide = x.astype(np.float64)
        for ours, theirs in (
            (vector_rules.multi_krum, lambda f=f: B.MultiKrum(f)),
            (vector_rules.geometric_median, lambda: B.GeometricMedian()),
            (preaggregate.nnm, lambda f=f: B.NNM(f)),
        ):
            got = ours(x, f)
            assert got.dtype == dtype
            np.testing.assert_allclose(
                got,
                byzfl(theirs, wide),
                rtol=1e-4 if dtype == np.float32 else RTOL,
                atol=1e-6 * float(np.abs(wide).max()),
                err_msg=f"{ours.__name__}, seed {seed}",
            )


# ------------------------------------------------------------------ properties


@pytest.mark.parametrize("seed", SEEDS[::2])
def test_permuting_the_rows(seed: int) -> None:
    """Aggregates do not depend on the rows' order (up to rounding; Krum: the same row);
    row-wise pre-aggregators permute their output alike; bucketing's digest-seeded
    permutation changes with the order, but its rows are still bucket means."""
    x, f = case(seed)
    perm = np.random.default_rng(seed + 7).permutation(x.shape[0])
    reference = x[0].copy()
    for name in NEW_AGGREGATORS:
        rule = get_aggregator(name)
        kwargs = {"reference": reference} if reference_taker(rule) else {}
        np.testing.assert_allclose(
            rule(x[perm], f, **kwargs),
            rule(x, f, **kwargs),
            rtol=1e-12,
            atol=1e-12 * float(np.abs(x).max()),
            err_msg=f"{name}, seed {seed}",
        )
    for name in ("nnm", "clipping", "arc"):
        pre = PRE_AGGREGATORS[name]
        np.testing.assert_allclose(
            pre(x[perm], f),
            pre(x, f)[perm],
            rtol=1e-12,
            atol=1e-12 * float(np.abs(x).max()),
            err_msg=f"{name}, seed {seed}",
        )


@pytest.mark.parametrize("seed", SEEDS[::4])
@pytest.mark.parametrize("s", [1, 2, 3, 4])
def test_bucketing_is_deterministic_means_of_buckets(seed: int, s: int) -> None:
    x, f = case(seed)
    m = x.shape[0]
    got = preaggregate.bucketing(x, f, bucket_size=s)
    np.testing.assert_array_equal(got, preaggregate.bucketing(x.copy(), f, bucket_size=s))
    order = preaggregate.bucketing_permutation(x)
    assert sorted(order.tolist()) == list(range(m))
    assert got.shape == (-(-m // s), x.shape[1])
    for b, row in enumerate(got):
        bucket = x[order[b * s : (b + 1) * s]]
        np.testing.assert_allclose(row, bucket.mean(axis=0), rtol=1e-12, err_msg=f"seed {seed}")
    if s == 1:  # a reordering, bit for bit
        np.testing.assert_array_equal(got, x[order])
    moved = x.copy()
    moved[0, 0] = np.nextafter(moved[0, 0], np.inf)
    assert not np.array_equal(preaggregate.bucketing_permutation(moved), order) or m < 3


def test_krum_and_multi_krum_keep_out_far_outliers() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((10, 8))
    x[[2, 5, 7]] = 1e6 * np.array([1.0, -1.0, 1.0])[:, None]
    assert int(np.flatnonzero((x == vector_rules.krum(x, 3)).all(axis=1))[0]) not in (2, 5, 7)
    np.testing.assert_allclose(
        vector_rules.multi_krum(x, 3), np.delete(x, [2, 5, 7], axis=0).mean(axis=0)
    )


def test_references() -> None:
    x, f = case(4)
    assert reference_taker(get_aggregator("monna")) is vector_rules.monna
    assert reference_taker(get_aggregator("trimmed_mean")) is None
    assert reference_taker(compose("monna", ["nnm"])) is compose("monna", ["nnm"])
    assert reference_taker(compose("trimmed_mean", ["nnm"])) is None
    # no reference: the coordinate-wise median, identical at every node holding these rows
    np.testing.assert_array_equal(
        vector_rules.monna(x, f), vector_rules.monna(x, f, reference=np.median(x, axis=0))
    )
    for bad, why in (
        (np.zeros(x.shape[1] + 1), "shape"),
        (np.full(x.shape[1], np.nan), "NaN"),
        (np.zeros(x.shape[1], np.int64), "float32 or float64"),
        ([0.0] * x.shape[1], "numpy array"),
    ):
        for name in ("monna", "centered_clipping"):
            with pytest.raises(ValueError, match=why):
                get_aggregator(name)(x, f, reference=bad)


def test_compose_identity_and_names() -> None:
    for name in AGGREGATORS:
        assert compose(name) is get_aggregator(name)
        assert compose(name, ()) is get_aggregator(name)
    nnm_krum = compose("krum", ["nnm"])
    assert nnm_krum is compose("krum", ("nnm",))
    assert isinstance(nnm_krum, Composition) and nnm_krum.pre_aggregators == ("nnm",)
    with pytest.raises(ValueError, match="unknown pre-aggregator 'nmm'; valid: arc, bucketing"):
        compose("krum", ["nmm"])
    with pytest.raises(ValueError, match="unknown aggregator 'krun'"):
        compose("krun", ["nnm"])
    with pytest.raises(ValueError, match="sequence of names"):
        compose("krum", "nnm")
    # VectorMemo keys results by the rule: one composition, one entry, one computation
    memo = VectorMemo()
    x, f = case(2)
    payloads = [bytes(row.astype("<f8").data) for row in x]
    vectors = [np.frombuffer(p, "<f8") for p in payloads]
    for payload, vector in zip(payloads, vectors, strict=True):
        memo.put(payload, (vector, ""))
    first = memo.aggregate(compose("krum", ["nnm"]), f, vectors)
    assert memo.aggregate(compose("krum", ("nnm",)), f, vectors) is first
    # a rule with a reference is computed afresh, with that reference
    own = x[1].copy()
    np.testing.assert_array_equal(
        memo.aggregate(get_aggregator("monna"), f, vectors, own),
        vector_rules.monna(x, f, reference=own),
    )


RESILIENCE_CASES = [
    # (aggregator, pre-aggregators, f, fewest n, the rule the refusal names)
    ("krum", (), 1, 5, "2f+3 = 5"),
    ("krum", (), 3, 10, "3f+1 = 10 (averaging agreement"),
    ("multi_krum", ("nnm",), 1, 5, "2f+3 = 5 (multi_krum"),
    ("centered_clipping", (), 3, 30, "10f = 30"),
    ("geometric_median", ("arc",), 2, 7, "3f+1 = 7 (averaging agreement"),
    ("mda", ("nnm",), 2, 13, "6f+1 = 13 (mda"),
    ("trimmed_mean", (), 2, 7, "3f+1 = 7"),
    ("monna", (), 0, 1, ""),
]


@pytest.mark.parametrize(("aggregator", "pres", "f", "fewest", "rule"), RESILIENCE_CASES)
def test_resilience_refusals(
    aggregator: str, pres: tuple[str, ...], f: int, fewest: int, rule: str
) -> None:
    assert min_nodes(aggregator, f, pres) == fewest
    ProtocolConfig(
        n=fewest, f=f, me=0, session=SESSION, dim=2, aggregator=aggregator, pre_aggregators=pres
    )
    if fewest == 1:
        return
    label = "+".join((*pres, aggregator))
    refusal = re.escape(f"cannot tolerate f={f} with {label}: it needs n >= ")
    with pytest.raises(ValueError, match=refusal):
        ProtocolConfig(
            n=fewest - 1,
            f=f,
            me=0,
            session=SESSION,
            dim=2,
            aggregator=aggregator,
            pre_aggregators=pres,
        )
    problem = tolerance_problem(fewest - 1, f, aggregator, pres)
    assert problem is not None and rule in problem, problem
    settings = ProtocolSettings(aggregator=aggregator, pre_aggregators=pres)
    assert settings.tolerance_problem(fewest - 1, f) == problem
    assert settings.tolerance_problem(fewest, f) is None


def test_bucketing_size_multiplies_the_nodes_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preaggregate, "BUCKET_SIZE", 2)
    # trimmed mean needs 3f+1 = 4 buckets, so 2·(4-1)+1 = 7 rows at f = 1
    assert min_nodes("trimmed_mean", 1, ["bucketing"]) == 7
    assert min_nodes("trimmed_mean", 1) == 4


def test_settings_carry_pre_aggregators() -> None:
    settings = ProtocolSettings(aggregator="krum", pre_aggregators=("nnm",))
    config = settings.config(n=10, f=3, me=0, session=SESSION, dim=4)
    assert config.pre_aggregators == ("nnm",) and config.aggregator == "krum"
    assert ProtocolSettings().pre_aggregators == ()
    with pytest.raises(SettingsError, match="pre_aggregators: expected names among arc, bucketing"):
        ProtocolSettings(pre_aggregators=("nmm",))
    with pytest.raises(ValueError, match="must be a tuple"):
        ProtocolConfig(n=4, f=1, me=0, session=SESSION, dim=2, pre_aggregators=["nnm"])
    dataclasses.replace(config, pre_aggregators=("arc", "nnm"))


def invalid_inputs() -> Iterator[tuple[object, int, str]]:
    yield [[0.0, 1.0]] * 5, 1, "numpy array"
    yield np.zeros(5, np.float32), 1, "2-D"
    yield np.zeros((5, 3), np.int64), 1, "float32 or float64"
    yield np.zeros((5, 3), ">f8"), 1, "native"
    yield np.zeros((5, 3)), -1, "non-negative"
    yield np.zeros((5, 3)), True, "non-negative"
    yield np.zeros((4, 3)), 2, "need at least 5 vectors"
    yield np.zeros((0, 3)), 0, "need at least 1 vectors"
    for value in (np.nan, np.inf, -np.inf):
        for row in (0, 4):
            x = np.arange(15, dtype=np.float64).reshape(5, 3)
            x[row, 1] = value
            yield x, 1, "NaN or infinite"
            yield x.astype(np.float32), 2, "NaN or infinite"


RULES: dict[str, Callable[..., np.ndarray]] = {
    **{name: get_aggregator(name) for name in NEW_AGGREGATORS},
    **PRE_AGGREGATORS,
    "nnm+krum": compose("krum", ["nnm"]),
    "arc+trimmed_mean": compose("trimmed_mean", ["arc"]),
}


@pytest.mark.parametrize("name", sorted(RULES))
def test_invalid_input_raises_value_error(name: str) -> None:
    for vectors, f, message in invalid_inputs():
        with pytest.raises(ValueError, match=message):
            RULES[name](vectors, f)


def test_invalid_options_raise_value_error() -> None:
    x = np.zeros((5, 3))
    for call, message in (
        (lambda: vector_rules.geometric_median(x, 1, nu=0.0), "nu"),
        (lambda: vector_rules.geometric_median(x, 1, iterations=0), "iterations"),
        (lambda: vector_rules.centered_clipping(x, 1, tau=-1.0), "tau"),
        (lambda: vector_rules.centered_clipping(x, 1, iterations=-1), "iterations"),
        (lambda: preaggregate.clipping(x, 1, threshold=np.inf), "threshold"),
        (lambda: preaggregate.bucketing(x, 1, bucket_size=0), "bucket_size"),
        (lambda: preaggregate.bucketing(x, 1, permutation=np.arange(4)), "permutation"),
        (lambda: preaggregate.bucketing(x, 1, permutation=np.zeros(5, int)), "permutation"),
    ):
        with pytest.raises(ValueError, match=message):
            call()


@pytest.mark.parametrize("name", sorted(RULES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_extreme_finite_values_do_not_overflow(name: str, dtype: type) -> None:
    """Values at the top of the dtype's range (and tiny ones beside them): finite results of
    the input's dtype, no overflow warning (warnings are errors in this suite)."""
    big = float(np.finfo(dtype).max)
    rng = np.random.default_rng(3)
    x = (rng.uniform(-1, 1, size=(7, 6)) * 1e-30).astype(dtype)
    x[0], x[1], x[2, :3] = big, -big, big / 3
    got = RULES[name](x, 2)
    assert got.dtype == dtype and np.isfinite(got).all(), got
    tiny = np.array([[0.0], [4e-200], [5e-200], [4.5e-200], [1e-199]])
    assert np.isfinite(RULES[name](tiny, 1)).all()


def test_results_stay_in_the_input_range_and_keep_constants() -> None:
    for dtype in (np.float32, np.float64):
        constant = np.full((7, 5), 0.1, dtype=dtype)
        for name in NEW_AGGREGATORS:
            np.testing.assert_array_equal(get_aggregator(name)(constant, 2), constant[0], name)
        for seed in SEEDS[:9]:
            x = case(seed)[0].astype(dtype)
            for name in ("krum", "multi_krum", "geometric_median", "monna", "centered_clipping"):
                got = get_aggregator(name)(x, 1)
                assert np.all((x.min(axis=0) <= got) & (got <= x.max(axis=0))), (name, seed)


# ------------------------------------------------------------------ in the agreement


@pytest.mark.parametrize(
    ("aggregator", "pres"),
    [("monna", ()), ("centered_clipping", ()), ("krum", ("nnm",)), ("trimmed_mean", ("arc",))],
)
def test_agreement_passes_the_own_vector_of_each_round(
    aggregator: str, pres: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every honest node decides; each aggregation of a rule that takes a reference got the
    node's own vector of that round (the RoundStarted ones), and no other rule got one."""
    n, f, dim, rounds = (10, 1, 3, 3) if aggregator == "centered_clipping" else (7, 2, 3, 3)
    references: list[bytes] = []
    calls = 0

    def recording(
        rule: Aggregator, vectors: np.ndarray, f: int, reference: np.ndarray | None
    ) -> np.ndarray:
        nonlocal calls
        calls += 1
        if reference is not None and reference_taker(rule) is not None:
            references.append(reference.tobytes())
        return aggregate_with(rule, vectors, f, reference)

    aggregate_with = agreement_module.aggregate_with
    monkeypatch.setattr(agreement_module, "aggregate_with", recording)

    def core_factory(config: ProtocolConfig, scheme: SignatureScheme) -> NodeCore:
        return NodeCore(dataclasses.replace(config, pre_aggregators=pres), scheme)

    cluster = Cluster(
        n,
        f,
        dim=dim,
        adversary=RandomDelays(3),
        crypto=False,
        aggregator=aggregator,
        schedule=RoundSchedule(GradientSchedule.CONSTANT, gradient_rounds=rounds),
        core_factory=core_factory,
    )
    inputs = np.random.default_rng(1).standard_normal((n, dim)).astype(np.float32)
    cluster.propose(0, 0, {i: inputs[i] for i in range(n)})
    cluster.run()
    assert calls == n * rounds
    own = [v.tobytes() for i in cluster.honest for v in cluster.nodes[i].rounds[(0, 0)]]
    takes = reference_taker(compose(aggregator, pres)) is not None
    assert sorted(references) == (sorted(own) if takes else [])
    for i in cluster.honest:
        decided = cluster.nodes[i].decided[(0, 0)]
        assert decided.shape == (dim,) and np.isfinite(decided).all()
