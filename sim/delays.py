"""Message delay models for the virtual network, and the keyed uniforms that drive them.

A delay model is a pure function of one uniform number: ``sample(u)`` is its inverse CDF.
The network draws that ``u`` from the message's own key (seed, src, dst, seq) with
:class:`LinkUniforms` (a cheap counter-based sibling of :func:`keyed_uniform`), so a
message's delay does not depend on what else was sent before it or in which order trio
happened to run anything (DESIGN section 6, rules 1 and 2).

Each model names the statistic it is built around after the *whole* delay: an
``Exponential(mean_s=0.05, min_s=0.01)`` has a mean of 50 ms, a
``LogNormal(median_s=0.05, sigma=0.5, min_s=0.01)`` a median of 50 ms, so figures in a
scenario file read as what they are.

Models are also written in scenario files, either as a table
(``{model = "lognormal", median_s = 0.05, sigma = 0.5}``) or as a short string
(``"lognormal median_s=0.05 sigma=0.5"``, or a bare number for a constant delay);
:func:`parse_delay` reads both.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from statistics import NormalDist
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "Constant",
    "DelayDraws",
    "DelayModel",
    "DelaySpecError",
    "Exponential",
    "KeyedUniforms",
    "LinkUniforms",
    "LogNormal",
    "Uniform",
    "derive_uniform",
    "keyed_uniform",
    "parse_delay",
]

_STANDARD_NORMAL = NormalDist()
_FLOAT_BITS = 53
_SCALE_53 = 2.0**-_FLOAT_BITS
_DIGEST_TO_FLOAT_SHIFT = 64 - _FLOAT_BITS
#: blake2b keys are at most 64 bytes; seeds (e.g. SeedSequence entropy) fit easily.
_SEED_BYTES = 64
_INT64 = struct.Struct("<q")
# SplitMix64 (LinkUniforms): the counter increment and the output function's multipliers.
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15
_SPLITMIX_MUL_1 = 0xBF58476D1CE4E5B9
_SPLITMIX_MUL_2 = 0x94D049BB133111EB
#: Key suffix of the draw that seeds a link's counter base in :class:`LinkUniforms`.
_LINK_BASE_DRAW = -2
#: LinkUniforms computes a link's draws this many seqs at a time.
_BLOCK_DRAWS = 64


@runtime_checkable
class DelayModel(Protocol):
    """Anything that turns one uniform draw in (0, 1) into a delay in seconds."""

    def sample(self, u: float) -> float: ...


def _seed_key(seed: int) -> bytes:
    if not 0 <= seed < 2 ** (8 * _SEED_BYTES):
        raise ValueError(f"seed must be in [0, 2**512), got {seed}")
    return seed.to_bytes(_SEED_BYTES, "little")


def _to_unit_interval(digest: bytes) -> float:
    """The top 53 bits of an 8-byte digest, centred in their cell: strictly inside (0, 1)."""
    return ((int.from_bytes(digest, "little") >> _DIGEST_TO_FLOAT_SHIFT) + 0.5) * _SCALE_53


class KeyedUniforms:
    """:func:`keyed_uniform` for one fixed seed, with the keyed hasher built once.

    The network draws one of these per message, so the seed's key schedule is paid once
    per network instead of once per message.
    """

    __slots__ = ("_hasher", "_packers")

    def __init__(self, seed: int) -> None:
        self._hasher = hashlib.blake2b(digest_size=8, key=_seed_key(seed))
        self._packers: dict[int, struct.Struct] = {}

    def __call__(self, *key: int) -> float:
        packer = self._packers.get(len(key))
        if packer is None:
            packer = self._packers.setdefault(len(key), struct.Struct(f"<{len(key)}q"))
        hasher = self._hasher.copy()
        hasher.update(packer.pack(*key))
        # _to_unit_interval, inlined: this runs for every message.
        return (
            (int.from_bytes(hasher.digest(), "little") >> _DIGEST_TO_FLOAT_SHIFT) + 0.5
        ) * _SCALE_53


class LinkUniforms:
    """One uniform in (0, 1) per message, a pure function of ``(seed, src, dst, seq)``.

    The network draws one per message, so this is :func:`keyed_uniform`'s cheap sibling:
    each link ``(src, dst)`` gets a 64-bit counter base from the keyed hash once,
    ``keyed_uniform(seed, src, dst, _LINK_BASE_DRAW)``'s bits, and a message's draw is the
    SplitMix64 output function of ``base + seq * golden gamma`` (Steele, Lea and Flood
    2014), a counter-based generator that passes BigCrush. The top 53 bits, centred in
    their cell, make the float.

    Draws are computed :data:`_BLOCK_DRAWS` seqs at a time per link, with numpy's wrapping
    uint64 arithmetic: the same integers as Python's masked arithmetic and the same two
    float operations, so the same floats, without a 128-bit product per message. A seq
    outside a link's current block (sequences mostly just count up) computes its block.
    """

    __slots__ = ("_bases", "_blocks", "_draw", "_n")

    def __init__(self, seed: int, n: int) -> None:
        self._draw = KeyedUniforms(seed)
        self._n = n
        self._bases: list[int | None] = [None] * (n * n)
        #: per link: (first seq of the block, its draws)
        self._blocks: list[tuple[int, list[float]] | None] = [None] * (n * n)

    def __call__(self, src: int, dst: int, seq: int) -> float:
        link = src * self._n + dst
        block = self._blocks[link]
        if block is not None:
            offset = seq - block[0]
            if 0 <= offset < _BLOCK_DRAWS:
                return block[1][offset]
        return self._fill(link, src, dst, seq)

    def _fill(self, link: int, src: int, dst: int, seq: int) -> float:
        if seq < 0:
            raise ValueError(f"seq must be >= 0, got {seq}")
        base = self._bases[link]
        if base is None:
            base = int(self._draw(src, dst, _LINK_BASE_DRAW) * 2.0**_FLOAT_BITS) << 11
            self._bases[link] = base
        first = seq - seq % _BLOCK_DRAWS
        seqs = np.arange(first, first + _BLOCK_DRAWS, dtype=np.uint64)
        z = np.uint64(base) + seqs * np.uint64(_GOLDEN_GAMMA)  # arrays wrap mod 2**64
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_SPLITMIX_MUL_1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_SPLITMIX_MUL_2)
        z ^= z >> np.uint64(31)
        top = (z >> np.uint64(_DIGEST_TO_FLOAT_SHIFT)).astype(np.float64)  # < 2**53: exact
        draws: list[float] = ((top + 0.5) * _SCALE_53).tolist()
        self._blocks[link] = (first, draws)
        return draws[seq - first]


class DelayDraws:
    """The random numbers of one modelled broadcast (``fidelity = "broadcast"``): a
    counter-based stream (Philox4x64, Salmon et al. 2011) keyed by the seed, positioned
    by :meth:`start` at the instance's own counter, so that what a broadcast draws is a
    pure function of (seed, instance), not of the order broadcasts happen in (DESIGN 6).

    Raw 64-bit words, split four ways for :meth:`picks`: some 50x cheaper per call than
    a seeded ``numpy.random.Generator``, which matters at one stream per broadcast.
    """

    __slots__ = ("_bits", "_key")

    def __init__(self, seed: int) -> None:
        key = hashlib.blake2b(_seed_key(seed), digest_size=16, person=b"jungle-rb-model").digest()
        self._key = np.frombuffer(key, dtype=np.uint64).copy()
        self._bits = np.random.Philox(key=int.from_bytes(key, "little"))

    def start(self, *instance: int) -> None:
        """Position the stream at ``instance`` (up to three non-negative ints below 2^64):
        counter words 1-3 hold it, word 0 counts the draws within it."""
        if len(instance) > 3 or min(instance, default=0) < 0:
            raise ValueError(f"an instance is up to three non-negative ints, got {instance}")
        counter = np.zeros(4, dtype=np.uint64)
        counter[1 : 1 + len(instance)] = instance
        state = self._bits.state
        state["state"] = {"counter": counter, "key": self._key}
        state["buffer_pos"] = 4  # drop any buffered words
        state["has_uint32"] = 0
        self._bits.state = state

    def mark(self) -> Any:
        """Where the stream is now, for :meth:`rewind` to draw the same numbers again."""
        return self._bits.state

    def rewind(self, mark: Any) -> None:
        self._bits.state = mark

    def picks(self, shape: tuple[int, ...]) -> np.ndarray:
        """Uniform integers in [0, 2^16), of ``shape``."""
        size = math.prod(shape)
        words = self._bits.random_raw((size + 3) // 4)
        picks: np.ndarray = words.view(np.uint16)[:size].reshape(shape)
        return picks

    def uniforms(self, shape: tuple[int, ...]) -> np.ndarray:
        """Uniforms in (0, 1), of ``shape``: the top 53 bits, centred in their cell."""
        words = self._bits.random_raw(math.prod(shape))
        uniforms: np.ndarray = ((words >> 11).astype(np.float64) + 0.5) * _SCALE_53
        return uniforms.reshape(shape)


def keyed_uniform(seed: int, *key: int) -> float:
    """A uniform float in (0, 1) that is a pure function of ``(seed, *key)``.

    Counter-based, like Philox or Threefry: no generator state, so draws never depend on
    the order in which they are made. ``blake2b`` keyed with the seed hashes the key ints
    (each a signed 64-bit int, packed little-endian); keys of different lengths are
    different inputs, so ``(1, 2)`` and ``(1, 2, 0)`` give independent draws. The result is
    never exactly 0 or 1, so inverse CDFs like ``-log(1 - u)`` stay finite.
    """
    return KeyedUniforms(seed)(*key)


def derive_uniform(u: float, index: int) -> float:
    """A further uniform in (0, 1) derived from the draw ``u``, independent-looking for each
    ``index``.

    A scheduler is handed one uniform per message; one that needs more randomness (a
    jitter on top of a delay, a coin for a drop-and-resend) derives it here, which keeps
    it a deterministic function of the message's own draw.
    """
    digest = hashlib.blake2b(
        struct.pack("<dq", u, index), digest_size=8, person=b"jungle-derive"
    ).digest()
    return _to_unit_interval(digest)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _finite_nonnegative(name: str, value: float) -> None:
    _require(math.isfinite(value) and value >= 0.0, f"{name} must be finite and >= 0, got {value}")


@dataclass(frozen=True, slots=True)
class Constant:
    """Every message takes exactly ``delay_s``: links are FIFO, nothing is reordered."""

    delay_s: float

    def __post_init__(self) -> None:
        _finite_nonnegative("delay_s", self.delay_s)

    def sample(self, u: float) -> float:
        return self.delay_s


@dataclass(frozen=True, slots=True)
class Uniform:
    """Delays spread evenly over ``[low_s, high_s]``."""

    low_s: float
    high_s: float

    def __post_init__(self) -> None:
        _finite_nonnegative("low_s", self.low_s)
        _finite_nonnegative("high_s", self.high_s)
        _require(self.low_s <= self.high_s, f"need low_s <= high_s, got {self}")

    def sample(self, u: float) -> float:
        return self.low_s + (self.high_s - self.low_s) * u


@dataclass(frozen=True, slots=True)
class Exponential:
    """``min_s`` of propagation plus a memoryless queueing tail; the whole delay has mean
    ``mean_s``."""

    mean_s: float
    min_s: float = 0.0

    def __post_init__(self) -> None:
        _finite_nonnegative("mean_s", self.mean_s)
        _finite_nonnegative("min_s", self.min_s)
        _require(self.min_s <= self.mean_s, f"need min_s <= mean_s, got {self}")

    def sample(self, u: float) -> float:
        return self.min_s - (self.mean_s - self.min_s) * math.log1p(-u)


@dataclass(frozen=True, slots=True)
class LogNormal:
    """``min_s`` plus a log-normal tail, the usual fit for wide-area latencies; the whole
    delay has median ``median_s``, and ``sigma`` is the spread of its logarithm."""

    median_s: float
    sigma: float
    min_s: float = 0.0

    def __post_init__(self) -> None:
        _finite_nonnegative("median_s", self.median_s)
        _finite_nonnegative("sigma", self.sigma)
        _finite_nonnegative("min_s", self.min_s)
        _require(self.min_s <= self.median_s, f"need min_s <= median_s, got {self}")

    def sample(self, u: float) -> float:
        z = _STANDARD_NORMAL.inv_cdf(u)
        return self.min_s + (self.median_s - self.min_s) * math.exp(self.sigma * z)


class DelaySpecError(ValueError):
    """A delay model written in a scenario cannot be built; the message says why."""


_MODELS: dict[str, type[Constant | Uniform | Exponential | LogNormal]] = {
    "constant": Constant,
    "uniform": Uniform,
    "exponential": Exponential,
    "lognormal": LogNormal,
}


def _parse_string(spec: str) -> dict[str, object]:
    words = spec.split()
    if not words:
        raise DelaySpecError("empty delay spec")
    if len(words) == 1:
        try:
            return {"model": "constant", "delay_s": float(words[0])}
        except ValueError:
            pass
    table: dict[str, object] = {"model": words[0]}
    for word in words[1:]:
        name, sep, value = word.partition("=")
        if not sep:
            raise DelaySpecError(f"expected key=value in delay spec {spec!r}, got {word!r}")
        table[name] = value
    return table


def parse_delay(spec: Mapping[str, object] | str | float) -> DelayModel:
    """Build a delay model from a scenario value.

    Accepted forms: a number (a constant delay in seconds); a string such as
    ``"exponential mean_s=0.02 min_s=0.005"``; a table such as
    ``{"model": "uniform", "low_s": 0.01, "high_s": 0.03}``. Raises
    :class:`DelaySpecError` naming the unknown model, the unknown or missing parameter, or
    the violated range.
    """
    if isinstance(spec, int | float) and not isinstance(spec, bool):
        table: Mapping[str, object] = {"model": "constant", "delay_s": spec}
    elif isinstance(spec, str):
        table = _parse_string(spec)
    elif isinstance(spec, Mapping):
        table = spec
    else:
        raise DelaySpecError(f"a delay spec is a number, string or table, got {spec!r}")
    name = table.get("model")
    model = _MODELS.get(name) if isinstance(name, str) else None
    if model is None:
        raise DelaySpecError(
            f"unknown delay model {name!r} in {spec!r}; known models: {', '.join(sorted(_MODELS))}"
        )
    accepted = {f.name for f in fields(model)}
    required = {f.name for f in fields(model) if f.default is MISSING}
    given = {key for key in table if key != "model"}
    if unknown := sorted(given - accepted):
        raise DelaySpecError(
            f"{name} delay does not take {', '.join(unknown)}; "
            f"it takes {', '.join(sorted(accepted))}"
        )
    if missing := sorted(required - given):
        raise DelaySpecError(f"{name} delay needs {', '.join(missing)} (in {spec!r})")
    params: dict[str, float] = {}
    for key in sorted(given):
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise DelaySpecError(f"{name} delay: {key} must be a number, got {value!r}")
        try:
            params[key] = float(value)
        except ValueError:
            raise DelaySpecError(f"{name} delay: {key} must be a number, got {value!r}") from None
    try:
        return model(**params)
    except ValueError as error:
        raise DelaySpecError(f"{name} delay: {error}") from None
