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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np

from protocol.broadcast import BroadcastParams
from protocol.codec import encode
from protocol.messages import Echo, InstanceId, Ready, Tag
from sim.delays import DelayDraws
from sim.network import MIN_DELAY_S, VirtualNetwork
from sim.schedulers import Scheduler

#: an ECHO with the origin's signature in it (as with signatures on) and a READY
_ECHO_BYTES: Final = len(encode(Echo(InstanceId(0, Tag(0, 0, 0, 0)), bytes(32), bytes(64))))
_READY_BYTES: Final = len(encode(Ready(InstanceId(0, Tag(0, 0, 0, 0)), bytes(32))))


@dataclass(frozen=True, slots=True)
class ModelledDelivery:
    """When each node delivers one broadcast (``inf``: never), and what it would have
    cost on the wire: bytes each node would have sent for it."""

    deliver_at_s: np.ndarray
    bytes_sent: np.ndarray


class _Voters:
    """What a set of voters fixes for every broadcast until it changes."""

    __slots__ = ("cols", "dst", "ids", "src", "vote_bytes")

    def __init__(self, ids: np.ndarray, n: int) -> None:
        m = len(ids)
        self.ids = ids
        self.cols = np.arange(m)
        # (receiver j, voter k) views: row j's order statistics are node j's
        self.src = np.broadcast_to(ids, (n, m))
        self.dst = np.broadcast_to(np.arange(n)[:, None], (n, m))
        self.vote_bytes = np.zeros(n, dtype=np.int64)
        self.vote_bytes[ids] = (_ECHO_BYTES + _READY_BYTES) * (n - 1)


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
    ) -> None:
        """``voters()``: the nodes that echo and vote now (alive, not silent Byzantine
        ones), ascending; the same array object for as long as they do not change."""
        params = BroadcastParams(n, f, 0, bytes(32))
        self.n = n
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

    def deliveries(self, iid: InstanceId, payload_bytes: int, now_s: float) -> ModelledDelivery:
        n, origin, tag = self.n, iid.origin, iid.tag
        ids = self._voters()
        voting = self._voting
        if voting is None or voting.ids is not ids:
            voting = self._voting = _Voters(ids, n)
            self._delay, self._work = np.empty((n, len(ids))), np.empty((n, len(ids)))
        bytes_sent = voting.vote_bytes.copy()
        bytes_sent[origin] += payload_bytes * (n - 1)
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
            np.full(n, now_s),
            "send",
            key,
            size_bytes=payload_bytes,
        )
        send_arrival = now_s + send
        send_arrival[origin] = now_s
        # the echo hop: voter k echoes once the SEND reaches it
        echo_sent = send_arrival[ids]
        self._hop(voting, echo_sent, "echo", key, _ECHO_BYTES)
        ready_by_echo = self._ranked(voting, echo_sent)[:, self._echo_quorum - 1].copy()
        # the ready hop: one READY per (voter, node), so one link draw serves both the
        # amplification pass (f+1 READYs make a node ready) and the deliver quorum
        first_ready = ready_by_echo[ids]
        redraw = draws.mark() if scheduler.delays_depend_on_send_time else None
        self._hop(voting, first_ready, "ready", key, _READY_BYTES)
        ranked = self._ranked(voting, first_ready)
        ready_at = np.minimum(ready_by_echo, ranked[:, self._ready_amplify - 1])
        deliver_at = ranked[:, self._deliver_quorum - 1]
        if (ready_at[ids] < first_ready).any():  # amplified READYs left earlier
            if redraw is not None:
                # the same draws, asked again at the earlier send times (a READY sent
                # before a partition heals is held, one sent after it is not)
                draws.rewind(redraw)
                self._hop(voting, ready_at[ids], "ready", key, _READY_BYTES)
            deliver_at = self._ranked(voting, ready_at[ids])[:, self._deliver_quorum - 1]
        return ModelledDelivery(np.maximum(deliver_at, send_arrival), bytes_sent)

    def schedule(self, network: VirtualNetwork, iid: InstanceId, payload: bytes) -> None:
        """Model the broadcast of ``payload`` for ``iid`` sent now, and put its deliveries
        (each at least the network's smallest delay away) on ``network``."""
        now_s = network.now_s
        planned = self.deliveries(iid, len(payload), now_s)
        at_s = np.maximum(planned.deliver_at_s, now_s + MIN_DELAY_S)
        network.schedule_broadcast(iid, payload, at_s, planned.bytes_sent)

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

    def _ranked(self, voting: _Voters, sent_s: np.ndarray) -> np.ndarray:
        """Arrival times of one message from each voter, sent at ``sent_s`` with the
        drawn delays, each receiver's row sorted (a voter's own reaches it at once).
        The scratch is overwritten by the next call."""
        work = self._work
        np.add(sent_s, self._delay, out=work)
        work[voting.ids, voting.cols] = sent_s
        work.sort(axis=1)  # numpy's vectorized sort beats partition at these sizes
        return work
