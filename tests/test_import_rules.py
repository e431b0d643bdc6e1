"""The dependency rules of docs/design.md ("Layout"), checked on the source of every module by an
AST scan (imports inside functions included, and ``importlib.import_module`` / ``__import__`` of a
literal name):

- core (``swdet.*`` outside ``swdet.cli``) imports no stage and not the command line;
- ``swdet.serve``, ``swdet.export`` and ``swdet.calib`` never import ``swdet.train``;
- ``swdet.train`` never imports ``swdet.export``, ``swdet.calib`` or ``swdet.serve``;
- ``swdet.calib`` and ``swdet.serve`` never import ``swdet.export`` (export may import calib);
- only ``swdet.cli`` (the command line: one module per verb group, the pipeline beside them)
  imports every stage.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Source folder -> import package (pyproject.toml, [tool.setuptools] package-dir).
ROOTS = {"swdet": "swdet", "train": "swdet.train", "export": "swdet.export", "calib": "swdet.calib",
         "serve": "swdet.serve"}
STAGES = ("swdet.train", "swdet.export", "swdet.calib", "swdet.serve")
FORBIDDEN = {  # layer -> packages its modules must not import
    "core": STAGES + ("swdet.cli",),
    "swdet.train": ("swdet.export", "swdet.calib", "swdet.serve", "swdet.cli"),
    "swdet.export": ("swdet.train", "swdet.serve", "swdet.cli"),
    "swdet.calib": ("swdet.train", "swdet.export", "swdet.serve", "swdet.cli"),
    "swdet.serve": ("swdet.train", "swdet.export", "swdet.calib", "swdet.cli"),
    "swdet.cli": (),
}


def module_name(path: Path, root: Path, package: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def layer(module: str) -> str:
    if module == "swdet.__main__":  # ``python -m swdet``: the command line's second door
        return "swdet.cli"
    for top in STAGES + ("swdet.cli",):
        if module == top or module.startswith(top + "."):
            return top
    return "core"


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def imported_names(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in ``source`` (relative imports resolved; ``from a
    import b`` also yields ``a.b``, which may be a module)."""
    base = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = base
                for _ in range(node.level - 1):
                    pkg = pkg.rpartition(".")[0]
                target = f"{pkg}.{node.module}" if node.module else pkg
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def violations(files: list[tuple[Path, str]]) -> list[str]:
    out = []
    for path, module in files:
        forbidden = FORBIDDEN[layer(module)]
        reported = set()
        for line, name in imported_names(path.read_text(), module, path.name == "__init__.py"):
            bad = next((f for f in forbidden if _within(name, f)), None)
            if bad and line not in reported:  # one finding per import statement
                reported.add(line)
                out.append(f"{path}:{line}: {module} imports {name} ({layer(module)} must not import {bad})")
    return out


def source_files() -> list[tuple[Path, str]]:
    files = []
    for folder, package in ROOTS.items():
        root = REPO / folder
        files += [(p, module_name(p, root, package)) for p in sorted(root.rglob("*.py"))]
    return files


def test_every_module_follows_the_dependency_rules():
    files = source_files()
    assert len(files) > 50 and any(m == "swdet.cli" for _, m in files)
    assert violations(files) == []


def test_only_the_command_line_imports_every_stage():
    cli = [(p, m) for p, m in source_files() if layer(m) == "swdet.cli"]
    reached = {s for p, m in cli for _, n in imported_names(p.read_text(), m, p.name == "__init__.py")
               for s in STAGES if _within(n, s)}
    assert reached == set(STAGES)


@pytest.mark.parametrize("module, code", [
    ("swdet.boxes_extra", "def f():\n    from swdet.train.engine import train  # a lazy import counts too\n"),
    ("swdet.models.extra", "from ..serve import runtimes\n"),
    ("swdet.serve.extra", "import swdet.train.checkpoint\n"),
    ("swdet.export.extra", "import importlib\nimportlib.import_module('swdet.train.engine')\n"),
    ("swdet.train.extra", "from swdet import export\n"),
    ("swdet.calib.extra", "from swdet.export.strip import to_artifact\n"),
    ("swdet.artifact_extra", "from swdet.cli.train import train_cmd\n"),
])
def test_a_forbidden_import_in_a_temporary_module_fails(tmp_path, module, code):
    path = tmp_path / (module.rpartition(".")[2] + ".py")
    path.write_text(textwrap.dedent(code))
    found = violations([(path, module)])
    assert len(found) == 1 and module in found[0], found
    assert violations([(path, "swdet.cli.extra")]) == []  # the command line may import anything


def test_pyproject_lists_every_package():
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {m for p, m in source_files() if p.name == "__init__.py"}
    assert found <= listed, sorted(found - listed)
    assert listed - found == {"swdet.configs"}  # data only: the shipped recipes
