"""The layering holds: the general library never imports the benchmark, the baselines or the app."""

import ast
from pathlib import Path

import saeuron_core

ROOT = Path(saeuron_core.__file__).parent
UPPER = ("minicanvas", "baselines")


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module that ``path`` imports (relative imports resolved)."""
    package = ["saeuron_core", *path.relative_to(ROOT).parts[:-1]]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)
    return names


def general_modules() -> list[Path]:
    return [p for p in ROOT.glob("*.py") if p.name != "cli.py"]


def test_general_library_imports_no_benchmark_baseline_or_app():
    offenders = {}
    for path in general_modules():
        bad = sorted(m for m in imported_modules(path) if m.startswith(tuple(f"saeuron_core.{u}" for u in UPPER)) or m.split(".")[0] in ("explorer", "gradio"))
        if bad:
            offenders[path.name] = bad
    assert not offenders, f"general modules import upper layers: {offenders}"
    assert len(general_modules()) >= 10  # the walk really saw the library


def test_baselines_do_not_import_the_benchmark():
    for path in (ROOT / "baselines").glob("*.py"):
        bad = [m for m in imported_modules(path) if m.startswith("saeuron_core.minicanvas")]
        assert not bad, f"{path.name} imports {bad}"


def test_import_walk_sees_relative_imports():
    # the check above must be able to fail: a relative import of the benchmark is resolved
    sample = ROOT / "baselines" / "methods.py"
    assert "saeuron_core.edits" in imported_modules(sample)
