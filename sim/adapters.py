"""Two small adapters between the node stack and the simulator.

- :class:`BroadcastClassifier` names each message for the network's per-kind counters
  and for schedulers, decoding each broadcast once instead of once per destination.
- :class:`~node.divergence.DivergenceGuard` (re-exported) keeps a diverged honest model
  from ending a simulation; real nodes use the same guard.
"""

from __future__ import annotations

from node.divergence import DIVERGED_VALUE, DivergenceGuard
from protocol.codec import peek

__all__ = ["DIVERGED_VALUE", "BroadcastClassifier", "DivergenceGuard"]


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
