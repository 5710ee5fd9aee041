"""The centralized reference (``mode = "server"``): one trusted server, no network.

The same data split, model, trainers, seeds and Byzantine strategies as a decentralized
run of the scenario (:mod:`sim.engine` builds them the same way), but each step one
trusted server collects every node's gradient, aggregates them once with the scenario's
aggregator (and pre-aggregators), applies the result to the one model and hands that model
back to every node. This is how the literature (and ByzFL) evaluates robust aggregators, so
a table can put decentralized agreement and its centralized counterpart side by side on the
very same run: what decentralization costs, and what the aggregator alone buys.

What the server sees is what a rushing adversary could hope for: every Byzantine strategy
sees all honest gradients of the step before it answers (``ctx.honest_vectors``). There are
no protocol messages, so strategies that work on them (equivocation, garbage, replays) are
refused when the scenario is read; silent and crashed nodes send nothing, and a non-finite
vector (``inf``) is dropped and counted as a BAD_VECTOR fault against its sender, as the
agreement does. Strategies limited to the model phase (``phases = "model"``) do nothing
here: the server aggregates gradients only.

The summary has the decentralized run's fields: the server's model is every honest node's
model (so ``honest_accuracy_min`` is its accuracy), ``averaging_error`` is the distance of
the aggregate from the honest mean over the honest gradients' diameter (the same measure as
an agreement's), ``honest_diameter`` the honest gradients' diameter per step, no bytes, no
virtual time, and the trace digest hashes every step's aggregate.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import blake3
import numpy as np

from node.divergence import DivergenceGuard
from node.runner import StepRecord
from node.trainer import Trainer
from protocol._vectors import pairwise_distances
from protocol.aggregate import Aggregator, compose
from protocol.crypto import UnsignedScheme
from protocol.messages import Phase
from protocol.step import Fault, FaultKind
from sim.determinism import pin as pin_determinism
from sim.metrics import MetricsLog, RoundMeasure, finite_or_none
from sim.progress import Progress, ProgressSnapshot
from sim.scenario import Scenario, strategy_label
from sim.strategies import Strategy, StrategyContext, load_strategy, strategy_rng
from sim.streams import node_trainer, session_id, task_and_parts
from sim.summary import Summary, diameter_rows

#: the server's aggregate is the "decision" of the step's one gradient round
_ROUND: Final = 0


class ServerRun:
    """One scenario in server mode, built and ready to :meth:`run` (once)."""

    def __init__(
        self, scenario: Scenario, out_dir: Path | None = None, progress: Progress | None = None
    ) -> None:
        pin_determinism()
        self.scenario = scenario
        seed = scenario.seed
        self.honest = scenario.honest_nodes()
        self.byzantine = scenario.byzantine_strategies()
        self.task, parts = task_and_parts(scenario)
        self.strategies: dict[int, Strategy] = {
            node: load_strategy(spec) for node, spec in sorted(self.byzantine.items())
        }
        self.trainers: dict[int, Trainer] = {}
        self.learners: dict[int, DivergenceGuard] = {}
        for node in range(scenario.n):
            strategy = self.strategies.get(node)
            label_map = None if strategy is None else strategy.label_map(self.task.num_classes)
            trainer = node_trainer(scenario, self.task, parts[node], node, label_map)
            self.trainers[node] = trainer
            self.learners[node] = DivergenceGuard(trainer)
        self.dim = self.trainers[0].dim
        self._wants_flipped = any(s.uses_flipped_gradients for s in self.strategies.values())
        self._honest_now: dict[int, np.ndarray] = {}
        self._flipped_now: dict[int, np.ndarray] = {}
        self._step = 0
        session = session_id(scenario, seed, [])
        for node, strategy in sorted(self.strategies.items()):
            strategy.bind(
                StrategyContext(
                    me=node,
                    n=scenario.n,
                    f=scenario.f,
                    session=session,
                    dim=self.dim,
                    dtype=np.dtype("<f4"),
                    scheme=UnsignedScheme(),
                    rng=strategy_rng(seed, node),
                    current_step=lambda: self._step,
                    honest_vectors=self._honest_vectors,
                    byzantine=frozenset(self.byzantine),
                    num_classes=self.task.num_classes,
                    honest=frozenset(self.honest),
                    aggregator=scenario.protocol.aggregator,
                    pre_aggregators=tuple(scenario.protocol.pre_aggregators),
                    flipped_gradients=self._flipped_gradients,
                )
            )
        self.aggregate: Aggregator = compose(
            scenario.protocol.aggregator, tuple(scenario.protocol.pre_aggregators)
        )
        self.log = MetricsLog(out_dir, self.honest)
        self.rounds: list[RoundMeasure] = []
        self.errors: list[dict[str, float | int | None]] = []
        self.crashed: set[int] = set()
        self.steps_done = 0
        self._progress = progress
        self._trace = blake3.blake3()

    def _honest_vectors(self, step: int, phase: int, round_: int) -> Mapping[int, np.ndarray]:
        if (step, phase, round_) != (self._step, Phase.GRADIENT, _ROUND):
            return {}
        return self._honest_now

    def _flipped_gradients(self, step: int) -> Mapping[int, np.ndarray]:
        return self._flipped_now if step == self._step else {}

    def snapshot(self) -> ProgressSnapshot:
        done = self.steps_done * len(self.honest)
        total = self.scenario.steps * len(self.honest)
        return ProgressSnapshot(done, total, done, total, 0.0, 0)

    def run(self) -> None:
        scenario = self.scenario
        server = self.learners[self.honest[0]]  # its model is the server's model
        model = server.parameters()
        for step in range(scenario.steps):
            self._step = step
            for learner in self.learners.values():
                learner.set_parameters(model)
            self._honest_now = {node: self.learners[node].gradient() for node in self.honest}
            if self._wants_flipped:
                self._flipped_now = {
                    node: self.trainers[node].flipped_gradient() for node in self.honest
                }
            vectors = dict(self._honest_now)
            for node, strategy in sorted(self.strategies.items()):
                vector = self._byzantine_vector(step, node, strategy)
                if vector is not None:
                    vectors[node] = vector
            rows = np.stack([vectors[node] for node in sorted(vectors)])
            aggregated = np.asarray(self.aggregate(rows, scenario.f), dtype=np.float32)
            self._trace.update(np.ascontiguousarray(aggregated).view(np.uint8).data)
            self._measure(step, aggregated)
            server.apply_gradient(aggregated)
            model = server.parameters()
            self.steps_done = step + 1
            evaluate = self.steps_done % max(1, scenario.eval_every) == 0
            self._record(step, evaluate or self.steps_done == scenario.steps)
            if self._progress is not None:
                self._progress.poll(self.snapshot)

    def _byzantine_vector(self, step: int, node: int, strategy: Strategy) -> np.ndarray | None:
        if node in self.crashed or strategy.silent:
            return None
        if strategy.crashed(step):
            self.crashed.add(node)
            return None
        own = self.learners[node].gradient()
        vector = strategy.vector(step, Phase.GRADIENT, _ROUND, own)
        if vector is None:  # cannot happen here (no waiting), but never aggregate None
            return None
        vector = np.asarray(vector)
        if vector.shape != (self.dim,) or not np.isfinite(vector).all():
            fault = Fault(node, FaultKind.BAD_VECTOR, "vector has NaN or infinite values")
            for observer in self.honest:
                self.log.fault(observer, fault, 0.0)
            return None
        return vector.astype(np.float32, copy=False)

    def _measure(self, step: int, aggregated: np.ndarray) -> None:
        honest = np.stack([self._honest_now[node] for node in self.honest]).astype(np.float64)
        diameter = float(pairwise_distances(honest).max(initial=0.0))
        self.rounds.append(RoundMeasure(step, Phase.GRADIENT, _ROUND, diameter, len(honest), 0, 0))
        error = (
            float(np.linalg.norm(aggregated - honest.mean(axis=0))) / diameter
            if diameter > 0.0
            else math.nan
        )
        self.errors.append(
            {
                "step": step,
                "phase": int(Phase.GRADIENT),
                "error": finite_or_none(error),
                "input_diameter": finite_or_none(diameter),
                "decision_diameter": 0.0,
            }
        )

    def _record(self, step: int, evaluate: bool) -> None:
        test_loss = test_accuracy = None
        if evaluate:
            test_loss, test_accuracy = self.learners[self.honest[0]].evaluate()
        for node in self.honest:
            self.log.step(
                StepRecord(
                    node=node,
                    step=step,
                    time_s=0.0,
                    train_loss=self.learners[node].train_loss,
                    test_loss=test_loss,
                    test_accuracy=test_accuracy,
                    bytes_sent=0,
                    bytes_received=0,
                    faults={},
                    batches=self.learners[node].batches,
                )
            )

    def summary(self, wall_seconds: float) -> Summary:
        scenario = self.scenario
        log = self.log
        accuracy = {node: log.final_accuracy.get(node, math.nan) for node in self.honest}
        values = list(accuracy.values())
        errors = [e["error"] for e in self.errors if isinstance(e["error"], float)]
        server = self.learners[self.honest[0]]
        diverged = server.diverged_at_step
        return Summary(
            scenario=scenario.name,
            seed=scenario.seed,
            n=scenario.n,
            f=scenario.f,
            honest=tuple(self.honest),
            byzantine={node: strategy_label(spec) for node, spec in self.byzantine.items()},
            steps=scenario.steps,
            agreement_rounds=0,
            completed=self.steps_done == scenario.steps,
            stop_reason="until",
            honest_steps_done={node: self.steps_done for node in self.honest},
            honest_accuracy_final=accuracy,
            honest_diverged={} if diverged is None else {n: diverged for n in self.honest},
            honest_accuracy_mean=statistics.fmean(values) if values else math.nan,
            honest_accuracy_min=min(values) if values else math.nan,
            honest_diameter=diameter_rows(self.rounds),
            averaging_error=list(self.errors),
            averaging_error_mean=statistics.fmean(errors) if errors else math.nan,
            averaging_error_max=max(errors) if errors else math.nan,
            bytes_sent={node: 0 for node in range(scenario.n)},
            messages_sent=0,
            messages_sent_by_node={node: 0 for node in range(scenario.n)},
            bytes_sent_by_kind={},
            messages_sent_by_kind={},
            faults={
                "by_kind": log.faults_by_kind(),
                "by_accused": log.faults_by_accused(),
                "equivocation_proofs": 0,
            },
            trace_digest=self._trace.hexdigest(),
            virtual_seconds=0.0,
            wall_seconds=wall_seconds,
            crypto=False,
            mode="server",
            fidelity=scenario.fidelity,
            session="",
            config=scenario.to_dict(),
        )


def run_server(
    scenario: Scenario, out_dir: Path | None = None, progress: Progress | None = None
) -> Summary:
    """Run ``scenario`` in server mode; with ``out_dir``, write the report there."""
    started = time.perf_counter()
    run = ServerRun(scenario, out_dir, progress)
    try:
        run.run()
    finally:
        run.log.close()
    if progress is not None:
        progress.finish(run.snapshot())
    summary = run.summary(time.perf_counter() - started)
    if out_dir is not None:
        from sim.report import write_report

        write_report(out_dir, summary, run.log, run.rounds)
    return summary
