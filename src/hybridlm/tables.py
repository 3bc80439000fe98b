"""Plain-text tables for terminals and logs (a leaf: the CLI and the benchmark reports both use it)."""

from __future__ import annotations


def format_table(headers: list[str], rows: list[list]) -> str:
    """Left-aligned columns two spaces apart, a rule under the header."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
