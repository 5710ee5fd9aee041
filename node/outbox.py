"""The bounded queue of one outgoing link: what to send, and what to resend.

Messages get consecutive sequence numbers from 1 (per transport incarnation). A message
stays in the outbox until the peer's cumulative ACK covers it: first in ``unsent``, then,
once written to a connection, in ``in_flight``. When a connection breaks, :meth:`rewind`
puts everything in flight back in front of ``unsent``; the next connection starts with
the peer's ACK of what it already has and resends the rest, so every message arrives
exactly once (the receiver drops sequence numbers it has already delivered).

Bytes queued (unsent plus in flight) are bounded by ``bytes_max``; :meth:`push` refuses a
message past the bound rather than block, so one slow or dead peer costs a bounded
amount of memory and never stalls sends to the others. Pure: no trio, no clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    seq: int
    data: bytes
    #: not to be written before this time (trio clock seconds; 0.0 = at once)
    release_at: float


class AckOutOfRange(Exception):
    """The peer acknowledged a sequence number we never sent it."""


class Outbox:
    def __init__(self, bytes_max: int) -> None:
        self.bytes_max = bytes_max
        self.bytes_queued = 0
        #: highest sequence number the peer acknowledged (cumulatively)
        self.acked_seq = 0
        self._next_seq = 1
        #: highest sequence number ever handed to a connection
        self._sent_seq_max = 0
        self._in_flight: deque[OutboxEntry] = deque()
        self._unsent: deque[OutboxEntry] = deque()

    def __len__(self) -> int:
        return len(self._in_flight) + len(self._unsent)

    @property
    def next_seq(self) -> int:
        """The sequence number the next pushed message will get."""
        return self._next_seq

    def push(self, data: bytes, release_at: float = 0.0) -> int | None:
        """Queue ``data``; its sequence number, or None if it would exceed ``bytes_max``.

        A message larger than the whole bound is still accepted into an empty outbox, so
        that the bound never makes a legal message unsendable.
        """
        if self.bytes_queued and self.bytes_queued + len(data) > self.bytes_max:
            return None
        seq = self._next_seq
        self._next_seq += 1
        self._unsent.append(OutboxEntry(seq, data, release_at))
        self.bytes_queued += len(data)
        return seq

    def peek_unsent(self) -> OutboxEntry | None:
        return self._unsent[0] if self._unsent else None

    def take_unsent(self) -> OutboxEntry:
        """Move the next unsent message in flight (the caller is about to write it)."""
        entry = self._unsent.popleft()
        self._in_flight.append(entry)
        self._sent_seq_max = max(self._sent_seq_max, entry.seq)
        return entry

    def acknowledge(self, seq: int) -> int:
        """Apply a cumulative ACK; returns how many messages it released.

        Raises :class:`AckOutOfRange` for a sequence number never sent; an ACK at or
        below the current one is harmless and ignored.
        """
        if seq > self._sent_seq_max:
            raise AckOutOfRange(f"ack of seq {seq}, but only {self._sent_seq_max} were sent")
        released = 0
        for queue in (self._in_flight, self._unsent):
            while queue and queue[0].seq <= seq:
                self.bytes_queued -= len(queue.popleft().data)
                released += 1
        self.acked_seq = max(self.acked_seq, seq)
        return released

    def rewind(self) -> None:
        """The connection broke: everything in flight must be sent again."""
        self._unsent.extendleft(reversed(self._in_flight))
        self._in_flight.clear()
