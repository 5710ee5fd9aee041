"""Who may hold a pending handshake: limits that apply before anybody has authenticated.

A stranger who knows a node's address but no roster key must not be able to keep honest
peers out. Before a connection authenticates it gets almost nothing (DESIGN 5):

- **Room reserved for the roster.** Connections from the addresses in the roster have
  their own pool of ``handshakes_reserved_for_roster`` slots; strangers elsewhere never
  touch it. (A stranger behind a roster member's own address shares that pool, which is
  still bounded and evicts its oldest, below.)
- **Caps per source.** No source (an IPv4 address, an IPv6 /64) holds more than
  ``handshakes_per_source_max`` slots of a pool; a new connection from it replaces its
  oldest one.
- **The oldest of the greediest goes first.** A full pool makes room for the newest
  connection instead of refusing it, by evicting the oldest pending handshake of a source
  holding the most slots: a source holding idle connections (a stranger, or a Byzantine
  roster member flooding the roster's room) loses its own to whoever connects next, and an
  honest dialer, which holds one slot, sends its HELLO at once and finishes within a round
  trip or two, is not evicted for it. Among sources holding equally many, the oldest goes.
- **A rate limit per source.** Sources outside the roster get a token bucket of
  ``handshakes_per_source_per_s`` connections a second (burst: the same number); past it a
  connection is closed before anything is read from it.
- **A short deadline** for the first HELLO (``hello_timeout_s``, node/inbound_link.py).

All of this is pure bookkeeping (no trio, no sockets): :meth:`Admission.admit` says which
pending handshakes to cancel; the caller cancels them.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

#: sources whose rate buckets we remember (the least recently seen are forgotten)
RATE_SOURCES_MAX: Final = 4096


def source_of(host: str) -> str:
    """What limits are counted by: an IPv4 address, or the /64 of an IPv6 address
    (one host owns a whole /64); IPv4-mapped IPv6 addresses count as IPv4."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass(frozen=True, slots=True)
class Ticket:
    """One admitted pending handshake."""

    number: int
    source: str
    roster: bool


@dataclass(slots=True)
class _Pool:
    capacity: int
    per_source_max: int
    pending: OrderedDict[int, Ticket] = field(default_factory=OrderedDict)

    def make_room(self, source: str) -> list[Ticket]:
        """The tickets to evict so that one more from ``source`` fits: its own oldest if
        it is at its cap; else, in a full pool, the oldest of a source holding the most
        (the newcomer counted with its own), so that sources flooding a pool churn their
        own connections and never the one or two of a peer that is reconnecting."""
        same = [t for t in self.pending.values() if t.source == source]
        if len(same) >= self.per_source_max:
            return same[: len(same) - self.per_source_max + 1]
        if len(self.pending) < self.capacity:
            return []
        held = Counter(t.source for t in self.pending.values())
        held[source] += 1
        most = max(held.values())
        return [next(t for t in self.pending.values() if held[t.source] == most)]


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated_s: float


@dataclass(frozen=True, slots=True)
class AdmissionStatistics:
    pending_roster: int
    pending_strangers: int
    admitted: int
    evicted: int
    rate_limited: int


class Admission:
    def __init__(
        self,
        roster_hosts: Iterable[str],
        *,
        strangers_max: int,
        roster_max: int,
        per_source_max: int,
        rate_per_s: float,
    ) -> None:
        self._roster_sources = frozenset(source_of(host) for host in roster_hosts)
        self._pools = {
            True: _Pool(roster_max, per_source_max),
            False: _Pool(strangers_max, per_source_max),
        }
        self._rate_per_s = rate_per_s
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._numbers = itertools.count()
        self._admitted = 0
        self._evicted = 0
        self._rate_limited = 0

    def is_roster_source(self, host: str) -> bool:
        return source_of(host) in self._roster_sources

    def admit(self, host: str, now_s: float) -> tuple[Ticket | None, list[Ticket]]:
        """(a ticket, or None if the source is over its rate; the tickets to evict)."""
        source = source_of(host)
        roster = source in self._roster_sources
        if not roster and not self._take_token(source, now_s):
            self._rate_limited += 1
            return None, []
        pool = self._pools[roster]
        evicted = pool.make_room(source)
        for ticket in evicted:
            del pool.pending[ticket.number]
        self._evicted += len(evicted)
        ticket = Ticket(next(self._numbers), source, roster)
        pool.pending[ticket.number] = ticket
        self._admitted += 1
        return ticket, evicted

    def release(self, ticket: Ticket) -> None:
        """The handshake ended (authenticated, failed or evicted); idempotent."""
        self._pools[ticket.roster].pending.pop(ticket.number, None)

    def statistics(self) -> AdmissionStatistics:
        return AdmissionStatistics(
            pending_roster=len(self._pools[True].pending),
            pending_strangers=len(self._pools[False].pending),
            admitted=self._admitted,
            evicted=self._evicted,
            rate_limited=self._rate_limited,
        )

    def _take_token(self, source: str, now_s: float) -> bool:
        burst = max(1.0, self._rate_per_s)
        bucket = self._buckets.pop(source, None)
        if bucket is None:
            bucket = _Bucket(burst, now_s)
        else:
            elapsed_s = max(0.0, now_s - bucket.updated_s)
            bucket.tokens = min(burst, bucket.tokens + elapsed_s * self._rate_per_s)
            bucket.updated_s = now_s
        self._buckets[source] = bucket  # most recently seen last
        while len(self._buckets) > RATE_SOURCES_MAX:
            self._buckets.popitem(last=False)
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True
