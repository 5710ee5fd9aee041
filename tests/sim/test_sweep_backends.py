"""Where a sweep's cells run: the local process pool, a local Ray instance; and what a
failing cell does to the sweep (nothing but its own row)."""

from __future__ import annotations

import csv
import io
import json
import socket
import textwrap
from pathlib import Path
from typing import Any

import pytest

from sim.cli import main
from sim.sweep_cells import ERROR_FILE


def write_grid(tmp_path: Path, scenario: dict[str, Any] | None = None) -> Path:
    base = tmp_path / "base.toml"
    base.write_text(
        textwrap.dedent(
            """\
            name = "cells"
            n = 4
            f = 1
            steps = 2
            task = "synthetic"
            eval_every = 1
            [protocol]
            crypto = false
            [network]
            link_delay = {model = "lognormal", median_s = 0.01, sigma = 0.8}
            """
        ),
        encoding="utf-8",
    )
    extra = "".join(f"{key} = {json.dumps(value)}\n" for key, value in (scenario or {}).items())
    grid = tmp_path / "grid.toml"
    grid.write_text(
        f'base = "{base}"\nseeds = [0, 1]\n[scenario]\n{extra}[axes]\n'
        '"protocol.aggregator" = ["trimmed_mean", "mean"]\n',
        encoding="utf-8",
    )
    return grid


def read_sweep(out: Path) -> tuple[list[dict[str, str]], str]:
    rows = list(csv.DictReader(io.StringIO((out / "sweep.csv").read_text())))
    return rows, (out / "sweep.md").read_text()


def digests(out: Path) -> dict[str, str]:
    """Each cell folder's trace digest, from its own summary.json."""
    return {
        folder.name: json.loads((folder / "summary.json").read_text())["trace_digest"]
        for folder in sorted(out.iterdir())
        if folder.is_dir()
    }


@pytest.mark.slow
def test_ray_sweep_equals_the_local_pool(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same table, the same trace digest in every cell, the same files per cell; and
    progress says cells done out of the total."""
    pytest.importorskip("ray")
    grid = write_grid(tmp_path)
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    assert main(["--sweep", str(grid), "--out", str(local), "--workers", "2", "--quiet"]) == 0
    assert main(["--sweep", str(grid), "--out", str(on_ray), "--ray", "--workers", "2"]) == 0
    err = capsys.readouterr().err
    assert "Ray tasks" in err and "sweep [4/4]" in err, err
    local_rows, local_table = read_sweep(local)
    ray_rows, ray_table = read_sweep(on_ray)
    assert ray_table == local_table
    assert [r["trace_digest"] for r in ray_rows] == [r["trace_digest"] for r in local_rows]
    assert digests(on_ray) == digests(local) and len(digests(local)) == 4
    for folder in local.iterdir():
        if folder.is_dir():
            names = sorted(p.name for p in folder.iterdir())
            assert sorted(p.name for p in (on_ray / folder.name).iterdir()) == names


@pytest.mark.slow
def test_ray_workers_with_other_libraries_fail_their_cells(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Results computed with other library versions would not match a local run: such
    cells fail, naming the worker and the difference, instead of joining the table."""
    pytest.importorskip("ray")
    import sim.sweep_ray

    here = dict(sim.sweep_ray.environment(), numpy="0.0-driver")
    monkeypatch.setattr(sim.sweep_ray, "environment", lambda: here)
    out = tmp_path / "ray"
    grid = write_grid(tmp_path)
    assert main(["--sweep", str(grid), "--out", str(out), "--ray", "--workers", "2"]) == 1
    err = capsys.readouterr().err
    assert err.count("computes with other versions: numpy") >= 4, err
    assert "(here 0.0-driver)" in err
    cells = [folder for folder in out.iterdir() if folder.is_dir()]
    assert len(cells) == 4
    for folder in cells:  # nothing computed with other libraries is kept
        assert [p.name for p in folder.iterdir()] == [ERROR_FILE]
        assert "computes with other versions" in (folder / ERROR_FILE).read_text()


def test_a_ray_address_nobody_answers_at_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("ray")
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    grid = write_grid(tmp_path)
    out = tmp_path / "out"
    assert main(["--sweep", str(grid), "--out", str(out), "--ray", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"jungle sim: --ray: no Ray head answers at 127.0.0.1:{port} (Connection refused); "
        "start one with `ray start --head --port=6379` on that machine, or check the address"
    ]


@pytest.mark.parametrize("name", ["/etc/cron.d/x", "../escaped.txt", "plots/../../x", ".", ""])
def test_outputs_a_task_returns_cannot_land_outside_their_cell(tmp_path: Path, name: str) -> None:
    from sim.sweep_ray import _write_outputs

    cell = tmp_path / "sweep" / "cell"
    with pytest.raises(ValueError, match="outside its cell's folder"):
        _write_outputs(cell, {"summary.json": b"{}", name: b"x"})
    assert not cell.exists() and not (tmp_path / "sweep" / "escaped.txt").exists()
    _write_outputs(cell, {"summary.json": b"{}", "plots/a.png": b"png"})
    assert (cell / "plots" / "a.png").read_bytes() == b"png"


SCHEDULER = """
from sim.schedulers import Scheduler

class FailsOnMean(Scheduler):
    def __init__(self, fail: bool = False, link_delay: object = None) -> None:
        self.fail = fail

    def delay_s(self, meta, u):
        if self.fail:
            raise RuntimeError("this link is broken")
        return 0.01
"""


def test_a_failing_cell_is_named_and_the_others_finish(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_links.py").write_text(SCHEDULER, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    grid = write_grid(tmp_path, {"network.scheduler": "broken_links:FailsOnMean"})
    text = grid.read_text().replace(
        '"protocol.aggregator" = ["trimmed_mean", "mean"]', '"network.fail" = [false, true]'
    )
    grid.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    assert main(["--sweep", str(grid), "--out", str(out), "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert "sweep [4/4]" in err
    failures = [line for line in err.splitlines() if line.startswith("jungle sim: cell")]
    assert len(failures) == 2, err
    for seed, line in zip((0, 1), failures, strict=True):
        assert f"network.fail=true, seed {seed} failed: RuntimeError: this link is broken" in line
    rows, table = read_sweep(out)
    assert [row["completed"] for row in rows] == ["True", "True", "False", "False"]
    assert rows[2]["error"] == "RuntimeError: this link is broken"
    assert "this link is broken" in (out / "true__seed0" / ERROR_FILE).read_text()
    assert "some cells failed" in table
