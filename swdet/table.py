"""Aligned tables for the CLI's closing summaries (plain text, no ANSI codes) and for the
benchmarks' result files (GitHub markdown, ``markdown=True``)."""

from __future__ import annotations


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:  # NaN
            return "-"
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def format_table(rows: list[dict] | list[list], headers: list[str] | None = None, title: str | None = None, *,
                 markdown: bool = False) -> str:
    """Rows (dicts keyed by header, or lists) as a table; ``None``/NaN print as ``-``, floats with
    4 decimals (1 from 10 up), strings as given.

    Plain text (default): columns separated by two spaces under a dashed rule, numbers
    right-aligned. ``markdown=True``: a GitHub markdown table (``| a | b |``, a ``---`` rule,
    ``---:`` for columns whose cells are all numbers or ``-``; ``|`` inside a cell escaped), the
    title as a paragraph before it.
    """
    if rows and isinstance(rows[0], dict):
        headers = headers or list(rows[0])
        body = [[_fmt(r.get(h)) for h in headers] for r in rows]
    else:
        body = [[_fmt(v) for v in r] for r in rows]
    headers = [str(h) for h in (headers or [])]
    if markdown:
        return _markdown(headers, body, title)
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)]
    line = "  ".join("-" * w for w in widths)
    out = []
    if title:
        out.append(title)
    out.append("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    out.append(line)
    for r in body:
        out.append("  ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(r, widths)))
    return "\n".join(out)


def _markdown(headers: list[str], body: list[list[str]], title: str | None) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    heads = [esc(h) for h in headers]
    cells = [[esc(c) for c in r] for r in body]
    right = [bool(cells) and all(r[i] == "-" or _numeric(r[i]) for r in cells) and any(r[i] != "-" for r in cells)
             for i in range(len(heads))]
    widths = [max(3, len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(heads)]

    def row(values: list[str]) -> str:
        return "| " + " | ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)) + " |"

    rule = "| " + " | ".join("-" * (w - 1) + ":" if r else "-" * w for w, r in zip(widths, right)) + " |"
    out = [title, ""] if title else []
    out += [row(heads), rule, *(row(r) for r in cells)]
    return "\n".join(out)


def _numeric(s: str) -> bool:
    try:
        float(s.rstrip("x%"))
        return True
    except ValueError:
        return False
