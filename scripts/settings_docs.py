"""Write (or check) the settings tables of docs/operators.md and docs/simulator.md.

    python scripts/settings_docs.py           # rewrite the tables from the declarations
    python scripts/settings_docs.py --check   # exit 1 if the docs differ from them

Each table sits between ``<!-- settings: NAME -->`` and ``<!-- /settings -->``; NAME says
which declarations it lists (node/schema.py ``markdown_table``). A test runs the check, so
the docs cannot drift from the code.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from node.config import NODE_TABLES  # noqa: E402
from node.schema import markdown_table  # noqa: E402
from sim.scenario import scenario_tables  # noqa: E402

DOCS = (REPO / "docs" / "operators.md", REPO / "docs" / "simulator.md")
_BLOCK = re.compile(r"(<!-- settings: ([a-z-]+) -->\n)(.*?)(<!-- /settings -->)", re.DOTALL)


def tables() -> dict[str, str]:
    """What each block holds, by name."""
    generated = {"node": markdown_table(NODE_TABLES, flags=True)}
    for table in scenario_tables():
        name = "scenario" if not table.name else f"scenario-{table.name}"
        generated[name] = markdown_table([table], flags=False)
    return generated


def render(text: str, generated: dict[str, str]) -> str:
    def block(match: re.Match[str]) -> str:
        name = match.group(2)
        if name not in generated:
            raise KeyError(f"no settings table named {name!r}")
        return match.group(1) + generated[name] + match.group(4)

    return _BLOCK.sub(block, text)


def main(argv: list[str]) -> int:
    check = "--check" in argv
    generated = tables()
    stale = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        new = render(text, generated)
        if new != text:
            stale.append(path)
            if not check:
                path.write_text(new, encoding="utf-8")
    if check and stale:
        for path in stale:
            print(f"{path}: settings tables differ from the code; run scripts/settings_docs.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
