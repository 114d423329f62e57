"""The collector's folders are its architecture: imports point one way.

    cli, server                 tie everything together (may import anything)
    admin   retention   streams read the lake; none imports another
    ingest                      gRPC in, validation, keys, inbox
    lake                        WAL, sealing, Parquet files, compaction, the query view
    integrity                   chain encoding, checkpoints, signing, verify
    storage                     the one seam to disk and object storage
    errors, config, schema      foundation: import no subpackage

A module may import its own subpackage, any lower layer and the foundation.
Imports inside functions count, and so do module names handed to importlib:
a lazy import is still an arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

COLLECTOR = Path(__file__).resolve().parents[2] / "collector"
PREFIX = "auditlake.collector"

FOUNDATION = {"errors", "config", "schema"}
TOP = {"cli", "server", "__main__"}
LAYER = {"storage": 1, "integrity": 2, "lake": 3, "ingest": 4, "retention": 5, "admin": 5, "streams": 5}


def _owner(module: Path) -> str:
    """The subpackage (or top-level module name) a source file belongs to."""
    rel = module.relative_to(COLLECTOR)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, first component under auditlake.collector) of every import,
    including ``importlib.import_module("auditlake.collector....")``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{PREFIX}.{a.name}" for a in node.names] if node.module == PREFIX else [node.module]
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"relative import at line {node.lineno}: write the absolute path")
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(PREFIX + "."):
            names = [node.value]
        for name in names:
            if name.startswith(PREFIX + "."):
                found.append((getattr(node, "lineno", 0), name[len(PREFIX) + 1:].split(".")[0]))
    return found


def _violation(owner: str, target: str) -> str | None:
    if target == owner or owner in TOP:
        return None
    if target in TOP:
        return f"{owner} imports the top-level {target}"
    if owner in FOUNDATION:
        return None if target in FOUNDATION else f"foundation module {owner} imports {target}"
    if target in FOUNDATION:
        return None
    if target not in LAYER:
        return f"{owner} imports {target}, which is in no layer (add it to the map in this test and in its docs)"
    if target == "admin":
        return f"{owner} imports admin (nothing but cli/server may)"
    if LAYER[target] >= LAYER[owner]:
        return f"{owner} (layer {LAYER[owner]}) imports {target} (layer {LAYER[target]}): arrows point down only"
    return None


def _sources() -> list[Path]:
    return sorted(COLLECTOR.rglob("*.py"))


def test_every_collector_module_sits_in_a_known_place() -> None:
    for path in _sources():
        owner = _owner(path)
        assert owner in FOUNDATION | TOP | set(LAYER) | {"__init__"}, f"{path}: add {owner} to a layer"


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(COLLECTOR)))
def test_imports_point_down_the_layers(path: Path) -> None:
    owner = _owner(path)
    problems = [f"{path.relative_to(COLLECTOR)}:{line}: {why}"
                for line, target in _imported(ast.parse(path.read_text()))
                if (why := _violation(owner, target))]
    assert not problems, "\n".join(problems)


def test_each_subpackage_says_what_it_owns_and_its_import_rule() -> None:
    for name in LAYER:
        doc = ast.get_docstring(ast.parse((COLLECTOR / name / "__init__.py").read_text())) or ""
        assert "Owns" in doc and "Imports" in doc and "Imported by" in doc, f"{name}/__init__.py docstring"


def test_the_rule_catches_a_wrong_arrow() -> None:
    # The checker itself: a lake module importing ingest, admin imported by
    # retention, and a lazy importlib string all count as violations.
    assert _violation("lake", "ingest")
    assert _violation("retention", "admin")
    assert _violation("admin", "retention")
    assert _violation("storage", "integrity")
    assert _violation("errors", "storage")
    assert _violation("ingest", "lake") is None
    tree = ast.parse('import importlib\nimportlib.import_module("auditlake.collector.admin.web")')
    assert _imported(tree) == [(2, "admin")]


def test_every_subpackage_is_in_the_distribution() -> None:
    # pyproject.toml lists packages one by one (package-dir maps them from
    # sdk/ and collector/); a folder missing there is missing from the wheel.
    import tomllib  # noqa: PLC0415

    listed = set(tomllib.loads((COLLECTOR.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    for init in COLLECTOR.rglob("__init__.py"):
        name = ".".join((PREFIX, *init.parent.relative_to(COLLECTOR).parts)).rstrip(".")
        assert name in listed, f"{name} is not in pyproject.toml's [tool.setuptools] packages"
