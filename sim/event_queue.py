"""The virtual network's event queue: a priority queue bucketed by virtual time.

One binary heap over every event in flight is what the network used first, and at n = 64
(a million messages per agreement round, hundreds of thousands in flight at once) each pop
cost about 5 us: twenty levels of tuple comparisons, nearly every one a cache miss. This
queue keeps events in time buckets of :data:`BUCKET_WIDTH_S` instead: future buckets are
plain lists (a push is an append), and the earliest bucket is sorted once when it becomes
current (a few hundred events that fit in cache) and then read in order, one index step
per pop.

The order is exactly the single heap's: buckets are indexed by ``floor(time_s / width)``,
which is monotone in ``time_s``, so every event of an earlier bucket comes before every
event of a later one, and within a bucket the sort orders by the whole event tuple. An
event pushed into the current bucket (or, defensively, an earlier one) after it was sorted
joins a small heap of late arrivals, merged with the sorted run on every pop.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

__all__ = ["BUCKET_WIDTH_S", "Event", "EventQueue"]

#: Width of one time bucket: 1/500 of a typical link delay (10 ms median), so that even
#: at n = 64, with hundreds of thousands of events in flight, the current bucket holds a
#: few hundred (measured: 1 ms buckets cost ~20% more per event there).
BUCKET_WIDTH_S = 2e-5

#: A network event: (time_s, dst, src, seq, copy, data, kind). For a timer: (time_s, node,
#: -1, timer_id, firing_index, b"", ""). Tuple order is the delivery order (DESIGN 6).
Event = tuple[float, int, int, int, int, bytes, str]


class EventQueue:
    """Events popped in tuple order (time first); pushes never go before the last pop."""

    __slots__ = (
        "_bucket_ids",
        "_buckets",
        "_current",
        "_current_id",
        "_index",
        "_inv_width",
        "_late",
        "_size",
    )

    def __init__(self, bucket_width_s: float = BUCKET_WIDTH_S) -> None:
        if not bucket_width_s > 0.0:
            raise ValueError(f"bucket_width_s must be > 0, got {bucket_width_s}")
        self._inv_width = 1.0 / bucket_width_s
        self._buckets: dict[int, list[Event]] = {}
        self._bucket_ids: list[int] = []  # a heap of the keys of _buckets
        self._current: list[Event] = []  # the earliest bucket, sorted; popped up to _index
        self._index = 0
        self._late: list[Event] = []  # a heap: pushed into the current bucket after its sort
        self._current_id = -1
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, event: Event) -> None:
        self.push_many((event,))

    def push_many(self, events: Sequence[Event]) -> None:
        """:meth:`push` each of ``events`` (a broadcast's), in one call."""
        self._size += len(events)
        inv_width = self._inv_width
        current_id = self._current_id
        buckets = self._buckets
        for event in events:
            bucket_id = int(event[0] * inv_width)
            if bucket_id <= current_id:
                heapq.heappush(self._late, event)
                continue
            bucket = buckets.get(bucket_id)
            if bucket is None:
                buckets[bucket_id] = [event]
                heapq.heappush(self._bucket_ids, bucket_id)
            else:
                bucket.append(event)

    def peek_time_s(self) -> float | None:
        """The time of the next event, or None when the queue is empty."""
        while True:
            late = self._late
            if self._index < len(self._current):
                time_s = self._current[self._index][0]
                return min(time_s, late[0][0]) if late else time_s
            if late:
                return late[0][0]
            if not self._advance():
                return None

    def pop_until(self, limit_s: float) -> Event | None:
        """The next event if it is due by ``limit_s``, else None (also when empty)."""
        while True:
            index = self._index
            current = self._current
            late = self._late
            if index < len(current):
                event = current[index]
                if late and late[0] < event:
                    break  # a late arrival comes first
                if event[0] > limit_s:
                    return None
                self._index = index + 1
                self._size -= 1
                return event
            if late:
                break
            if not self._advance():
                return None
        if late[0][0] > limit_s:
            return None
        self._size -= 1
        return heapq.heappop(late)

    def pop(self) -> Event:
        """The next event; raises IndexError when the queue is empty."""
        event = self.pop_until(math.inf)
        if event is None:
            raise IndexError("pop from an empty event queue")
        return event

    def _advance(self) -> bool:
        """Make the earliest future bucket current; False if there is none."""
        if not self._bucket_ids:
            return False
        bucket_id = heapq.heappop(self._bucket_ids)
        current = self._buckets.pop(bucket_id)
        current.sort()
        self._current = current
        self._index = 0
        self._current_id = bucket_id
        return True
