"""Tables that stay readable in a log file or a narrow terminal (issue 24, item 9).

Rich fits a table to the console width by shrinking columns: a number becomes "+0.46…" and a
name wraps mid-word ("quicksta/rt"). `keep_whole` gives every column a minimum width: the full
width of its numbers (cells of a right-aligned column) and the longest word of its text, so
numbers are never cut and names break only between words. A table wider than the console then
runs past the edge (the terminal or the log wraps the line) rather than losing digits.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text


def _plain(cell: Any) -> str:
    if isinstance(cell, Text):
        return cell.plain
    if isinstance(cell, str):
        try:
            return Text.from_markup(cell).plain
        except Exception:  # not markup after all (a literal "[")
            return cell
    return ""  # another renderable: rich measures it itself


def keep_whole(table: Table) -> Table:
    """Set each column's min_width so no number is cut and no word is split; returns the table."""
    for col in table.columns:
        texts = [_plain(c) for c in col._cells]
        header = _plain(col.header)
        numeric = col.justify == "right"
        longest = [max((len(line) for line in t.splitlines()), default=0) if numeric else
                   max((len(w) for w in t.split()), default=0) for t in texts]
        longest.append(max((len(w) for w in header.split()), default=0))
        need = max(longest, default=0)
        # No no_wrap: it would cut the header with "…" too ("recall@1…" of what?). A column at least as
        # wide as its longest number never wraps the number; the header wraps between its words.
        col.min_width = max(col.min_width or 0, need)
        if col.max_width is not None and col.max_width < need:
            col.max_width = need
    return table
