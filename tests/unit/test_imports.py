"""Module-level imports inside the package form no cycle, and no module imports another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "addunet_edge"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level:
        base = base[: len(base) - (node.level - 1)]
        return ".".join([*base, node.module] if node.module else base)
    return node.module or ""


def _imports() -> dict[str, list[tuple[str, list[str], bool]]]:
    """module -> [(imported module, names, at module level)]."""
    graph: dict[str, list[tuple[str, list[str], bool]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        edges = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("addunet_edge")):
                target = _resolve(name, node, path.name == "__init__.py")
                edges.append((target, [a.name for a in node.names], id(node) in top))
        graph[name] = edges
    return graph


def test_no_import_cycle_at_module_level() -> None:
    graph = _imports()
    modules = set(graph)

    def deps(m: str) -> set[str]:
        out = set()
        for target, names, top in graph[m]:
            if not top:
                continue
            for candidate in (target, *(f"{target}.{n}" for n in names)):
                if candidate in modules and candidate != m:
                    out.add(candidate)
        return out

    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in deps(m):
            if state.get(d) == 1 and not m.startswith(d + "."):  # a package importing its own parent is fine
                cycles.append([*stack[stack.index(d) :], d] if d in stack else [m, d])
            elif d not in state:
                visit(d, [*stack, d])
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_no_module_imports_another_modules_private_names() -> None:
    modules = set(_imports())
    found = [
        f"{module} imports {name} from {target}"
        for module, edges in _imports().items()
        for target, names, _ in edges
        for name in names
        # a package-private module such as _lazy is shared on purpose; a private name inside a module is not
        if name.startswith("_") and not name.startswith("__") and target != module and f"{target}.{name}" not in modules
    ]
    assert found == []
