#!/usr/bin/env bash
# Curated mutation testing (not part of CI): copies the working tree to a temporary
# directory, checks that the unmutated copy passes, then applies each mutant of
# scripts/mutants.py (quorum thresholds, the trimmed mean's cut, the witness check, the
# simulator's crash hook) to the copy, one at a time, and prints which tests catch it.
# Exits 1 if a mutant of those groups is caught by fewer than two test functions.
#   bash scripts/mutants.sh --list              # the mutants, and whether each applies
#   bash scripts/mutants.sh                     # all of them (about 40 minutes, 2 cores)
#   bash scripts/mutants.sh witness-unchecked   # some, by name or group (crash, trim, ...)
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/mutants.py "$@"
