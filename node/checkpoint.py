"""Checkpoints: a node's learning state every K steps, written atomically, resumed on restart.

A checkpoint holds what the node needs to rejoin where it left off: the trainer's state
(model, momentum, sampler; see :meth:`node.trainer.Trainer.state_dict`), the next step to
run, and what it belongs to: the roster's session id, the node's public key and a digest of
the task and data split (:meth:`node.config.NodeConfig.resume_digest`). A checkpoint that
belongs to another session, another node or another model is refused with one clear line
rather than resumed into nonsense. Keys are not in it: a restart never makes a new key.

Written with ``torch.save`` to a temporary file in the same folder, fsynced, then renamed
over the old one with ``os.replace`` (atomic on POSIX) and the folder fsynced: a crash at any
instant leaves either the previous checkpoint or the new one, never a torn file. Read with
``torch.load(..., weights_only=True)``: nothing is unpickled but tensors and plain containers.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import torch

#: bumped when the layout below changes
CHECKPOINT_FORMAT: Final = 1


class CheckpointError(Exception):
    """A checkpoint cannot be used; the message is one line an operator can act on."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    #: the next step to run (steps 0 .. step-1 are done)
    step: int
    session_id_hex: str
    public_key_b64: str
    resume_digest: str
    trainer_state: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CheckpointStatistics:
    saves: int
    last_step: int | None
    last_size_bytes: int


class CheckpointStore:
    """The checkpoint of one node, at ``folder/node-<id>.pt``."""

    def __init__(self, folder: Path, node_id: int) -> None:
        self.folder = Path(folder)
        self.path = self.folder / f"node-{node_id}.pt"
        self._saves = 0
        self._last_step: int | None = None
        self._last_size_bytes = 0
        #: one save at a time (the node saves from its checkpoint writer's worker thread,
        #: and its last checkpoint from the event loop)
        self._lock = threading.Lock()

    def save(self, checkpoint: Checkpoint) -> bool:
        """Write ``checkpoint`` atomically (temp file + fsync + rename + fsync of the
        folder); whether it was written.

        Thread-safe; a checkpoint older than the one this store last wrote is skipped
        (False), so a slow write of an earlier step can never replace a later one."""
        with self._lock:
            if self._last_step is not None and checkpoint.step < self._last_step:
                return False
            self._save(checkpoint)
            return True

    def _save(self, checkpoint: Checkpoint) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {
            "format": CHECKPOINT_FORMAT,
            "step": checkpoint.step,
            "session_id": checkpoint.session_id_hex,
            "public_key": checkpoint.public_key_b64,
            "resume_digest": checkpoint.resume_digest,
            "trainer": checkpoint.trainer_state,
        }
        fd, temp_name = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as file:
                torch.save(record, file)
                file.flush()
                os.fsync(file.fileno())
                size_bytes = file.tell()
            os.replace(temp_name, self.path)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
        _fsync_folder(self.folder)
        self._saves += 1
        self._last_step = checkpoint.step
        self._last_size_bytes = size_bytes

    def load(self) -> Checkpoint | None:
        """The saved checkpoint, None if there is none; :class:`CheckpointError` if unusable."""
        try:
            with open(self.path, "rb") as file:
                record = torch.load(file, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            return None
        except pickle.UnpicklingError:
            raise CheckpointError(
                f"{self.path}: unreadable checkpoint: it holds objects other than tensors and "
                f"plain data, which are never loaded; move it away to start from step 0"
            ) from None
        except Exception as error:  # torch.load fails in many ways on a torn or foreign file
            reason = (str(error).strip().splitlines() or [""])[0]
            raise CheckpointError(
                f"{self.path}: unreadable checkpoint ({type(error).__name__}: {reason}); "
                f"move it away to start from step 0"
            ) from None
        return _parse(record, self.path)

    def check_belongs(
        self, checkpoint: Checkpoint, *, session_id_hex: str, public_key_b64: str, digest: str
    ) -> None:
        """Raise :class:`CheckpointError` unless ``checkpoint`` is this node's, this session's
        and this task's."""
        hint = "move it away (or use another checkpoint_dir) to start afresh"
        if checkpoint.session_id_hex != session_id_hex:
            raise CheckpointError(
                f"{self.path}: checkpoint of another session or roster "
                f"({checkpoint.session_id_hex[:16]}..., ours is {session_id_hex[:16]}...); {hint}"
            )
        if checkpoint.public_key_b64 != public_key_b64:
            raise CheckpointError(
                f"{self.path}: checkpoint of another node key ({checkpoint.public_key_b64}); {hint}"
            )
        if checkpoint.resume_digest != digest:
            raise CheckpointError(
                f"{self.path}: checkpoint of another task, data split or node id; {hint}"
            )

    def statistics(self) -> CheckpointStatistics:
        return CheckpointStatistics(self._saves, self._last_step, self._last_size_bytes)


def _parse(record: object, path: Path) -> Checkpoint:
    if not isinstance(record, dict) or record.get("format") != CHECKPOINT_FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise CheckpointError(
            f"{path}: not a jungle checkpoint of format {CHECKPOINT_FORMAT} (found {found!r})"
        )
    fields = {
        "step": int,
        "session_id": str,
        "public_key": str,
        "resume_digest": str,
        "trainer": dict,
    }
    for name, kind in fields.items():
        if not isinstance(record.get(name), kind):
            raise CheckpointError(f"{path}: checkpoint field {name!r} is missing or malformed")
    if record["step"] < 0:
        raise CheckpointError(f"{path}: checkpoint step {record['step']} is negative")
    return Checkpoint(
        step=record["step"],
        session_id_hex=record["session_id"],
        public_key_b64=record["public_key"],
        resume_digest=record["resume_digest"],
        trainer_state=record["trainer"],
    )


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX: the directory entry lives in the folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return  # platforms without directory fds: the rename is still atomic
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
