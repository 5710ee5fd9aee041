"""Process-level test helpers: real ``jungle`` processes on real sockets.

A test builds a cluster folder with :func:`make_cluster` (keys from ``jungle keygen`` run as
subprocesses, a roster from ``jungle roster``, one TOML config per node), starts nodes with
:class:`NodeProcess` (``python -m node node CONFIG``, optionally inside a network
namespace), follows them through their JSONL metrics, and always kills what it started:
use :func:`processes_cleanup` or a ``finally``. Every wait is bounded; a failing wait
prints the tail of every node's log.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
#: start-up of a node process imports torch and scikit-learn: seconds on a loaded 2-core box
START_TIMEOUT_S = 120.0


def jungle_command(*args: str, netns: str | None = None) -> list[str]:
    """The argv of ``jungle ARGS`` (as ``python -m node``), inside ``netns`` if given."""
    command = [PYTHON, "-m", "node", *args]
    return ["ip", "netns", "exec", netns, *command] if netns else command


def run_jungle(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        jungle_command(*args),
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free right now (bound together, then released)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(frozen=True)
class NodeFiles:
    id: int
    key: Path
    public_key: str
    config: Path
    metrics: Path
    log: Path
    checkpoint_dir: Path


@dataclass(frozen=True)
class ClusterFiles:
    folder: Path
    roster: Path
    nodes: list[NodeFiles]
    addresses: list[tuple[str, int]]


def make_cluster(
    folder: Path,
    n: int = 4,
    *,
    f: int = 1,
    hosts: Sequence[str] | None = None,
    settings: Mapping[str, Mapping[str, object]] | None = None,
    session: str = "process-test",
) -> ClusterFiles:
    """Keys (``jungle keygen``), a roster (``jungle roster``) and per-node configs.

    Nodes listen on free loopback ports, or on port 7400 of ``hosts[i]`` (one address per
    network namespace). ``settings`` adds or replaces config keys, by section.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if hosts is None:
        addresses = [("127.0.0.1", port) for port in free_ports(n)]
    else:
        addresses = [(host, 7400) for host in hosts]
    keys, public_keys = [], []
    for i in range(n):
        key = folder / f"node{i}.key"
        result = run_jungle("keygen", str(key))
        assert result.returncode == 0, result.stderr
        keys.append(key)
        public_keys.append(result.stdout.strip())
    roster = folder / "roster.toml"
    key_args = [
        arg
        for key, (host, port) in zip(keys, addresses, strict=True)
        for arg in ("--key-file", f"{key}@{host}:{port}")
    ]
    result = run_jungle("roster", "--session", session, "--out", str(roster), *key_args)
    assert result.returncode == 0, result.stderr
    nodes = []
    for i in range(n):
        node = NodeFiles(
            id=i,
            key=keys[i],
            public_key=public_keys[i],
            config=folder / f"node{i}.toml",
            metrics=folder / f"metrics{i}.jsonl",
            log=folder / f"node{i}.log",
            checkpoint_dir=folder / "checkpoints",
        )
        sections: dict[str, dict[str, object]] = {
            "node": {
                "id": i,
                "key_file": node.key.name,  # relative: resolved against the config's folder
                "roster": roster.name,
                "f": f,
                "metrics_file": node.metrics.name,
                "checkpoint_dir": node.checkpoint_dir.name,
                "linger_s": 5.0,
                "log_level": "INFO",
                "seed": 3,
            },
            "task": {"name": "digits-mlp"},
            "protocol": {"gradient_rounds": 1},
        }
        for section, values in (settings or {}).items():
            sections.setdefault(section, {}).update(values)
        node.config.write_text(to_toml(sections))
        nodes.append(node)
    return ClusterFiles(folder, roster, nodes, addresses)


def to_toml(sections: Mapping[str, Mapping[str, object]]) -> str:
    """Plain TOML for str/int/float/bool values (enough for node configs)."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines)


@dataclass
class NodeProcess:
    """One ``jungle node`` process; its output goes to ``files.log`` (appended)."""

    files: NodeFiles
    args: tuple[str, ...] = ()
    netns: str | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> NodeProcess:
        with open(self.files.log, "ab") as log:
            self.process = subprocess.Popen(
                jungle_command("node", str(self.files.config), *self.args, netns=self.netns),
                cwd=REPO,
                env=_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self, signum: int = signal.SIGKILL) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signum)

    def wait(self, timeout_s: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        """Make sure it is gone (SIGKILL if needed) and reaped."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait(timeout=30)

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        return read_records(self.files.metrics, kind)

    def steps_done(self) -> int:
        """Steps finished according to the metrics file (0 before the first)."""
        steps = self.records("step")
        return steps[-1]["step"] + 1 if steps else 0

    def log_text(self) -> str:
        return self.files.log.read_text(errors="replace") if self.files.log.exists() else ""


def read_records(path: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The complete JSON lines of a metrics file (a half-written last line is skipped)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if kind is None or record.get("type") == kind:
            records.append(record)
    return records


@contextmanager
def processes_cleanup(processes: list[NodeProcess]) -> Iterator[list[NodeProcess]]:
    """Kill and reap every process in ``processes`` (as it is at exit), whatever happens."""
    try:
        yield processes
    finally:
        for process in processes:
            process.stop()


def wait_until(
    condition: Callable[[], bool],
    timeout_s: float,
    what: str,
    processes: Sequence[NodeProcess] = (),
    poll_s: float = 0.2,
) -> None:
    """Poll ``condition`` until true; on timeout fail with the tail of every node's log."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout_s} s waiting for {what}\n{tails(processes)}"
            )
        time.sleep(poll_s)


def wait_all_exit(processes: Sequence[NodeProcess], timeout_s: float) -> list[int]:
    """Exit statuses, once every process has exited (bounded)."""
    wait_until(lambda: not any(p.alive() for p in processes), timeout_s, "nodes to exit", processes)
    return [p.wait(1) for p in processes]


def tails(processes: Sequence[NodeProcess], lines: int = 15) -> str:
    parts = []
    for process in processes:
        tail = "\n".join(process.log_text().splitlines()[-lines:])
        parts.append(f"--- node {process.files.id} (pid {process.pid}) ---\n{tail}")
    return "\n".join(parts)


def assert_no_lies(summary: dict[str, Any]) -> None:
    """Honest nodes accuse nobody of anything (a node that started late sees its peers'
    messages beyond its window: it drops and counts them, and jumps, but that is no
    fault), and no transport fault is charged to anyone."""
    assert summary["faults"] == {}, summary
    assert summary["transport_faults"] == {}, summary


def vm_rss_kib(pid: int) -> int:
    """Resident memory of a process (VmRSS in /proc/PID/status), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("COLUMNS", None)
    return env
