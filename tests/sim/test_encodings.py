"""Vector encodings in the simulator: bytes on the wire follow ``protocol.encoding``, and
the default (f32) is the very run the code made before encodings existed."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from sim.engine import run_scenario
from tests.sim.test_engine import tiny

#: the trace digest of test_engine.py's ``tiny()`` at seed 7, recorded on b9b7806 (before encodings)
DIGEST_BEFORE_ENCODINGS = "5165446f26f4c3a5b0475c21a7bfa65ff2b6547ac4fb05ac0761113204ee6904"
FEATURES, CLASSES = 2000, 10  # a 20,010-parameter linear model: payload bytes dominate


def wide_task() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], tuple[Any, Any]]:
    """A linear classifier wide enough that vectors, not votes, make up the traffic."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((240, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, 240)
    return (
        nn.Linear(FEATURES, CLASSES),
        (torch.from_numpy(x[:200]), torch.from_numpy(y[:200])),
        (
            x[200:],
            y[200:],
        ),
    )


def test_f32_is_the_run_before_encodings_existed() -> None:
    for scenario in (tiny(), tiny(**{"protocol.encoding": "f32"})):
        summary = run_scenario(scenario, None, seed=7, progress=False)
        assert summary.completed, "seed 7"
        assert summary.trace_digest == DIGEST_BEFORE_ENCODINGS, "seed 7"


@pytest.mark.parametrize("fidelity", ["full", "broadcast"])
def test_int8_sends_about_a_quarter_of_the_bytes_of_f32(fidelity: str) -> None:
    seed = 3
    sent: dict[str, int] = {}
    sends: dict[str, int] = {}
    for encoding in ("f32", "bf16", "int8"):
        scenario = tiny(
            **{
                "task": "tests.sim.test_encodings:wide_task",
                "steps": 2,
                "fidelity": fidelity,
                "protocol.encoding": encoding,
            }
        )
        summary = run_scenario(scenario, None, seed=seed, progress=False)
        assert summary.completed and not summary.faults["by_kind"], f"{encoding}, seed {seed}"
        sent[encoding] = sum(summary.bytes_sent.values())
        sends[encoding] = summary.bytes_sent_by_kind.get("send", 0)
    ratio = sent["f32"] / sent["int8"]
    # 4 bytes a value against 1 + 4/256: 3.94 for the payloads alone; votes (ECHO, READY:
    # the same bytes under any encoding) bring the total down to about 3.83 here
    assert 3.75 < ratio < 3.94, f"f32 / int8 = {ratio:.3f} ({sent}), seed {seed}"
    assert 1.9 < sent["f32"] / sent["bf16"] < 2.0, f"{sent}, seed {seed}"
    if fidelity == "full":  # SENDs alone: vectors (and the few REPORTs) with their headers
        send_ratio = sends["f32"] / sends["int8"]
        assert 3.9 < send_ratio < 3.94, f"SEND bytes f32 / int8 = {send_ratio:.3f}, seed {seed}"
