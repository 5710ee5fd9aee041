"""Schedulers: who decides how long each message of a simulation takes.

The virtual network asks its scheduler, once per message, for the message's delay. The
scheduler sees the message's metadata (:class:`MessageMeta`: source, destination, per-link
sequence number, kind and instance tag as the engine classified the bytes, size, send time)
and one uniform draw ``u`` in (0, 1) keyed on the message alone. Everything an adversarial
network can do to a reliable asynchronous link (delay it, reorder it, duplicate it, cut it
off for a while) is a choice of delay and copies, so a worst-case schedule is a small class.

Writing a custom scheduler
--------------------------
Subclass :class:`Scheduler` and override :meth:`Scheduler.delay_s` (and, to duplicate
messages, :meth:`Scheduler.copies`). The result must be a deterministic function of
``(meta, u)`` and of the scheduler's constructor arguments: no global RNG, no wall clock,
no state that depends on the order calls arrive in. That is what keeps a simulation
reproducible from its seed. Need more than one random number? Derive it:
``derive_uniform(u, 1)``. Return seconds, finite and >= 0; the network adds nothing but a
1 microsecond floor. For example, to let ECHOs race ahead so that READYs arrive last::

    class LateReadies(Scheduler):
        def __init__(self, ready_delay_s: float = 1.0) -> None:
            self.ready_delay_s = ready_delay_s

        def delay_s(self, meta: MessageMeta, u: float) -> float:
            if meta.kind == "ready":
                return self.ready_delay_s
            return 0.001 + 0.009 * u

and name it in a scenario as ``scheduler = "my_attacks:LateReadies"`` (see
:func:`load_scheduler`). Holding a message back for as long as you like is allowed;
dropping it is not (links are reliable, DESIGN section 3): return a long delay instead.

At ``fidelity = "broadcast"`` there are no messages to ask about one by one: the model
of a reliable broadcast asks :meth:`Scheduler.draw_delays_s` for every hop's delays at
once. Its default calls :meth:`Scheduler.delay_s` per message (correct for any
scheduler, and slow); :class:`DefaultScheduler` vectorizes it.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sim.delays import (
    DelayDraws,
    DelayModel,
    DelaySpecError,
    LogNormal,
    derive_uniform,
    parse_delay,
)

__all__ = [
    "COPIES_MAX",
    "DefaultScheduler",
    "MessageMeta",
    "Partition",
    "Scheduler",
    "SchedulerSpecError",
    "load_scheduler",
]

#: Upper bound on :meth:`Scheduler.copies`: a scheduler may duplicate, not flood.
COPIES_MAX = 8
#: ``derive_uniform`` index of the reorder jitter draw in :class:`DefaultScheduler`.
_JITTER_DRAW = 1
#: equiprobable delays a vectorized draw picks from: the delay model's quantiles at the
#: midpoints of 2^16 equal slices of (0, 1). Drawing an index is 5x cheaper than drawing
#: a log-normal; the distribution is exact to 1/65536 in probability, and tails beyond the
#: 1 - 2^-17 quantile are cut to it.
QUANTILES = 1 << 16
#: 10 ms median with a moderate tail: a plausible LAN-to-WAN link when a scenario says nothing.
_DEFAULT_LINK_DELAY = LogNormal(median_s=0.01, sigma=0.5)


@dataclass(frozen=True, slots=True)
class MessageMeta:
    """What a scheduler may look at to decide one message's fate."""

    src: int
    dst: int
    #: per (src, dst) link, from 0; a duplicate carries its original's seq
    seq: int
    #: message kind as the engine's classifier named it ("send", "echo", ...), or "msg"
    kind: str
    #: the agreement instance it belongs to, e.g. (step, phase, round), or ()
    tag: tuple[int, ...]
    size_bytes: int
    #: when it leaves the sender: its send time, or with bandwidth (sim/bandwidth.py) when
    #: the sender's uplink has sent its last byte; the delay counts from then
    send_time_s: float


class Scheduler:
    """Decides each message's delay and number of copies; subclass to script a network.

    See the module docstring for the rules a custom scheduler must keep.
    """

    __slots__ = ()

    def delay_s(self, meta: MessageMeta, u: float) -> float:
        """Seconds from ``meta.send_time_s`` until the message reaches ``meta.dst`` (is
        delivered, or with a limited downlink, joins its queue).

        ``u`` is uniform in (0, 1), drawn from the message's own key. Called once for the
        original and once for each extra copy, each with its own ``u``.
        """
        raise NotImplementedError(f"{type(self).__name__} must override delay_s")

    @property
    def may_duplicate(self) -> bool:
        """Whether :meth:`copies` can return more than 1; when not, the network does not
        ask (one keyed draw per message saved). True for any subclass overriding it."""
        return type(self).copies is not Scheduler.copies

    @property
    def delay_of_draw(self) -> Callable[[float], float] | None:
        """When :meth:`delay_s` depends on ``u`` alone (not on ``meta``), a function
        giving the same delay from ``u``; the network then calls it instead and skips
        building a :class:`MessageMeta` per message. None (the default) when unsure."""
        return None

    @property
    def delays_depend_on_send_time(self) -> bool:
        """Whether :meth:`delay_s` looks at ``meta.send_time_s`` (partitions, time-scripted
        networks). The broadcast fidelity then draws a READY's delay again when the READY
        leaves earlier than first thought. True (the safe answer) unless a subclass says
        otherwise."""
        return True

    def draw_delays_s(
        self,
        draws: DelayDraws,
        src: np.ndarray,
        dst: np.ndarray,
        send_time_s: np.ndarray,
        kind: str,
        tag: tuple[int, ...],
        out: np.ndarray | None = None,
        size_bytes: int = 0,
    ) -> np.ndarray:
        """:meth:`delay_s` of many messages at once, their uniforms from ``draws``: what
        the broadcast fidelity draws for each hop of a modelled broadcast
        (sim/broadcast_model.py). ``src`` and ``dst`` have the messages' shape (views
        welcome), ``send_time_s`` broadcasts to it; written into ``out`` if given
        (float64, that shape); ``size_bytes`` is each message's size. This default asks
        :meth:`delay_s` one message at a time (``seq`` is 0: modelled messages have no
        link sequence number, and :meth:`copies` is not asked: the model has no copies);
        subclasses may vectorize it."""
        u = draws.uniforms(src.shape)
        send_time_s = np.broadcast_to(send_time_s, src.shape)
        flat = [
            self.delay_s(MessageMeta(int(s), int(d), 0, kind, tag, size_bytes, float(t)), float(x))
            for s, d, x, t in zip(
                src.ravel(), dst.ravel(), u.ravel(), send_time_s.ravel(), strict=True
            )
        ]
        delay_s = np.asarray(flat, dtype=np.float64).reshape(src.shape)
        return np.maximum(delay_s, 0.0, out=out)

    def copies(self, meta: MessageMeta, u: float) -> int:
        """How many copies the link delivers (1 = normal, 2 = one duplicate, ...).

        The receiving endpoint drops the extra copies by (src, seq), as the real transport
        does; they exist to exercise that path. ``u`` is a draw independent of the delay's.
        """
        return 1


@dataclass(frozen=True, slots=True)
class Partition:
    """The network splits into ``groups`` from ``start_s`` until it heals at ``heal_s``.

    A message between two groups that is *sent* during ``[start_s, heal_s)`` is held and
    delivered after ``heal_s`` plus its own delay; nothing is dropped. Messages already in
    flight when the partition starts are unaffected. Nodes listed in no group together form
    one more group, so ``Partition([{0, 1}], ...)`` cuts nodes 0 and 1 off from the rest.
    """

    groups: Sequence[AbstractSet[int]]
    start_s: float
    heal_s: float
    _group_of: Mapping[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        groups = tuple(frozenset(group) for group in self.groups)
        group_of: dict[int, int] = {}
        for index, group in enumerate(groups):
            for node in sorted(group):
                if node < 0:
                    raise ValueError(f"partition groups hold node ids >= 0, got {node}")
                if node in group_of:
                    raise ValueError(f"node {node} is in two partition groups: {self.groups}")
                group_of[node] = index
        if not (math.isfinite(self.start_s) and math.isfinite(self.heal_s)):
            raise ValueError("a partition starts and heals at finite times (links are reliable)")
        if not 0.0 <= self.start_s < self.heal_s:
            raise ValueError(f"need 0 <= start_s < heal_s, got {self.start_s}, {self.heal_s}")
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "_group_of", group_of)

    def separates(self, a: int, b: int) -> bool:
        """Whether nodes ``a`` and ``b`` are on different sides (at any time)."""
        return self._group_of.get(a, -1) != self._group_of.get(b, -1)


def release_time_s(
    partitions: Sequence[Partition], src: int, dst: int, send_time_s: float
) -> float:
    """When a message sent at ``send_time_s`` may leave, given the partitions.

    A message held by one partition is released at its heal time, which may fall inside
    another partition that separates the same pair; it is then held again, until no
    partition holds it. Terminates: each step moves past one partition's heal time.
    """
    release_s = send_time_s
    held = True
    while held:
        held = False
        for partition in partitions:
            if partition.start_s <= release_s < partition.heal_s and partition.separates(src, dst):
                release_s = partition.heal_s
                held = True
    return release_s


def _quantile_table(link_delay: DelayModel, jitter_s: float) -> np.ndarray:
    """The :data:`QUANTILES` equiprobable delays of ``link_delay`` plus its jitter, read-only."""
    table = np.array(
        [
            link_delay.sample(u) + (jitter_s * derive_uniform(u, _JITTER_DRAW) if jitter_s else 0.0)
            for u in ((np.arange(QUANTILES) + 0.5) / QUANTILES).tolist()
        ]
    )
    table.flags.writeable = False
    return table


#: sweeps run many scenarios in one process: each table is built once
_shared_quantile_table = functools.lru_cache(maxsize=32)(_quantile_table)


@dataclass(frozen=True, slots=True)
class DefaultScheduler(Scheduler):
    """Random per-link delays, slow nodes, duplicates and healing partitions.

    - ``link_delay``: the delay model of every link not in ``per_link``;
    - ``per_link``: ``{(src, dst): model}`` overrides, one direction each;
    - ``slow_nodes``: ``{node: factor}``; a message's delay is multiplied by the factor of
      its source and of its destination (both, if both are slow);
    - ``duplicate_prob``: chance that a message is delivered twice;
    - ``partitions``: see :class:`Partition`;
    - ``reorder_jitter_s``: an extra uniform ``[0, reorder_jitter_s)`` on every delay, to
      reorder even constant-delay links.
    """

    link_delay: DelayModel = _DEFAULT_LINK_DELAY
    per_link: Mapping[tuple[int, int], DelayModel] = field(default_factory=dict)
    slow_nodes: Mapping[int, float] = field(default_factory=dict)
    duplicate_prob: float = 0.0
    partitions: Sequence[Partition] = ()
    reorder_jitter_s: float = 0.0
    #: the equiprobable delays :meth:`draw_delays_s` picks from, built on first use
    _quantiles: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)
    #: node -> its slow factor (1 if not slow), built on first use
    _slow_factors: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for node, factor in self.slow_nodes.items():
            if not (isinstance(node, int) and node >= 0):
                raise ValueError(f"slow node {node!r}: a node id is an int >= 0")
            if not (math.isfinite(factor) and factor > 0.0):
                raise ValueError(f"slow node {node}: factor must be finite and > 0, got {factor}")
        if not 0.0 <= self.duplicate_prob < 1.0:
            raise ValueError(f"duplicate_prob must be in [0, 1), got {self.duplicate_prob}")
        if not (math.isfinite(self.reorder_jitter_s) and self.reorder_jitter_s >= 0.0):
            raise ValueError(
                f"reorder_jitter_s must be finite and >= 0, got {self.reorder_jitter_s}"
            )
        # Own copies, so that a caller mutating its dicts cannot change a running schedule.
        object.__setattr__(self, "per_link", dict(self.per_link))
        object.__setattr__(self, "slow_nodes", dict(self.slow_nodes))
        object.__setattr__(
            self, "partitions", tuple(sorted(self.partitions, key=lambda p: p.start_s))
        )

    def delay_s(self, meta: MessageMeta, u: float) -> float:
        src, dst = meta.src, meta.dst
        model = self.per_link.get((src, dst), self.link_delay) if self.per_link else self.link_delay
        delay_s = model.sample(u)
        if self.reorder_jitter_s:
            delay_s += self.reorder_jitter_s * derive_uniform(u, _JITTER_DRAW)
        if self.slow_nodes:
            delay_s *= self.slow_nodes.get(src, 1.0) * self.slow_nodes.get(dst, 1.0)
        if self.partitions:
            send_s = meta.send_time_s
            delay_s += release_time_s(self.partitions, src, dst, send_s) - send_s
        return delay_s

    @property
    def delay_of_draw(self) -> Callable[[float], float] | None:
        if self.per_link or self.slow_nodes or self.partitions or self.reorder_jitter_s:
            return None
        return self.link_delay.sample

    @property
    def delays_depend_on_send_time(self) -> bool:
        return bool(self.partitions)

    def draw_delays_s(
        self,
        draws: DelayDraws,
        src: np.ndarray,
        dst: np.ndarray,
        send_time_s: np.ndarray,
        kind: str,
        tag: tuple[int, ...],
        out: np.ndarray | None = None,
        size_bytes: int = 0,
    ) -> np.ndarray:
        """Vectorized unless links differ (``per_link``) or partitions hold messages: a
        draw picks one of :data:`QUANTILES` equiprobable delays of ``link_delay`` (with
        its jitter), then slow nodes stretch it, as :meth:`delay_s` does."""
        if self.per_link or self.partitions:
            return Scheduler.draw_delays_s(
                self, draws, src, dst, send_time_s, kind, tag, out, size_bytes
            )
        table = self._quantiles
        if table is None:
            model, jitter_s = self.link_delay, self.reorder_jitter_s
            if isinstance(model, Hashable):  # shared across runs of a process
                table = _shared_quantile_table(model, jitter_s)
            else:
                table = _quantile_table(model, jitter_s)
            object.__setattr__(self, "_quantiles", table)
        delay_s: np.ndarray = table.take(draws.picks(src.shape), out=out, mode="clip")
        if self.slow_nodes:
            factor = self._slow_factors
            if factor is None:
                # one entry past the highest slow node, 1.0, stands in for every node
                # above it (np.take clips to it)
                factor = np.ones(max(self.slow_nodes) + 2)
                for node, slow in self.slow_nodes.items():
                    factor[node] = slow
                object.__setattr__(self, "_slow_factors", factor)
            delay_s *= factor.take(src, mode="clip")
            delay_s *= factor.take(dst, mode="clip")
        return delay_s

    @property
    def may_duplicate(self) -> bool:
        return self.duplicate_prob > 0.0

    def copies(self, meta: MessageMeta, u: float) -> int:
        return 2 if u < self.duplicate_prob else 1

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> DefaultScheduler:
        """Build one from a scenario table, e.g. (TOML)::

            link_delay = {model = "lognormal", median_s = 0.02, sigma = 0.6}
            per_link = [{src = 0, dst = 1, delay = "constant 0.2"}]
            slow_nodes = {"3" = 10.0}
            duplicate_prob = 0.01
            reorder_jitter_s = 0.001
            partitions = [{groups = [[0, 1, 2], [3, 4, 5, 6]], start_s = 1.0, heal_s = 5.0}]

        Raises :class:`SchedulerSpecError` saying which entry is wrong.
        """
        known = {f for f in cls.__dataclass_fields__ if not f.startswith("_")}
        if unknown := sorted(set(spec) - known):
            raise SchedulerSpecError(
                f"default scheduler does not take {', '.join(unknown)}; "
                f"it takes {', '.join(sorted(known))}"
            )
        try:
            kwargs: dict[str, Any] = {}
            if "link_delay" in spec:
                kwargs["link_delay"] = parse_delay(spec["link_delay"])
            if "per_link" in spec:
                kwargs["per_link"] = {
                    (int(entry["src"]), int(entry["dst"])): parse_delay(entry["delay"])
                    for entry in spec["per_link"]
                }
            if "slow_nodes" in spec:
                kwargs["slow_nodes"] = {
                    int(node): float(factor) for node, factor in spec["slow_nodes"].items()
                }
            if "partitions" in spec:
                kwargs["partitions"] = [
                    Partition(
                        groups=[{int(node) for node in group} for group in entry["groups"]],
                        start_s=float(entry["start_s"]),
                        heal_s=float(entry["heal_s"]),
                    )
                    for entry in spec["partitions"]
                ]
            for name in ("duplicate_prob", "reorder_jitter_s"):
                if name in spec:
                    kwargs[name] = float(spec[name])
            return cls(**kwargs)
        except DelaySpecError as error:
            raise SchedulerSpecError(f"default scheduler: {error}") from None
        except KeyError as error:
            raise SchedulerSpecError(f"default scheduler: missing entry {error}") from None
        except (TypeError, ValueError, AttributeError) as error:
            raise SchedulerSpecError(f"default scheduler: {error}") from None


class SchedulerSpecError(ValueError):
    """A scheduler named in a scenario cannot be loaded or built; the message says why."""


def load_scheduler(spec: str, params: Mapping[str, Any] | None = None) -> Scheduler:
    """Build the scheduler a scenario names.

    ``spec`` is ``"default"`` (then ``params`` is a :meth:`DefaultScheduler.from_spec`
    table) or ``"package.module:ClassName"`` naming a :class:`Scheduler` subclass, which is
    constructed with ``params`` as keyword arguments.
    """
    params = dict(params or {})
    if spec == "default":
        return DefaultScheduler.from_spec(params)
    module_name, sep, class_name = spec.partition(":")
    if not (sep and module_name and class_name):
        raise SchedulerSpecError(f"scheduler must be 'default' or 'module:Class', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise SchedulerSpecError(
            f"cannot import scheduler module {module_name!r}: {error}"
        ) from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Scheduler)):
        raise SchedulerSpecError(f"{spec!r} does not name a Scheduler subclass")
    try:
        return cls(**params)
    except TypeError as error:
        raise SchedulerSpecError(f"cannot build {spec!r} from {params!r}: {error}") from None
