"""The journal: what a node must not forget across a crash, on disk before it is promised.

The protocol core marks what must be durable (``Step.durable``: every SEND the node
accepts, its own included, and every READY it sends); the runner appends those messages
here and sends nothing of a step until :meth:`Journal.sync` has made them durable (etcd
raft's ``Ready`` contract; STYLE 13). After a crash, :meth:`Journal.load` gives them back
and the core restores them: the node resends its own signed payloads instead of signing
new ones, echoes and votes as it did, and still holds the payloads it echoed.

Layout, in ``folder`` (``<checkpoint_dir>/node-<id>.journal/``):

- ``session``: the hex session id the journal belongs to (a journal is never mixed
  across sessions: start-up refuses one of another session, like a checkpoint);
- ``step-0000000012.log``: the records of step 12, each
  ``u32 LE length | 16-byte BLAKE3 of the data | data`` (an encoded protocol message,
  read back with :mod:`protocol.codec`: nothing is unpickled).

Files of steps the node no longer serves are deleted (:meth:`Journal.prune_below`), so the
journal holds about ``steps_retained + 1`` steps of traffic. A crash in the middle of an
append leaves a torn last record; since nothing was sent before its ``sync``, that record
was never promised to anyone and :meth:`load` drops it (and truncates it away). A bad
record followed by more data is corruption, and is refused.

Thread safety: :meth:`append` runs on the event loop and :meth:`sync` in a worker thread
(an fsync may take milliseconds); a lock guards the file table, and files are closed and
deleted only inside :meth:`sync`, never under a running fsync.
"""

from __future__ import annotations

import os
import re
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import blake3

_RECORD_HEADER = struct.Struct("<I16s")
_CHECK_BYTES: Final = 16
_FILE_NAME = re.compile(r"^step-(\d{10})\.log$")
_SESSION_FILE: Final = "session"
#: the largest record accepted on load (a frame is at most 64 MiB + 64 KiB by default)
RECORD_BYTES_MAX: Final = 1 << 30


class JournalError(Exception):
    """The journal cannot be used; the message is one line an operator can act on."""


@dataclass(frozen=True, slots=True)
class JournalStatistics:
    records_appended: int
    bytes_appended: int
    syncs: int
    files: int
    torn_records_dropped: int


class Journal:
    def __init__(self, folder: Path, session_id_hex: str) -> None:
        self.folder = Path(folder)
        self.session_id_hex = session_id_hex
        self._lock = threading.Lock()
        self._fds: dict[int, int] = {}  # step -> open fd, appended to
        self._dirty: set[int] = set()  # steps appended to since the last sync
        self._folder_dirty = False  # a file was created since the last sync
        self._prune_floor = 0
        self._records = 0
        self._bytes = 0
        self._syncs = 0
        self._torn = 0

    # ------------------------------------------------------------------ start-up

    def load(self) -> list[bytes]:
        """Every record, by step then in order of writing; [] for a journal not made yet.

        Raises :class:`JournalError` for a journal of another session or a corrupt one."""
        session_file = self.folder / _SESSION_FILE
        if not self.folder.exists():
            return []
        try:
            owner = session_file.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            owner = None
        except (OSError, UnicodeDecodeError) as error:
            raise JournalError(f"{session_file}: unreadable: {error}") from None
        records: list[bytes] = []
        steps = self._step_files()
        if owner is None and steps:
            raise JournalError(f"{self.folder}: journal files without a session file")
        if owner is not None and owner != self.session_id_hex:
            raise JournalError(
                f"{self.folder}: journal of another session or roster ({owner[:16]}..., ours "
                f"is {self.session_id_hex[:16]}...); move it away (or use another "
                f"checkpoint_dir) to start afresh"
            )
        for step in sorted(steps):
            records += self._load_file(steps[step])
        return records

    def open(self) -> None:
        """Create the folder and its session file (durably) if they do not exist yet."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        session_file = self.folder / _SESSION_FILE
        if not session_file.exists():
            temp = self.folder / f".{_SESSION_FILE}.tmp"
            with open(temp, "w", encoding="ascii") as file:
                file.write(self.session_id_hex + "\n")
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, session_file)
            _fsync_folder(self.folder)

    # ------------------------------------------------------------------ at run time

    def append(self, step: int, data: bytes) -> None:
        """Append one record to the file of ``step`` (durable once :meth:`sync` returns)."""
        record = _RECORD_HEADER.pack(len(data), blake3.blake3(data).digest(_CHECK_BYTES)) + data
        with self._lock:
            fd = self._fds.get(step)
            if fd is None:
                path = self.folder / f"step-{step:010d}.log"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                self._fds[step] = fd
                self._folder_dirty = True
            _write_all(fd, record)
            self._dirty.add(step)
            self._records += 1
            self._bytes += len(record)

    def sync(self) -> None:
        """Make everything appended so far durable; then drop files below the prune floor.

        Call it from a worker thread: it fsyncs."""
        with self._lock:
            fds = [self._fds[step] for step in sorted(self._dirty)]
            self._dirty.clear()
            folder_dirty, self._folder_dirty = self._folder_dirty, False
        for fd in fds:
            os.fdatasync(fd)
        if folder_dirty:
            _fsync_folder(self.folder)
        self._syncs += 1
        with self._lock:
            stale = [step for step in self._fds if step < self._prune_floor]
            for step in stale:
                if step not in self._dirty:
                    os.close(self._fds.pop(step))
        for path_step, path in self._step_files().items():
            if path_step < self._prune_floor and path_step not in self._fds:
                path.unlink(missing_ok=True)

    def prune_below(self, step: int) -> None:
        """Steps below ``step`` are no longer served: their files go at the next sync."""
        self._prune_floor = max(self._prune_floor, step)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def statistics(self) -> JournalStatistics:
        return JournalStatistics(
            self._records, self._bytes, self._syncs, len(self._step_files()), self._torn
        )

    # ------------------------------------------------------------------ internals

    def _step_files(self) -> dict[int, Path]:
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return {}
        files = {}
        for name in names:
            match = _FILE_NAME.match(name)
            if match:
                files[int(match.group(1))] = self.folder / name
        return files

    def _load_file(self, path: Path) -> list[bytes]:
        try:
            data = path.read_bytes()
        except OSError as error:
            raise JournalError(f"{path}: unreadable: {error.strerror}") from None
        records: list[bytes] = []
        offset = 0
        while offset < len(data):
            end = offset + _RECORD_HEADER.size
            if end <= len(data):
                length, check = _RECORD_HEADER.unpack_from(data, offset)
                if length <= RECORD_BYTES_MAX and end + length <= len(data):
                    body = data[end : end + length]
                    if blake3.blake3(body).digest(_CHECK_BYTES) == check:
                        records.append(body)
                        offset = end + length
                        continue
                    if end + length < len(data):
                        raise JournalError(
                            f"{path}: corrupt record at byte {offset} (checksum); the journal "
                            f"cannot be trusted: move the checkpoint folder away to start afresh"
                        )
            # A torn last record: never synced, so never sent. Cut it off.
            self._torn += 1
            with open(path, "r+b") as file:
                file.truncate(offset)
                file.flush()
                os.fsync(file.fileno())
            break
        return records


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
