"""The package's layering: a module may import from its own layer or the layers below, never from above. The
layers are written here, bottom first; a new module must be placed in one."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sparselab"

LAYERS: list[set[str]] = [
    {"errors", "paths", "atomic", "stats", "registry"}, # no sparselab imports but these
    {"runtime", "callbacks", "history", "configs"},     # the hook protocol, run-time helpers, typed options
    {"data"},
    {"models"},
    {"structure", "cost", "latency", "evaluation"},
    {"probes"},
    {"pruners"},
    {"training"},
    {"patterns", "attribution"},
    {"plots"},
    {"widgets"},
    {"experiments"},
    {"cli", "__main__", "__init__"},
]
LEVEL = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _unit(path: Path) -> str:
    """The first component below the package: ``pruners`` for ``pruners/p3b.py``, ``stats`` for ``stats.py``."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) == 1 else rel.parts[0]


def _imports(path: Path) -> set[str]:
    """Units of sparselab that ``path`` imports, at any depth of the file (lazy imports count too)."""
    rel = path.relative_to(PACKAGE)
    package = list(rel.parts[:-1]) if rel.name != "__init__.py" else list(rel.parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                parts = base + (node.module.split(".") if node.module else [])
                if parts:
                    found.add(parts[0])
                else:  # "from .. import models" at the top level
                    found.update(alias.name for alias in node.names)
            elif node.module and node.module.split(".")[0] == "sparselab":
                parts = node.module.split(".")
                found.update([parts[1]] if len(parts) > 1 else [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "sparselab" and len(parts) > 1:
                    found.add(parts[1])
    return found


def test_every_module_has_a_layer():
    units = {_unit(p) for p in PACKAGE.rglob("*.py")}
    assert units - set(LEVEL) == set(), "place these in LAYERS"


def test_no_module_imports_from_a_layer_above_it():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = _unit(path)
        for target in _imports(path):
            if target in LEVEL and LEVEL[target] > LEVEL[unit]:
                upward.append(f"{path.relative_to(PACKAGE)} ({unit}) imports {target}")
    assert upward == []


def test_the_checker_sees_relative_absolute_and_lazy_imports(tmp_path, monkeypatch):
    fake = tmp_path / "sparselab"
    (fake / "probes").mkdir(parents=True)
    source = ("from ..training import fit\nimport sparselab.pruners.p3b\n"
              "def f():\n    from .. import widgets\n    from sparselab.experiments import p3b\n")
    (fake / "probes" / "x.py").write_text(source)
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert _imports(fake / "probes" / "x.py") == {"training", "pruners", "widgets", "experiments"}
