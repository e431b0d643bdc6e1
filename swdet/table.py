"""Plain aligned text tables for the CLI's closing summaries (no ANSI codes)."""

from __future__ import annotations


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:  # NaN
            return "-"
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def format_table(rows: list[dict] | list[list], headers: list[str] | None = None, title: str | None = None) -> str:
    if rows and isinstance(rows[0], dict):
        headers = headers or list(rows[0])
        body = [[_fmt(r.get(h)) for h in headers] for r in rows]
    else:
        body = [[_fmt(v) for v in r] for r in rows]
    headers = headers or []
    widths = [max(len(str(h)), *(len(r[i]) for r in body)) if body else len(str(h)) for i, h in enumerate(headers)]
    line = "  ".join("-" * w for w in widths)
    out = []
    if title:
        out.append(title)
    out.append("  ".join(str(h).ljust(w) for h, w in zip(headers, widths)))
    out.append(line)
    for r in body:
        out.append("  ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(r, widths)))
    return "\n".join(out)


def _numeric(s: str) -> bool:
    try:
        float(s.rstrip("x%"))
        return True
    except ValueError:
        return False
