"""Tables of the docs site that are generated, never typed: an mkdocs hook (mkdocs.yml `hooks:`) and a script.

A page asks for a table with an HTML comment on a line of its own; the hook replaces the line when the site is
built, so the markdown in docs/ holds no copied numbers:

    <!-- generated: kinds -->             `kanvision kinds` (kanvision.kinds.table.kinds_table)
    <!-- generated: pretrained -->        checkpoints/manifest.json, every column (scripts/ship_pretrained.py)
    <!-- generated: pretrained-short -->  the same, the README's columns
    <!-- generated: benchmarks -->        every benchmarks/RESULTS*.md, headings moved two levels down

Print one of them (what the built page shows) without building the site:

    .venv/bin/python scripts/docs_tables.py kinds|pretrained|pretrained-short|benchmarks
"""
from __future__ import annotations

import importlib.util
import json
import re
import sys
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->[ \t]*$", re.MULTILINE)


@lru_cache(maxsize=None)
def _ship_pretrained():
    """scripts/ship_pretrained.py as a module: the one place the weights table's columns are defined."""
    spec = importlib.util.spec_from_file_location("ship_pretrained", ROOT / "scripts" / "ship_pretrained.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _manifest() -> dict:
    return json.loads((ROOT / "checkpoints" / "manifest.json").read_text())


def kinds() -> str:
    from kanvision.kinds.table import kinds_table
    # In a div the stylesheet can address (docs/stylesheets/extra.css widens the formula and source columns).
    # kinds_table escapes '|' in its cells (GR-KAN's |x|).
    return '<div class="kinds-table" markdown>\n\n' + kinds_table() + "\n\n</div>"


def pretrained() -> str:
    return "\n".join(_ship_pretrained().table_rows(_manifest()))


def pretrained_short() -> str:
    return "\n".join(_ship_pretrained().readme_table_rows(_manifest()))


def _shift_headings(text: str, levels: int) -> str:
    """'# x' -> '### x' outside code fences, so an included file's title sits under the page's own headings."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            line = "#" * levels + line
        out.append(line)
    return "\n".join(out)


def benchmarks() -> str:
    parts = []
    for path in sorted((ROOT / "benchmarks").glob("RESULTS*.md")):
        text = _shift_headings(path.read_text().strip(), 2)
        # Each file starts with its own title; name the file in it so two files with the same title stay apart.
        first, _, rest = text.partition("\n")
        parts.append(f"{first} (`benchmarks/{path.name}`)\n{rest}")
    if not parts:
        raise RuntimeError("benchmarks/RESULTS*.md: no benchmark results to include")
    return "\n\n".join(parts)


TABLES = {"kinds": kinds, "pretrained": pretrained, "pretrained-short": pretrained_short, "benchmarks": benchmarks}


def expand(markdown: str, where: str = "page") -> str:
    def table(match: re.Match) -> str:
        name = match.group(1)
        if name not in TABLES:
            raise ValueError(f"{where}: unknown generated table {name!r}; one of {', '.join(TABLES)}")
        return TABLES[name]()

    return MARKER.sub(table, markdown)


# mkdocs hook (mkdocs.yml: hooks: [scripts/docs_tables.py]).
def on_page_markdown(markdown: str, page, config, files) -> str:
    return expand(markdown, page.file.src_uri)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in TABLES:
        print(f"usage: docs_tables.py {{{'|'.join(TABLES)}}}", file=sys.stderr)
        return 2
    print(TABLES[argv[0]]())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
