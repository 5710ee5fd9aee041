"""A custom Byzantine strategy: loyal until ``wake_step``, then a double agent.

Scenario usage: ``strategy = {name = "examples.strategy_double_agent:DoubleAgent",
wake_step = 5, boost = 3.0}``. It shows the three things a strategy can use: the step,
the phase, and the omniscient view of this round's honest vectors.
"""

from dataclasses import dataclass

import numpy as np

from sim.strategies import Strategy


@dataclass
class DoubleAgent(Strategy):
    """Honest for ``wake_step`` steps; then, in the gradient phase only, sends the honest
    mean reversed and scaled by ``boost``, while its models stay loyal."""

    name = "double_agent"
    wake_step: int = 5
    boost: float = 3.0

    def vector(self, step: int, phase: int, round_: int, vector: np.ndarray) -> np.ndarray:
        if step < self.wake_step or phase != 0:
            return vector
        honest = list(self.ctx.honest_vectors(step, phase, round_).values()) or [vector]
        return np.asarray(-self.boost * np.mean(honest, axis=0), dtype=vector.dtype)
