"""The package's import graph has no circles (docs/DESIGN.md: arrows point one way).

Read from the source alone, so a lazy import inside a function counts as an edge as well: a circle hidden
in a function body is still a circle for the reader and for anyone who moves that import to the top.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "llmkit"


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the package's modules it imports (a `from pkg import name` names the module `pkg.name`
    where that is a module, else `pkg`)."""
    paths = {module_name(p, package): p for p in package.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        is_package = path.name == "__init__.py"
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: drop `level` trailing parts (a package's __init__ is its own parent)
                    keep = name.split(".")[: len(name.split(".")) - node.level + is_package]
                    base = ".".join(keep + ([base] if base else []))
                candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in candidates:
                while target and target not in paths:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of two or more modules (Tarjan 1972), iteratively."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter; counter += 1
        stack.append(root); on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter; counter += 1
                    stack.append(child); on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop(); on_stack.discard(member); component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_checker_finds_a_circle_and_a_clean_graph_has_none(tmp_path):
    pkg = tmp_path / "llmkit"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from llmkit.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")  # lazy and relative: still an edge
    (pkg / "c.py").write_text("import llmkit.a\n")
    assert cycles(import_graph(pkg)) == [["llmkit.a", "llmkit.c", "llmkit.sub.b"]]
    (pkg / "c.py").write_text("import os\n")
    assert cycles(import_graph(pkg)) == []


def test_llmkit_has_no_import_circles():
    graph = import_graph()
    assert len(graph) > 40 and "llmkit.model" in graph["llmkit.checkpoint"]
    assert cycles(graph) == [], "import circles (make the arrows point one way; see docs/DESIGN.md)"
