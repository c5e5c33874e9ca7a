"""The layers of engine/ (invariant 16): each package imports only the ones below it, only the store
speaks SQL, no module takes part in an import cycle, and functions stay short enough to read.

The contracts are import-linter's, in pyproject.toml ([tool.importlinter]); the package docstrings in
engine/*/__init__.py say the same in words.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LONGEST_FUNCTION = 80
# Generated migrations are long lists of columns; the HTTP routers are being rewritten as module-level
# routers with dependencies, and get the same bound then.
LONG_FUNCTIONS_ALLOWED_UNDER = ("engine/store/migrations/", "engine/http/")


def test_every_import_linter_contract_is_kept() -> None:
    result = subprocess.run(
        [str(BIN / "lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_contracts_name_every_package_of_the_engine() -> None:
    """A package added to engine/ without a place in the layers would be checked by no contract."""
    text = (ROOT / "pyproject.toml").read_text()
    packages = sorted(p.parent.name for p in (ROOT / "engine").glob("*/__init__.py"))
    assert packages, "no package found"
    assert [p for p in packages if f'"engine.{p}"' not in text] == []


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module, or a module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_cycles_finds_a_cycle_and_only_a_cycle() -> None:
    assert cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert cycles({"a": ["a"]}) == [["a"]]
    assert cycles({"a": ["b"], "b": [], "c": ["a", "b"]}) == []


def test_no_module_of_the_engine_takes_part_in_an_import_cycle() -> None:
    graph = grimp.build_graph("engine")
    modules = {m for m in graph.modules if m == "engine" or m.startswith("engine.")}
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & modules) for m in modules}
    assert cycles(edges) == []


def long_functions(root: Path) -> list[str]:
    found = []
    for path in sorted((root / "engine").rglob("*.py")):
        where = path.relative_to(root).as_posix()
        if where.startswith(LONG_FUNCTIONS_ALLOWED_UNDER):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), where)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > LONGEST_FUNCTION:
                    found.append(f"{where}:{node.lineno}: {node.name} is {lines} lines")
    return found


def test_no_function_of_the_engine_is_over_80_lines() -> None:
    assert long_functions(ROOT) == []


def test_long_functions_sees_a_long_function(tmp_path: Path) -> None:
    (tmp_path / "engine" / "http").mkdir(parents=True)
    body = "".join(f"    x{i} = {i}\n" for i in range(LONGEST_FUNCTION))
    (tmp_path / "engine" / "long.py").write_text(f"def long() -> None:\n{body}")
    (tmp_path / "engine" / "http" / "router.py").write_text(f"def handler() -> None:\n{body}")
    (tmp_path / "engine" / "short.py").write_text("def short() -> None:\n    pass\n")
    assert long_functions(tmp_path) == [f"engine/long.py:1: long is {LONGEST_FUNCTION + 1} lines"]
