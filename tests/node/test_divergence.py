"""A diverged local model is reported and replaced, never proposed as NaN/Inf."""

from __future__ import annotations

import numpy as np

from node.divergence import DIVERGED_VALUE, DivergenceGuard


class _Learner:
    dim = 3
    train_loss = float("nan")
    batches = 0

    def __init__(self) -> None:
        self.vector = np.array([1.0, 2.0, 3.0], dtype=np.float32)

    def gradient(self) -> np.ndarray:
        return self.vector.copy()

    def apply_gradient(self, vec: np.ndarray) -> None:
        pass

    def parameters(self) -> np.ndarray:
        return self.vector.copy()

    def set_parameters(self, vec: np.ndarray) -> None:
        self.vector = vec.copy()

    def evaluate(self) -> tuple[float, float]:
        return 0.0, 0.0


def test_finite_vectors_pass_and_non_finite_ones_are_replaced_once_reported() -> None:
    learner = _Learner()
    guard = DivergenceGuard(learner)
    np.testing.assert_array_equal(guard.gradient(), [1.0, 2.0, 3.0])
    guard.apply_gradient(guard.gradient())
    assert guard.diverged_at_step is None
    learner.vector = np.array([np.nan, np.inf, 5.0], dtype=np.float32)
    np.testing.assert_array_equal(guard.parameters(), [DIVERGED_VALUE, DIVERGED_VALUE, 5.0])
    assert guard.diverged_at_step == 1
    guard.apply_gradient(guard.gradient())
    guard.gradient()
    assert guard.diverged_at_step == 1  # the first divergence is the one kept
