"""The metrics file and the progress line."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

from node.metrics import (
    EVIDENCE_RECORDS_MAX,
    MetricsWriter,
    Progress,
    ProgressLine,
    is_log_point,
    peer_keyed,
)
from protocol.crypto import EquivocationProof
from protocol.messages import InstanceId, Tag
from protocol.step import Fault, FaultKind


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_are_json_lines_appended_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "m.jsonl"
    writer = MetricsWriter(path, node_id=3)
    writer.write("step", step=0, train_loss=math.nan, faults={"malformed": 2})
    writer.close()
    again = MetricsWriter(path, node_id=3)
    again.write("start", resumed=True)
    again.close()

    first, second = lines(path)
    assert first["type"] == "step" and first["node"] == 3 and first["train_loss"] is None
    assert first["faults"] == {"malformed": 2}
    assert isinstance(first["time_s"], float)
    assert second == {**second, "type": "start", "resumed": True}


def test_repeated_faults_are_written_sparsely_and_all_counted(tmp_path: Path) -> None:
    writer = MetricsWriter(tmp_path / "m.jsonl", node_id=0)
    for _ in range(1000):
        writer.fault(Fault(2, FaultKind.MALFORMED, "garbage"), step=7)
    writer.fault(Fault(1, FaultKind.MALFORMED, "garbage"), step=7)
    writer.close()

    written = lines(tmp_path / "m.jsonl")
    assert [(r["accused"], r["count"]) for r in written] == [
        (2, 1),
        (2, 10),
        (2, 100),
        (2, 1000),
        (1, 1),
    ]
    assert written[0] == {**written[0], "kind": "malformed", "step": 7, "evidence": None}
    stats = writer.statistics()
    assert stats.faults_seen == 1001 and stats.fault_records_written == 5


def test_every_equivocation_proof_is_written_up_to_a_bound(tmp_path: Path) -> None:
    proof = EquivocationProof(bytes(32), InstanceId(1, Tag(0, 0, 0, 0)), b"a", b"s", b"b", b"t")
    writer = MetricsWriter(None, node_id=0)  # counts only
    for _ in range(EVIDENCE_RECORDS_MAX + 5):
        writer.fault(Fault(1, FaultKind.EQUIVOCATION, "two digests", evidence=proof), step=0)
    assert writer.statistics().evidence_records_written == EVIDENCE_RECORDS_MAX

    path = tmp_path / "m.jsonl"
    writer = MetricsWriter(path, node_id=0)
    for _ in range(3):
        writer.fault(Fault(1, FaultKind.EQUIVOCATION, "two digests", evidence=proof), step=0)
    writer.close()
    assert [r["evidence"] for r in lines(path)] == [proof.to_json()] * 3


def test_log_points_and_peer_keys() -> None:
    assert [c for c in range(1, 2001) if is_log_point(c)] == [1, 10, 100, 1000]
    assert peer_keyed({"bad_mac": {3: 2, -1: 1}}) == {"bad_mac": {"-1": 1, "3": 2}}


def test_progress_line_overwrites_itself() -> None:
    stream = io.StringIO()
    line = ProgressLine(stream)
    line.clear()  # nothing shown yet: nothing written
    assert stream.getvalue() == ""

    line.show(Progress(3, 10, 0.8123, 2, 3, 2_500_000, 1))
    line.finish()

    assert stream.getvalue() == ("\r\x1b[Kstep 3/10  acc 0.812  peers 2/3  sent 2.5 MB  faults 1\n")
