"""Strategies as plugins: they combine, load by name with clear errors, draw from seeded
streams, and know the node they run on."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from protocol.codec import decode, encode
from protocol.core import ProtocolConfig
from protocol.crypto import UnsignedScheme
from protocol.messages import InstanceId, Message, Ready, Tag
from sim.strategies import (
    STRATEGIES,
    Combined,
    Strategy,
    StrategyContext,
    StrategySpecError,
    load_strategy,
    strategy_rng,
)
from sim.strategies_protocol import Flood, Silent
from tests.cluster import SESSION
from tests.sim.strategy_helpers import GRADIENT, MODEL, attacked, bound, make_ctx, out, vec

# --------------------------------------------------------------------------- combining


def test_combined_vector_filters_compose_in_order() -> None:
    v = vec(1, 2, 3, 4)
    first_constant = bound([{"name": "constant", "value": 2}, {"name": "scaling", "factor": 3}])
    np.testing.assert_array_equal(first_constant.vector(0, 0, 0, v), [6] * 4)
    first_scaling = bound([{"name": "scaling", "factor": 3}, {"name": "constant", "value": 2}])
    np.testing.assert_array_equal(first_scaling.vector(0, 0, 0, v), [2] * 4)


class Junk(Strategy):
    name = "junk"

    def outgoing(self, dst: int, message: Message, data: bytes) -> Iterable[bytes]:
        return (b"\xff",)

    def on_receive(self, src: int, data: bytes | memoryview) -> Iterable[tuple[int, bytes]]:
        return ((0, b"junk"),)

    def crashed(self, step: int) -> bool:
        return step >= 3

    def label_map(self, num_classes: int) -> np.ndarray | None:
        return np.roll(np.arange(num_classes), 1)


def test_combined_outgoing_filters_feed_each_other() -> None:
    ready = Ready(InstanceId(0, Tag(0, 0, 0, 0)), b"\1" * 32)
    combined = bound([{"name": "flood", "rate": 1}, {"name": "withhold", "targets": [1]}])
    assert out(combined, 1, ready) == []
    original, future = out(combined, 2, ready)
    assert original == encode(ready) and decode(future).iid.tag.step == 1000
    # what no longer decodes passes the later parts untouched
    junk_first = Combined([Junk(), Flood(rate=1)])
    junk_first.bind(make_ctx())
    assert out(junk_first, 2, ready) == [b"\xff"]


def test_combined_hooks_add_up() -> None:
    combined = Combined(
        [Junk(), load_strategy({"name": "replay", "rate": 1}), load_strategy("label_flip")]
    )
    combined.bind(make_ctx())
    extras = list(combined.on_receive(2, b"m"))
    assert extras[0] == (0, b"junk") and len(extras) == 2
    assert not combined.crashed(2) and combined.crashed(3)
    # label maps compose: roll by one, then flip
    np.testing.assert_array_equal(combined.label_map(4), [0, 3, 2, 1])


def test_each_part_draws_from_its_own_stream() -> None:
    v = np.zeros(8, dtype=np.float32)
    alone = bound(["gaussian", "silent"], seed=3).vector(0, 0, 0, v)
    beside = bound(["gaussian", {"name": "replay", "rate": 1}], seed=3)
    for _ in range(5):
        beside.on_receive(1, b"m")  # the replay part draws; the gaussian part must not care
    np.testing.assert_array_equal(beside.vector(0, 0, 0, v), alone)


# --------------------------------------------------------------------------- loading


def test_load_strategy_accepts_every_form() -> None:
    assert type(load_strategy("sign_flip")).__name__ == "SignFlip"
    alie = load_strategy("alie", {"z": 1.5})
    assert getattr(alie, "z") == 1.5  # noqa: B009
    assert getattr(load_strategy({"name": "alie", "z": 2}), "z") == 2  # noqa: B009
    assert isinstance(load_strategy(["silent", "sign_flip"]), Combined)
    assert isinstance(load_strategy(["silent"]), Silent)
    instance = Silent()
    assert load_strategy(instance) is instance
    for name, cls in STRATEGIES.items():
        built = load_strategy(name)
        assert type(built) is cls and built.name == name and cls.__doc__


def test_a_custom_strategy_loads_from_module_and_class() -> None:
    agent = load_strategy(
        "examples.strategy_double_agent:DoubleAgent", {"wake_step": 2, "boost": 4}
    )
    honest = {0: vec(1, 1, 1, 1), 1: vec(3, 3, 3, 3)}
    agent.bind(make_ctx(honest=honest))
    own = vec(5, 5, 5, 5)
    assert agent.vector(1, GRADIENT, 0, own) is own  # still loyal
    np.testing.assert_array_equal(agent.vector(2, GRADIENT, 0, own), [-8] * 4)
    assert agent.vector(2, MODEL, 0, own) is own  # its models stay loyal


def test_custom_modules_are_found_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_attack_xyz.py").write_text(
        "from dataclasses import dataclass\n"
        "from sim.strategies import Strategy\n"
        "@dataclass\n"
        "class Quiet(Strategy):\n"
        "    level: int = 0\n"
    )
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.chdir(tmp_path)
    assert getattr(load_strategy("my_attack_xyz:Quiet", {"level": 3}), "level") == 3  # noqa: B009


@pytest.mark.parametrize(
    ("spec", "params", "says"),
    [
        ("no_such", None, ["'no_such'", "valid names:", "sign_flip", "equivocate", "module:Class"]),
        ("alie", {"zz": 1}, ["'alie'", "'zz'", "z=None", "phases='gradient'"]),
        ("alie", {"z": "big"}, ["'alie'", "'z'", "'big'"]),
        ("sign_flip", {"phases": "sometimes"}, ["'phases'", "'sometimes'", "'both'"]),
        ("withhold", {"fraction": 2}, ["'fraction'", "[0, 1]"]),
        ("crash", {"at_step": -1}, ["'at_step'"]),
        ("flood", {"rate": 1e9}, ["'rate'", "[0, 64.0]"]),
        ({"z": 1}, None, ["'name'"]),
        (["sign_flip"], {"scale": 2}, ["go with a strategy name"]),
        ([], None, ["empty list"]),
        (42, None, ["int"]),
        ("no_such_module_xyz:Thing", None, ["cannot import", "no_such_module_xyz"]),
        ("sim.strategies:load_strategy", None, ["not name a Strategy subclass"]),
    ],
)
def test_load_strategy_errors_say_what_is_wrong(spec: Any, params: Any, says: list[str]) -> None:
    with pytest.raises(StrategySpecError) as error:
        load_strategy(spec, params)
    for text in says:
        assert text in str(error.value)


def test_context_from_config_describes_the_node() -> None:
    config = ProtocolConfig(n=4, f=1, me=2, session=SESSION, dim=3, dtype="<f8")
    ctx = StrategyContext.from_config(
        config, UnsignedScheme(), strategy_rng(0, 2), lambda: 5, byzantine=[2, 3]
    )
    assert (ctx.me, ctx.n, ctx.f, ctx.dim, ctx.dtype) == (2, 4, 1, 3, np.dtype("<f8"))
    assert ctx.current_step() == 5 and ctx.others == [0, 1, 3]
    assert ctx.byzantine == {2, 3} and ctx.honest_vectors(0, 0, 0) == {}


def test_strategy_rng_is_keyed_by_seed_and_node() -> None:
    draws = {(s, i): strategy_rng(s, i).random() for s in (0, 1) for i in (0, 1)}
    assert len(set(draws.values())) == 4
    assert strategy_rng(1, 0).random() == draws[(1, 0)]


def test_same_seed_same_attack_bytes() -> None:
    def run(seed: int) -> dict[int, int]:
        return dict(attacked(7, 2, ["garbage", {"name": "replay", "rate": 0.5}], seed).bytes_sent)

    assert run(4) == run(4)
    assert run(4) != run(5)
