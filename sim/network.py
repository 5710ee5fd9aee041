"""The simulator's virtual network: every node's transport, one event heap, virtual time.

Each simulated node talks through a :class:`VirtualEndpoint`, which implements the same
:class:`~node.interfaces.Transport` as the real TCP transport. ``send_nowait`` asks the
:class:`~sim.schedulers.Scheduler` for the message's delay and pushes it on the network's
single heap; :meth:`VirtualNetwork.run` pops events one at a time and calls the destination
runner's ``deliver``. The whole simulation is that one loop, sleeping in trio virtual time
(``MockClock(autojump_threshold=0)``) whenever the next event lies in the future.

Determinism (DESIGN section 6) comes from structure, not luck:

- a message's delay is drawn from its own key ``(seed, src, dst, seq)``, ``seq`` counting
  per link, so it never depends on the order other messages were sent in;
- the event queue (:mod:`sim.event_queue`) orders events by ``(time_s, dst, src, seq,
  copy)``, a total order (timers use
  ``src = -1`` and their timer id as ``seq``), so ties break the same way on every run;
- one event is handled at a time, and every delay is at least :data:`MIN_DELAY_S`, so a
  message is never delivered in the instant it was sent;
- a blake3 trace digest folds in every event and every recorded output: same seed, same
  digest. Each event adds ``pack("<Bdqqqqq", event, time_s, dst, src, seq, copy, size)``,
  then, for deliveries and outputs, the bytes themselves.

With bandwidth (:mod:`sim.bandwidth`), a message first waits its turn on the sender's
uplink and is asked its delay as of the time it leaves it; with a limited downlink it
reaches the destination's downlink queue as an event of its own (``src`` below
:data:`_DOWNLINK_SRC`), which is served in order of arrival and then delivers it. Without
bandwidth none of this runs: the same events, the same digest.
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import blake3
import numpy as np
import trio

from protocol.messages import InstanceId
from sim.bandwidth import Bandwidth, LinkQueues
from sim.delays import KeyedUniforms, LinkUniforms
from sim.endpoint import VirtualEndpoint, VirtualTransportStatistics
from sim.event_queue import Event, EventQueue
from sim.schedulers import COPIES_MAX, MessageMeta, Scheduler

__all__ = [
    "MIN_DELAY_S",
    "NetworkStatistics",
    "RunResult",
    "StopReason",
    "VirtualEndpoint",
    "VirtualNetwork",
    "VirtualTransportStatistics",
]

#: Floor on every delay, so that nothing is delivered in the instant it was sent.
MIN_DELAY_S = 1e-6
#: Events handled at one virtual instant between two trio checkpoints (cancellation points).
_EVENTS_PER_CHECKPOINT = 1024
#: Key suffix of the draw that decides a message's number of copies; copy k >= 1 draws
#: its delay with suffix k, the original with none.
_COPIES_DRAW = -1
_TIMER_SRC = -1
#: ``src`` of a modelled broadcast's delivery event (broadcast fidelity)
_MODELLED_SRC = -2
#: a message from ``src`` that reached a limited downlink: an event with ``src`` set to
#: ``_DOWNLINK_SRC - src``, which queues it there (then it is delivered)
_DOWNLINK_SRC = -3

# Trace digest event markers.
_DELIVERED, _DUPLICATE, _DISCARDED, _TIMER, _OUTPUT, _MODELLED = range(6)
_TRACE_RECORD = struct.Struct("<Bdqqqqq")
#: Payloads up to this size join the trace buffer; larger ones are hashed in place.
_TRACE_JOIN_BYTES_MAX = 4096
#: The trace buffer is hashed (and emptied) once it holds this much.
_TRACE_BUFFER_BYTES = 1 << 16

Classifier = Callable[[bytes], tuple[str, tuple[int, ...]]]


def _unclassified(data: bytes) -> tuple[str, tuple[int, ...]]:
    return "msg", ()


class StopReason(enum.Enum):
    """Why :meth:`VirtualNetwork.run` returned."""

    UNTIL = "until"  #: the caller's ``until()`` became true
    QUIESCENT = "quiescent"  #: no message in flight and no timer left
    TIME_LIMIT = "time_limit"  #: the next event lies past ``time_limit_s``


@dataclass(frozen=True, slots=True)
class RunResult:
    """The outcome of one :meth:`VirtualNetwork.run` call; counts are for that call."""

    reason: StopReason
    now_s: float
    events_processed: int
    messages_delivered: int


@dataclass(frozen=True, slots=True)
class NetworkStatistics:
    """Counters of the whole network since it was built."""

    now_s: float
    events_processed: int
    messages_sent: int
    bytes_sent: int
    messages_delivered: int
    bytes_delivered: int
    #: extra copies the scheduler asked for (each is dropped at its destination)
    copies_injected: int
    duplicates_dropped: int
    #: messages that reached a crashed node
    messages_discarded: int
    timer_firings: int
    #: events (messages, copies, timers) still on the heap
    events_pending: int
    bytes_sent_by_kind: Mapping[str, int]
    messages_sent_by_kind: Mapping[str, int]


def _add(counts: dict[str, int], key: str, amount: int) -> None:
    counts[key] = counts.get(key, 0) + amount


@dataclass(frozen=True, slots=True)
class _Timer:
    node: int
    interval_s: float
    start_s: float
    fn: Callable[[float], None]


class VirtualNetwork:
    """n nodes, reliable links with scheduled delays, one delivery loop in virtual time.

    ``classify`` maps message bytes to ``(kind, tag)`` for the scheduler and the per-kind
    counters; it is the engine's (it knows the codec) and must not raise. ``bandwidth``
    limits the nodes' uplinks and downlinks (:mod:`sim.bandwidth`); None or unlimited:
    every message takes its scheduler's delay alone.
    """

    def __init__(
        self,
        n: int,
        seed: int,
        scheduler: Scheduler,
        classify: Classifier | None = None,
        bandwidth: Bandwidth | None = None,
    ) -> None:
        if n < 1:
            raise ValueError(f"a network needs at least one node, got n={n}")
        self.n = n
        self.seed = seed
        self.scheduler = scheduler
        self._classify: Classifier = classify or _unclassified
        self._draw = KeyedUniforms(seed)
        self._draw_message = LinkUniforms(seed, n)
        self._may_copy = scheduler.may_duplicate
        self._delay_of_draw = scheduler.delay_of_draw
        self._endpoints = [VirtualEndpoint(self, node) for node in range(n)]
        self._crashed = [False] * n
        self._events = EventQueue()
        self._timers: dict[int, _Timer] = {}
        self._next_timer_id = 0
        self._now_s = 0.0
        self._trace = blake3.blake3()
        self._trace_buffer = bytearray()  # hashed in chunks: see _trace_add
        self._copies_injected = 0
        self._duplicates_dropped = 0
        self._messages_discarded = 0
        self._timer_firings = 0
        self._cancelled_firings = 0  # timer events that found their timer gone
        self._downlink_arrivals = 0  # messages queued at a limited downlink
        #: modelled broadcasts in flight: id -> [instance id, deliveries left]
        self._modelled: dict[int, list[Any]] = {}
        self._next_modelled = 0
        #: what modelled broadcasts would have cost each node on the wire (broadcast
        #: fidelity: its SENDs' payloads, its echoes and readies), in bytes
        self._modelled_bytes_sent = np.zeros(n, dtype=np.int64)
        self._modelled_delivered = 0
        self._modelled_handlers: list[Callable[[InstanceId, bytes], None] | None] = []
        #: the links' queues, when some link has a finite rate
        self.links: LinkQueues | None = None
        if bandwidth is not None and bandwidth.limited:
            self.links = LinkQueues(n, bandwidth)

    @property
    def now_s(self) -> float:
        """Virtual seconds since the network was built: the time of the current event."""
        return self._now_s

    def endpoint(self, node: int) -> VirtualEndpoint:
        """Node ``node``'s transport (the same object on every call)."""
        return self._endpoints[node]

    def is_crashed(self, node: int) -> bool:
        return self._crashed[node]

    def crash(self, node: int) -> None:
        """Stop ``node`` for good: its timers stop, messages that reach it are discarded,
        and what it tries to send is dropped. Messages it sent before stay in flight."""
        self._crashed[node] = True

    def call_every(
        self,
        node: int,
        interval_s: float,
        fn: Callable[[float], None],
        start_s: float | None = None,
    ) -> int:
        """Call ``fn(now_s)`` at ``start_s``, ``start_s + interval_s``, ... on ``node``'s
        behalf, until the node crashes or the timer is cancelled; returns the timer id.

        ``start_s`` defaults to one interval from now. Firing k happens at exactly
        ``start_s + k * interval_s`` (no drift). At one instant, a node's timers fire
        before its messages are delivered, in the order they were created.
        """
        if not 0 <= node < self.n:
            raise ValueError(f"no node {node} (n={self.n})")
        if not (math.isfinite(interval_s) and interval_s > 0.0):
            raise ValueError(f"interval_s must be finite and > 0, got {interval_s}")
        start_s = self._now_s + interval_s if start_s is None else start_s
        if not (math.isfinite(start_s) and start_s >= self._now_s):
            raise ValueError(f"start_s must be finite and >= now ({self._now_s}), got {start_s}")
        timer_id = self._next_timer_id
        self._next_timer_id += 1
        self._timers[timer_id] = _Timer(node, interval_s, start_s, fn)
        self._events.push((start_s, node, _TIMER_SRC, timer_id, 0, b"", ""))
        return timer_id

    def cancel_timer(self, timer_id: int) -> None:
        """Stop a timer; a no-op if it is already gone."""
        self._timers.pop(timer_id, None)

    def schedule_broadcast(
        self,
        iid: InstanceId,
        payload: bytes,
        deliver_at_s: np.ndarray,
        bytes_sent: np.ndarray,
    ) -> None:
        """A modelled reliable broadcast (broadcast fidelity, sim/broadcast_model.py):
        node j's delivery of ``payload`` at ``deliver_at_s[j]`` (inf: never), and the
        bytes each node would have sent for it (int64 arrays of n)."""
        ident = self._next_modelled
        self._next_modelled += 1
        events: list[Event] = [
            (at_s, dst, _MODELLED_SRC, ident, 0, payload, "broadcast")
            for dst, at_s in enumerate(deliver_at_s.tolist())
            if at_s != math.inf
        ]
        self._modelled_bytes_sent += bytes_sent
        tag = iid.tag
        record = _TRACE_RECORD.pack(
            _MODELLED, self._now_s, iid.origin, tag.step, tag.phase, tag.round, tag.kind
        )
        self._trace_add(record, payload)
        if events:
            self._modelled[ident] = [iid, len(events)]
            self._events.push_many(events)

    def modelled_bytes_sent(self, node: int) -> int:
        """Bytes ``node`` would have sent for the modelled broadcasts (broadcast fidelity)."""
        return int(self._modelled_bytes_sent[node])

    def record_output(self, node: int, data: bytes) -> None:
        """Fold a node's output (a delivered value, a model digest) into the trace digest."""
        record = _TRACE_RECORD.pack(_OUTPUT, self._now_s, node, _TIMER_SRC, 0, 0, len(data))
        self._trace_add(record, data)

    def trace_digest(self) -> str:
        """Hex digest of every event and output so far; equal seeds give equal digests."""
        self._trace_flush()
        return self._trace.hexdigest()

    def _trace_add(self, record: bytes, data: bytes = b"") -> None:
        """Append to the trace. Records and small payloads gather in a buffer hashed 64 KiB
        at a time (half the cost of one ``update`` per piece); the digest is the same,
        blake3 being a stream hash. Large payloads are hashed in place."""
        buffer = self._trace_buffer
        buffer += record
        if len(data) > _TRACE_JOIN_BYTES_MAX:
            self._trace_flush()
            self._trace.update(data)
            return
        buffer += data
        if len(buffer) >= _TRACE_BUFFER_BYTES:
            self._trace_flush()

    def _trace_flush(self) -> None:
        self._trace.update(self._trace_buffer)
        self._trace_buffer.clear()

    def statistics(self) -> NetworkStatistics:
        bytes_by_kind: dict[str, int] = {}
        messages_by_kind: dict[str, int] = {}
        for endpoint in self._endpoints:
            for kind, (count, size_bytes) in endpoint._sent_by_kind.items():
                _add(messages_by_kind, kind, count)
                _add(bytes_by_kind, kind, size_bytes)
        return NetworkStatistics(
            now_s=self._now_s,
            events_processed=self._events_processed(),
            messages_sent=sum(messages_by_kind.values()),
            bytes_sent=sum(bytes_by_kind.values()),
            messages_delivered=self._messages_delivered(),
            bytes_delivered=sum(sum(e._bytes_received_from) for e in self._endpoints),
            copies_injected=self._copies_injected,
            duplicates_dropped=self._duplicates_dropped,
            messages_discarded=self._messages_discarded,
            timer_firings=self._timer_firings,
            events_pending=len(self._events),
            bytes_sent_by_kind=dict(sorted(bytes_by_kind.items())),
            messages_sent_by_kind=dict(sorted(messages_by_kind.items())),
        )

    # Totals are summed when asked for, not counted per event: the delivery path is hot.

    def _messages_delivered(self) -> int:
        return sum(sum(endpoint._messages_received_from) for endpoint in self._endpoints)

    def _events_processed(self) -> int:
        handled = (
            self._duplicates_dropped
            + self._messages_discarded
            + self._timer_firings
            + self._modelled_delivered
            + self._downlink_arrivals
        )
        return self._messages_delivered() + handled + self._cancelled_firings

    def _checked_delay_s(self, meta: MessageMeta, u: float) -> float:
        return self._floored_delay_s(meta, self.scheduler.delay_s(meta, u))

    def _floored_delay_s(self, meta: MessageMeta, delay_s: float) -> float:
        if not 0.0 <= delay_s < math.inf:
            raise ValueError(f"{self.scheduler!r} gave delay {delay_s!r} s to {meta}")
        return delay_s if delay_s > MIN_DELAY_S else MIN_DELAY_S

    def _schedule(
        self,
        endpoint: VirtualEndpoint,
        dsts: Sequence[int],
        kind: str,
        tag: tuple[int, ...],
        data: bytes,
    ) -> None:
        """Give ``data`` from ``endpoint`` to each of ``dsts`` the next seq of its link and
        push it (and the scheduler's extra copies of it) on the event queue.

        When the scheduler's delay is a function of the draw alone
        (:attr:`~sim.schedulers.Scheduler.delay_of_draw`), no :class:`MessageMeta` is
        built, which is most of the scheduling cost of a message.
        """
        if self.links is not None:
            self._schedule_limited(self.links, endpoint, dsts, kind, tag, data)
            return
        now_s = self._now_s
        src = endpoint.node_id
        sent_to = endpoint._messages_sent_to
        bytes_to = endpoint._bytes_sent_to
        size_bytes = len(data)
        draw = self._draw_message
        delay_of_draw = self._delay_of_draw
        events: list[Event] = []
        push = events.append
        for dst in dsts:
            meta: MessageMeta | None = None
            seq = sent_to[dst]
            sent_to[dst] = seq + 1
            bytes_to[dst] += size_bytes
            u = draw(src, dst, seq)
            if delay_of_draw is None:
                meta = MessageMeta(src, dst, seq, kind, tag, size_bytes, now_s)
                delay_s = self.scheduler.delay_s(meta, u)
            else:
                delay_s = delay_of_draw(u)
            if not MIN_DELAY_S <= delay_s < math.inf:  # also NaN
                meta = MessageMeta(src, dst, seq, kind, tag, size_bytes, now_s)
                delay_s = self._floored_delay_s(meta, delay_s)
            push((now_s + delay_s, dst, src, seq, 0, data, kind))
            if self._may_copy:
                meta = meta or MessageMeta(src, dst, seq, kind, tag, size_bytes, now_s)
                self._push_copies(meta, data)
        self._events.push_many(events)

    def _schedule_limited(
        self,
        links: LinkQueues,
        endpoint: VirtualEndpoint,
        dsts: Sequence[int],
        kind: str,
        tag: tuple[int, ...],
        data: bytes,
    ) -> None:
        """:meth:`_schedule` with bandwidth: the copies for ``dsts`` queue on the sender's
        uplink in order; each is asked its delay as of when it leaves, and goes to its
        destination's downlink queue first if that one is limited."""
        now_s = self._now_s
        src = endpoint.node_id
        sent_to = endpoint._messages_sent_to
        bytes_to = endpoint._bytes_sent_to
        size_bytes = len(data)
        draw = self._draw_message
        delay_of_draw = self._delay_of_draw
        start_s, transmit_s = links.send(src, now_s, size_bytes, len(dsts))
        down_limited = links.down_s_per_byte.tolist() if links.downlink_limited else None
        events: list[Event] = []
        for index, dst in enumerate(dsts):
            seq = sent_to[dst]
            sent_to[dst] = seq + 1
            bytes_to[dst] += size_bytes
            leave_s = start_s + (index + 1) * transmit_s
            meta = MessageMeta(src, dst, seq, kind, tag, size_bytes, leave_s)
            u = draw(src, dst, seq)
            if delay_of_draw is None:
                delay_s = self._checked_delay_s(meta, u)
            else:
                delay_s = self._floored_delay_s(meta, delay_of_draw(u))
            via = _DOWNLINK_SRC - src if down_limited is not None and down_limited[dst] else src
            events.append((leave_s + delay_s, dst, via, seq, 0, data, kind))
            if self._may_copy:
                self._push_copies(meta, data, via)
        self._events.push_many(events)

    def _push_copies(self, meta: MessageMeta, data: bytes, via: int | None = None) -> None:
        """The scheduler's extra copies of one message, each with its own delay; ``via``:
        the events' ``src`` (a downlink queue's marker), the message's source if None."""
        src, dst, seq, kind, now_s = meta.src, meta.dst, meta.seq, meta.kind, meta.send_time_s
        copies = self.scheduler.copies(meta, self._draw(src, dst, seq, _COPIES_DRAW))
        if type(copies) is not int or not 1 <= copies <= COPIES_MAX:
            raise ValueError(f"{self.scheduler!r} gave {copies!r} copies (1..{COPIES_MAX})")
        event_src = src if via is None else via
        for copy in range(1, copies):
            delay_s = self._checked_delay_s(meta, self._draw(src, dst, seq, copy))
            self._events.push((now_s + delay_s, dst, event_src, seq, copy, data, kind))
            self._copies_injected += 1

    def _fire_timer(self, time_s: float, node: int, timer_id: int, firing: int) -> None:
        timer = self._timers.get(timer_id)
        if timer is None:
            self._cancelled_firings += 1
            return
        if self._crashed[node]:
            del self._timers[timer_id]
            self._cancelled_firings += 1
            return
        self._timer_firings += 1
        self._trace_add(_TRACE_RECORD.pack(_TIMER, time_s, node, _TIMER_SRC, timer_id, firing, 0))
        next_s = timer.start_s + (firing + 1) * timer.interval_s
        self._events.push((next_s, node, _TIMER_SRC, timer_id, firing + 1, b"", ""))
        timer.fn(time_s)

    def _process(self, event: Event, handlers: list[Callable[[int, bytes], None] | None]) -> None:
        time_s, dst, src, seq, copy, data, kind = event
        if src < 0:
            if src == _TIMER_SRC:
                self._fire_timer(time_s, dst, seq, copy)
            elif src == _MODELLED_SRC:
                self._deliver_modelled(time_s, dst, seq, data)
            else:  # the whole message reached a limited downlink: queue it there
                assert self.links is not None
                self._downlink_arrivals += 1
                done_s = self.links.receive(dst, time_s, len(data))
                self._events.push((done_s, dst, _DOWNLINK_SRC - src, seq, copy, data, kind))
            return
        if self._crashed[dst]:
            self._messages_discarded += 1
            self._trace_add(_TRACE_RECORD.pack(_DISCARDED, time_s, dst, src, seq, copy, len(data)))
            return
        endpoint = self._endpoints[dst]
        # Without copies every (src, dst, seq) is delivered once: nothing to deduplicate.
        if self._may_copy and not endpoint._accept(src, seq):
            endpoint._duplicates_dropped += 1
            self._duplicates_dropped += 1
            self._trace_add(_TRACE_RECORD.pack(_DUPLICATE, time_s, dst, src, seq, copy, len(data)))
            return
        endpoint._messages_received_from[src] += 1
        size_bytes = len(data)
        endpoint._bytes_received_from[src] += size_bytes
        counts = endpoint._received_by_kind.get(kind)
        if counts is None:
            counts = endpoint._received_by_kind[kind] = [0, 0]
        counts[0] += 1
        counts[1] += size_bytes
        self._trace_add(
            _TRACE_RECORD.pack(_DELIVERED, time_s, dst, src, seq, copy, size_bytes), data
        )
        handler = handlers[dst]
        assert handler is not None  # run() checked every live node has one
        handler(src, data)

    def _deliver_modelled(self, time_s: float, dst: int, ident: int, payload: bytes) -> None:
        pending = self._modelled[ident]
        iid: InstanceId = pending[0]
        pending[1] -= 1
        if not pending[1]:
            del self._modelled[ident]
        if self._crashed[dst]:
            self._messages_discarded += 1
            return
        self._modelled_delivered += 1
        self._trace_add(_TRACE_RECORD.pack(_DELIVERED, time_s, dst, _MODELLED_SRC, ident, 0, 0))
        handler = self._modelled_handlers[dst]
        assert handler is not None, "broadcast fidelity: no handler for modelled deliveries"
        handler(iid, payload)

    async def run(
        self,
        deliver: Mapping[int, Callable[[int, bytes], None]],
        until: Callable[[], bool],
        time_limit_s: float,
        *,
        clock_lag_max_s: float = 0.0,
        deliver_broadcast: Mapping[int, Callable[[InstanceId, bytes], None]] | None = None,
    ) -> RunResult:
        """The single delivery loop: handle events in order until ``until()`` is true, the
        network is quiescent, or the next event lies past ``time_limit_s``.

        ``deliver[node](src, data)`` is called one message at a time; whatever it sends is
        scheduled after the current instant. When virtual time advances, the loop sleeps
        until the next event in trio time (virtual under ``MockClock``); events at one
        instant run back to back, with a checkpoint every so often so the loop stays
        cancellable. May be called again to continue (e.g. with a later time limit).

        Each sleep costs some 30 us of trio scheduling even under ``MockClock``, which
        dominates when most events fall at distinct instants. ``clock_lag_max_s`` lets
        ``trio.current_time()`` trail the network's virtual time by up to that much, so the
        loop sleeps only once per such stretch (checkpointing in between). Event order and
        :attr:`now_s` are unaffected; only code reading trio's clock would notice.
        """
        if not (math.isfinite(clock_lag_max_s) and clock_lag_max_s >= 0.0):
            raise ValueError(f"clock_lag_max_s must be finite and >= 0, got {clock_lag_max_s}")
        missing = [
            node for node in range(self.n) if node not in deliver and not self._crashed[node]
        ]
        if missing:
            raise ValueError(f"no deliver handler for live nodes {missing}")
        handlers = [deliver.get(node) for node in range(self.n)]
        self._modelled_handlers = [(deliver_broadcast or {}).get(node) for node in range(self.n)]
        clock_offset_s = trio.current_time() - self._now_s
        clock_s = self._now_s  # the virtual time trio's clock was last brought to
        events_before = self._events_processed()
        delivered_before = self._messages_delivered()
        events = self._events
        pop_until = events.pop_until
        process = self._process
        events_since_checkpoint = 0
        while True:
            if until():
                reason = StopReason.UNTIL
                break
            if events_since_checkpoint >= _EVENTS_PER_CHECKPOINT:
                await trio.lowlevel.checkpoint()
                events_since_checkpoint = 0
            event = pop_until(time_limit_s)
            if event is None:
                if events:
                    self._now_s = max(self._now_s, time_limit_s)
                    reason = StopReason.TIME_LIMIT
                else:
                    reason = StopReason.QUIESCENT
                break
            time_s = event[0]
            if time_s > self._now_s:
                self._now_s = time_s
                if time_s - clock_s > clock_lag_max_s:
                    events.push(event)  # back in line: other tasks run while we sleep
                    await trio.sleep_until(clock_offset_s + time_s)
                    clock_s = time_s
                    events_since_checkpoint = 0
                    continue
            process(event, handlers)
            events_since_checkpoint += 1
        if self._now_s > clock_s:
            await trio.sleep_until(clock_offset_s + self._now_s)
        return RunResult(
            reason=reason,
            now_s=self._now_s,
            events_processed=self._events_processed() - events_before,
            messages_delivered=self._messages_delivered() - delivered_before,
        )
