"""``python -m sim``: the same as ``jungle sim``."""

from sim.cli import main

raise SystemExit(main())
