"""The one-way flow of the package, checked from the import graph (lazy imports included).

core -> models and data -> methods -> analyses -> render -> cli: a module may import from its own
layer and the layers below it, never from a layer above. See docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import attattr

PACKAGE_DIR = Path(attattr.__file__).parent

# Longest prefix wins. Every module of the package must fall into one of these.
LAYERS: dict[str, int] = {
    "attattr.version": 0,
    "attattr.core": 1,
    "attattr.models": 2,
    "attattr.data": 2,
    "attattr.prompts": 2,
    "attattr.convert": 2,
    "attattr.training": 2,
    "attattr.bases": 2,
    "attattr.methods": 3,
    "attattr.analyses": 4,
    "attattr.cluster": 4,
    "attattr.render": 5,
    "attattr.cli": 6,
    "attattr": 7,  # the package root: the public API re-exports from below; nothing inside imports it
}
NAMES = {
    0: "version",
    1: "core",
    2: "models/data",
    3: "methods",
    4: "analyses",
    5: "render",
    6: "cli",
    7: "api",
}


def layer_of(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    if best is None:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in {__file__}")
    return LAYERS[best]


def module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every attattr import in the file, at any depth."""
    name, is_package = module_name(path)
    package = name if is_package else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "attattr"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "attattr":
                continue
            # `from pkg import sub` names a submodule: judge the submodule, not the package
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                is_module = (PACKAGE_DIR.parent / Path(*sub.split("."))).with_suffix(".py").exists() or (
                    PACKAGE_DIR.parent / Path(*sub.split(".")) / "__init__.py"
                ).exists()
                found.append((node.lineno, sub if is_module else target))
    return found


SOURCES = sorted(PACKAGE_DIR.rglob("*.py"))


def test_every_module_has_a_layer():
    for path in SOURCES:
        layer_of(module_name(path)[0])


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE_DIR)))
def test_no_import_from_a_layer_above(path):
    name, _ = module_name(path)
    own = layer_of(name)
    upward = [
        f"line {line}: {target} ({NAMES[layer_of(target)]})"
        for line, target in imported_modules(path)
        if layer_of(target) > own
    ]
    assert not upward, f"{name} ({NAMES[own]}) imports from a layer above it: " + "; ".join(upward)


def test_checker_sees_a_lazy_upward_import(tmp_path, monkeypatch):
    """The check itself can fail: a lazy import of the CLI inside a core function is caught."""
    fake = PACKAGE_DIR / "core" / "_layer_probe.py"
    source = "def f():\n    from ..cli import app\n    return app\n"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: source if self == fake else _read(self))
    upward = [t for _, t in imported_modules(fake) if layer_of(t) > layer_of("attattr.core._layer_probe")]
    assert upward == ["attattr.cli.app"]


_read = Path.read_text
