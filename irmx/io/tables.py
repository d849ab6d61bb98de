"""The one plain-text table formatter of every family's printed results (and of the README's
tables, which are copied from what the commands print), built with ``rich``."""

import io
import math
from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.table import Table


def cell(value, digits: int = 4) -> str:
    """A number with ``digits`` decimals, an int as is, None or a non-finite number as "-"."""
    if value is None:
        return "-"
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return str(value)
    value = float(value)
    return f"{value:.{digits}f}" if math.isfinite(value) else "-"


def mean_std(stats: dict, digits: int = 4, missing: str = "diverged") -> str:
    """"mean +- std" of an ``irmx.learners.stats`` dict (``missing`` when no finite value)."""
    if stats is None or stats.get("mean") is None:
        return missing
    return f"{stats['mean']:.{digits}f} +- {stats['std']:.{digits}f}"


def format_table(header: Sequence[str], rows: Sequence[Sequence], *, title: str = "",
                 rule: bool = True, digits: int = 4) -> str:
    """A ``rich`` table as plain text: columns as wide as their widest cell, the first (the row
    label) left-aligned, the others right-aligned, a rule under the header (``rule``), cells
    formatted by ``cell``; ``title`` on its own line above."""
    table = Table(box=box.SIMPLE_HEAD if rule else None, show_edge=False, pad_edge=False,
                  collapse_padding=rule, show_header=True, header_style=None)
    for k, name in enumerate(header):
        table.add_column(str(name), justify="left" if k == 0 else "right", no_wrap=True)
    for r in rows:
        table.add_row(*[cell(v, digits) for v in r])
    buffer = io.StringIO()
    Console(file=buffer, width=10_000, color_system=None, force_terminal=False,
            highlight=False).print(table)
    lines = [line.rstrip() for line in buffer.getvalue().splitlines() if line.strip()]
    return "\n".join(([title] if title else []) + lines)
