"""The one plain-text table formatter of every family's printed results (and of the README's
tables, which are copied from what the commands print)."""

import math
from collections.abc import Sequence


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
    """Columns as wide as their widest cell; the first (the row label) left-aligned, the
    others right-aligned; a rule under the header; cells formatted by ``cell``."""
    text = [[str(h) for h in header]] + [[cell(v, digits) for v in r] for r in rows]
    widths = [max(len(r[k]) for r in text) for k in range(len(header))]
    lines = [title] if title else []
    for i, r in enumerate(text):
        parts = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        lines.append("  ".join(parts).rstrip())
        if i == 0 and rule:
            lines.append("-" * len(lines[-1]))
    return "\n".join(lines)
