"""The library boundary holds: imports flow one way (DESIGN.md 3).

Every module of ``scaletot_features/`` is parsed with ``ast`` and every import it makes is
collected, wherever it sits (module level, inside a function, under ``TYPE_CHECKING``), with
relative imports resolved and ``importlib.import_module("...")`` calls with a literal name
counted too. Only the CLI layer (the ``scaletot_features/cli/`` package: the command line and the
demo's orchestration) may import ``trainers/``, ``validation/`` or ``feature_repo/``; nothing
below it imports the CLI; ``config.py`` imports nothing from ``store/``. The library hands what
it needs from above in as arguments (``materialize(..., gate=reasoning_gate)``).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRARY = REPO / "scaletot_features"
CLI_LAYER = LIBRARY / "cli"
ABOVE_THE_LIBRARY = ("trainers", "validation", "feature_repo")
LOWER_LAYERS = ("scaletot_features", "trainers", "validation", "feature_repo")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` for every import in the file, nested ones included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module:
                found.append((node.lineno, target))
            # from scaletot_features import cli: each name may be a module
            found += [(node.lineno, f"{target}.{a.name}") for a in node.names]
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name)
                       and node.func.id in ("import_module", "__import__")))):
            found.append((node.lineno, node.args[0].value))
    return found


def is_under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def modules(*tops: str) -> list[Path]:
    return sorted(p for top in tops for p in (REPO / top).rglob("*.py")
                  if "__pycache__" not in p.parts)


def crossings(path: Path) -> list[str]:
    """The imports of ``path`` that reach above the library (trainers/validation/feature_repo),
    one per import statement."""
    found: dict[int, str] = {}
    for line, name in imports(path):
        if line not in found and any(is_under(name, top) for top in ABOVE_THE_LIBRARY):
            found[line] = f"{path.relative_to(REPO)}:{line}: imports {name}"
    return list(found.values())


def library_crossings() -> list[str]:
    return [c for p in modules("scaletot_features") if CLI_LAYER not in p.parents
            for c in crossings(p)]


def test_only_the_cli_layer_imports_trainers_validation_or_feature_repo():
    assert (CLI_LAYER / "app.py").exists() and (CLI_LAYER / "demo.py").exists()
    found = library_crossings()
    assert not found, "the library imports what sits above it (pass it in from the CLI " \
        "layer instead):\n" + "\n".join(found)
    # the walk sees the CLI layer's own imports, so it would see a library module's
    assert any(crossings(p) for p in modules("scaletot_features/cli"))


def test_nothing_below_the_cli_imports_it():
    found = [f"{p.relative_to(REPO)}:{line}: imports {name}" for p in modules(*LOWER_LAYERS)
             if CLI_LAYER not in p.parents
             for line, name in imports(p) if is_under(name, "scaletot_features.cli")]
    assert not found, "\n".join(found)


def test_config_imports_nothing_from_the_store():
    found = [name for _, name in imports(LIBRARY / "config.py")
             if is_under(name, "scaletot_features.store")]
    assert not found, found


# --------------------------------------------------------------------------- the walk itself


@pytest.mark.parametrize("source, expected", [
    ("import validation.gate\n", "validation.gate"),
    ("from trainers.teach import teach\n", "trainers.teach"),
    ("def f():\n    from validation.gate import format_failures\n", "validation.gate"),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import trainers\n", "trainers"),
    ("class A:\n    def m(self):\n        import feature_repo.features as f\n",
     "feature_repo.features"),
    ("import importlib\nm = importlib.import_module('trainers.evaluate')\n", "trainers.evaluate"),
])
def test_the_walk_sees_every_kind_of_import(tmp_path, monkeypatch, source, expected):
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    path = tmp_path / "scaletot_features" / "store" / "x.py"
    path.parent.mkdir(parents=True)
    path.write_text(source)
    assert expected in [name for _, name in imports(path)]
    assert crossings(path)


def test_relative_imports_are_resolved(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    path = tmp_path / "scaletot_features" / "store" / "x.py"
    path.parent.mkdir(parents=True)
    path.write_text("from ..cli import app\nfrom . import repo\nfrom .. import config\n")
    assert {n for _, n in imports(path)} == {"scaletot_features.cli", "scaletot_features.cli.app",
                                             "scaletot_features.store.repo",
                                             "scaletot_features.config"}
    init = tmp_path / "scaletot_features" / "store" / "__init__.py"
    init.write_text("from .repo import materialize\n")
    assert {n for _, n in imports(init)} == {"scaletot_features.store.repo",
                                             "scaletot_features.store.repo.materialize"}


def test_the_walk_sees_the_cli_imported_by_name(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    path = tmp_path / "scaletot_features" / "x.py"
    path.parent.mkdir(parents=True)
    path.write_text("from scaletot_features import cli\n")
    assert any(is_under(n, "scaletot_features.cli") for _, n in imports(path))


def test_the_walk_leaves_lookalike_names_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    path = tmp_path / "scaletot_features" / "x.py"
    path.parent.mkdir(parents=True)
    path.write_text("import validations_extra\nfrom scaletot_features.config import "
                    "ValidationConfig\nfrom scaletot_features import trainers_note\n")
    assert not crossings(path)
