"""Wall time per agreement round in the simulator, by system size and fidelity.

    python -m benchmarks.bench_sim_round                 # n in {16, 31, 64, 128, 256}, d = 1e4
    python -m benchmarks.bench_sim_round --sizes 4 16 --rounds 3
    python -m benchmarks.bench_sim_round --full-max 256  # full fidelity beyond n = 64 too
    python -m benchmarks.bench_sim_round --full-max 0    # broadcast fidelity only (~1 min)

Full fidelity simulates every protocol message (run once per size: n = 64 takes about
half a minute); broadcast fidelity (sim/broadcast_model.py) models each reliable broadcast
as per-node delivery times and runs the agreement for real (the median of ``--repeats``
runs). Broadcast fidelity's "events" are its modelled deliveries, n^2 per round of
broadcasts.

Each case is one averaging agreement of ``--rounds`` rounds (RB-TM with witnesses, the
real :class:`~protocol.core.NodeCore`) among n nodes, f = (n-1)//3, on seeded random
vectors of dimension d, over the simulator's :class:`~sim.network.VirtualNetwork`
(log-normal link delays, trio ``MockClock``); no training. A round costs about
4 n^2 (n-1) messages (ECHO and READY for n VECTOR and n REPORT broadcasts), so the
time per round grows as n^3.

Baseline, timed in the same run: the same cores of the n=16 case delivering through a
plain FIFO queue (no network, no virtual time), which prices the simulator's own
overhead per message. Goals, reported, not enforced (timings move with the machine's load):
full fidelity n=31 <= 0.5 s and n=64 <= 4 s per round (signatures off); broadcast fidelity
n=64 <= 0.1 s and n=256 <= 2 s per round.
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import time
from collections.abc import Callable, Sequence

import numpy as np
import trio
import trio.testing

from protocol.agreement import VectorMemo
from protocol.codec import SharedDecoder, encode
from protocol.core import GradientSchedule, NodeCore, ProtocolConfig, RoundSchedule
from protocol.crypto import Ed25519Scheme, SignatureScheme, UnsignedScheme
from protocol.messages import InstanceId, Phase
from protocol.step import EVERYONE, Broadcast, Decided, Step
from sim.adapters import BroadcastClassifier
from sim.broadcast_model import BroadcastModel
from sim.engine import CLOCK_LAG_MAX_S
from sim.network import VirtualNetwork
from sim.schedulers import DefaultScheduler
from sim.streams import roster_keys, signing_seed

SIZES = (16, 31, 64, 128, 256)
DIM = 10_000
#: (fidelity, n) -> seconds per round, the goals
GOALS = {("full", 31): 0.5, ("full", 64): 4.0, ("broadcast", 64): 0.1, ("broadcast", 256): 2.0}
BASELINE_N = 16
SESSION = bytes(32)

SendMany = Callable[[Sequence[int], bytes], None]


def build_cores(
    n: int, rounds: int, crypto: bool, seed: int, modelled: bool = False
) -> list[NodeCore]:
    f = (n - 1) // 3
    schedule = RoundSchedule(GradientSchedule.CONSTANT, gradient_rounds=rounds, model_rounds=0)
    keys = tuple(roster_keys(seed, n)) if crypto else ()
    cores = []
    decoder = None
    memo = VectorMemo()  # as sim.engine does
    for me in range(n):
        scheme: SignatureScheme = (
            Ed25519Scheme(signing_seed(seed, me), keys) if crypto else UnsignedScheme()
        )
        config = ProtocolConfig(n=n, f=f, me=me, session=SESSION, dim=DIM, schedule=schedule)
        decoder = decoder or SharedDecoder(config.payload_bytes_max)  # as sim.engine does
        cores.append(
            NodeCore(config, scheme, decoder=decoder, modelled_broadcast=modelled, vector_memo=memo)
        )
    return cores


def execute(peers: tuple[int, ...], step: Step, send_many: SendMany) -> int:
    """A runner's effects, minus learning: encode each message once, send it out.
    Returns how many agreements the step decided."""
    for outgoing in step.messages:
        data = encode(outgoing.message)
        send_many(peers if outgoing.to == EVERYONE else (outgoing.to,), data)
    if not step.outputs:
        return 0
    return sum(isinstance(output, Decided) for output in step.outputs)


def peers_of(me: int, n: int) -> tuple[int, ...]:
    return tuple(peer for peer in range(n) if peer != me)


def inputs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def run_network(n: int, rounds: int, crypto: bool, seed: int) -> tuple[float, int]:
    """(wall seconds, messages delivered) of one agreement over the virtual network."""
    cores = build_cores(n, rounds, crypto, seed)
    network = VirtualNetwork(n, seed, DefaultScheduler(), BroadcastClassifier())
    vectors = inputs(n, seed)
    decided = [0]  # agreements decided, over all cores

    def handler(me: int) -> Callable[[int, bytes], None]:
        core = cores[me]
        peers = peers_of(me, n)
        send_many = network.endpoint(me).send_many

        def deliver(src: int, data: bytes) -> None:
            decided[0] += execute(peers, core.receive(src, data), send_many)

        return deliver

    async def main() -> None:
        for me, core in enumerate(cores):
            step = core.propose(0, Phase.GRADIENT, vectors[me])
            decided[0] += execute(peers_of(me, n), step, network.endpoint(me).send_many)
        await network.run(
            {i: handler(i) for i in range(n)},
            lambda: decided[0] == n,
            1e6,
            clock_lag_max_s=CLOCK_LAG_MAX_S,
        )

    started = time.perf_counter()
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    elapsed = time.perf_counter() - started
    assert decided[0] == n, f"n={n}: {decided[0]} cores decided (seed {seed})"
    return elapsed, network.statistics().messages_delivered


def run_broadcast_fidelity(n: int, rounds: int, seed: int) -> tuple[float, int]:
    """(wall seconds, modelled deliveries) of one agreement at broadcast fidelity."""
    cores = build_cores(n, rounds, False, seed, modelled=True)
    scheduler = DefaultScheduler()
    network = VirtualNetwork(n, seed, scheduler, BroadcastClassifier())
    everyone = np.arange(n)
    model = BroadcastModel(n, (n - 1) // 3, seed, scheduler, lambda: everyone)
    vectors = inputs(n, seed)
    decided = [0]

    def execute_modelled(step: Step) -> None:
        for output in step.outputs:
            if isinstance(output, Broadcast):
                model.schedule(network, output.iid, output.payload)
            elif isinstance(output, Decided):
                decided[0] += 1

    def handler(me: int) -> Callable[[InstanceId, bytes], None]:
        core = cores[me]

        def deliver(iid: InstanceId, payload: bytes) -> None:
            execute_modelled(core.deliver(iid, payload))

        return deliver

    async def main() -> None:
        for me, core in enumerate(cores):
            execute_modelled(core.propose(0, Phase.GRADIENT, vectors[me]))
        await network.run(
            {i: lambda src, data: None for i in range(n)},  # no protocol messages at all
            lambda: decided[0] == n,
            1e6,
            clock_lag_max_s=CLOCK_LAG_MAX_S,
            deliver_broadcast={i: handler(i) for i in range(n)},
        )

    started = time.perf_counter()
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    elapsed = time.perf_counter() - started
    assert decided[0] == n, f"n={n}: {decided[0]} cores decided (seed {seed})"
    return elapsed, network.statistics().events_processed


def run_fifo(n: int, rounds: int, seed: int) -> tuple[float, int]:
    """The baseline: the same agreement through one FIFO queue, no network at all."""
    cores = build_cores(n, rounds, False, seed)
    queue: collections.deque[tuple[int, int, bytes]] = collections.deque()
    vectors = inputs(n, seed)

    def sender(me: int) -> SendMany:
        def send_many(dsts: Sequence[int], data: bytes) -> None:
            queue.extend((me, dst, data) for dst in dsts)

        return send_many

    peers = [peers_of(me, n) for me in range(n)]
    senders = [sender(me) for me in range(n)]
    started = time.perf_counter()
    for me, core in enumerate(cores):
        execute(peers[me], core.propose(0, Phase.GRADIENT, vectors[me]), senders[me])
    delivered = 0
    while queue:
        src, dst, data = queue.popleft()
        delivered += 1
        execute(peers[dst], cores[dst].receive(src, data), senders[dst])
    return time.perf_counter() - started, delivered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the one agreement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--full-max", type=int, default=64, help="largest n run at full fidelity (64)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="broadcast-fidelity runs per size, the median reported (3); full fidelity runs once",
    )
    args = parser.parse_args()
    print(
        f"simulator, one agreement of {args.rounds} rounds, d={DIM}, f=(n-1)//3, seed "
        f"{args.seed}; {platform.machine()}, {os.cpu_count()} cores, load "
        f"{os.getloadavg()[0]:.1f}; signatures off"
    )
    fifo_s, fifo_messages = run_fifo(BASELINE_N, args.rounds, args.seed)
    fifo_us = fifo_s / fifo_messages * 1e6
    print(f"baseline: n={BASELINE_N} through a FIFO queue, no network: {fifo_us:.1f} us/message")
    print(
        f"{'n':>3} {'f':>3} | full: {'msgs/round':>11} {'s/round':>8} {'us/msg':>7} "
        f"{'vs FIFO':>8} | broadcast: {'events/round':>12} {'s/round':>8} {'full/bcast':>10}"
    )
    verdicts = []
    for n in args.sizes:
        full = "-"
        full_s = None
        if n <= args.full_max:
            off_s, messages = run_network(n, args.rounds, False, args.seed)
            full_s = off_s / args.rounds
            per_message_us = off_s / messages * 1e6
            full = (
                f"{messages / args.rounds:>11,.0f} {full_s:>8.3f} {per_message_us:>7.1f} "
                f"{per_message_us / fifo_us:>7.2f}x"
            )
        runs = [run_broadcast_fidelity(n, args.rounds, args.seed) for _ in range(args.repeats)]
        modelled_s, events = sorted(runs)[len(runs) // 2]  # the median run
        broadcast_s = modelled_s / args.rounds
        ratio = f"{full_s / broadcast_s:>9.0f}x" if full_s else f"{'-':>10}"
        print(
            f"{n:>3} {(n - 1) // 3:>3} | full: {full:>37} | broadcast: "
            f"{events / args.rounds:>12,.0f} {broadcast_s:>8.3f} {ratio}"
        )
        for (fidelity, goal_n), goal_s in sorted(GOALS.items()):
            measured = full_s if fidelity == "full" else broadcast_s
            if goal_n == n and measured is not None:
                verdict = "met" if measured <= goal_s else "NOT met"
                verdicts.append(
                    f"{fidelity} n={n} <= {goal_s:g} s/round: {measured:.3f} ({verdict})"
                )
    for line in verdicts:
        print(f"    goal: {line}")


if __name__ == "__main__":
    main()
