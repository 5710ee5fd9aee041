"""Checkpoints are written off the event loop (node/checkpoint_writer.py): the node keeps
answering while a slow disk or a large model takes seconds, the newest checkpoint wins,
and a flush waits for what was submitted."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import torch
import trio

from node.checkpoint import Checkpoint, CheckpointStore
from node.checkpoint_writer import CheckpointWriter

SLOW_SAVE_S = 1.0


def checkpoint(step: int) -> Checkpoint:
    return Checkpoint(step, "00", "key", "digest", {"step": step})


class Disk:
    """A store whose saves take ``save_s`` each (in the writer's worker thread)."""

    def __init__(self, save_s: float = 0.0, fail_steps: frozenset[int] = frozenset()) -> None:
        self.save_s = save_s
        self.fail_steps = fail_steps
        self.saved: list[int] = []
        self.threads: set[int] = set()
        self.written: list[int] = []
        self.failed: list[tuple[int, str]] = []

    def save(self, item: Checkpoint) -> bool:
        self.threads.add(threading.get_ident())
        time.sleep(self.save_s)
        if item.step in self.fail_steps:
            raise OSError(28, "No space left on device")
        self.saved.append(item.step)
        return True

    def writer(self) -> CheckpointWriter:
        return CheckpointWriter(
            self.save,
            lambda item: self.written.append(item.step),
            lambda item, error: self.failed.append((item.step, error.strerror or "")),
        )


async def test_the_event_loop_keeps_running_while_a_checkpoint_takes_a_second() -> None:
    disk = Disk(save_s=SLOW_SAVE_S)
    writer = disk.writer()
    gaps: list[float] = []

    async def heartbeat() -> None:
        last = time.monotonic()
        while True:
            await trio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        nursery.start_soon(heartbeat)
        started = time.monotonic()
        writer.submit(checkpoint(3))
        await writer.flush()
        took = time.monotonic() - started
        nursery.cancel_scope.cancel()
    assert disk.written == [3] and disk.saved == [3]
    assert threading.get_ident() not in disk.threads  # saved in a worker thread
    assert took >= SLOW_SAVE_S
    # the loop ran every ~10 ms all along (a save on the loop would show one 1 s gap)
    assert len(gaps) > 20 and max(gaps) < 0.25 * SLOW_SAVE_S, max(gaps)


async def test_a_newer_checkpoint_replaces_one_still_waiting() -> None:
    disk = Disk(save_s=0.2)
    writer = disk.writer()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        writer.submit(checkpoint(3))
        await trio.sleep(0.05)  # 3 is being written
        writer.submit(checkpoint(6))
        writer.submit(checkpoint(9))  # replaces 6, which never started
        await writer.flush()
        nursery.cancel_scope.cancel()
    assert disk.written == [3, 9]
    assert writer.replaced == 1


async def test_a_failed_write_is_reported_and_the_next_one_still_happens() -> None:
    disk = Disk(fail_steps=frozenset({3}))
    writer = disk.writer()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        writer.submit(checkpoint(3))
        await writer.flush()
        writer.submit(checkpoint(6))
        await writer.flush()
        nursery.cancel_scope.cancel()
    assert disk.failed == [(3, "No space left on device")]
    assert disk.written == [6]


async def test_a_write_under_way_completes_when_the_node_is_cancelled() -> None:
    """Cancelling the node (SIGTERM, a stall) does not abandon a write half done."""
    disk = Disk(save_s=0.3)
    writer = disk.writer()
    with trio.move_on_after(0.1):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            writer.submit(checkpoint(3))
            await trio.sleep_forever()
    assert disk.saved == [3] and disk.written == [3]


def test_the_store_never_replaces_a_later_checkpoint_with_an_earlier_one(tmp_path: Path) -> None:
    """The last checkpoint is written on the event loop while a periodic one may still be
    under way in the writer's thread: whichever finishes last, the later step stays."""
    store = CheckpointStore(tmp_path, 0)
    later = Checkpoint(9, "00", "key", "digest", {"weights": torch.ones(3)})
    earlier = Checkpoint(6, "00", "key", "digest", {"weights": torch.zeros(3)})
    assert store.save(later) is True
    assert store.save(earlier) is False  # finished last, but older: skipped
    loaded = store.load()
    assert loaded is not None and loaded.step == 9
    assert store.statistics().saves == 1
