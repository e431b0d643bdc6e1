"""Every repository file that the code, the tests or the documents name exists: references such
as ``DESIGN.md``, ``docs/...``, ``configs/...``, ``benchmarks/...`` and ``.ci/run`` in source,
tests, README and docs are checked against the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# a path under one of the repository's own folders, or an upper-case Markdown document
REFERENCE = re.compile(r"(?<![\w./-])((?:docs|configs|benchmarks|\.ci)/[\w.*{}/,-]*[\w*}]|[A-Z][A-Z_]+\.md)(?![\w/<])")
# (a URL's path is not matched: the look-behind refuses a preceding "/"; nor is a template such as
# ``benchmarks/results/swn_speed_<arch>.json``, the look-ahead refuses "<")
# outputs that commands in the documents write (not files the repository has to hold)
WRITTEN = re.compile(r"(--out|--json|--report|> ?)\s*$")


def _tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if out.returncode == 0 and out.stdout.strip():
        return out.stdout.split()
    return [str(p.relative_to(REPO)) for p in REPO.rglob("*") if p.is_file() and ".git" not in p.parts]


def _exists(ref: str, files: set[str], dirs: set[str]) -> bool:
    if "{" in ref:  # configs/x_{a,b}.yaml
        head, rest = ref.split("{", 1)
        alts, tail = rest.split("}", 1) if "}" in rest else (rest, "")
        return all(_exists(head + a + tail, files, dirs) for a in alts.split(","))
    if "*" in ref:
        pattern = re.compile(re.escape(ref).replace(r"\*", "[^/]*"))
        return any(pattern.fullmatch(f) for f in files)
    ref = ref.rstrip(".,")
    if ref in files or ref.rstrip("/") in dirs:
        return True
    # a name prefix in prose ("configs/retinanet_r50_fpn_1x" for the 1x family)
    return "." not in ref.rsplit("/", 1)[-1] and any(f.startswith(ref) for f in files)


def references() -> list[tuple[str, int, str]]:
    files = _tracked()
    scanned = [f for f in files if f.endswith((".py", ".md", ".toml", ".yaml", ".cfg")) or f.startswith(".ci/")]
    # (recorded results quote their own paths; this file names examples on purpose)
    scanned = [f for f in scanned if not f.startswith("benchmarks/results/") and f != "tests/test_references.py"]
    found = []
    for f in scanned:
        for n, line in enumerate((REPO / f).read_text(errors="replace").splitlines(), 1):
            for m in REFERENCE.finditer(line):
                if WRITTEN.search(line[:m.start()]):
                    continue
                found.append((f, n, m.group(1)))
    return found


def test_every_referenced_file_exists():
    files = set(_tracked())
    dirs = {str(Path(f).parent) for f in files} | {str(p) for f in files for p in Path(f).parents}
    missing = [f"{f}:{n}: {ref}" for f, n, ref in references() if not _exists(ref, files, dirs)]
    assert not missing, "referenced but not in the repository:\n" + "\n".join(missing)


def test_the_scan_finds_references():
    refs = {ref for _, _, ref in references()}
    assert {"docs/design.md", "configs/retinanet_tiny.yaml", ".ci/run"} <= refs
    assert not _exists("docs/missing.md", set(_tracked()), set())
