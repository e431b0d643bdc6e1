"""Where the benchmark scripts write their results (all but gpu.py and roi_align_speed.py, which
write fixed names into a folder): ``<out>.json`` (the data) and ``<out>.md``
(the table to quote), next to each other under ``benchmarks/results/``.

``out`` is a stem: the suffixes are appended, so a dot in it stays (``int8_head_bn_lr0.004``
gives ``int8_head_bn_lr0.004.json``, where ``Path.with_suffix`` would have written
``int8_head_bn_lr0.json``); a trailing ``.json`` or ``.md`` is taken as the stem's own suffix
and dropped.
"""

from __future__ import annotations

import json
from pathlib import Path


def result_paths(out: str | Path) -> tuple[Path, Path]:
    """``(<out>.json, <out>.md)``."""
    out = Path(out)
    if out.suffix in (".json", ".md"):
        out = out.with_suffix("")
    return out.parent / f"{out.name}.json", out.parent / f"{out.name}.md"


def write_results(out: str | Path, data, md: str, *, fenced: bool = False, indent: int = 2,
                  quiet: bool = False) -> tuple[Path, Path]:
    """Write ``data`` as JSON and ``md`` as Markdown (``fenced``: inside a code fence, for a
    plain-text table); create the folder; print where they went unless ``quiet``."""
    json_path, md_path = result_paths(out)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(data, indent=indent, default=str) + "\n")
    md_path.write_text("```\n" + md.rstrip("\n") + "\n```\n" if fenced else md)
    if not quiet:
        print(f"-> {json_path}, {md_path}")
    return json_path, md_path
