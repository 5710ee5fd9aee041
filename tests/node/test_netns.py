"""Acceptance: several hosts. Each of 4 nodes runs in its own network namespace (its own
network stack, as on separate machines), joined by veth pairs to a bridge in a fifth
"hub" namespace, like hosts on one switch. Nodes reach each other only at 192.0.2.x
(TEST-NET-1) addresses that exist inside these namespaces and nowhere else.

Needs root and iproute2 (``ip netns add``); skipped with the reason otherwise. Names are
unique per test process (``jgl<pid>...``) so parallel runs do not collide, and every
namespace is deleted in a ``finally`` (deleting a namespace destroys its veth ends).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.node.helpers import (
    START_TIMEOUT_S,
    NodeProcess,
    assert_no_lies,
    make_cluster,
    processes_cleanup,
    wait_all_exit,
)

pytestmark = pytest.mark.slow

SUBNET_PREFIX = "192.0.2."  # TEST-NET-1 (RFC 5737): never routed anywhere
#: unique per test process, so parallel runs never touch each other's namespaces
PREFIX = f"jgl{os.getpid()}"
ACCURACY_FLOOR_30_STEPS = 0.6  # measured 0.72 after 30 steps (four honest nodes)


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None if they can."""
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (`ip netns add`)"
    probe = f"{PREFIX}probe"
    result = ip("netns", "add", probe)
    if result.returncode != 0:
        return f"`ip netns add` fails here: {result.stderr.strip()}"
    ip("netns", "del", probe)
    return None


@contextmanager
def namespaces(count: int) -> Iterator[tuple[list[str], list[str]]]:
    """``count`` namespaces on one bridge; yields (namespace names, their addresses)."""
    hub = f"{PREFIX}hub"
    created: list[str] = []

    def must(*args: str) -> None:
        result = ip(*args)
        if result.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")

    try:
        must("netns", "add", hub)
        created.append(hub)
        must("-n", hub, "link", "add", "br0", "type", "bridge")
        must("-n", hub, "link", "set", "br0", "up")
        names, addresses = [], []
        for i in range(count):
            name, address = f"{PREFIX}n{i}", f"{SUBNET_PREFIX}{i + 1}"
            must("netns", "add", name)
            created.append(name)
            must(
                "-n",
                name,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                f"h{i}",
                "netns",
                hub,
            )
            must("-n", hub, "link", "set", f"h{i}", "master", "br0")
            must("-n", hub, "link", "set", f"h{i}", "up")
            must("-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
            must("-n", name, "link", "set", "eth0", "up")
            must("-n", name, "link", "set", "lo", "up")
            names.append(name)
            addresses.append(address)
        yield names, addresses
    finally:
        for name in reversed(created):
            ip("netns", "del", name)


def test_four_nodes_in_four_network_namespaces(tmp_path: Path) -> None:
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    steps = 30
    with namespaces(4) as (names, addresses):
        cluster = make_cluster(
            tmp_path,
            hosts=addresses,
            settings={"node": {"steps": steps, "eval_every": steps}},
        )
        processes = [
            NodeProcess(node, netns=name).start()
            for node, name in zip(cluster.nodes, names, strict=True)
        ]
        with processes_cleanup(processes):
            statuses = wait_all_exit(processes, 2 * START_TIMEOUT_S)

            assert statuses == [0, 0, 0, 0], [p.log_text()[-2000:] for p in processes]
            accuracies = []
            for process, address in zip(processes, addresses, strict=True):
                summary = process.records("summary")[-1]
                assert summary["done"] and summary["step"] == steps, summary
                assert_no_lies(summary)
                assert f"listening on {address}:7400" in process.log_text()
                accuracies.append(summary["test_accuracy"])
            print(f"namespaces {names}: accuracy after {steps} steps {accuracies}")
            assert min(accuracies) >= ACCURACY_FLOOR_30_STEPS, accuracies
    left = [line for line in ip("netns", "list").stdout.splitlines() if line.startswith(PREFIX)]
    assert not left, f"namespaces left behind: {left}"
