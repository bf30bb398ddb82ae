"""hybrid.tables: the one Markdown-table writer behind every results file."""

from __future__ import annotations

import pytest

from hybrid.tables import markdown_table


def test_header_rule_and_rows_with_the_asked_alignment() -> None:
    lines = markdown_table(["model", "p50 (ms)", "note"], [["fusion", 1.5, ""], ["vlm", 20, "warm"]], align="lr")
    assert lines == [
        "| model | p50 (ms) | note |",
        "|---|---:|---|",  # the column past `align` is left-aligned
        "| fusion | 1.5 |  |",
        "| vlm | 20 | warm |",
    ]


def test_a_pipe_in_a_cell_cannot_split_the_row() -> None:
    (_, _, row) = markdown_table(["a", "b"], [["x | y", "z"]], align="cc")
    assert row == "| x \\| y | z |"


def test_rows_and_alignment_must_fit_the_header() -> None:
    with pytest.raises(ValueError, match="a row of 1 cells in a table of 2 columns"):
        markdown_table(["a", "b"], [["only one"]])
    with pytest.raises(ValueError, match="align 'lrr'"):
        markdown_table(["a", "b"], [], align="lrr")
    with pytest.raises(ValueError, match="align 'x'"):
        markdown_table(["a", "b"], [], align="x")
