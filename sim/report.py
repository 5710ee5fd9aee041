"""A simulation's outputs for people: summary.json, three plots and a results table.

metrics.jsonl and faults.jsonl are streamed during the run (:mod:`sim.metrics`); this
module writes what is known only at the end:

- ``summary.json``: :meth:`sim.summary.Summary.to_json`;
- ``accuracy.png``: the test accuracy of every honest node over steps;
- ``diameter.png``: the honest diameter of every agreement round, on a log scale;
- ``bytes.png``: bytes sent per node, honest and Byzantine;
- ``results.txt``: :func:`results_table`, also printed by ``jungle sim``.

Plots use matplotlib's Agg backend: no display is needed or touched.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sim.metrics import MetricsLog, RoundMeasure
from sim.summary import Summary

_GRADIENT, _MODEL = 0, 1
#: characters of the role column of the results table ("byzantine: <strategy>")
ROLE_WIDTH = 36


def write_report(
    out_dir: Path, summary: Summary, log: MetricsLog, rounds: Sequence[RoundMeasure]
) -> None:
    """Write summary.json, results.txt and the plots into ``out_dir``."""
    (out_dir / "summary.json").write_text(
        json.dumps(summary.to_json(), indent=2) + "\n", encoding="utf-8"
    )
    (out_dir / "results.txt").write_text(results_table(summary) + "\n", encoding="utf-8")
    plot_accuracy(out_dir / "accuracy.png", summary, log.accuracy)
    plot_diameter(out_dir / "diameter.png", summary, rounds)
    plot_bytes(out_dir / "bytes.png", summary)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(summary: Summary) -> str:
    attacks = sorted(set(summary.byzantine.values()))
    adversary = f"Byzantine: {', '.join(attacks)}" if attacks else "no Byzantine node"
    return (
        f"{summary.scenario}: n={summary.n}, f={summary.f}, "
        f"{summary.config.get('protocol', {}).get('aggregator', '?')}; {adversary}"
    )


def plot_accuracy(
    path: Path, summary: Summary, curves: Mapping[int, Sequence[tuple[int, float]]]
) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=120)
    cmap = plt.get_cmap("tab10" if len(curves) <= 10 else "viridis")
    for index, (node, points) in enumerate(sorted(curves.items())):
        if not points:
            continue
        steps, accuracy = zip(*points, strict=True)
        color = cmap(index % 10) if len(curves) <= 10 else cmap(index / max(len(curves) - 1, 1))
        ax.plot(
            steps,
            accuracy,
            marker="o",
            markersize=3,
            linewidth=1.2,
            color=color,
            label=f"node {node}",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3)
    ax.set_title(_title(summary), fontsize=9)
    drawn = sum(1 for points in curves.values() if points)
    if drawn == 0:
        ax.text(0.5, 0.5, "no evaluation finished", ha="center", transform=ax.transAxes)
    elif drawn <= 16:
        ax.legend(fontsize=7, ncol=2, loc="lower right", title="honest nodes", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_diameter(path: Path, summary: Summary, rounds: Sequence[RoundMeasure]) -> None:
    """One series per (phase, round index) over steps, so each round's contraction reads
    as the gap between consecutive series. A diameter of exactly 0 (the honest nodes hold
    the very same vector) has no place on a log scale: it is drawn on a floor line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9.5, 4.8), dpi=120)
    positive = [m.diameter for m in rounds if m.diameter > 0.0 and math.isfinite(m.diameter)]
    floor = min(positive) / 10.0 if positive else 1e-6
    series: dict[tuple[int, int], tuple[list[int], list[float]]] = {}
    for measure in sorted(rounds, key=lambda m: (m.phase, m.round, m.step)):
        xs, ys = series.setdefault((measure.phase, measure.round), ([], []))
        xs.append(measure.step)
        ys.append(measure.diameter if measure.diameter > 0.0 else floor)
    gradient_rounds = max((r for phase, r in series if phase == _GRADIENT), default=0) + 1
    blues = plt.get_cmap("viridis")
    for (phase, round_), (xs, ys) in sorted(series.items()):
        if phase == _GRADIENT:
            color = blues(round_ / max(gradient_rounds, 2))
            label = f"gradient, round {round_}" + (" (inputs)" if round_ == 0 else "")
            style = "-"
        else:
            color = "tab:red"
            label = f"model, round {round_}"
            style = "--"
        ax.plot(xs, ys, style, marker=".", markersize=3, linewidth=0.8, color=color, label=label)
    ax.axhline(floor, color="gray", linewidth=0.6, linestyle=":")
    ax.text(
        0.0,
        floor,
        " 0: identical honest vectors",
        va="top",
        fontsize=7,
        color="gray",
        transform=ax.get_yaxis_transform(),
    )
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("honest diameter (max pairwise L2)")
    ax.grid(alpha=0.3, which="major")
    ax.set_title(_title(summary), fontsize=9)
    if series:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_bytes(path: Path, summary: Summary) -> None:
    plt = _pyplot()
    nodes = sorted(summary.bytes_sent)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(nodes) + 2), 4.2), dpi=120)
    colors = ["tab:red" if node in summary.byzantine else "tab:blue" for node in nodes]
    megabytes = [summary.bytes_sent[node] / 1e6 for node in nodes]
    ax.bar([str(node) for node in nodes], megabytes, color=colors)
    ax.set_xlabel("node")
    ax.set_ylabel("MB sent")
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(_title(summary), fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color="tab:blue")]
    labels = ["honest"]
    if summary.byzantine:
        handles.append(plt.Rectangle((0, 0), 1, 1, color="tab:red"))
        labels.append("Byzantine")
    ax.legend(handles, labels, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _size(size_bytes: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size_bytes < 1000 or unit == "GB":
            return f"{size_bytes:.1f} {unit}" if unit != "B" else f"{size_bytes:.0f} B"
        size_bytes /= 1000
    return f"{size_bytes:.1f} GB"


def _accuracy(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"


def results_table(summary: Summary) -> str:
    """The short table ``jungle sim`` prints at the end of a run."""
    faults = summary.faults["by_accused"]
    status = (
        "completed"
        if summary.completed
        else f"INCOMPLETE ({summary.stop_reason}): honest steps done "
        f"{min(summary.honest_steps_done.values(), default=0)}/{summary.steps}"
    )
    lines = [
        f"{summary.scenario}: seed {summary.seed}, n={summary.n}, f={summary.f}, "
        f"{summary.steps} steps, crypto {'on' if summary.crypto else 'off'}"
        + (", broadcast fidelity" if summary.fidelity == "broadcast" else "")
        + f": {status}",
        "",
        f"{'node':>4}  {'role':<{ROLE_WIDTH}} {'accuracy':>8}  {'sent':>9}  {'faults accused':>14}",
    ]
    for node in range(summary.n):
        role = f"byzantine: {summary.byzantine[node]}" if node in summary.byzantine else "honest"
        accuracy = _accuracy(summary.honest_accuracy_final.get(node))
        lines.append(
            f"{node:>4}  {role[:ROLE_WIDTH]:<{ROLE_WIDTH}} {accuracy:>8}  "
            f"{_size(summary.bytes_sent.get(node, 0)):>9}  {faults.get(node, 0):>14}"
        )
    if -1 in faults:
        lines.append(
            f"{'?':>4}  {'unknown sender':<{ROLE_WIDTH}} {'':>8}  {'':>9}  {faults[-1]:>14}"
        )
    by_kind = ", ".join(
        f"{kind} {sum(counts.values())}" for kind, counts in summary.faults["by_kind"].items()
    )
    lines += [
        "",
        f"honest accuracy: mean {_accuracy(summary.honest_accuracy_mean)}, "
        f"min {_accuracy(summary.honest_accuracy_min)}"
        + (
            f"; diverged (non-finite model): nodes {sorted(summary.honest_diverged)}"
            if summary.honest_diverged
            else ""
        ),
        f"averaging error: mean {_fmt(summary.averaging_error_mean)}, "
        f"max {_fmt(summary.averaging_error_max)} (x honest input diameter)",
        f"faults seen by honest nodes: {by_kind or 'none'}"
        + (
            f"; {summary.faults['equivocation_proofs']} equivocation proofs"
            if summary.faults["equivocation_proofs"]
            else ""
        ),
        f"{summary.messages_sent:,} messages, {summary.virtual_seconds:.1f} virtual s, "
        f"{summary.wall_seconds:.1f} wall s; trace digest {summary.trace_digest[:16]}",
    ]
    if summary.bandwidth is not None:
        lines += bandwidth_lines(summary.bandwidth, summary.virtual_seconds)
    if summary.fidelity == "broadcast":
        lines.append(
            "(broadcast fidelity: reliable broadcasts modelled, not messaged; 'sent' is "
            "what their messages would have cost)"
        )
    return "\n".join(lines)


def _rates(rates: Mapping[int, float | None]) -> str:
    """``"10 Mbps (node 2: 1 Mbps)"``: the most common rate, then the nodes that differ."""

    def rate(mbps: float | None) -> str:
        return "unlimited" if mbps is None else f"{mbps:g} Mbps"

    values = list(rates.values())
    usual = max(values, key=lambda v: (values.count(v), v is None))
    others = ", ".join(f"node {node}: {rate(v)}" for node, v in sorted(rates.items()) if v != usual)
    return rate(usual) + (f" ({others})" if others else "")


def bandwidth_lines(bandwidth: Mapping[str, Any], virtual_seconds: float) -> list[str]:
    """What the results table says of the links: their rates, and per direction that is
    limited somewhere, the honest nodes' busy and waiting seconds."""
    lines = [
        f"bandwidth: uplink {_rates(bandwidth['uplink_mbps'])}, "
        f"downlink {_rates(bandwidth['downlink_mbps'])}"
    ]
    for direction in ("uplink", "downlink"):
        if all(v is None for v in bandwidth[f"{direction}_mbps"].values()):
            continue
        busy_mean = bandwidth[f"honest_{direction}_busy_s_mean"]
        busy_max = bandwidth[f"honest_{direction}_busy_s_max"]
        share = (
            f" ({busy_mean / virtual_seconds:.0%} of the run)"
            if virtual_seconds > 0 and math.isfinite(busy_mean)
            else ""
        )
        delay_mean = bandwidth[f"honest_{direction}_delay_s_mean"]
        delay_max = bandwidth[f"honest_{direction}_delay_s_max"]
        lines.append(
            f"  honest {direction}s: busy {_fmt(busy_mean)} s mean{share}, {_fmt(busy_max)} s "
            f"max; wait per message {_fmt(delay_mean)} s mean, {_fmt(delay_max)} s max"
        )
    return lines


def _fmt(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.3g}"
