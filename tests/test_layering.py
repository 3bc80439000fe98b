"""Imports point down: leaves import nothing of the package, lower layers nothing of higher ones.

Static check over the source (function-level imports included), so a lazy import cannot hide a cycle."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "hybridlm"

# module (or package) -> hybridlm modules it must never import, directly or inside a function
FORBIDDEN = {
    "errors": {"*"},
    "tables": {"*"},
    "preset_table": {"config", "presets", "model", "layers", "analysis", "cli"},
    "ops": {"config", "presets", "layers", "model", "analysis", "cli", "cache"},
    "layers": {"config", "presets", "model", "analysis", "cli", "train", "sweep", "pattern"},
    "pattern": {"config", "presets", "model", "analysis", "cli"},
    "config": {"presets", "model", "analysis", "cli", "sweep", "train"},
    "analysis": {"sweep", "cli", "train"},
    "bench": {"cli"},
}


def _imports(path: Path) -> set[str]:
    """First component under hybridlm of every module `path` imports."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(parts[: len(parts) - node.level])
                target = base + (node.module.split(".") if node.module else [])
                if not target and node.module is None:
                    target = [alias.name for alias in node.names]
                found.update([target[0]] if target else [])
                if node.module is None and base:  # from . import x
                    found.update(base[:1])
            elif node.module and node.module.startswith("hybridlm."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("hybridlm."))
    return found


@pytest.mark.parametrize("low", sorted(FORBIDDEN))
def test_lower_modules_never_import_higher_ones(low):
    files = sorted((PACKAGE / low).rglob("*.py")) if (PACKAGE / low).is_dir() else [PACKAGE / f"{low}.py"]
    assert files
    for path in files:
        imported = _imports(path) - {low}
        forbidden = imported if "*" in FORBIDDEN[low] else imported & FORBIDDEN[low]
        assert not forbidden, f"{path.relative_to(ROOT)} imports {sorted(forbidden)}"


def test_benchmarks_do_not_import_the_cli():
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        assert "hybridlm.cli" not in path.read_text(), path.name
