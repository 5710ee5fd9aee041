"""Checkpoints written off the event loop, so a node keeps answering while it saves.

Writing a checkpoint (``torch.save``, two fsyncs) takes milliseconds for the digits MLP and
seconds for a large model; on the trio thread it would hold every echo, ack and fetch the
node owes its peers for that long (the same reason gradients run in a worker thread,
DESIGN 3). The node hands :class:`CheckpointWriter` its periodic checkpoints, each a
finished :class:`Checkpoint` (its trainer state is already a snapshot of copies, so the
learning may go on while it is written), and a worker thread writes them. The last one of
a run is written on the spot instead (node/app.py): it must be on disk before the node
tells its peers it has finished; the store never lets an older checkpoint replace it.

At most one write runs at a time. A checkpoint submitted while another is being written
waits; a newer one replaces it (latest wins, counted in ``replaced``): a checkpoint is only
a place to resume from, and the newest is the best one. Safety does not depend on which
checkpoint is on disk: a restarted node resumes at the last step its journal says it
signed, whatever step its model comes from (docs/operators.md, "Crashes, restarts and
stalls"), as it already does with ``checkpoint_every`` > 1.

A write that has started always completes, even if the node is being cancelled (the
worker thread is not abandoned; the file is replaced atomically either way).
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from node.checkpoint import Checkpoint


class CheckpointWriter:
    def __init__(
        self,
        save: Callable[[Checkpoint], bool],
        on_written: Callable[[Checkpoint], None],
        on_failed: Callable[[Checkpoint, OSError], None],
    ) -> None:
        """``save`` runs in a worker thread and says whether it wrote (a store skips a
        checkpoint older than the one it holds); ``on_written`` and ``on_failed`` (an
        ``OSError`` from ``save``: a full disk must not stop the learning) run on the trio
        thread."""
        self._save = save
        self._on_written = on_written
        self._on_failed = on_failed
        self._pending: Checkpoint | None = None
        self._writing = False
        self._wakeup = trio.lowlevel.ParkingLot()
        self._idle = trio.lowlevel.ParkingLot()
        #: checkpoints replaced by a newer one before their write began
        self.replaced = 0

    def submit(self, checkpoint: Checkpoint) -> None:
        if self._pending is not None:
            self.replaced += 1
        self._pending = checkpoint
        self._wakeup.unpark_all()

    async def run(self) -> None:
        """Write what is submitted, forever (run it in the node's nursery)."""
        while True:
            while self._pending is None:
                await self._wakeup.park()
            checkpoint, self._pending = self._pending, None
            self._writing = True
            try:
                written = await trio.to_thread.run_sync(self._save, checkpoint)
            except OSError as error:
                self._on_failed(checkpoint, error)
            else:
                if written:
                    self._on_written(checkpoint)
            finally:
                self._writing = False
                self._idle.unpark_all()

    async def flush(self) -> None:
        """Until everything submitted so far is written (or has failed). Needs
        :meth:`run` running."""
        while self._pending is not None or self._writing:
            await self._idle.park()
