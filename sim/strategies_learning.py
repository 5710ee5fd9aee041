"""Learning-level Byzantine strategies: well-formed, validly signed, poisoned vectors.

These follow the protocol to the letter; only the vector a node broadcasts is a lie. They
run as the core's vector filter (see :mod:`sim.strategies_base`), on the gradient phase
and every round by default (``phases``, ``rounds``). Their damage is what the averaging
constant of DESIGN 7 measures.

These are jungle's own variants; :mod:`sim.strategies_literature` holds the literature's
attacks under ByzFL's names and definitions (``mimic`` and ``gaussian`` live there).

The omniscient ones (ALIE, IPM) read the honest vectors of the very same
(step, phase, round) from ``ctx.honest_vectors``: the strongest adversary of the
literature, which sees every honest update before choosing its own. When the host has
none to show yet (the attacker entered the round first, or offers no omniscience) they
fall back to the node's own honest vector, an unbiased sample of the same distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from sim.strategies_base import Strategy, VectorAttack


def _check_number(strategy: Strategy, name: str, value: object, *, positive: bool = False) -> None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        if value > 0 or not positive:
            return
    kind = "a positive number" if positive else "a finite number"
    raise strategy.fail(name, f"must be {kind}, got {value!r}")


@dataclass(kw_only=True)
class SignFlip(VectorAttack):
    """Broadcasts ``-scale`` times its honest vector: the simplest reversed-gradient
    attack (e.g. Allen-Zhu et al., ICLR 2021; Karimireddy et al., ICML 2021).

    Jungle variant: it negates its own vector; ByzFL's ``sign_flipping`` negates the mean
    of the honest vectors."""

    name = "sign_flip"
    scale: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_number(self, "scale", self.scale)

    def attack(self, step: int, phase: int, round_: int, vector: np.ndarray) -> np.ndarray:
        return (vector * -self.scale).astype(vector.dtype, copy=False)


@dataclass(kw_only=True)
class Scaling(VectorAttack):
    """Broadcasts ``factor`` times its honest vector ("explicit boosting", Bhagoji et al.,
    ICML 2019): one large vector drags a plain mean arbitrarily far, a trimmed mean not.
    A negative factor makes it a boosted sign flip.

    Jungle variant: ByzFL has no scaling attack; its nearest, ``inner_product_manipulation``,
    scales the honest mean (by -tau) rather than the node's own vector."""

    name = "scaling"
    factor: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_number(self, "factor", self.factor)

    def attack(self, step: int, phase: int, round_: int, vector: np.ndarray) -> np.ndarray:
        return (vector * self.factor).astype(vector.dtype, copy=False)


def alie_z(n: int, f: int) -> float:
    """The z of "A Little Is Enough" (Baruch, Baruch & Goldberg, NeurIPS 2019).

    With s = floor(n/2 + 1) - f honest nodes the attackers need on their side for a
    majority, z = Phi^-1((n - s) / n) is the largest z for which, with normally
    distributed honest values, s of them still lie further from the mean than
    mean - z*std does. Clamped at 0 (for tiny n the formula goes negative)."""
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    if not 0 < p < 1:
        return 0.0
    return max(0.0, NormalDist().inv_cdf(p))


@dataclass(kw_only=True)
class ALIE(VectorAttack):
    """The attack of "A Little Is Enough" (Baruch, Baruch & Goldberg, NeurIPS 2019): broadcasts
    mean - z * std, coordinate-wise over the honest vectors of this round. Each
    coordinate stays within the honest spread, so coordinate-wise trimming keeps it,
    yet every Byzantine node pulls the same way. ``z`` defaults to :func:`alie_z`.

    Omniscient (the paper's colluders estimate mean and std from their own gradients;
    here the host shows the honest ones). With a single reference vector (no honest
    vector known yet: the node's own), std is 0 and the node sends that vector.

    Jungle variant: mean - z * std with the paper's z and the population std (ddof = 0);
    ByzFL's ``a_little_is_enough`` sends mean + tau * std, tau = 1.5, sample std (ddof = 1).
    """

    name = "alie"
    reads_honest = True
    z: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.z is not None:
            _check_number(self, "z", self.z)

    def attack(self, step: int, phase: int, round_: int, vector: np.ndarray) -> np.ndarray:
        z = self.z if self.z is not None else alie_z(self.ctx.n, self.ctx.f)
        rows = self.reference(step, phase, round_, vector)
        return np.asarray(rows.mean(axis=0) - z * rows.std(axis=0), dtype=vector.dtype)


@dataclass(kw_only=True)
class IPM(VectorAttack):
    """Inner Product Manipulation ("Fall of Empires", Xie, Koyejo & Gupta, UAI 2019):
    broadcasts -epsilon times the mean of the honest vectors of this round. A small
    epsilon (0.1) stays close enough to the honest vectors to pass robust aggregators
    while making the aggregate's inner product with the true gradient negative.

    With ``omniscient = false`` (or before any honest vector is known) the mean is
    estimated from the node's own honest vector, i.e. a scaled sign flip.

    Jungle variant: the same rule as ByzFL's ``inner_product_manipulation`` with factor
    ``epsilon`` = 0.1 (ByzFL's ``tau`` = 2.0) and an ``omniscient`` switch.
    """

    name = "ipm"
    reads_honest = True
    epsilon: float = 0.1
    omniscient: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_number(self, "epsilon", self.epsilon, positive=True)
        if not isinstance(self.omniscient, bool):
            raise self.fail("omniscient", f"must be true or false, got {self.omniscient!r}")

    @property
    def rushing(self) -> bool:
        return self.omniscient and super().rushing

    def attack(self, step: int, phase: int, round_: int, vector: np.ndarray) -> np.ndarray:
        rows = self.reference(step, phase, round_, vector, self.omniscient)
        return np.asarray(-self.epsilon * rows.mean(axis=0), dtype=vector.dtype)


@dataclass(kw_only=True)
class IPMLarge(IPM):
    """IPM with a large epsilon (100), the variant that breaks averaging-like rules
    outright (as evaluated by Karimireddy, He & Jaggi, ICML 2021).

    Jungle variant: ByzFL's ``inner_product_manipulation`` with ``tau`` = 100."""

    name = "ipm_large"
    epsilon: float = 100.0


@dataclass(kw_only=True)
class Constant(VectorAttack):
    """Broadcasts ``value`` in every coordinate: a fixed point far from the honest ones
    (with a large value, the pull a trimmed mean must trim away).

    Jungle variant: ByzFL's nearest is ``inf`` (every coordinate +inf, which jungle's
    receivers reject); a finite constant is a valid vector they must aggregate."""

    name = "constant"
    value: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_number(self, "value", self.value)

    def attack(self, step: int, phase: int, round_: int, vector: np.ndarray) -> np.ndarray:
        return np.full_like(vector, self.value)


@dataclass
class LabelFlip(Strategy):
    """Trains on its own data with every label y replaced by num_classes - 1 - y, then
    follows the protocol honestly with the resulting gradients: data poisoning, the
    weakest adversary (as evaluated by Allen-Zhu et al., ICLR 2021, and Karimireddy,
    He & Jaggi, ICML 2021). The host applies :meth:`label_map` to the node's trainer.

    Jungle variant: the node's own flipped-data momentum gradient; ByzFL's
    ``label_flipping`` sends the mean of the honest nodes' flipped-label gradients."""

    name = "label_flip"

    def label_map(self, num_classes: int) -> np.ndarray | None:
        return np.arange(num_classes - 1, -1, -1)


LEARNING_STRATEGIES: tuple[type[Strategy], ...] = (
    SignFlip,
    Scaling,
    ALIE,
    IPM,
    IPMLarge,
    Constant,
    LabelFlip,
)
