#!/usr/bin/env bash
# Create .venv and install jungle with its dev tools and Ray. Idempotent.
# torch is installed first and pinned to 2.13.0, which resolves to the CPU wheel
# on these machines; an unpinned torch would pull several GB of CUDA packages. Every
# other package is pinned by constraints.txt, so each install gets the same versions.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -qq "pip==26.3"
.venv/bin/python -m pip install -qq -c constraints.txt "torch==2.13.0"
# dev: the test and lint tools; ray: sweeps on Ray, which the tests check on a local instance.
# -qq: errors only (setuptools warns about every editable install)
.venv/bin/python -m pip install -qq -c constraints.txt -e ".[dev,ray]"
# ByzFL, the field's reference library: the tests cross-check jungle's attacks and aggregators
# against it. --no-deps: its declared torchvision has no CPU build here, and the submodules
# the tests load (tests/byzfl_reference.py) need only numpy, torch and scipy.
.venv/bin/python -m pip install -qq --no-deps -c constraints.txt "byzfl==0.0.11"
