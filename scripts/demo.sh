#!/usr/bin/env bash
# Set up (idempotent) and run the simulator's built-in default scenario:
# digits, Dirichlet-heterogeneous data, n=10 nodes of which f=3 Byzantine, mixed attacks
# and network delays. Writes summary.json, metrics, faults and plots to results/default.
#   bash scripts/demo.sh                 # default scenario, seed 0
#   bash scripts/demo.sh --seed 7        # extra arguments go to `jungle sim`
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/jungle sim --out results/default "$@"
