"""Reliable broadcast as a model, not as messages: the simulator's ``fidelity = "broadcast"``.

At full fidelity every SEND, ECHO, READY and FETCH of Bracha's broadcast is a simulated
message: about 4n^2(n-1) messages per agreement round. At broadcast fidelity the agreement
itself still runs for real (witnesses, REPORTs, aggregators, trainers, learning-level
attacks, crashes), but each reliable broadcast is reduced to *when* every node delivers it,
drawn from the same delay models and scheduler, hop by hop:

1. the SEND hop: origin o to node k arrives at ``s_k = t0 + d(o, k)`` (``s_o = t0``);
2. the echo quorum: node k echoes at ``s_k``; node j is ready once ``echo_quorum``
   echoes have reached it, the echo-quorum-th smallest of ``s_k + d(k, j)``, or sooner
   once f+1 READYs have (ready amplification, one pass);
3. the ready quorum: node j delivers at the deliver-quorum-th smallest of
   ``r_k + d(k, j)``, and not before it holds the payload (``s_j``).

Only nodes that take part vote (a crashed node, or a silent Byzantine one, echoes
nothing), so a broadcast with too few of them is never delivered. RB's guarantees hold by
construction: every node that delivers gets the origin's one payload. Protocol-level
attacks (equivocation, conflicting votes, floods, ...) have nothing to act on here and are
refused; ``crash`` and ``silent`` are modelled.

Every draw is keyed by (seed, origin, instance tag), never by the order of events
(DESIGN 6), so a run is a function of its seed at this fidelity too.

With bandwidth (sim/bandwidth.py), the model puts its messages through the same link
queues as the network's messages, when the broadcast is modelled (the origin's send time):

- the origin's n-1 SENDs queue on its uplink behind whatever it already sends, peers in id
  order, exactly as at full fidelity; each hop's delay is asked as of when it leaves;
- each node's copy of the payload queues on its downlink behind what that downlink holds,
  in the order broadcasts are modelled (not quite the order payloads arrive);
- a voter's n-1 ECHOs (and READYs) leave one after the other from when its uplink is free
  as known then, and join its backlog from that moment on; at a receiver, each hop's votes
  are served in order of arrival behind its downlink's backlog (one FIFO recursion per row
  of the receivers x voters matrix, vectorized).

What is left out: a vote queues behind what its voter's uplink held when the broadcast
was modelled, not behind what the voter sends between then and its vote (not known yet).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np

from protocol.broadcast import BroadcastParams
from protocol.codec import encode
from protocol.messages import Echo, InstanceId, Ready, Tag
from sim.bandwidth import LinkQueues
from sim.delays import DelayDraws
from sim.network import MIN_DELAY_S, VirtualNetwork
from sim.schedulers import Scheduler

#: an ECHO with the origin's signature in it (signatures on), one without (off), a READY
_ECHO_BYTES: Final = len(encode(Echo(InstanceId(0, Tag(0, 0, 0, 0)), bytes(32), bytes(64))))
_UNSIGNED_ECHO_BYTES: Final = len(encode(Echo(InstanceId(0, Tag(0, 0, 0, 0)), bytes(32), b"")))
_READY_BYTES: Final = len(encode(Ready(InstanceId(0, Tag(0, 0, 0, 0)), bytes(32))))


@dataclass(frozen=True, slots=True)
class ModelledDelivery:
    """When each node delivers one broadcast (``inf``: never), and what it would have
    cost on the wire: bytes each node would have sent for it."""

    deliver_at_s: np.ndarray
    bytes_sent: np.ndarray


class _Voters:
    """What a set of voters fixes for every broadcast until it changes."""

    __slots__ = ("cols", "dst", "ids", "place", "received", "src", "vote_bytes")

    def __init__(self, ids: np.ndarray, n: int, echo_bytes: int) -> None:
        m = len(ids)
        self.ids = ids
        self.cols = np.arange(m)
        # (receiver j, voter k) views: row j's order statistics are node j's
        self.src = np.broadcast_to(ids, (n, m))
        self.dst = np.broadcast_to(np.arange(n)[:, None], (n, m))
        self.vote_bytes = np.zeros(n, dtype=np.int64)
        self.vote_bytes[ids] = (echo_bytes + _READY_BYTES) * (n - 1)
        #: (bandwidth) voter k's vote to j is the place[j, k]-th of its n-1 copies on its
        #: uplink (1-based; peers in id order, as a runner sends a broadcast)
        self.place = self.dst + (self.dst < self.src)
        #: votes of each kind that each node receives from the others
        self.received = np.full(n, m)
        self.received[ids] -= 1


class BroadcastModel:
    """Delivery times of modelled reliable broadcasts among n nodes, f of them tolerated,
    from ``scheduler``'s delays (one :meth:`deliveries` call per broadcast)."""

    def __init__(
        self,
        n: int,
        f: int,
        seed: int,
        scheduler: Scheduler,
        voters: Callable[[], np.ndarray],
        signed: bool = True,
    ) -> None:
        """``voters()``: the nodes that echo and vote now (alive, not silent Byzantine
        ones), ascending; the same array object for as long as they do not change.
        ``signed``: whether ECHOs carry the origin's signature (signatures on)."""
        params = BroadcastParams(n, f, 0, bytes(32))
        self.n = n
        self._echo_bytes = _ECHO_BYTES if signed else _UNSIGNED_ECHO_BYTES
        self._draws = DelayDraws(seed)
        self._scheduler = scheduler
        self._voters = voters
        self._voting: _Voters | None = None
        self._echo_quorum = params.echo_quorum
        self._ready_amplify = params.ready_amplify
        self._deliver_quorum = params.deliver_quorum
        self._quorum = max(params.echo_quorum, params.deliver_quorum)
        self._nodes = np.arange(n)
        self._origins = [np.full(n, origin) for origin in range(n)]
        #: (receivers x voters) scratch for delays and arrival times: fresh arrays of this
        #: size cost 2-3x more than the arithmetic done in them
        self._delay = np.empty((n, 0))
        self._work = np.empty((n, 0))
        #: (limited downlinks) per receiver, what the last hop's votes waited there
        self._vote_wait_s = np.zeros(n)

    def deliveries(
        self,
        iid: InstanceId,
        payload_bytes: int,
        now_s: float,
        links: LinkQueues | None = None,
    ) -> ModelledDelivery:
        """When each node delivers the broadcast of a ``payload_bytes`` payload sent at
        ``now_s``; with ``links``, its messages also go through the nodes' link queues
        (see :meth:`_send_leaves` and :meth:`_leave`), whose state and costs it updates."""
        n, origin, tag = self.n, iid.origin, iid.tag
        ids = self._voters()
        voting = self._voting
        if voting is None or voting.ids is not ids:
            voting = self._voting = _Voters(ids, n, self._echo_bytes)
            self._delay, self._work = np.empty((n, len(ids))), np.empty((n, len(ids)))
        bytes_sent = voting.vote_bytes.copy()
        bytes_sent[origin] += payload_bytes * (n - 1)
        # when each SEND leaves: with links, the origin's copies queue on its uplink
        # (whether or not the broadcast is ever delivered)
        leave_s = (
            np.full(n, now_s)
            if links is None
            else self._send_leaves(links, origin, payload_bytes, now_s)
        )
        if len(ids) < self._quorum:
            return ModelledDelivery(np.full(n, np.inf), bytes_sent)
        key = (origin, tag.step, tag.phase, tag.round, tag.kind)
        self._draws.start(origin, tag.step, (tag.phase << 40) | (tag.round << 20) | tag.kind)
        scheduler, draws = self._scheduler, self._draws
        # the SEND hop, origin to each node
        send = scheduler.draw_delays_s(
            draws,
            self._origins[origin],
            self._nodes,
            leave_s,
            "send",
            key,
            size_bytes=payload_bytes,
        )
        send_arrival = leave_s + send
        if links is not None and links.downlink_limited:
            send_arrival = self._receive_payload(links, origin, payload_bytes, send_arrival)
        send_arrival[origin] = now_s
        # the echo hop: voter k echoes once the SEND reaches it
        echo_sent = send_arrival[ids]
        echo_bytes = self._echo_bytes
        echo_leave = self._leave(voting, links, echo_sent, echo_bytes)
        self._hop(voting, echo_leave, "echo", key, echo_bytes)
        ranked = self._ranked(voting, echo_sent, echo_leave, links, echo_bytes)
        ready_by_echo = ranked[:, self._echo_quorum - 1].copy()
        echo_wait_s = self._vote_wait_s
        # the ready hop: one READY per (voter, node), so one link draw serves both the
        # amplification pass (f+1 READYs make a node ready) and the deliver quorum
        first_ready = ready_by_echo[ids]
        redraw = draws.mark() if scheduler.delays_depend_on_send_time else None
        ready_leave = self._leave(voting, links, first_ready, _READY_BYTES)
        self._hop(voting, ready_leave, "ready", key, _READY_BYTES)
        ranked = self._ranked(voting, first_ready, ready_leave, links, _READY_BYTES)
        ready_at = np.minimum(ready_by_echo, ranked[:, self._ready_amplify - 1])
        deliver_at = ranked[:, self._deliver_quorum - 1]
        ready_sent = first_ready
        if (ready_at[ids] < first_ready).any():  # amplified READYs left earlier
            ready_sent = ready_at[ids]
            ready_leave = self._leave(voting, links, ready_sent, _READY_BYTES)
            if redraw is not None:
                # the same draws, asked again at the earlier send times (a READY sent
                # before a partition heals is held, one sent after it is not)
                draws.rewind(redraw)
                self._hop(voting, ready_leave, "ready", key, _READY_BYTES)
            ranked = self._ranked(voting, ready_sent, ready_leave, links, _READY_BYTES)
            deliver_at = ranked[:, self._deliver_quorum - 1]
        if links is not None:
            self._charge_votes(voting, links, echo_sent, ready_sent, echo_wait_s, now_s)
        return ModelledDelivery(np.maximum(deliver_at, send_arrival), bytes_sent)

    def schedule(self, network: VirtualNetwork, iid: InstanceId, payload: bytes) -> None:
        """Model the broadcast of ``payload`` for ``iid`` sent now, and put its deliveries
        (each at least the network's smallest delay away) on ``network``."""
        now_s = network.now_s
        planned = self.deliveries(iid, len(payload), now_s, network.links)
        at_s = np.maximum(planned.deliver_at_s, now_s + MIN_DELAY_S)
        network.schedule_broadcast(iid, payload, at_s, planned.bytes_sent)

    # ------------------------------------------------------------------ bandwidth

    def _send_leaves(
        self, links: LinkQueues, origin: int, payload_bytes: int, now_s: float
    ) -> np.ndarray:
        """When each SEND leaves the origin: its n-1 copies queue on its uplink behind
        what it already sends, peers in id order (the origin's own entry: ``now_s``)."""
        start_s, transmit_s = links.send(origin, now_s, payload_bytes, self.n - 1)
        place = self._nodes + (self._nodes < origin)
        leave_s: np.ndarray = start_s + place * transmit_s
        leave_s[origin] = now_s
        return leave_s

    def _receive_payload(
        self, links: LinkQueues, origin: int, payload_bytes: int, arrival_s: np.ndarray
    ) -> np.ndarray:
        """When each node holds the payload: its copy queues on the node's downlink behind
        what the queue holds (in the order broadcasts are modelled, not of arrival)."""
        transmit_s = payload_bytes * links.down_s_per_byte
        done_s: np.ndarray = np.maximum(arrival_s, links.down_free_s) + transmit_s
        done_s[origin] = arrival_s[origin]
        peers = self._nodes != origin
        links.down_free_s[peers] = done_s[peers]
        links.down_busy_s[peers] += transmit_s[peers]
        links.down_wait_s[peers] += (done_s - arrival_s)[peers]
        links.down_messages[peers] += 1
        return done_s

    def _leave(
        self, voting: _Voters, links: LinkQueues | None, sent_s: np.ndarray, size: int
    ) -> np.ndarray:
        """When each vote leaves its voter (per voter without bandwidth, else per
        (receiver, voter)): its n-1 copies, sent at ``sent_s``, go out one after the
        other from when the voter's uplink is free, as far as is known now
        (:meth:`_charge_votes` then adds them to its backlog)."""
        if links is None or not links.uplink_limited:
            return sent_s
        ids = voting.ids
        start_s = np.maximum(sent_s, links.up_free_s[ids])
        leave_s: np.ndarray = start_s + voting.place * (size * links.up_s_per_byte[ids])
        return leave_s

    def _charge_votes(
        self,
        voting: _Voters,
        links: LinkQueues,
        echo_sent: np.ndarray,
        ready_sent: np.ndarray,
        echo_wait_s: np.ndarray,
        now_s: float,
    ) -> None:
        """Each voter's n-1 ECHOs and n-1 READYs on the books of its uplink and of the
        receivers' downlinks. Their transmission time joins the voter's uplink backlog, so
        that what it sends later waits for them while the link is busy (they join it as of
        ``now_s``, not at the later times they leave: that would idle the link until then). At
        a downlink, votes queue behind the backlog (:meth:`_ranked`) but do not join it:
        measured against full fidelity, joining it there makes rounds up to 27% too slow
        when votes outweigh payloads (not joining it: within 9%)."""
        ids, copies = voting.ids, self.n - 1
        vote_bytes = self._echo_bytes + _READY_BYTES
        if links.uplink_limited:
            for sent_s, size in ((echo_sent, self._echo_bytes), (ready_sent, _READY_BYTES)):
                transmit_s = size * links.up_s_per_byte[ids]
                queued_s = np.maximum(links.up_free_s[ids] - sent_s, 0.0)
                links.up_wait_s[ids] += copies * queued_s + transmit_s * copies * (copies + 1) / 2
            work_s = copies * vote_bytes * links.up_s_per_byte[ids]
            links.up_busy_s[ids] += work_s
            links.up_messages[ids] += 2 * copies
            links.up_free_s[ids] = np.maximum(links.up_free_s[ids], now_s) + work_s
        if links.downlink_limited:
            work_s = voting.received * vote_bytes * links.down_s_per_byte
            links.down_wait_s += echo_wait_s + self._vote_wait_s
            links.down_busy_s += work_s
            links.down_messages += 2 * voting.received

    def _hop(
        self, voting: _Voters, sent_s: np.ndarray, kind: str, tag: tuple[int, ...], size: int
    ) -> None:
        """Draw one message's delay per (receiver, voter) into the delay scratch."""
        self._scheduler.draw_delays_s(
            self._draws,
            voting.src,
            voting.dst,
            sent_s,
            kind,
            tag,
            out=self._delay,
            size_bytes=size,
        )

    def _ranked(
        self,
        voting: _Voters,
        sent_s: np.ndarray,
        leave_s: np.ndarray,
        links: LinkQueues | None,
        size: int,
    ) -> np.ndarray:
        """Arrival times of one message from each voter, sent at ``sent_s`` (leaving at
        ``leave_s``) with the drawn delays, each receiver's row sorted (a voter's own
        reaches it at once). With limited downlinks, each row is then the times the votes
        are received, served in order of arrival. The scratch is overwritten by the next
        call."""
        work = self._work
        np.add(leave_s, self._delay, out=work)
        work[voting.ids, voting.cols] = sent_s
        work.sort(axis=1)  # numpy's vectorized sort beats partition at these sizes
        if links is not None and links.downlink_limited:
            self._vote_wait_s = _serve_in_order(
                work, size * links.down_s_per_byte, voting.cols, links.down_free_s
            )
        return work


def _serve_in_order(
    arrival_s: np.ndarray, transmit_s: np.ndarray, cols: np.ndarray, free_s: np.ndarray
) -> np.ndarray:
    """Rows of sorted arrival times at one FIFO link each (``transmit_s`` per message and
    ``free_s``, when the link is free, by row) become the times each message is through
    it, in place: the i-th (from 0) is done at ``(i + 1) t + max(free, max over i' <= i
    of (a_i' - i' t))``, the FIFO recursion ``c_i = max(a_i, c_(i-1)) + t`` unrolled.
    Returns each row's total of queueing and transmission."""
    arrived_s = arrival_s.sum(axis=1)
    step_s = transmit_s[:, None] * cols
    arrival_s -= step_s
    np.maximum(arrival_s[:, 0], free_s, out=arrival_s[:, 0])
    np.maximum.accumulate(arrival_s, axis=1, out=arrival_s)
    arrival_s += step_s + transmit_s[:, None]
    waited_s: np.ndarray = arrival_s.sum(axis=1) - arrived_s
    return waited_s
