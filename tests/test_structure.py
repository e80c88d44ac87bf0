"""The package's shape: no module imports one that (directly or not) imports it back."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dpo_lab"


def imports() -> dict:
    """module -> the dpo_lab modules it imports, at the top or inside functions."""
    graph = {}
    for path in PACKAGE.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "dpo_lab":
                deps |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dpo_lab."):
                deps.add(node.module.split(".")[1])
        graph[path.stem] = deps - {path.stem}
    return graph


def test_no_import_loops():
    graph = imports()
    assert {"job", "train", "sampling", "files"} <= set(graph)

    def loop_from(start, node, path):
        for dep in graph.get(node, ()):
            if dep == start:
                return path + [dep]
            if dep not in path:
                found = loop_from(start, dep, path + [dep])
                if found:
                    return found
        return None

    loops = [loop for m in graph if (loop := loop_from(m, m, [m]))]
    assert not loops, f"import loops: {loops}"
