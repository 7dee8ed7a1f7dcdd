"""The layering holds: the general library never imports the benchmark, the baselines or the app."""

import ast
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import saeuron_core

ROOT = Path(saeuron_core.__file__).parent
UPPER = ("minicanvas", "baselines")


def imported_modules(path: Path, source: str | None = None) -> set[str]:
    """Absolute names of every module that ``path`` imports (relative imports resolved)."""
    package = ["saeuron_core", *path.relative_to(ROOT).parts[:-1]]
    names = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)
    return names


def upper_layer_imports(path: Path, source: str | None = None) -> list[str]:
    """What ``path`` imports from the benchmark, the baselines, the explorer or gradio."""
    upper = tuple(f"saeuron_core.{u}" for u in UPPER)
    app = ("explorer", "gradio")
    return sorted(m for m in imported_modules(path, source) if m.startswith(upper) or m.split(".")[0] in app)


def general_modules() -> list[Path]:
    """Every module of the general library, subpackages (``cli/``) included; the upper layers' packages left out."""
    return sorted(p for p in ROOT.rglob("*.py") if p.relative_to(ROOT).parts[0] not in UPPER)


def test_general_library_imports_no_benchmark_baseline_or_app():
    offenders = {str(p.relative_to(ROOT)): bad for p in general_modules() if (bad := upper_layer_imports(p))}
    assert not offenders, f"general modules import upper layers: {offenders}"


def test_walk_sees_every_general_module_and_no_upper_one():
    seen = {str(p.relative_to(ROOT)) for p in general_modules()}
    assert {"sae.py", "cli/__init__.py", "cli/registry.py", "cli/options.py", "cli/config_flags.py"} <= seen
    assert not any(name.startswith(UPPER) for name in seen)
    assert len(seen) >= 25  # the walk really saw the library


def test_baselines_do_not_import_the_benchmark():
    for path in (ROOT / "baselines").glob("*.py"):
        bad = [m for m in imported_modules(path) if m.startswith("saeuron_core.minicanvas")]
        assert not bad, f"{path.name} imports {bad}"


def test_import_walk_sees_relative_imports():
    # the check above must be able to fail: a relative import of the benchmark is resolved
    sample = ROOT / "baselines" / "methods.py"
    assert "saeuron_core.edits" in imported_modules(sample)


@pytest.mark.parametrize(
    "source",
    [
        "from ..minicanvas.commands import register",  # relative, from the cli subpackage
        "from .. import baselines",
        "import saeuron_core.minicanvas",
        "def f():\n    from ..baselines.methods import erase_to\n",  # a lazy import inside a function
        "import gradio as gr",
    ],
)
def test_an_upward_import_in_the_cli_package_is_caught(source):
    assert upper_layer_imports(ROOT / "cli" / "registry.py", source)


def test_upper_layers_register_their_commands_through_entry_points():
    # the general CLI finds the benchmark's and the baselines' commands only through the installed
    # metadata of pyproject's entry points (a stale install lacks them: pip install -e . again)
    targets = [ep.value for ep in entry_points(group="saeuron.commands")]
    modules = {t.split(":")[0] for t in targets}
    assert {"saeuron_core.minicanvas.commands", "saeuron_core.baselines.commands"} <= modules, targets
    for target in targets:
        module, _, name = target.partition(":")
        assert callable(getattr(import_module(module), name))
