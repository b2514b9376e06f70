"""The house rules a newcomer relies on: no module of segsweep longer than 400 lines, and no import cycle among
them (a module never imports, even lazily, one that imports it back; imports for type checking only excepted)."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
pytestmark = pytest.mark.unit


def modules() -> dict[str, Path]:
    out = {}
    for p in (SRC / "segsweep").rglob("*.py"):
        parts = p.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def runtime_imports(path: Path, known: set[str]) -> set[str]:
    """The segsweep modules ``path`` imports when it runs (at the top or inside a function)."""
    tree = ast.parse(path.read_text())
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(
        node.test) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "segsweep":
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m in known}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    out, state, stack = [], {}, []

    def visit(u: str) -> None:
        state[u] = "open"
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == "open":
                out.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = "done"

    for u in sorted(graph):
        if u not in state:
            visit(u)
    return out


def test_no_module_is_longer_than_400_lines():
    long = {str(p.relative_to(SRC)): n for p in modules().values() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_no_import_cycle_among_segsweep_modules():
    mods = modules()
    graph = {name: runtime_imports(path, set(mods)) - {name} for name, path in mods.items()}
    assert "segsweep.run" in graph["segsweep.seeds"] and "segsweep.seeds" not in graph["segsweep.run"]  # it reads
    found = cycles(graph)
    assert not found, "\n".join(" -> ".join(c) for c in found)


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
