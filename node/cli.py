"""``jungle``: the command line of a node operator (and the door to the simulator).

Subcommands::

    jungle keygen PATH                      a new ed25519 key (mode 0600); prints its public key
    jungle roster --session NAME ...        a roster TOML from public keys and addresses
    jungle node [CONFIG.toml] [flags]       run one node (flags override the config file)
    jungle sim ...                          the local multi-node simulator (sim/cli.py)
    jungle verify-evidence FILE --roster R  check equivocation proofs offline

Exit statuses: 0 success; 1 a failure while running; 2 a usage, configuration or start-up
problem, reported as one line per problem on stderr, before any socket is opened; 130/143
when stopped by SIGINT/SIGTERM. Only what a subcommand needs is imported: ``keygen`` and
``roster`` never import torch, and ``node`` never imports the simulator.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import IO, Final

from node.keys import KeyFileError, decode_public_key, generate_key, load_signing_key
from node.roster import (
    Roster,
    RosterEntry,
    RosterError,
    dump_roster,
    load_roster,
    new_nonce,
    parse_address,
)

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

_EPILOG_MAIN = """\
examples (a 4-node cluster on one machine; see docs/operators.md for several machines):
  for i in 0 1 2 3; do jungle keygen keys/node$i.key; done
  jungle roster --session demo --out roster.toml \\
      --key-file keys/node0.key@127.0.0.1:7400 --key-file keys/node1.key@127.0.0.1:7401 \\
      --key-file keys/node2.key@127.0.0.1:7402 --key-file keys/node3.key@127.0.0.1:7403
  jungle node node.toml --id 0 --key keys/node0.key     # and likewise for ids 1, 2, 3
"""

_EPILOG_NODE = """\
examples:
  jungle node node.toml --id 2 --key keys/node2.key
  jungle node node.toml --id 2 --key keys/node2.key --check     # validate, then exit
  jungle node --roster roster.toml --id 0 --key keys/node0.key --f 1 --steps 200 \\
      --metrics metrics/node0.jsonl --checkpoint-dir ckpt/

Every setting has a flag (below, by table), which overrides the config file key by key.
Start-up refuses impossible settings (n < 3f+1, an id or key not in the roster, missing
files, bad values) with one line each, exit 2.
--byzantine SPEC makes this node MISBEHAVE (testing/research only), e.g. --byzantine silent,
--byzantine garbage, --byzantine '{"name": "alie", "z": 1.5}'.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``jungle`` command line; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["sim"]:
        # Imported only here: a real node never loads the simulator.
        from sim.cli import main as sim_main

        status: int = sim_main(args[1:])
        return status
    parser = _parser()
    options = parser.parse_args(args)
    if options.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        status = options.handler(options)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jungle",
        description="Byzantine-robust decentralized learning: run a node, make keys and rosters.",
        epilog=_EPILOG_MAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"jungle {_version()}")
    parser.set_defaults(command=None)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    keygen = commands.add_parser(
        "keygen",
        help="create an ed25519 key file (mode 0600) and print its public key",
        description="Create a new ed25519 key at PATH (mode 0600, never overwriting) and "
        "print its base64 public key, the value to put in the roster.",
        epilog="example:\n  jungle keygen keys/node0.key",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    keygen.add_argument("path", metavar="PATH", type=Path)
    keygen.set_defaults(command="keygen", handler=_keygen)

    roster = commands.add_parser(
        "roster",
        help="assemble a roster TOML from public keys and addresses",
        description="Write a roster: every node's id, public key and address. Give each node "
        "as ID=PUBKEY@HOST:PORT (ids 0..n-1), or as KEYFILE@HOST:PORT (ids in order). Each "
        "roster gets a fresh random nonce, so every run is its own session: make a new "
        "roster for every new run.",
        epilog="examples:\n"
        "  jungle roster --session run-1 --node 0=BASE64KEY@10.0.0.5:7400 \\\n"
        "      --node 1=BASE64KEY@10.0.0.6:7400 ... --out roster.toml\n"
        "  jungle roster --session demo --key-file keys/node0.key@127.0.0.1:7400 ...",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    roster.add_argument("--session", required=True, help="session label (part of the session id)")
    roster.add_argument("--node", action="append", default=[], metavar="ID=PUBKEY@HOST:PORT")
    roster.add_argument("--key-file", action="append", default=[], metavar="PATH@HOST:PORT")
    roster.add_argument("--out", type=Path, help="write here (default: standard output)")
    roster.add_argument("--force", action="store_true", help="replace an existing --out file")
    roster.set_defaults(command="roster", handler=_roster)

    node = commands.add_parser(
        "node",
        help="run one node",
        description="Run one node of a session until its last step (see docs/operators.md "
        "for every config key).",
        epilog=_EPILOG_NODE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    node.add_argument("config", metavar="CONFIG.toml", nargs="?", type=Path)
    node.add_argument("--check", action="store_true", help="check everything, then exit")
    from node.config import NODE_TABLES
    from node.schema import add_flags

    add_flags(node, NODE_TABLES)  # one flag per setting, from its declaration
    node.set_defaults(command="node", handler=_node)

    commands.add_parser(
        "sim", help="run the local multi-node simulator (jungle sim --help)", add_help=False
    )

    evidence = commands.add_parser(
        "verify-evidence",
        help="check equivocation proofs from a metrics file offline",
        description="Verify every equivocation proof in a JSONL file (a node's metrics file) "
        "against the roster's public keys; prints one line per proof. Exit 0 if all verify.",
        epilog="example:\n  jungle verify-evidence metrics/node0.jsonl --roster roster.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evidence.add_argument("file", metavar="FILE.jsonl", type=Path)
    evidence.add_argument("--roster", required=True, type=Path)
    evidence.set_defaults(command="verify-evidence", handler=_verify_evidence)
    return parser


# ---------------------------------------------------------------------------- keygen/roster


def _keygen(options: argparse.Namespace) -> int:
    try:
        print(generate_key(options.path))
    except KeyFileError as error:
        return _fail(str(error))
    except OSError as error:
        return _fail(f"{options.path}: cannot create key file: {error.strerror}")
    return EXIT_OK


def _roster(options: argparse.Namespace) -> int:
    if bool(options.node) == bool(options.key_file):
        return _fail("give the nodes either as --node ID=PUBKEY@HOST:PORT or as --key-file ...")
    problems: list[str] = []
    entries = (
        _entries_from_keys(options.node, problems)
        if options.node
        else _entries_from_key_files(options.key_file, problems)
    )
    if problems:
        return _fail(*problems)
    try:
        roster = Roster(options.session, tuple(sorted(entries, key=lambda e: e.id)), new_nonce())
    except RosterError as error:
        return _fail(*error.problems)
    text = dump_roster(roster)
    if options.out is None:
        sys.stdout.write(text)
        return EXIT_OK
    try:
        with open(options.out, "w" if options.force else "x", encoding="utf-8") as file:
            file.write(text)
    except FileExistsError:
        return _fail(
            f"{options.out}: exists; pass --force to replace it (a new roster is a new session)"
        )
    except OSError as error:
        return _fail(f"{options.out}: cannot write roster: {error.strerror}")
    print(
        f"wrote {options.out}: {roster.n} nodes, session id {roster.session_id.hex()}",
        file=sys.stderr,
    )
    return EXIT_OK


def _entries_from_keys(specs: list[str], problems: list[str]) -> list[RosterEntry]:
    entries = []
    for spec in specs:
        id_text, eq, rest = spec.partition("=")
        key_text, at, address = rest.rpartition("@")
        if not eq or not at or not id_text.strip().isdigit():
            problems.append(f"--node {spec!r}: expected ID=PUBKEY@HOST:PORT")
            continue
        try:
            host, port = parse_address(address)
            entries.append(RosterEntry(int(id_text), decode_public_key(key_text), host, port))
        except ValueError as error:
            problems.append(f"--node {spec!r}: {error}")
    return entries


def _entries_from_key_files(specs: list[str], problems: list[str]) -> list[RosterEntry]:
    entries = []
    for node_id, spec in enumerate(specs):
        path, at, address = spec.rpartition("@")
        if not at or not path:
            problems.append(f"--key-file {spec!r}: expected PATH@HOST:PORT")
            continue
        try:
            key = load_signing_key(path)
            host, port = parse_address(address)
        except (KeyFileError, ValueError) as error:
            problems.append(f"--key-file {spec!r}: {error}")
            continue
        entries.append(RosterEntry(node_id, bytes(key.verify_key), host, port))
    return entries


# ---------------------------------------------------------------------------------- node


def _node(options: argparse.Namespace) -> int:
    from node.config import ConfigError, load_config

    overrides = {
        key: value for key, value in vars(options).items() if "." in key and value is not None
    }
    spec = overrides.get("byzantine.strategy")
    if isinstance(spec, str) and spec.lstrip()[:1] in ("{", "["):
        try:
            overrides["byzantine.strategy"] = json.loads(spec)
        except json.JSONDecodeError as error:
            return _fail(f"--byzantine: not valid JSON: {error}")
    try:
        config = load_config(options.config, overrides)
    except ConfigError as error:
        return _fail(*error.problems)
    progress_stream = sys.stderr if sys.stderr.isatty() else None
    _configure_logging(
        config.node.id, config.node.log_level, sys.stderr, progress_stream is not None
    )

    from node.app import run
    from node.startup import StartupError, prepare_node

    try:
        prepared = prepare_node(config)
    except StartupError as error:
        return _fail(*error.problems)
    if options.check:
        print(
            f"ok: node {config.node.id} of {prepared.roster.n} in session "
            f"{prepared.roster.session_name!r}, key {prepared.public_key}, "
            f"resumes at step {prepared.start_step}",
            file=sys.stderr,
        )
        return EXIT_OK
    return run(prepared, progress_stream)


class _TerminalHandler(logging.StreamHandler[IO[str]]):
    """Log lines on a terminal that also shows the progress line: erase it first."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream.write("\r\x1b[K")
        super().emit(record)


def _configure_logging(node_id: int, level: str, stream: IO[str], on_terminal: bool) -> None:
    handler = _TerminalHandler(stream) if on_terminal else logging.StreamHandler(stream)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s node {node_id} %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger("jungle")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


# ------------------------------------------------------------------------ verify-evidence


def _verify_evidence(options: argparse.Namespace) -> int:
    from node.evidence import verify_evidence_lines

    try:
        roster = load_roster(options.roster)
        lines = options.file.read_text(encoding="utf-8").splitlines()
    except RosterError as error:
        return _fail(*error.problems)
    except (OSError, UnicodeDecodeError) as error:
        return _fail(f"{options.file}: cannot read: {error}")
    verdicts = verify_evidence_lines(lines, roster)
    for verdict in verdicts:
        print(f"{options.file}:{verdict.line}: {verdict.text}")
    valid = sum(verdict.valid for verdict in verdicts)
    print(f"{len(verdicts)} proofs: {valid} valid, {len(verdicts) - valid} not", file=sys.stderr)
    return EXIT_OK if valid == len(verdicts) else EXIT_FAILED


# ---------------------------------------------------------------------------------- misc


def _fail(*lines: str) -> int:
    for line in lines:
        print(f"jungle: {line}", file=sys.stderr)
    return EXIT_USAGE


def _version() -> str:
    try:
        return metadata.version("jungle")
    except metadata.PackageNotFoundError:
        return "0.1.0 (not installed)"
