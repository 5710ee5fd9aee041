"""One real node at run time: transport + core + trainer under the runner, and its outputs.

node/startup.py has already loaded and checked everything; :func:`run_node` opens the
authenticated TCP transport, builds the protocol core (ed25519 signatures, always on for
real nodes) and drives the shared :class:`~node.runner.Runner`, the one place effects
happen. :class:`NodeApp` is the runner's observer: it turns outputs, faults and finished
steps into the metrics file, the log, the progress line and the checkpoints. After the
last step the node keeps serving its peers until every one has finished (or ``linger_s``),
then writes a summary record and returns its exit status.

A node that makes no progress (no new round, no new step) for ``stall_warning_s`` logs
what it waits for (which step, phase and round, which vectors and witnesses it lacks,
which peers are down), and repeats it; after ``stall_timeout_s`` it exits with
:data:`EXIT_STALLED` and a summary saying why.

SIGINT and SIGTERM stop the node cleanly (summary written, exit 130 / 143). No checkpoint
is taken then: mid-step the trainer holds a gradient that was never applied, and the last
periodic checkpoint is the consistent state to resume from.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from typing import IO, Final

import trio

from node.checkpoint import Checkpoint
from node.checkpoint_writer import CheckpointWriter
from node.divergence import DivergenceGuard
from node.metrics import MetricsWriter, Progress, ProgressLine, is_log_point, peer_keyed
from node.plugins import load_plugin
from node.roster import parse_address
from node.runner import Runner, RunnerHooks, StepRecord
from node.startup import PreparedNode, announce
from node.transport import TcpTransport, TransportError, open_tcp_transport
from protocol.core import NodeCore
from protocol.crypto import Ed25519Scheme
from protocol.messages import Phase
from protocol.step import Fault, Output, RoundStarted

log = logging.getLogger("jungle.node")

#: exit statuses of ``jungle node``
EXIT_DONE: Final = 0
EXIT_FAILED: Final = 1
EXIT_STALLED: Final = 3
EXIT_ON_SIGNAL: Final = {signal.SIGINT: 130, signal.SIGTERM: 143}
#: how often the progress line refreshes between steps (peers come and go)
PROGRESS_REFRESH_S: Final = 1.0
#: how often the stall watch looks at the runner (at most)
STALL_POLL_S: Final = 1.0
#: at exit, how long queued messages (our last ones, Finished) get to reach the peers
FLUSH_AT_EXIT_S: Final = 2.0


def run(prepared: PreparedNode, progress_stream: IO[str] | None = None) -> int:
    """Run the node to completion (blocking); returns the process exit status."""
    return trio.run(run_node, prepared, progress_stream)


async def run_node(prepared: PreparedNode, progress_stream: IO[str] | None = None) -> int:
    """Run the node until its last step plus ``linger_s``, or a signal. The exit status."""
    metrics = MetricsWriter(prepared.config.node.metrics_file, prepared.config.node.id)
    progress = None if progress_stream is None else ProgressLine(progress_stream)
    try:
        return await NodeApp(prepared, metrics, progress).run()
    finally:
        if progress is not None:
            progress.finish()
        metrics.close()


class NodeApp:
    """The runner's observer for one real node: metrics, log, progress line, checkpoints."""

    def __init__(
        self, prepared: PreparedNode, metrics: MetricsWriter, progress: ProgressLine | None
    ) -> None:
        self._prepared = prepared
        self._config = prepared.config
        self._me = prepared.config.node.id
        self._metrics = metrics
        self._progress = progress
        self._rounds_by_step: Counter[int] = Counter()
        self._started_s = time.monotonic()
        self._last_step_s = self._started_s
        self._accuracy: float | None = None
        self._outcome = "done"
        self._status = EXIT_DONE
        self._run_scope = trio.CancelScope()
        self._checkpoint_failures = 0
        self._checkpoints = CheckpointWriter(
            prepared.checkpoints.save, self._checkpoint_written, self._checkpoint_failed
        )
        self._runner: Runner | None = None
        self._transport: TcpTransport | None = None

    # ---------------------------------------------------------------------- the run

    async def run(self) -> int:
        prepared = self._prepared
        scheme = Ed25519Scheme(bytes(prepared.signing_key), prepared.roster.public_keys)
        strategy = prepared.strategy
        core = NodeCore(
            prepared.protocol_config,
            scheme,
            vector_filter=None if strategy is None else strategy.vector,
        )
        core.advance_to(prepared.start_step)
        core.restore(prepared.restored)
        try:
            self._open_state()
        except OSError as error:
            log.error("cannot write this node's state in %s: %s", prepared.journal.folder, error)
            return EXIT_FAILED
        if strategy is not None:  # loaded by the node plugin, which binds it too
            load_plugin().bind_strategy(
                strategy,
                protocol_config=prepared.protocol_config,
                scheme=scheme,
                seed=self._config.node.seed,
                current_step=lambda: core.current_step,
                num_classes=prepared.num_classes,
            )
        announce(prepared)
        listeners = await self._listen()
        if listeners is None:
            return EXIT_FAILED
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_signals, signals)
                async with open_tcp_transport(
                    prepared.transport_config,
                    listeners=listeners,
                    on_peer_restart=self._on_peer_restart,
                ) as tr:
                    self._transport = tr
                    await self._run_learning(core, tr)
                    with trio.move_on_after(FLUSH_AT_EXIT_S):
                        await tr.wait_flushed()
                nursery.cancel_scope.cancel()
        prepared.journal.close()
        self._write_summary()
        return self._status

    def _open_state(self) -> None:
        """The journal's folder, and on a fresh start a checkpoint at step 0: from now on
        this node's state exists, so a later start can never mistake it for a fresh one."""
        prepared = self._prepared
        prepared.journal.open()
        if prepared.checkpoint_step is None:  # written here, before anything is sent
            self._save_checkpoint_now(prepared.start_step)

    async def _listen(self) -> list[trio.SocketListener] | None:
        """Bind first, so a busy port is one clear line rather than a traceback."""
        node, entry = self._config.node, self._prepared.roster.entry(self._me)
        host, port = (entry.host, entry.port) if node.listen is None else parse_address(node.listen)
        try:
            return await trio.open_tcp_listeners(port, host=host)
        except OSError as error:
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            log.error("cannot listen on %s: %s", where, error.strerror or error)
            return None

    async def _run_learning(self, core: NodeCore, transport: TcpTransport) -> None:
        prepared, node, run = self._prepared, self._config.node, self._config.run
        strategy = prepared.strategy
        runner = Runner(
            core,
            transport,
            DivergenceGuard(prepared.trainer),
            steps=run.steps,
            start_step=prepared.start_step,
            eval_every=run.eval_every,
            clock=time.time,
            journal=prepared.journal,
            rejoin=bool(prepared.restored),
            hooks=RunnerHooks(
                on_output=self._on_output,
                on_fault=self._on_fault,
                on_step=self._on_step,
                on_step_end=self._on_step_end,
                outgoing_filter=None if strategy is None else strategy.outgoing,
            ),
        )
        self._runner = runner
        self._metrics.write(
            "start",
            public_key=prepared.public_key,
            session=prepared.roster.session_name,
            session_id=prepared.roster.session_id.hex(),
            n=prepared.roster.n,
            start_step=prepared.start_step,
            steps=run.steps,
            resumed=prepared.start_step > 0,
            dim=prepared.trainer.dim,
            listen_port=transport.listen_port,
            byzantine=self._config.byzantine.strategy,
            config=self._config.to_json(),
        )
        if strategy is not None and strategy.crashed(prepared.start_step):
            self._crash(prepared.start_step)
        async with trio.open_nursery() as nursery:
            if self._progress is not None:
                nursery.start_soon(self._refresh_progress)
            nursery.start_soon(self._watch_stalls)
            nursery.start_soon(self._checkpoints.run)
            with self._run_scope:
                await self._wait_for_peers(transport)
                await runner.run(self._receive, run.tick_interval_s, node.linger_s)
                await self._checkpoints.flush()  # any periodic one still waiting
                log.info(
                    "finished %d steps in %.1f s; last test accuracy %s",
                    runner.step,
                    time.monotonic() - self._started_s,
                    "-" if self._accuracy is None else f"{self._accuracy:.4f}",
                )
            nursery.cancel_scope.cancel()

    async def _wait_for_peers(self, transport: TcpTransport) -> None:
        """Up to ``wait_for_peers_s`` for every peer, so a cluster begins together.

        Not needed for safety or liveness (n - f nodes make progress, latecomers catch up),
        but nodes started by hand seconds apart would otherwise leave the last ones to
        skip the first steps."""
        wait_s = self._config.node.wait_for_peers_s
        peers = self._prepared.roster.n - 1
        if wait_s <= 0 or self._prepared.start_step >= self._config.run.steps:
            return
        with trio.move_on_after(wait_s):
            await transport.wait_connected()
            log.info("all %d peers reachable; starting", peers)
            return
        log.warning(
            "%d of %d peers reachable after %.0f s; starting anyway (n - f suffice)",
            len(transport.peers_connected()),
            peers,
            wait_s,
        )

    async def _receive(self) -> tuple[int, bytes]:
        """The transport's next message; a Byzantine strategy may answer it with extras."""
        assert self._transport is not None
        src, data = await self._transport.receive()
        strategy = self._prepared.strategy
        if strategy is not None:
            for dst, extra in strategy.on_receive(src, data):
                if 0 <= dst < self._prepared.roster.n and dst != self._me:
                    try:
                        self._transport.send_nowait(dst, extra)
                    except TransportError as error:
                        log.debug("byzantine extra message to %d not sent: %s", dst, error)
        return src, data

    async def _watch_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            log.warning("%s received: stopping (last checkpoint kept)", name)
            self._outcome = f"stopped by {name}"
            self._status = EXIT_ON_SIGNAL.get(signal.Signals(signum), EXIT_FAILED)
            self._run_scope.cancel()
            return

    async def _watch_stalls(self) -> None:
        """Warn, then give up, when the runner stops making progress (module docstring)."""
        node = self._config.node
        poll_s = min(STALL_POLL_S, node.stall_warning_s / 4)
        marker: tuple[int, int] | None = None
        since_s = next_warning_s = trio.current_time()
        while True:
            await trio.sleep(poll_s)
            now_s = trio.current_time()
            runner = self._runner
            if runner is None or not runner.started or runner.done:
                marker = None  # waiting for peers at start, or serving after the end
                continue
            stats = runner.statistics()
            current = (stats.step, stats.rounds_started)
            if current != marker:
                marker, since_s = current, now_s
                next_warning_s = now_s + node.stall_warning_s
                continue
            stalled_s = now_s - since_s
            if node.stall_timeout_s and stalled_s >= node.stall_timeout_s:
                what = self._waiting_for()
                log.error("giving up: no progress for %.0f s; %s", stalled_s, what)
                self._outcome = f"stalled: no progress for {stalled_s:.0f} s; {what}"
                self._status = EXIT_STALLED
                self._run_scope.cancel()
                return
            if now_s >= next_warning_s:
                log.warning("no progress for %.0f s; %s", stalled_s, self._waiting_for())
                next_warning_s = now_s + node.stall_warning_s

    def _waiting_for(self) -> str:
        """What the node waits for, in one line: the quorum it lacks and who is down."""
        runner, transport = self._runner, self._transport
        assert runner is not None and transport is not None
        peers = [peer for peer in range(self._prepared.roster.n) if peer != self._me]
        connected = transport.peers_connected()
        down = [peer for peer in peers if peer not in connected]
        seen = runner.core.statistics().highest_step_seen
        steps = ", ".join(f"{peer}: {seen.get(peer, '-')}" for peer in peers)
        return (
            f"waiting at {runner.core.waiting_for()}; links down to "
            f"{', '.join(map(str, down)) or 'none'}; peers last heard at steps {{{steps}}}"
        )

    def _on_peer_restart(self, peer: int) -> None:
        if self._runner is not None:
            self._runner.peer_restarted(peer)

    async def _refresh_progress(self) -> None:
        while True:
            self._show_progress()
            await trio.sleep(PROGRESS_REFRESH_S)

    # -------------------------------------------------------------------- runner hooks

    def _on_output(self, node: int, output: Output) -> None:
        if isinstance(output, RoundStarted):
            self._rounds_by_step[output.step] += 1
            self._metrics.write(
                "round",
                step=output.step,
                phase=Phase(output.phase).name.lower(),
                round=output.round,
            )

    def _on_fault(self, node: int, fault: Fault) -> None:
        self._metrics.fault(fault, self._runner.step if self._runner is not None else -1)

    def _on_step(self, record: StepRecord) -> None:
        assert self._runner is not None and self._transport is not None
        now_s = time.monotonic()
        runner_stats = self._runner.statistics()
        transport_stats = self._transport.statistics()
        peers_connected = len(self._transport.peers_connected())
        if record.test_accuracy is not None:
            self._accuracy = record.test_accuracy
        rounds = self._rounds_by_step.pop(record.step, 0)
        for skipped in [step for step in self._rounds_by_step if step < record.step]:
            del self._rounds_by_step[skipped]  # steps jumped over after a restart
        self._metrics.write(
            "step",
            step=record.step,
            rounds=rounds,
            train_loss=record.train_loss,
            batches=record.batches,
            test_loss=record.test_loss,
            test_accuracy=record.test_accuracy,
            bytes_sent=transport_stats.bytes_sent,
            bytes_received=transport_stats.bytes_received,
            messages_sent=transport_stats.messages_sent,
            messages_received=transport_stats.messages_received,
            messages_dropped=transport_stats.messages_dropped,
            peers_connected=peers_connected,
            faults=dict(record.faults),
            faults_by_accused={str(k): v for k, v in runner_stats.faults_by_accused.items()},
            transport_faults=peer_keyed(transport_stats.faults),
            jumps=runner_stats.jumps,
            step_s=round(now_s - self._last_step_s, 6),
            elapsed_s=round(now_s - self._started_s, 6),
        )
        self._last_step_s = now_s
        steps = self._config.run.steps
        if record.test_accuracy is not None or record.step == 0:
            log.info(
                "step %d/%d: train loss %s, test loss %s, accuracy %s; %d/%d peers, "
                "%.1f MB sent, %.1f MB received, %d faults",
                record.step + 1,
                steps,
                _number(record.train_loss),
                _number(record.test_loss),
                _number(record.test_accuracy),
                peers_connected,
                self._prepared.roster.n - 1,
                transport_stats.bytes_sent / 1e6,
                transport_stats.bytes_received / 1e6,
                _fault_total(record.faults, transport_stats.faults),
            )
        self._show_progress()

    def _on_step_end(self, next_step: int) -> None:
        node = self._config.node
        if next_step >= self._config.run.steps:
            # The last one on the spot: the runner announces that this node has finished
            # right after this, and a node killed before its last checkpoint is on disk
            # would restart at its last step, while its peers, told it had finished, leave.
            self._save_checkpoint_now(next_step)
        elif next_step % node.checkpoint_every == 0:
            self._checkpoints.submit(self._checkpoint(next_step))  # written off the loop
        strategy = self._prepared.strategy
        if strategy is not None and strategy.crashed(next_step):
            self._crash(next_step)

    # ---------------------------------------------------------------------- helpers

    def _checkpoint(self, next_step: int) -> Checkpoint:
        """The node's state before ``next_step``: a snapshot (the trainer state is copies)."""
        prepared = self._prepared
        return Checkpoint(
            step=next_step,
            session_id_hex=prepared.roster.session_id.hex(),
            public_key_b64=prepared.public_key,
            resume_digest=self._config.resume_digest(),
            trainer_state=prepared.trainer.state_dict(),
        )

    def _save_checkpoint_now(self, next_step: int) -> None:
        """Write the checkpoint before ``next_step`` on the event loop (waiting for a
        periodic write under way; an older one still waiting is then skipped)."""
        checkpoint = self._checkpoint(next_step)
        try:
            written = self._prepared.checkpoints.save(checkpoint)
        except OSError as error:
            self._checkpoint_failed(checkpoint, error)
        else:
            if written:
                self._checkpoint_written(checkpoint)

    def _checkpoint_written(self, checkpoint: Checkpoint) -> None:
        path = self._prepared.checkpoints.path
        self._metrics.write("checkpoint", step=checkpoint.step, path=str(path))
        log.debug("checkpoint written at step %d", checkpoint.step)

    def _checkpoint_failed(self, checkpoint: Checkpoint, error: OSError) -> None:
        # A full disk must not stop the learning; the previous checkpoint is intact.
        self._checkpoint_failures += 1
        if is_log_point(self._checkpoint_failures):
            log.error("checkpoint at step %d failed: %s", checkpoint.step, error)

    def _crash(self, step: int) -> None:
        log.warning("BYZANTINE MODE: the strategy crashes this node at step %d", step)
        self._outcome = f"byzantine crash at step {step}"
        if self._runner is not None:
            self._runner.stop()
        self._run_scope.cancel()

    def _show_progress(self) -> None:
        if self._progress is None or self._runner is None or self._transport is None:
            return
        stats = self._transport.statistics()
        runner_stats = self._runner.statistics()
        self._progress.show(
            Progress(
                step=self._runner.step,
                steps=self._config.run.steps,
                accuracy=self._accuracy,
                peers_connected=len(self._transport.peers_connected()),
                peers=self._prepared.roster.n - 1,
                bytes_sent=stats.bytes_sent,
                faults=_fault_total(runner_stats.faults_by_kind, stats.faults),
            )
        )

    def _write_summary(self) -> None:
        runner, transport = self._runner, self._transport
        fields: dict[str, object] = {"outcome": self._outcome, "exit_status": self._status}
        if runner is not None:
            stats = runner.statistics()
            fields.update(
                step=stats.step,
                steps=stats.steps_total,
                done=stats.done,
                test_accuracy=self._accuracy,
                messages_in=stats.messages_in,
                messages_out=stats.messages_out,
                faults=dict(stats.faults_by_kind),
                faults_by_accused={str(k): v for k, v in stats.faults_by_accused.items()},
                jumps=stats.jumps,
                peers_finished=sorted(stats.peers_finished),
            )
            core = runner.core.statistics()
            fields.update(
                duplicates_dropped=peer_keyed_counts(core.duplicates),
                far_ahead_dropped=peer_keyed_counts(core.far_ahead),
                replays_sent=peer_keyed_counts(core.replays_sent),
            )
        if transport is not None:
            tstats = transport.statistics()
            fields.update(
                bytes_sent=tstats.bytes_sent,
                bytes_received=tstats.bytes_received,
                messages_dropped=tstats.messages_dropped,
                transport_faults=peer_keyed(tstats.faults),
            )
        fields["checkpoints_written"] = self._prepared.checkpoints.statistics().saves
        journal = self._prepared.journal.statistics()
        fields.update(journal_records=journal.records_appended, journal_syncs=journal.syncs)
        fields["elapsed_s"] = round(time.monotonic() - self._started_s, 6)
        self._metrics.write("summary", **fields)


def peer_keyed_counts(counts: Mapping[int, int]) -> dict[str, int]:
    return {str(peer): count for peer, count in sorted(counts.items())}


def _number(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


def _fault_total(protocol: Mapping[str, int], transport: Mapping[str, Mapping[int, int]]) -> int:
    """Faults detected so far, protocol and transport together."""
    return sum(protocol.values()) + sum(sum(by.values()) for by in transport.values())
