"""The simulator's plug-in for real nodes (node/plugins.py): Byzantine strategies and
injected link delays for ``jungle node``, registered as the ``jungle.node`` entry point."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from sim.delays import KeyedUniforms, parse_delay
from sim.strategies import StrategyContext, load_strategy, strategy_rng


class SimNodePlugin:
    def load_strategy(self, spec: object) -> Any:
        return load_strategy(spec)  # type: ignore[arg-type]  # checked by load_strategy

    def bind_strategy(
        self,
        strategy: Any,
        *,
        protocol_config: Any,
        scheme: Any,
        seed: int,
        current_step: Callable[[], int],
        num_classes: int,
    ) -> None:
        me = protocol_config.me
        strategy.bind(
            StrategyContext.from_config(
                protocol_config,
                scheme,
                strategy_rng(seed, me),
                current_step,
                num_classes=num_classes,
            )
        )

    def send_delay(self, spec: object, *, seed: int, me: int) -> Callable[[int, int, int], float]:
        """The message to ``dst`` numbered ``seq`` waits ``model.sample(u)`` times the
        ``slow_nodes`` factors of this node and of ``dst`` (as the simulator's slow nodes:
        from and to), with ``u`` drawn from the key (seed, me, dst, seq) alone."""
        options = dict(spec) if isinstance(spec, dict) else {}
        seed = options.pop("seed", seed)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"send_delay: seed must be an integer >= 0, got {seed!r}")
        factors = _slow_node_factors(options.pop("slow_nodes", {}))
        if isinstance(spec, dict):
            model = parse_delay(options)
        elif isinstance(spec, int | float | str) and not isinstance(spec, bool):
            model = parse_delay(spec)
        else:
            raise ValueError(f"send_delay must be seconds, a string or a table, got {spec!r}")
        draw = KeyedUniforms(seed)
        own_factor = factors.get(me, 1.0)

        def send_delay_s(dst: int, seq: int, size_bytes: int) -> float:
            return model.sample(draw(me, dst, seq)) * own_factor * factors.get(dst, 1.0)

        return send_delay_s


def _slow_node_factors(table: object) -> dict[int, float]:
    """``slow_nodes = {id = factor}`` of ``[transport] send_delay``."""
    if not isinstance(table, dict):
        raise ValueError(f"send_delay: slow_nodes must be a table {{id = factor}}, got {table!r}")
    factors: dict[int, float] = {}
    for node, factor in table.items():
        number = isinstance(factor, int | float) and not isinstance(factor, bool)
        if not (str(node).isdigit() and number and 0 < factor < math.inf):
            raise ValueError(
                f"send_delay: slow_nodes needs id = factor > 0, got {node} = {factor!r}"
            )
        factors[int(node)] = float(factor)
    return factors


PLUGIN = SimNodePlugin()
