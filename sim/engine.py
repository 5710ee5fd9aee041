"""The simulation engine: a scenario's n real runners over one virtual network.

Every node is what ``jungle node`` runs (a :class:`~node.trainer.Trainer`, a
:class:`~protocol.core.NodeCore`, a :class:`~node.runner.Runner`); only the transport is
virtual. Byzantine nodes run the same stack bent by their strategy's hooks. One
``trio.run`` under ``MockClock(autojump_threshold=0)`` drives the network's single
delivery loop, so a run costs the CPU time of its messages and none of its virtual delays.

Determinism (DESIGN 6): every random stream is derived from the scenario seed keyed by
purpose and node id (:func:`stream_seed`), the network orders events totally, runners read
the network's virtual clock, and every decision of every node is folded into the trace
digest next to every delivery. Same seed, same digest; any failure prints the seed.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import numpy as np
import trio
import trio.testing

from node.runner import Runner, RunnerHooks, StepRecord
from node.trainer import Trainer
from protocol.agreement import VectorMemo
from protocol.codec import SharedDecoder
from protocol.core import NodeCore
from protocol.crypto import Ed25519Scheme, SignatureScheme, UnsignedScheme, digest
from protocol.step import Broadcast, Decided, Fault, Output, RoundStarted
from sim.adapters import BroadcastClassifier, DivergenceGuard
from sim.broadcast_model import BroadcastModel
from sim.determinism import pin as pin_determinism
from sim.metrics import MetricsLog, RoundBook
from sim.network import StopReason, VirtualNetwork
from sim.progress import Progress, ProgressSnapshot
from sim.scenario import FIDELITY_BROADCAST, MODE_SERVER, Scenario, ScenarioError
from sim.schedulers import load_scheduler
from sim.strategies import Strategy, StrategyContext, load_strategy, strategy_rng
from sim.streams import (
    PURPOSE_MODELLED_BROADCAST,
    PURPOSE_NETWORK,
    node_trainer,
    roster_keys,
    session_id,
    signing_seed,
    stream_seed,
    task_and_parts,
)
from sim.summary import RunOutcome, Summary, build_summary

#: lets ``trio.current_time()`` trail the network by up to 1 s: one trio sleep (some
#: 100 us of trio's scheduling) per second of virtual time instead of one per event
#: (sim/network.py, ``VirtualNetwork.run``). Nothing in a simulation reads trio's clock:
#: runners, timers and the trace all run on the network's virtual time.
CLOCK_LAG_MAX_S: Final = 1.0
#: Byzantine runners evaluate only after their last step: their accuracy is not reported
_NEVER: Final = 2**62


class Simulation:
    """One scenario, built and ready to :meth:`run` (once)."""

    def __init__(
        self, scenario: Scenario, out_dir: Path | None = None, progress: Progress | None = None
    ) -> None:
        pin_determinism()
        self.scenario = scenario
        seed = scenario.seed
        n = scenario.n
        self.honest = scenario.honest_nodes()
        self.byzantine = scenario.byzantine_strategies()
        self.task, self.parts = task_and_parts(scenario)
        scheduler = load_scheduler(scenario.network.scheduler, scenario.network.scheduler_params)
        self.network = VirtualNetwork(
            n,
            stream_seed(seed, PURPOSE_NETWORK),
            scheduler,
            BroadcastClassifier(),
            scenario.network.bandwidth,
        )
        #: broadcast fidelity: reliable broadcast modelled, not messaged (sim/broadcast_model.py)
        self.modelled: BroadcastModel | None = None
        self._voting: np.ndarray | None = None
        if scenario.fidelity == FIDELITY_BROADCAST:
            self.modelled = BroadcastModel(
                n,
                scenario.f,
                stream_seed(seed, PURPOSE_MODELLED_BROADCAST),
                scheduler,
                self._voters,
                signed=scenario.protocol.crypto,
            )
        self.crypto = scenario.protocol.crypto
        self.public_keys = roster_keys(seed, n) if self.crypto else []
        self.session = session_id(scenario, seed, self.public_keys)
        self.book = RoundBook(self.honest)
        #: label-flipped honest gradients by step, then node (ByzFL's label flipping), kept
        #: only while a strategy asks for them
        self._flipped: dict[int, dict[int, np.ndarray]] = {}
        self.strategies: dict[int, Strategy] = {
            node: load_strategy(spec) for node, spec in sorted(self.byzantine.items())
        }
        self._wants_flipped = any(s.uses_flipped_gradients for s in self.strategies.values())
        #: Byzantine runners whose strategy may hold a round back (rushing), woken when an
        #: honest node enters a round
        self._rushing: list[Runner] = []
        self._progress = progress
        self._logged_rounds = 0
        self._logged_agreements = 0
        self._honest_set = frozenset(self.honest)
        self.runners: list[Runner] = []
        self.learners: list[DivergenceGuard] = []
        self._decoder: SharedDecoder | None = None  # one memo of decoded messages for all
        self._vector_memo = VectorMemo()  # and of validated vectors
        for node in range(n):
            self.runners.append(self._build_node(node))
        self.log = MetricsLog(out_dir, self.honest)  # opened last: nothing left to fail
        self._honest_runners = [self.runners[node] for node in self.honest]
        self._watch = 0  # every honest runner before this index is done
        self._steps_done = 0
        self._rounds_done = 0
        self._rounds_total = len(self.honest) * scenario.agreement_rounds()

    # ------------------------------------------------------------------ construction

    def _scheme(self, node: int) -> SignatureScheme:
        if not self.crypto:
            return UnsignedScheme()
        return Ed25519Scheme(signing_seed(self.scenario.seed, node), tuple(self.public_keys))

    def _build_node(self, node: int) -> Runner:
        scenario = self.scenario
        strategy = self.strategies.get(node)
        label_map = None if strategy is None else strategy.label_map(self.task.num_classes)
        trainer = node_trainer(scenario, self.task, self.parts[node], node, label_map)
        learner = (
            _FlippedGradientRecorder(trainer, node, self._flipped)
            if strategy is None and self._wants_flipped
            else DivergenceGuard(trainer)
        )
        self.learners.append(learner)
        scheme = self._scheme(node)
        core_config = scenario.protocol.config(
            n=scenario.n,
            f=scenario.f,
            me=node,
            session=self.session,
            dim=trainer.dim,
            steps_total=scenario.steps,
        )
        if self._decoder is None:  # every node has the same payload limit
            self._decoder = SharedDecoder(core_config.payload_bytes_max)
        core = NodeCore(
            core_config,
            scheme,
            strategy.vector if strategy is not None else None,
            decoder=self._decoder,
            modelled_broadcast=self.modelled is not None,
            vector_memo=self._vector_memo,
        )
        hooks = RunnerHooks(
            on_output=self._on_output,
            on_fault=self._on_fault,
            on_step=self._on_step,
            on_step_end=self._step_end_hook(node),
            outgoing_filter=strategy.outgoing if strategy is not None else None,
        )
        runner = Runner(
            core,
            self.network.endpoint(node),
            learner,
            steps=scenario.steps,
            eval_every=scenario.eval_every if strategy is None else _NEVER,
            clock=lambda: self.network.now_s,
            hooks=hooks,
        )
        if isinstance(learner, _FlippedGradientRecorder):
            learner.step_of = lambda: runner.step
        if strategy is not None:
            strategy.bind(
                StrategyContext.from_config(
                    core_config,
                    scheme,
                    strategy_rng(scenario.seed, node),
                    lambda: runner.core.current_step,
                    honest_vectors=self.book.honest_vectors,
                    byzantine=sorted(self.byzantine),
                    num_classes=self.task.num_classes,
                    can_wait=True,
                    flipped_gradients=self._flipped_gradients,
                    honest_expected=self._honest_expected,
                )
            )
            if strategy.may_hold_back:
                self._rushing.append(runner)
        return runner

    def _flipped_gradients(self, step: int) -> dict[int, np.ndarray]:
        return dict(sorted(self._flipped.get(step, {}).items()))

    def _honest_expected(self, step: int, phase: int, round_: int) -> int:
        """Honest nodes whose vector of (step, phase, round) is known or still may be: a
        node past ``step`` that never entered the round (it jumped) never will, so a
        rushing attacker waiting for it stops waiting."""
        entered = self.book.honest_vectors(step, phase, round_)
        return len(entered) + sum(
            1
            for node, runner in zip(self.honest, self._honest_runners, strict=True)
            if node not in entered and not runner.stopped and runner.step <= step
        )

    def _wake_rushing(self) -> None:
        """Honest vectors became known: rushing attackers holding a round ask again."""
        for runner in self._rushing:
            if runner.core.holding_back:
                runner.resume()

    # ------------------------------------------------------------------ hooks

    def _takes_part(self, node: int) -> bool:
        """Whether ``node`` echoes and votes in modelled broadcasts: alive, not silent."""
        strategy = self.strategies.get(node)
        return not self.network.is_crashed(node) and not (strategy and strategy.silent)

    def _voters(self) -> np.ndarray:
        """The nodes that echo and vote in modelled broadcasts now, ascending (one array
        until a node crashes)."""
        if self._voting is None:
            self._voting = np.flatnonzero([self._takes_part(k) for k in range(self.network.n)])
        return self._voting

    def _on_output(self, node: int, output: Output) -> None:
        if isinstance(output, Broadcast):
            if self.modelled is not None and self._takes_part(node):
                self.modelled.schedule(self.network, output.iid, output.payload)
        elif isinstance(output, RoundStarted):
            if node in self._honest_set:
                self._rounds_done += 1
                now_s = self.network.now_s
                self.book.round_started(
                    node, output.step, output.phase, output.round, output.vector, now_s
                )
                self.log.node_round(node, output.step, output.phase, output.round, now_s)
                if self._rushing:
                    self._wake_rushing()
        elif isinstance(output, Decided):
            self.network.record_output(
                node, digest(np.ascontiguousarray(output.vector).view(np.uint8).data)
            )
            self.book.decided(node, output.step, output.phase, output.vector)

    def _on_fault(self, node: int, fault: Fault) -> None:
        self.log.fault(node, fault, self.network.now_s)

    def _on_step(self, record: StepRecord) -> None:
        self.log.step(record)

    def _step_end_hook(self, node: int) -> Callable[[int], None]:
        if node not in self.byzantine:

            def honest_step_end(next_step: int) -> None:
                self._steps_done += 1
                lowest = min(r.step for r in self._honest_runners)
                self.book.release_below(lowest)
                for old in [s for s in self._flipped if s < lowest - 1]:
                    del self._flipped[old]
                self._drain_measures()
                if self._progress is not None:
                    self._progress.poll(self.snapshot)

            return honest_step_end

        def byzantine_step_end(next_step: int) -> None:
            if self.strategies[node].crashed(next_step):
                self._crash(node)

        return byzantine_step_end

    def _crash(self, node: int) -> None:
        self.runners[node].stop()
        self.network.crash(node)
        self._voting = None

    def _drain_measures(self) -> None:
        rounds = self.book.finished_rounds
        self.log.rounds(rounds[self._logged_rounds :])
        self._logged_rounds = len(rounds)
        agreements = self.book.finished_agreements
        self.log.agreements(agreements[self._logged_agreements :])
        self._logged_agreements = len(agreements)

    def snapshot(self) -> ProgressSnapshot:
        """Where the run stands: what the progress display shows."""
        return ProgressSnapshot(
            rounds_done=self._rounds_done,
            rounds_total=self._rounds_total,
            steps_done=self._steps_done,
            steps_total=len(self.honest) * self.scenario.steps,
            virtual_s=self.network.now_s,
            messages=self.network.statistics().messages_delivered,
        )

    def _all_honest_done(self) -> bool:
        runners = self._honest_runners
        while self._watch < len(runners) and runners[self._watch].done:
            self._watch += 1  # done never reverts, so each runner is passed once
        return self._watch == len(runners)

    # ------------------------------------------------------------------ the run

    def _handler(self, node: int) -> Callable[[int, bytes], None]:
        runner = self.runners[node]
        strategy = self.strategies.get(node)
        if strategy is None:
            return runner.deliver
        endpoint = self.network.endpoint(node)

        def deliver(src: int, data: bytes) -> None:
            runner.deliver(src, data)
            if not runner.stopped:
                for dst, extra in strategy.on_receive(src, data):
                    endpoint.send_nowait(dst, extra)

        return deliver

    def _ticker(self, node: int) -> Callable[[float], None]:
        runner = self.runners[node]
        if runner in self._rushing:

            def rushing_tick(now_s: float) -> None:
                # an honest node that jumped past a held round wakes nobody: look again
                if runner.core.holding_back:
                    runner.resume()
                runner.tick(now_s)

            return rushing_tick
        progress = self._progress
        if progress is None or node != min(self.honest, default=-1):
            return runner.tick

        def tick(now_s: float) -> None:
            runner.tick(now_s)
            progress.poll(self.snapshot)

        return tick

    async def run(self) -> RunOutcome:
        scenario = self.scenario
        # crash the nodes crashed from the start before any node starts: the first
        # broadcasts must not count them among their voters
        for node, strategy in sorted(self.strategies.items()):
            if strategy.crashed(0):
                self._crash(node)
        for node, runner in enumerate(self.runners):
            if runner.stopped:
                continue
            self.network.call_every(node, scenario.tick_interval_s, self._ticker(node))
            runner.start()
        result = await self.network.run(
            {node: self._handler(node) for node in range(scenario.n)},
            self._all_honest_done,
            scenario.time_limit_s,
            clock_lag_max_s=CLOCK_LAG_MAX_S,
            deliver_broadcast={
                node: runner.deliver_broadcast for node, runner in enumerate(self.runners)
            },
        )
        self.book.flush()
        self._drain_measures()
        completed = result.reason is StopReason.UNTIL
        return RunOutcome(completed, result.reason.value, result.now_s)


class _FlippedGradientRecorder(DivergenceGuard):
    """An honest node's guarded learner that also records, at each step, its gradient on
    the same batch with every label flipped: what ByzFL's label-flipping attackers average
    (they read it through ``StrategyContext.flipped_gradients``). The honest computation
    is untouched."""

    def __init__(self, trainer: Trainer, node: int, book: dict[int, dict[int, np.ndarray]]) -> None:
        super().__init__(trainer)
        self._trainer = trainer
        self._node = node
        self._book = book
        self.step_of: Callable[[], int] = lambda: 0

    def gradient(self) -> np.ndarray:
        gradient = super().gradient()
        flipped = self._trainer.flipped_gradient()
        self._book.setdefault(self.step_of(), {})[self._node] = flipped
        return gradient


@contextlib.contextmanager
def _node_log(out_dir: Path | None) -> Iterator[None]:
    """The nodes' log lines (one per fault kind and accused, jumps, ...) go to
    ``out_dir/sim.log`` during the run instead of the terminal, where they would break
    the progress display; handlers the caller configured still get them."""
    if out_dir is None:
        yield
        return
    logger = logging.getLogger("jungle")
    handler = logging.FileHandler(out_dir / "sim.log", mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


def run_scenario(
    scenario: Scenario,
    out_dir: Path | None = None,
    seed: int | None = None,
    progress: bool | Progress = True,
    *,
    mode: str = "sim",
) -> Summary:
    """Run ``scenario`` (with ``seed`` instead of its own, if given) and return its summary.

    With ``out_dir``, writes summary.json, metrics.jsonl, faults.jsonl and the plots there.
    ``progress``: True for a progress display on stderr, False for none, or a
    :class:`~sim.progress.Progress` of your own. Prints the seed on any failure.
    """
    if seed is not None:
        scenario = scenario.with_seed(seed)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    display = Progress(scenario.name) if progress is True else (progress or None)
    if scenario.mode == MODE_SERVER:
        from sim.server import run_server

        with _node_log(out_dir):
            try:
                return run_server(scenario, out_dir, display)
            except BaseException:
                print(
                    f"jungle sim: scenario {scenario.name!r} (mode server) failed with seed "
                    f"{scenario.seed}; reproduce with --seed {scenario.seed}",
                    file=sys.stderr,
                )
                raise
    started = time.perf_counter()
    with _node_log(out_dir):
        try:
            simulation = Simulation(scenario, out_dir, display)
        except ValueError as error:  # a task, partition or plugin that cannot be built
            raise ScenarioError([f"{scenario.name}: {error}"]) from error
        try:
            clock = trio.testing.MockClock(autojump_threshold=0)
            outcome = trio.run(simulation.run, clock=clock)
        except BaseException:
            print(
                f"jungle sim: scenario {scenario.name!r} failed with seed {scenario.seed}; "
                f"reproduce with --seed {scenario.seed}",
                file=sys.stderr,
            )
            raise
        finally:
            simulation.log.close()
    wall_s = time.perf_counter() - started
    if display is not None:
        display.finish(simulation.snapshot())
    summary = build_summary(simulation, outcome, wall_s, mode)
    if out_dir is not None:
        from sim.report import write_report

        write_report(out_dir, summary, simulation.log, simulation.book.finished_rounds)
    return summary
