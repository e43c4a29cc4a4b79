"""No import circle under components/: a module that imports, directly or through others, a module
that imports it back only works in one import order, and breaks when an import moves.

Read from the source with ast (nothing is imported), counting every import, the ones inside
functions too: settings and the maintenance renderer once imported each other that way. An import
of a submodule is an edge to that submodule, not to its package's ``__init__``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "components"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The module names one import statement names (a ``from X import y`` names X.y when y is
    a module, else X; which of the two is settled against the known modules by the caller)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        # Relative: from the module's package (the module itself when it is a package).
        base = module.split(".")
        base = base if is_package else base[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join([*base, node.module] if node.module else base)
    else:
        source = node.module or ""
    return [source, *(f"{source}.{alias.name}" for alias in node.names)]


def import_graph() -> dict[str, set[str]]:
    """Every module under components/ -> the modules under components/ it imports."""
    files = {_module_name(path): path for path in sorted((ROOT / PACKAGE).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        edges: set[str] = set()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            names = _imported(node, module, path.name == "__init__.py")
            if isinstance(node, ast.ImportFrom):
                source, members = names[0], names[1:]
                submodules = [name for name in members if name in files]
                # `from pkg import sub`: an edge to sub; `from pkg.mod import name`: to pkg.mod.
                names = submodules if len(submodules) == len(members) else [source, *submodules]
            edges.update(name for name in names if name in files and name != module)
        graph[module] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Circles as the paths that close them (first module repeated at the end): at least one
    whenever there is any, as a depth-first search then meets an edge back into its own path."""
    cycles: list[list[str]] = []
    done: set[str] = set()
    seen_cycles: set[frozenset[str]] = set()

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(graph[module]):
            if target in path:
                cycle = [*path[path.index(target) :], target]
                if frozenset(cycle) not in seen_cycles:
                    seen_cycles.add(frozenset(cycle))
                    cycles.append(cycle)
            elif target not in done:
                visit(target, [*path, target])
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    return cycles


def test_the_components_import_no_module_that_imports_them_back() -> None:
    graph = import_graph()
    # Not vacuous: the program reaches the settings, and through them their sections.
    assert "components.settings" in graph["components.stack_config"]
    assert "components.settings.model" in graph["components.settings.load"]
    cycles = find_cycles(graph)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_finder_sees_a_circle_through_a_function_level_import() -> None:
    """The shape that was in the house: a lazy import inside a function closes the circle."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    source = "def f():\n    from components.settings import load\n"
    edges = {
        name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ImportFrom)
        for name in _imported(node, "components.renderers.maintenance", False)
    }
    assert "components.settings.load" in edges
