"""The package layout shows the flow: stages import only from themselves or the stages below,
no two modules import each other (at module level or inside a function), and modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "thumbs"
# The flow, bottom to top. Shared modules at the top of the package sit below every stage.
STAGES = ["core", "data", "audit", "train", "eval", "report", "demo", "cli"]
CORE = {"errors", "paths", "config", "tokenize", "models", "show", "folders", "numbers", "quiet", "cores"}
MAX_LINES = 420


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _stage(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in CORE or parts[1] == "__init__":
        return "core"
    if parts[1] in ("cli", "__main__"):
        return "cli"
    if parts[1] in ("study", "iterate"):
        return "demo"
    return parts[1]


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every thumbs module that ``path`` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("thumbs"):
                for alias in node.names:  # `from thumbs.report import plots` imports a module
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("thumbs"))
    return {m for m in found if m in modules}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    return {name: _imports(path, set(files)) - {name} for name, path in files.items()}


def test_no_two_modules_import_each_other():
    graph = _graph()
    seen, stack, cycles = set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(stack[stack.index(node) :] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if not nxt.startswith(node + "."):  # a package's __init__ re-exporting its own modules
                visit(nxt)
        stack.pop()

    for node in sorted(graph):
        visit(node)
    assert not cycles, f"import cycles: {cycles}"


def test_each_stage_imports_only_itself_and_the_stages_below():
    wrong = [
        f"{mod} ({_stage(mod)}) imports {dep} ({_stage(dep)})"
        for mod, deps in _graph().items()
        for dep in deps
        if STAGES.index(_stage(dep)) > STAGES.index(_stage(mod))
        and _stage(mod) != "core"
        or (_stage(mod) == "core" and _stage(dep) != "core" and mod != "thumbs")
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_modules_stay_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(SRC)} has {lines} lines; split it by what it does"
