"""A learner wrapper that keeps a diverged model from stopping its node.

A model driven to infinity (the expected outcome of a non-robust aggregator such as plain
averaging under attack) would make the node propose a non-finite vector, which the protocol
core refuses as a local bug. The guard replaces non-finite coordinates instead, logs it once,
and remembers the step, so a real node keeps serving its peers and a simulation still
produces its results table.
"""

from __future__ import annotations

import logging
from typing import Final

import numpy as np

from node.runner import Learner

log = logging.getLogger("jungle.node")

#: what a diverged node proposes in place of each non-finite coordinate
DIVERGED_VALUE: Final = 0.0


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

    @property
    def batches(self) -> int:
        return self._learner.batches

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
            log.error(
                "the local model diverged at step %d (non-finite values); "
                "proposing %s in their place",
                self._steps,
                DIVERGED_VALUE,
            )
        finite: np.ndarray = np.nan_to_num(
            vector, nan=DIVERGED_VALUE, posinf=DIVERGED_VALUE, neginf=DIVERGED_VALUE
        )
        return finite
