"""The bucketed event queue pops in exactly the order of one heap over all events."""

from __future__ import annotations

import heapq
import random

import pytest

from sim.event_queue import Event, EventQueue


def _event(time_s: float, dst: int, src: int, seq: int) -> Event:
    return (time_s, dst, src, seq, 0, b"", "")


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("bucket_width_s", [2e-5, 1e-4, 1e-3, 1.0])
def test_pops_in_heap_order_while_pushing_after_now(seed: int, bucket_width_s: float) -> None:
    rng = random.Random(seed)
    queue = EventQueue(bucket_width_s)
    reference: list[Event] = []
    now_s = 0.0
    popped: list[Event] = []
    expected: list[Event] = []
    for _ in range(3000):
        if reference and rng.random() < 0.5:
            assert queue.peek_time_s() == reference[0][0], f"seed {seed}"
            event = queue.pop()
            expected.append(heapq.heappop(reference))
            popped.append(event)
            now_s = event[0]
        else:
            # ties on time are common: a small grid of delays, plus exact repeats of now
            delay_s = rng.choice([0.0, 1e-6, 5e-4, 1e-3, rng.random() * 0.02])
            event = _event(now_s + delay_s, rng.randrange(4), rng.randrange(4), rng.randrange(9))
            queue.push(event)
            heapq.heappush(reference, event)
        assert len(queue) == len(reference)
    while reference:
        expected.append(heapq.heappop(reference))
        popped.append(queue.pop())
    assert popped == expected, f"seed {seed}"
    assert queue.peek_time_s() is None
    with pytest.raises(IndexError):
        queue.pop()


def test_rejects_a_non_positive_bucket_width() -> None:
    with pytest.raises(ValueError, match="bucket_width_s"):
        EventQueue(0.0)
