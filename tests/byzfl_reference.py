"""ByzFL 0.0.11, the field's reference library, loaded for cross-checks in tests.

``import byzfl`` runs the package's ``__init__``, which imports its federated framework and,
through it, torchvision (no CPU build on these machines). Its ``aggregators`` and ``attacks``
submodules need only numpy, torch and scipy, so this module registers an empty ``byzfl``
package pointing at the installed files and imports just those (scripts/setup.sh installs
ByzFL with ``--no-deps``).

    from tests.byzfl_reference import byzfl_aggregators, byzfl_attacks
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest

BYZFL_VERSION = "0.0.11"


def _package() -> types.ModuleType:
    loaded = sys.modules.get("byzfl")
    if loaded is not None:
        return loaded
    spec = importlib.util.find_spec("byzfl")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(
            f"ByzFL {BYZFL_VERSION} is not installed: run bash scripts/setup.sh "
            "(it installs byzfl with --no-deps)"
        )
    package = types.ModuleType("byzfl")
    package.__path__ = list(spec.submodule_search_locations)
    package.__file__ = str(Path(package.__path__[0]) / "__init__.py")
    sys.modules["byzfl"] = package
    return package


def _submodule(name: str) -> types.ModuleType:
    _package()
    return importlib.import_module(f"byzfl.{name}")


def byzfl_aggregators() -> types.ModuleType:
    """``byzfl.aggregators``: Average, Median, TrMean, Krum, ..., and the pre-aggregators."""
    return _submodule("aggregators")


def byzfl_attacks() -> types.ModuleType:
    """``byzfl.attacks``: SignFlipping, InnerProductManipulation, ALittleIsEnough, ..."""
    return _submodule("attacks")
