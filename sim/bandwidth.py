"""Link capacity in the simulator: every node's uplink (and downlink) as a FIFO queue.

Without bandwidth a message takes its scheduler's delay, whatever its size. With it, a node's
uplink of ``mbps`` megabits/s sends one message at a time, in the order they were sent: a
message of ``b`` bytes sent at ``t`` while the uplink is busy until ``U`` has left the
sender at ``max(t, U) + 8b / (mbps * 1e6)`` (store and forward: it is on the wire once its
last byte is), and *then* the scheduler's delay (propagation) is added, asked with that
departure as the message's send time. A limited downlink does the same at the receiver, in
order of arrival: the message is delivered once its last byte is in. A broadcast to n-1 peers
is n-1 messages on the uplink, in the order of its destinations.

Sizes are the encoded messages' lengths; framing, encryption and TCP/IP headers (a few
percent) are not counted. Scenario keys (``[network]``, for any scheduler):

- ``bandwidth_mbps``: every node's uplink (unset: unlimited, the default);
- ``downlink_mbps``: every node's downlink (unset: unlimited);
- ``node_bandwidth_mbps`` / ``node_downlink_mbps``: per-node overrides, ``{2 = 10.0}``.

:class:`LinkQueues` holds the queues' state (when each link is free again) and what they
cost: per node and direction, seconds of transmission (``busy_s``: the time the link had
something queued or in transmission, bytes x 8 / rate), and how long its messages waited
there, queued or in transmission (``wait_s`` in all, over ``messages``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

__all__ = [
    "BANDWIDTH_KEYS",
    "Bandwidth",
    "LinkQueues",
    "LinkStatistics",
    "bandwidth_problems",
    "split_network_params",
]

UPLINK_KEY: Final = "bandwidth_mbps"
DOWNLINK_KEY: Final = "downlink_mbps"
NODE_UPLINK_KEY: Final = "node_bandwidth_mbps"
NODE_DOWNLINK_KEY: Final = "node_downlink_mbps"
#: the ``[network]`` keys that are the network's, not the scheduler's
BANDWIDTH_KEYS: Final = (UPLINK_KEY, DOWNLINK_KEY, NODE_UPLINK_KEY, NODE_DOWNLINK_KEY)
_BITS_PER_BYTE: Final = 8.0
_BITS_PER_MEGABIT: Final = 1e6


def split_network_params(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A ``[network]`` table's settings as (the scheduler's, the bandwidth's)."""
    scheduler = {k: v for k, v in params.items() if k not in BANDWIDTH_KEYS}
    bandwidth = {k: v for k, v in params.items() if k in BANDWIDTH_KEYS}
    return scheduler, bandwidth


def _is_rate(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _node_id(key: object) -> int | None:
    """A node id written as a TOML key ("2") or an int; None if it is neither."""
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        return key if key >= 0 else None
    if isinstance(key, str) and key.isdigit():
        return int(key)
    return None


def bandwidth_problems(params: Mapping[str, Any], n: int | None = None) -> list[str]:
    """What is wrong with a ``[network]`` table's bandwidth keys, one line each; node ids
    must be below ``n`` when it is given."""
    problems: list[str] = []
    for key in (UPLINK_KEY, DOWNLINK_KEY):
        if key in params and not _is_rate(params[key]):
            problems.append(
                f"[network] {key}: expected a positive finite number of megabits/s, "
                f"got {params[key]!r}"
            )
    for key in (NODE_UPLINK_KEY, NODE_DOWNLINK_KEY):
        if key not in params:
            continue
        table = params[key]
        if not isinstance(table, Mapping):
            problems.append(
                f"[network] {key}: expected a table node id -> megabits/s, got {table!r}"
            )
            continue
        for node_key, rate in table.items():
            node = _node_id(node_key)
            if node is None or (n is not None and node >= n):
                where = f" (n={n})" if n is not None else ""
                problems.append(f"[network] {key}: no node {node_key!r}{where}")
            elif not _is_rate(rate):
                problems.append(
                    f"[network] {key}.{node_key}: expected a positive finite number of "
                    f"megabits/s, got {rate!r}"
                )
    return problems


@dataclass(frozen=True, slots=True)
class Bandwidth:
    """Link capacities in megabits/s; None (and a node absent from the overrides) means
    unlimited. A node's override replaces the default rate of its link."""

    uplink_mbps: float | None = None
    downlink_mbps: float | None = None
    node_uplink_mbps: Mapping[int, float] = field(default_factory=dict)
    node_downlink_mbps: Mapping[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = bandwidth_problems(self._params())
        if problems:
            raise ValueError("; ".join(problems))
        object.__setattr__(self, "node_uplink_mbps", dict(sorted(self.node_uplink_mbps.items())))
        object.__setattr__(
            self, "node_downlink_mbps", dict(sorted(self.node_downlink_mbps.items()))
        )

    def _params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            NODE_UPLINK_KEY: self.node_uplink_mbps,
            NODE_DOWNLINK_KEY: self.node_downlink_mbps,
        }
        if self.uplink_mbps is not None:
            params[UPLINK_KEY] = self.uplink_mbps
        if self.downlink_mbps is not None:
            params[DOWNLINK_KEY] = self.downlink_mbps
        return params

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Bandwidth:
        """From a ``[network]`` table (other keys are ignored); ValueError if invalid."""
        problems = bandwidth_problems(params)
        if problems:
            raise ValueError("; ".join(problems))

        def rates(key: str) -> dict[int, float]:
            table = params.get(key, {})
            return {int(node): float(rate) for node, rate in table.items()}

        up, down = params.get(UPLINK_KEY), params.get(DOWNLINK_KEY)
        return cls(
            uplink_mbps=None if up is None else float(up),
            downlink_mbps=None if down is None else float(down),
            node_uplink_mbps=rates(NODE_UPLINK_KEY),
            node_downlink_mbps=rates(NODE_DOWNLINK_KEY),
        )

    @property
    def limited(self) -> bool:
        """Whether any link has a finite rate."""
        return bool(
            self.uplink_mbps is not None
            or self.downlink_mbps is not None
            or self.node_uplink_mbps
            or self.node_downlink_mbps
        )

    def uplink_of(self, node: int) -> float | None:
        return self.node_uplink_mbps.get(node, self.uplink_mbps)

    def downlink_of(self, node: int) -> float | None:
        return self.node_downlink_mbps.get(node, self.downlink_mbps)


def _seconds_per_byte(mbps: float | None) -> float:
    return 0.0 if mbps is None else _BITS_PER_BYTE / (mbps * _BITS_PER_MEGABIT)


@dataclass(frozen=True, slots=True)
class LinkStatistics:
    """What the links cost, per node (index = node id). ``busy_s``: seconds the link spent
    transmitting (bytes x 8 / rate: a FIFO link is never idle with work queued);
    ``wait_s``: summed over the ``messages`` it carried, the seconds each spent queued or
    in transmission (the delay bandwidth added to it). Rates in megabits/s, None =
    unlimited (then the node's figures are 0)."""

    uplink_mbps: tuple[float | None, ...]
    downlink_mbps: tuple[float | None, ...]
    uplink_busy_s: tuple[float, ...]
    uplink_wait_s: tuple[float, ...]
    uplink_messages: tuple[int, ...]
    downlink_busy_s: tuple[float, ...]
    downlink_wait_s: tuple[float, ...]
    downlink_messages: tuple[int, ...]


class LinkQueues:
    """Every node's uplink and downlink queue: when each is free again, and its costs.

    The network (full fidelity) and the broadcast model (broadcast fidelity) both put
    their messages through these, so the queues see all of a node's traffic. Arrays are
    indexed by node id; ``*_s_per_byte`` is 0 for an unlimited link.
    """

    __slots__ = (
        "bandwidth",
        "down_busy_s",
        "down_free_s",
        "down_messages",
        "down_s_per_byte",
        "down_wait_s",
        "downlink_limited",
        "n",
        "up_busy_s",
        "up_free_s",
        "up_messages",
        "up_s_per_byte",
        "up_wait_s",
        "uplink_limited",
    )

    def __init__(self, n: int, bandwidth: Bandwidth) -> None:
        for node in (*bandwidth.node_uplink_mbps, *bandwidth.node_downlink_mbps):
            if node >= n:
                raise ValueError(f"bandwidth: no node {node} (n={n})")
        self.n = n
        self.bandwidth = bandwidth
        self.up_s_per_byte = np.array([_seconds_per_byte(bandwidth.uplink_of(k)) for k in range(n)])
        self.down_s_per_byte = np.array(
            [_seconds_per_byte(bandwidth.downlink_of(k)) for k in range(n)]
        )
        self.uplink_limited = bool(self.up_s_per_byte.any())
        self.downlink_limited = bool(self.down_s_per_byte.any())
        self.up_free_s = np.zeros(n)
        self.down_free_s = np.zeros(n)
        self.up_busy_s = np.zeros(n)
        self.up_wait_s = np.zeros(n)
        self.down_busy_s = np.zeros(n)
        self.down_wait_s = np.zeros(n)
        self.up_messages = np.zeros(n, dtype=np.int64)
        self.down_messages = np.zeros(n, dtype=np.int64)

    def send(self, src: int, now_s: float, size_bytes: int, copies: int) -> tuple[float, float]:
        """Queue ``copies`` messages of ``size_bytes`` on ``src``'s uplink at ``now_s``:
        returns ``(start_s, transmit_s)``; copy i (from 0) leaves at
        ``start_s + (i + 1) * transmit_s``."""
        transmit_s = size_bytes * float(self.up_s_per_byte[src])
        if not transmit_s:
            return now_s, 0.0
        start_s = max(now_s, float(self.up_free_s[src]))
        self.up_free_s[src] = start_s + copies * transmit_s
        self.up_messages[src] += copies
        self.up_busy_s[src] += copies * transmit_s
        # sum over copies of (leave - now): each waits for the start, then for i + 1 sends
        self.up_wait_s[src] += copies * (start_s - now_s) + transmit_s * copies * (copies + 1) / 2
        return start_s, transmit_s

    def receive(self, dst: int, arrival_s: float, size_bytes: int) -> float:
        """A message whose last byte reaches ``dst``'s downlink at ``arrival_s``: when it
        has been received (the downlink serves arrivals in order)."""
        transmit_s = size_bytes * float(self.down_s_per_byte[dst])
        done_s = max(arrival_s, float(self.down_free_s[dst])) + transmit_s
        self.down_free_s[dst] = done_s
        self.down_messages[dst] += 1
        self.down_busy_s[dst] += transmit_s
        self.down_wait_s[dst] += done_s - arrival_s
        return done_s

    def statistics(self) -> LinkStatistics:
        b = self.bandwidth
        return LinkStatistics(
            uplink_mbps=tuple(b.uplink_of(k) for k in range(self.n)),
            downlink_mbps=tuple(b.downlink_of(k) for k in range(self.n)),
            uplink_busy_s=tuple(self.up_busy_s.tolist()),
            uplink_wait_s=tuple(self.up_wait_s.tolist()),
            uplink_messages=tuple(self.up_messages.tolist()),
            downlink_busy_s=tuple(self.down_busy_s.tolist()),
            downlink_wait_s=tuple(self.down_wait_s.tolist()),
            downlink_messages=tuple(self.down_messages.tolist()),
        )
