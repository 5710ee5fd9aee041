"""Acceptance (DESIGN 3): real ``jungle node`` processes survive any pattern of SIGKILLs.

Four nodes (n=4, f=1) on loopback. A seeded plan kills, with SIGKILL and restarts with
the very same command:

1. one node, and restarts it only once the others have moved past the steps they still
   serve for it (it resumes where it had signed, finds f+1 peers beyond, jumps);
2. f+1 = 2 nodes, so that the other two cannot go on without them (a partial restart,
   which used to deadlock every run), restarting them while the others wait;
3. all four at once.

Kills happen mid-round (at a random instant) or between steps (right after a node
records a finished step), both in every plan. Then every node must finish every step,
no node may charge any fault to any other (all four are honest), and ``jungle
verify-evidence`` must find no equivocation proof in any metrics file: a restarted node
resends what it had signed, never signs anew.
"""

from __future__ import annotations

import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.node.helpers import (
    START_TIMEOUT_S,
    NodeProcess,
    make_cluster,
    processes_cleanup,
    run_jungle,
    wait_all_exit,
    wait_until,
)

pytestmark = pytest.mark.slow

N, F = 4, 1
STEPS = 45
#: the protocol's default: peers keep serving this many steps behind their own
STEPS_RETAINED = 2
RUN_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Kill:
    victims: tuple[int, ...]
    #: the furthest node must have finished at least this many steps
    after_steps: int
    #: "mid-round" (a random instant) or "between-steps" (just after a step record)
    when: str
    #: "at-once" (while the others are stuck or still serving our steps) or
    #: "after-they-moved-on" (once the others are beyond what they serve us)
    restart: str


def plan(seed: int) -> list[Kill]:
    rng = random.Random(seed)
    whens = ["mid-round", "between-steps"]
    rng.shuffle(whens)
    first = rng.randrange(N)
    pair = tuple(sorted(rng.sample(range(N), F + 1)))
    return [
        Kill((first,), 6 + rng.randrange(3), whens[0], "after-they-moved-on"),
        Kill(pair, 18 + rng.randrange(3), whens[1], "at-once"),
        Kill(tuple(range(N)), 28 + rng.randrange(3), rng.choice(whens), "at-once"),
    ]


def furthest_step(processes: list[NodeProcess]) -> int:
    return max((r["step"] + 1 for p in processes for r in p.records("step")), default=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_any_pattern_of_kills_and_restarts_finishes_and_accuses_nobody(
    tmp_path: Path, seed: int
) -> None:
    rng = random.Random(1000 + seed)
    cluster = make_cluster(
        tmp_path,
        settings={
            "node": {
                "steps": STEPS,
                "eval_every": STEPS,
                "checkpoint_every": 3,
                "linger_s": 60.0,
                "stall_timeout_s": 120.0,
            },
            "partition": {"scheme": "dirichlet", "alpha": 0.5},
        },
    )
    processes = [NodeProcess(node).start() for node in cluster.nodes]
    events = plan(seed)
    print(f"seed {seed}: {events}")
    with processes_cleanup(processes):
        for event in events:
            wait_until(
                lambda e=event: furthest_step(processes) >= e.after_steps,
                START_TIMEOUT_S + RUN_TIMEOUT_S,
                f"step {event.after_steps}",
                processes,
            )
            victims = [processes[i] for i in event.victims]
            if event.when == "between-steps":
                marks = [len(v.records("step")) for v in victims]

                def stepped(victims: list[NodeProcess] = victims, marks: list[int] = marks) -> bool:
                    return any(
                        len(v.records("step")) > m for v, m in zip(victims, marks, strict=True)
                    )

                wait_until(stepped, RUN_TIMEOUT_S, "a step record", processes)
            else:
                time.sleep(rng.uniform(0.0, 0.4))
            for victim in victims:
                victim.kill(signal.SIGKILL)
            for victim in victims:
                victim.wait(30)
            if event.restart == "after-they-moved-on":
                killed_at = max(v.steps_done() for v in victims)
                others = [p for i, p in enumerate(processes) if i not in event.victims]

                def moved_on(others: list[NodeProcess] = others, at: int = killed_at) -> bool:
                    return min(o.steps_done() for o in others) > at + STEPS_RETAINED + 1

                wait_until(moved_on, RUN_TIMEOUT_S, "the others to move past the victim", others)
            else:
                time.sleep(rng.uniform(0.2, 1.5))
            for i in event.victims:
                processes[i] = NodeProcess(processes[i].files).start()  # the same command

        statuses = wait_all_exit(processes, START_TIMEOUT_S + RUN_TIMEOUT_S)

        assert statuses == [0] * N, [p.log_text()[-3000:] for p in processes]
        for process in processes:
            summary = process.records("summary")[-1]
            where = f"node {process.files.id} (seed {seed})"
            assert summary["done"] and summary["step"] == STEPS, (where, summary)
            # Finishing together: it left once every peer had said it finished.
            others = [i for i in range(N) if i != process.files.id]
            assert summary["peers_finished"] == others, (where, summary)
            # All four are honest: nobody may accuse anybody, of anything, ever.
            faults = process.records("fault")
            assert not faults, (where, faults)
            for record in [*process.records("step"), summary]:
                assert not record["faults_by_accused"], (where, record)
                for kind, by_peer in record["transport_faults"].items():
                    assert set(by_peer) <= {"-1"}, (where, kind, by_peer)  # never an id
            result = run_jungle(
                "verify-evidence", str(process.files.metrics), "--roster", str(cluster.roster)
            )
            assert result.returncode == 0 and "0 proofs" in result.stderr, (where, result)
            starts = process.records("start")
            assert len(starts) >= 2 and all(s["resumed"] for s in starts[1:]), where
        # The restart after the others moved on resumed where it had signed and jumped.
        first = processes[events[0].victims[0]].log_text()
        assert "journal" in first and "restored" in first and "jumping from" in first
        print(
            f"seed {seed}: finished; jumps per node "
            f"{[p.records('summary')[-1]['jumps'] for p in processes]}; duplicates dropped "
            f"{[p.records('summary')[-1]['duplicates_dropped'] for p in processes]}"
        )
