"""The package's shape: no module imports one that (directly or not) imports it back, subpackages import only
downwards, and only the methods package names TRL's trainer classes."""

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
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "dpo_lab":
                base = node.module[len("dpo_lab.") :]
                for alias in node.names:  # `from dpo_lab.samples import judges` imports the module samples.judges
                    name = f"{base}.{alias.name}" if base else alias.name
                    deps.add(name if _exists(name) else base)
        graph[_module(path)] = deps - {_module(path)}
    return graph


def _exists(module: str) -> bool:
    path = PACKAGE.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_no_import_loops():
    graph = imports()
    assert {"job", "train", "samples.sampling", "sweeps.report", "toy.task", "files"} <= set(graph)

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


# The subpackages, each one optional feature, lowest first: one may import from those before it, never after it, so
# none reaches up into a feature built on it (the flat modules, the training path, import what they need).
SUBPACKAGES = ("methods", "samples", "toy", "sweeps")


def test_subpackages_import_only_downwards():
    graph = imports()
    assert set(SUBPACKAGES) == {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    rank = {name: i for i, name in enumerate(SUBPACKAGES)}
    upward = [
        f"{m} -> {d}"
        for m, deps in graph.items()
        for d in deps
        if m.split(".")[0] in rank and d.split(".")[0] in rank and rank[d.split(".")[0]] > rank[m.split(".")[0]]
    ]
    assert not upward, f"imports from a subpackage above: {upward}"


# Trainers dpo-lab uses for what it builds into the cache, not as a preference method.
AUXILIARY = {"toy.sft": {"SFTTrainer"}, "toy.reward_model": {"RewardTrainer"}}


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
