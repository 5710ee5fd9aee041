"""Received messages waiting for ``receive()``, bounded in bytes rather than in count.

A trio memory channel bounds the number of messages; with messages of up to 64 MiB that
bound says little about memory. This queue bounds bytes: a link that would push it past
``bytes_max`` waits (and stops reading its socket, so TCP pushes back on the sender,
whose own bounded outbox then drops). A message always fits into an empty queue.
"""

from __future__ import annotations

from collections import deque

import trio


class InboundQueue:
    def __init__(self, bytes_max: int) -> None:
        self.bytes_max = bytes_max
        self.bytes_queued = 0
        self._items: deque[tuple[int, bytes]] = deque()
        self._item_added = trio.lowlevel.ParkingLot()
        self._space_freed = trio.lowlevel.ParkingLot()

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, src: int, data: bytes) -> None:
        """Queue a message; waits while it would exceed the byte bound. Cancel-safe:
        a cancelled ``put`` has queued nothing."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while self._items and self.bytes_queued + len(data) > self.bytes_max:
            await self._space_freed.park()
        self._items.append((src, data))
        self.bytes_queued += len(data)
        self._item_added.unpark()
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def get(self) -> tuple[int, bytes]:
        """The oldest message, waiting for one if needed."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._items:
            await self._item_added.park()
        src, data = self._items.popleft()
        self.bytes_queued -= len(data)
        # Every waiting link re-checks: whichever fits goes first (links are few).
        self._space_freed.unpark_all()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return src, data
