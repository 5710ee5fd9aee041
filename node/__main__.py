"""``python -m node`` is the ``jungle`` command (for checkouts where it is not installed)."""

from node.cli import main

raise SystemExit(main())
