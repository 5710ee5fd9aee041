#!/usr/bin/env bash
# Set up (idempotent) and run every check CI runs: lint, types, the whole test suite.
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh -k codec   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy (strict on protocol/)"
.venv/bin/mypy protocol node sim
echo "== pytest"
# Two workers: the 1,000-schedule broadcast tests dominate and split evenly.
.venv/bin/python -m pytest -n "${JUNGLE_TEST_WORKERS:-2}" "$@"
