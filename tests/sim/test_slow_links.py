"""Slow honest nodes finish too (DESIGN 3): a minority of honest nodes behind links 200x
slower than the rest, under attack, must reach the last step without stalling and
without anybody being accused of anything.

Peers serve a step for ``steps_retained`` steps after their own; a node that finds f+1
peers beyond that jumps to the step they vouch for and asks them for a replay
(``Catchup``), and nodes that are done keep serving until every peer has finished.
"""

from __future__ import annotations

import pytest

from sim.engine import run_scenario
from sim.scenario import Scenario

SLOW = (0, 1)
SLOWDOWN = 200.0


def slow_links(seed: int) -> Scenario:
    return Scenario.from_dict(
        {
            "name": "slow-links",
            "seed": seed,
            "n": 7,
            "f": 2,
            "steps": 12,
            "task": "synthetic",
            "eval_every": 12,
            "partition": {"scheme": "dirichlet", "alpha": 0.5},
            "network": {
                "link_delay": {"model": "lognormal", "median_s": 0.01, "sigma": 0.5},
                "slow_nodes": {str(node): SLOWDOWN for node in SLOW},
            },
            "byzantine": {"nodes": [5, 6], "strategy": "alie"},
        }
    )


@pytest.mark.parametrize("seed", range(3))
def test_honest_nodes_behind_slow_links_reach_the_last_step_unaccused(seed: int) -> None:
    summary = run_scenario(slow_links(seed), None, progress=False)
    where = f"(seed={seed})"
    assert summary.completed, (summary.stop_reason, summary.honest_steps_done, where)
    assert set(summary.honest_steps_done.values()) == {12}, where
    accused = set(summary.faults["by_accused"])
    assert accused <= {5, 6}, (summary.faults, where)  # never an honest node
    # The slow nodes took part in the last agreements (they did not skip to the end):
    # their final models score like everybody else's.
    accuracy = summary.honest_accuracy_final
    fast = [accuracy[node] for node in accuracy if node not in SLOW]
    for node in SLOW:
        assert accuracy[node] >= min(fast) - 0.05, (accuracy, where)
