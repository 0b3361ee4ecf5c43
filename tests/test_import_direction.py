"""One import direction: each package imports only from packages below it, at module level.

    types, errors < config < tools < rewards, core < compression < envs < policies < rollout < runner,
    registration, vector < learn < cli

(`agentenv/__init__.py` is the top: importing agentenv registers the envs.) Imports inside functions are
deliberately lazy (optional extras, the env a registry entry names) and are not edges."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "agentenv"
LAYERS = [("types", "errors"), ("config",), ("tools",), ("rewards", "core"), ("compression",), ("envs",),
          ("policies",), ("rollout",), ("runner", "registration", "vector"), ("distributed",), ("learn",), ("cli",), ("__main__",)]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "agentenv"


def module_level_edges():
    for path in ROOT.rglob("*.py"):
        module = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against the package
                    base = module.split(".")[: -node.level] if not path.name == "__init__.py" else module.split(".")[: len(module.split(".")) - node.level + 1]
                    targets = [".".join(base + ([node.module] if node.module else []))]
                else:
                    targets = [node.module or ""]
            else:
                continue
            for target in targets:
                if target.startswith("agentenv"):
                    yield module, target


def test_every_package_has_a_layer():
    groups = {_group(m) for m, _ in module_level_edges()} | {_group(t) for _, t in module_level_edges()}
    assert groups - {"agentenv"} <= set(RANK), groups - set(RANK)


def test_imports_only_go_down_and_there_is_no_cycle():
    upward = []
    for source, target in module_level_edges():
        a, b = _group(source), _group(target)
        if a == "agentenv" or a == b:
            continue
        if b == "agentenv" or RANK[b] >= RANK[a]:
            upward.append(f"{source} imports {target}")
    assert not upward, "\n".join(sorted(upward))
