"""Two small adapters between the node stack and the simulator.

- :class:`BroadcastClassifier` names each message for the network's per-kind counters
  and for schedulers, decoding each broadcast once instead of once per destination.
- :class:`DivergenceGuard` wraps an honest node's learner so that a model driven to
  infinity (the expected outcome of a non-robust aggregator under attack) is reported
  as diverged instead of ending the simulation: the protocol refuses to propose a
  non-finite vector, and a collapsed run must still produce its results table.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from node.runner import Learner
from protocol.codec import peek

#: what a diverged node proposes in place of each non-finite coordinate
DIVERGED_VALUE: Final = 0.0


class BroadcastClassifier:
    """:func:`protocol.codec.peek`, decoding each distinct bytes object once.

    A runner encodes a broadcast once and sends that one object to all n-1 peers, so
    this saves n-2 decodes of every broadcast. The last object stays referenced, so its
    identity cannot be taken by another object while it is cached.
    """

    __slots__ = ("_data", "_result")

    def __init__(self) -> None:
        self._data: bytes | None = None
        self._result: tuple[str, tuple[int, ...]] = ("garbage", ())

    def __call__(self, data: bytes) -> tuple[str, tuple[int, ...]]:
        if data is not self._data:
            self._result = peek(data)
            self._data = data
        return self._result


class DivergenceGuard:
    """A :class:`~node.runner.Learner` whose outgoing vectors are always finite.

    Non-finite coordinates of a gradient or of the parameters are replaced by
    :data:`DIVERGED_VALUE`, and the step at which that first happened is kept in
    :attr:`diverged_at_step` (the summary reports it). Finite vectors pass unchanged.
    """

    def __init__(self, learner: Learner) -> None:
        self._learner = learner
        self._steps = 0
        self.diverged_at_step: int | None = None

    @property
    def dim(self) -> int:
        return self._learner.dim

    @property
    def train_loss(self) -> float:
        return self._learner.train_loss

    def gradient(self) -> np.ndarray:
        return self._finite(self._learner.gradient())

    def apply_gradient(self, vec: np.ndarray) -> None:
        self._learner.apply_gradient(vec)
        self._steps += 1

    def parameters(self) -> np.ndarray:
        return self._finite(self._learner.parameters())

    def set_parameters(self, vec: np.ndarray) -> None:
        self._learner.set_parameters(vec)

    def evaluate(self) -> tuple[float, float]:
        return self._learner.evaluate()

    def _finite(self, vector: np.ndarray) -> np.ndarray:
        if np.isfinite(vector).all():
            return vector
        if self.diverged_at_step is None:
            self.diverged_at_step = self._steps
        finite: np.ndarray = np.nan_to_num(
            vector, nan=DIVERGED_VALUE, posinf=DIVERGED_VALUE, neginf=DIVERGED_VALUE
        )
        return finite
