"""Markdown tables for the results files: one writer instead of a `|---|` line built by hand in every script.

Torch-free and dependency-free, so benchmarks/, export/, evaluation/ and loadtest/ can all import it (hybrid/ is
the lowest package they share). Cells are written with `str()`: callers format their numbers (units, digits) as
the figure needs; a `|` inside a cell is escaped so that it cannot split the row.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

_RULES = {"l": "---", "r": "---:", "c": ":---:"}


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|")


def _line(cells: Sequence[object]) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def markdown_table(headers: Sequence[object], rows: Iterable[Sequence[object]], align: str = "") -> list[str]:
    """The table's lines: header, rule, one line per row.

    `align` has one letter per column, `l` (left), `r` (right, for figures) or `c` (centre); columns past its end
    are left-aligned. Returned as lines so that a writer can splice the table into the lines around it.
    """
    width = len(headers)
    if len(align) > width or set(align) - set(_RULES):
        raise ValueError(f"align {align!r}: at most {width} letters, each one of {''.join(_RULES)}")
    lines = [_line(headers), "|" + "|".join(_RULES[a] for a in align.ljust(width, "l")) + "|"]
    for row in rows:
        if len(row) != width:
            raise ValueError(f"a row of {len(row)} cells in a table of {width} columns: {list(row)!r}")
        lines.append(_line(row))
    return lines
