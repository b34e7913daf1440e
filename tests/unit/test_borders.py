"""ARCHITECTURE.md borders, proven by reading the code: every import statement, function bodies
included, so a lazy `import torch` inside a GUI handler is caught before anyone runs it."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

HEAVY = ("torch", "diffusers", "transformers", "accelerate", "bitsandbytes")
OURS = ("ti_core", "ti_gui")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def our_modules() -> dict[str, Path]:
    files = [ROOT / "gui.py", *(p for pkg in OURS for p in (ROOT / pkg).rglob("*.py"))]
    return {module_name(path): path for path in files}


MODULES = our_modules()


def imports_of(name: str) -> set[str]:
    """Every module `name` imports anywhere in its file (top level, functions, branches)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            # `from ti_core.config import run_config` imports the module ti_core.config.run_config
            found.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES)
    return {module for module in found if module}


def reached_from(starts: list[str]) -> dict[str, str]:
    """Every module reachable from `starts` through our modules, with the one that imports it."""
    importer: dict[str, str] = {start: "" for start in starts}
    todo = list(starts)
    while todo:
        name = todo.pop()
        for imported in sorted(imports_of(name)):
            if imported in importer:
                continue
            importer[imported] = name
            if imported in MODULES:
                todo.append(imported)
    return importer


def chain(importer: dict[str, str], module: str) -> str:
    links = [module]
    while importer.get(links[-1]):
        links.append(importer[links[-1]])
    return " <- ".join(links)


def test_gui_never_imports_the_heavy_stack():
    gui_side = [name for name in MODULES if name == "gui" or name.startswith("ti_gui")]
    importer = reached_from(gui_side)
    assert "gradio" in importer and "ti_core.config.run_config" in importer  # the walk works
    heavy = [m for m in importer if m.split(".")[0] in HEAVY]
    assert not heavy, "the GUI process would load:\n" + "\n".join(chain(importer, m) for m in heavy)


def test_engine_never_imports_gradio():
    engine = [name for name in MODULES if name.startswith("ti_core")]
    offenders = [
        name for name in engine if any(m.split(".")[0] == "gradio" for m in imports_of(name))
    ]
    assert "torch" in imports_of("ti_core.training.loop")  # the walk sees real imports
    assert not offenders


def test_engine_has_no_import_circles():
    """A package's parts may use each other one way only (lazy imports count too)."""
    engine = {name for name in MODULES if name.startswith("ti_core")}
    graph = {name: {m for m in imports_of(name) if m in engine} for name in engine}
    circles = []
    for start in sorted(engine):
        stack = [(start, [start])]
        seen = set()
        while stack:
            name, path = stack.pop()
            for nxt in graph[name]:
                if nxt == start:
                    circles.append(" -> ".join([*path, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert not circles, "\n".join(sorted(set(circles)))
