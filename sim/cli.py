"""``jungle sim``: run a scenario (or a sweep of them) in virtual time and report.

Exit codes: 0 the run finished (and, with ``--check-determinism``, repeated itself
exactly); 1 an incomplete run, a failed cell of a sweep or a determinism mismatch;
2 bad usage or an invalid scenario (every problem is printed, one per line).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Final

from sim.scenario import (
    Scenario,
    ScenarioError,
    builtin_scenarios,
    is_grid_file,
    resolve_scenario,
)

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2

_EXAMPLES = """\
examples:
  jungle sim                                   the built-in demo: digits, n=10, f=3, attacks
  jungle sim sim/scenarios/default.toml --seed 7 --out results/demo
  jungle sim default --steps 20 --no-crypto    a quick look
  jungle sim my_attack.toml --check-determinism
  jungle sim --sweep sim/scenarios/paper_table.toml --out results/paper --workers 2
  jungle sim --sweep sim/scenarios/paper_table.toml --ray head:6379   on a Ray cluster
  python -m sim --help                         the same, without the console script

built-in scenarios: {builtins}
outputs in --out: summary.json, metrics.jsonl, faults.jsonl, accuracy.png,
  diameter.png, bytes.png, results.txt (a sweep: sweep.csv, sweep.md, one folder per run)
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="jungle sim",
        description="Simulate n jungle nodes (real protocol, real training) in virtual time.",
        epilog=_EXAMPLES.format(builtins=", ".join(builtin_scenarios())),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "scenario",
        nargs="?",
        default=None,
        help="scenario file or built-in name (default: default)",
    )
    parser.add_argument("--out", type=Path, help="output folder (default: results/<name>)")
    parser.add_argument(
        "--seed", type=int, help="seed for every random stream (default: scenario's)"
    )
    parser.add_argument("--steps", type=int, help="override the number of learning steps")
    parser.add_argument("--no-crypto", action="store_true", help="switch signatures off")
    parser.add_argument(
        "--fidelity",
        choices=("full", "broadcast"),
        help="full: every protocol message simulated (default); broadcast: reliable "
        "broadcast modelled, for hundreds of nodes (learning-level attacks only)",
    )
    parser.add_argument(
        "--check-determinism", action="store_true", help="run twice and compare trace digests"
    )
    parser.add_argument("--sweep", type=Path, metavar="GRID", help="run a grid of scenarios")
    parser.add_argument("--workers", type=int, help="sweep processes (default: all cores)")
    parser.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run the sweep's cells as Ray tasks: on a local Ray instance, or on the "
        "cluster at ADDRESS (auto, HOST:6379); needs Ray (scripts/setup.sh installs it)",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        help="where every node's model trains (the scenario's [training] device; default "
        "auto: cuda when available); vectors cross to the CPU once per agreement",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress display and no table")
    parser.add_argument(
        "--mode",
        choices=("sim", "process", "server"),
        default="sim",
        help="sim: one process, virtual time (default); process: one OS process per node; "
        "server: the centralized reference, one trusted server aggregating once per step "
        '(the scenario\'s mode = "server")',
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # "module:Name" plugins next to the scenario
    if args.seed is not None and args.seed < 0:
        return _usage("--seed must be >= 0")
    if args.steps is not None and args.steps < 1:
        return _usage("--steps must be >= 1")
    if args.workers is not None and args.workers < 1:
        return _usage("--workers must be >= 1")
    if args.sweep is not None:
        if args.scenario is not None or args.check_determinism or args.mode != "sim":
            return _usage("--sweep takes no SCENARIO, --check-determinism or --mode")
        return _sweep(args)
    if args.ray is not None:
        return _usage("--ray runs a sweep's cells: use it with --sweep GRID")
    if args.check_determinism and args.mode == "process":
        return _usage(
            "--check-determinism needs --mode sim: in process mode the operating system "
            "schedules real processes and sockets, so no seed repeats a run"
        )
    try:
        scenario = _load(args)
    except ScenarioError as error:
        return _invalid(error)
    out_dir = args.out if args.out is not None else Path("results") / scenario.name
    if args.mode == "process":
        return _process_mode(scenario, out_dir, quiet=args.quiet)
    return _simulate(scenario, out_dir, args)


def _usage(message: str) -> int:
    print(f"jungle sim: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _invalid(error: ScenarioError) -> int:
    for problem in error.problems:
        print(f"jungle sim: {problem}", file=sys.stderr)
    return EXIT_USAGE


def _load(args: argparse.Namespace) -> Scenario:
    path = resolve_scenario(args.scenario or "default")
    if not path.exists():
        raise ScenarioError(
            [f"no scenario file {str(path)!r}; built-in names: {', '.join(builtin_scenarios())}"]
        )
    if is_grid_file(path):
        raise ScenarioError([f"{path} is a sweep grid: run it with --sweep {path}"])
    scenario = Scenario.from_toml(path)
    overrides: dict[str, object] = {}
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.no_crypto:
        overrides["protocol.crypto"] = False
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.fidelity is not None:
        overrides["fidelity"] = args.fidelity
    if args.mode == "server":
        overrides["mode"] = "server"
    if args.device is not None:
        overrides["training.device"] = args.device
    return scenario.with_values(overrides) if overrides else scenario


def _simulate(scenario: Scenario, out_dir: Path, args: argparse.Namespace) -> int:
    from sim.engine import run_scenario
    from sim.report import results_table

    try:
        summary = run_scenario(scenario, out_dir, progress=not args.quiet)
    except ScenarioError as error:
        return _invalid(error)
    if not args.quiet:
        print(results_table(summary))
        print(f"outputs in {out_dir}/")
    status = EXIT_OK
    if not summary.completed:
        print(
            f"jungle sim: run incomplete ({summary.stop_reason}); seed {summary.seed}",
            file=sys.stderr,
        )
        status = EXIT_FAILED
    if args.check_determinism:
        with _node_log_silenced():  # the first run's sim.log already holds these lines
            again = run_scenario(scenario, None, progress=not args.quiet)
        same = again.trace_digest == summary.trace_digest
        print(
            f"determinism check (seed {scenario.seed}): "
            f"{'same' if same else 'DIFFERENT'} trace digest\n"
            f"  first  {summary.trace_digest}\n  second {again.trace_digest}",
            file=sys.stderr if not same else sys.stdout,
        )
        if not same:
            status = EXIT_FAILED
    return status


@contextlib.contextmanager
def _node_log_silenced() -> Iterator[None]:
    logger = logging.getLogger("jungle")
    handler = logging.NullHandler()
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _sweep(args: argparse.Namespace) -> int:
    from sim.sweep import Grid, run_sweep
    from sim.sweep_cells import ERROR_FILE, value_label

    try:
        grid = Grid.from_toml(args.sweep)
    except ScenarioError as error:
        return _invalid(error)
    overrides: dict[str, object] = {}
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.no_crypto:
        overrides["protocol.crypto"] = False
    if args.fidelity is not None:
        overrides["fidelity"] = args.fidelity
    if args.mode == "server":
        overrides["mode"] = "server"
    if args.device is not None:
        overrides["training.device"] = args.device
    if overrides:
        grid = replace(grid, base=grid.base.with_values(overrides))
    if args.seed is not None:
        grid = replace(grid, seeds=(args.seed,))
    out_dir = args.out if args.out is not None else Path("results") / Path(args.sweep).stem
    try:
        cells = run_sweep(grid, out_dir, args.workers, quiet=args.quiet, ray=args.ray)
    except ScenarioError as error:
        return _invalid(error)
    if not args.quiet:
        print((out_dir / "sweep.md").read_text(encoding="utf-8"), end="")
        print(f"outputs in {out_dir}/ (sweep.csv, sweep.md, one folder per run)")
    incomplete = [cell for cell in cells if not cell.results.get("completed", False)]
    for cell in incomplete:
        where = ", ".join(f"{k}={value_label(k, v)}" for k, v in cell.values.items())
        if cell.failed:
            print(
                f"jungle sim: cell {where}, seed {cell.seed} failed: {cell.results['error']} "
                f"(traceback in {cell.out_dir}/{ERROR_FILE})",
                file=sys.stderr,
            )
        else:
            print(f"jungle sim: incomplete run in {cell.out_dir}", file=sys.stderr)
    return EXIT_FAILED if incomplete else EXIT_OK


def _process_mode(scenario: Scenario, out_dir: Path, *, quiet: bool) -> int:
    """``--mode process``: one OS process per node over real sockets, when built."""
    try:
        module = importlib.import_module("sim.process_mode")
    except ModuleNotFoundError as error:
        if error.name != "sim.process_mode":
            raise
        print(
            "jungle sim: --mode process is not available in this version "
            "(sim/process_mode.py is missing); use --mode sim",
            file=sys.stderr,
        )
        return EXIT_USAGE
    result = module.run_process_mode(scenario, out_dir, scenario.seed, quiet=quiet)
    return int(result) if isinstance(result, int) else EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
