"""The package's shape: no module imports one that (directly or not) imports it back, and only the methods package
names TRL's trainer classes."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dpo_lab"


def _module(path: Path) -> str:
    """`train`, `methods` (a package's __init__), `methods.dpo`."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict:
    """module -> the dpo_lab modules it imports, at the top or inside functions."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        if not _module(path):
            continue
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "dpo_lab":
                deps |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dpo_lab."):
                deps.add(node.module[len("dpo_lab.") :])
        graph[_module(path)] = deps - {_module(path)}
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


# Trainers dpo-lab uses for what it builds into the cache, not as a preference method.
AUXILIARY = {"sft": {"SFTTrainer"}, "reward_model": {"RewardTrainer"}}


def test_only_the_methods_package_names_trl_trainers():
    """A method is its two files (dpo_lab/methods/<name>.py, conf/method/<name>.yaml): no other module may name a
    TRL trainer class, so none can assume one."""
    import trl

    trainers = {name for name in dir(trl) if name.endswith("Trainer")} | {"CPOTrainer", "ORPOTrainer"}
    found = []
    for path in PACKAGE.rglob("*.py"):
        module = _module(path)
        if module.startswith("methods"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else []
            names += [node.id] if isinstance(node, ast.Name) else [node.attr] if isinstance(node, ast.Attribute) else []
            found += [f"{module}: {n}" for n in names if n in trainers - AUXILIARY.get(module, set())]
    assert trainers >= {"DPOTrainer", "KTOTrainer"} and not found, found
