"""The package stays readable: no module over 400 lines, no function over 60, no import circle.

Run on the source tree with ``ast`` (nothing is imported). The limits are the project's style rules
(docs/ARCHITECTURE.md, "Where new code goes"); a module that outgrows them is split by job.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sgdm_dist"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = (
    60  # from `def` to the last line of the body, decorators and signature included
)


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def _import_time_imports(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    """Modules imported when ``module`` is imported: top-level statements, not function bodies or
    ``if TYPE_CHECKING:`` blocks (those never run at import)."""
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and _is_type_checking(node):
                visit(node.orelse)
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(node.orelse)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = module.split(".") if is_package else module.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)

    visit(tree.body)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = _import_time_imports(tree, name, path.name == "__init__.py")
        # A module importing from its own package (``from sgdm_dist.data import DataError`` in
        # sgdm_dist/data/*.py) finds that package mid-import by design: not an edge.
        edges = {m for m in imported if m in modules and m != name and not name.startswith(m + ".")}
        # Importing a.b.c runs a/__init__ and a/b/__init__ first, unless the importer lives in
        # that package (its own package is already being imported when it runs).
        for m in list(edges):
            parts = m.split(".")
            parents = (".".join(parts[:i]) for i in range(2, len(parts)))
            edges.update(p for p in parents if p != name and not name.startswith(p + "."))
        graph[name] = edges
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := walk(node)):
            return cycle
    return None


def test_no_module_is_over_the_line_limit():
    long = {
        str(path.relative_to(PACKAGE.parent)): n
        for path in _modules().values()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by job): {long}"


def test_no_function_is_over_the_line_limit():
    long = {}
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                if (n := node.end_lineno - start + 1) > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}"] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_no_import_circle():
    cycle = _find_cycle(_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_no_circle_between_stage_packages():
    """Folders show the data flow: sgdm_dist.X imports sgdm_dist.Y means Y comes before X."""
    packages: dict[str, set[str]] = {}
    for module, edges in _graph().items():
        top = ".".join(module.split(".")[:2])
        others = {".".join(m.split(".")[:2]) for m in edges} - {top}
        packages.setdefault(top, set()).update(others)
    cycle = _find_cycle(packages)
    assert cycle is None, "packages import each other: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ],
)
def test_the_circle_finder_finds_circles(graph, expected):
    assert _find_cycle(graph) == expected


def test_import_time_imports_skip_function_bodies_and_type_checking():
    tree = ast.parse(
        "import x\nfrom y import z\nif TYPE_CHECKING:\n    import t\n"
        "def f():\n    import lazy\ntry:\n    import opt\nexcept ImportError:\n    import fb\n"
    )
    found = _import_time_imports(tree, "pkg.mod", is_package=False)
    assert {"x", "y", "y.z", "opt", "fb"} <= found
    assert not {"t", "lazy"} & found
