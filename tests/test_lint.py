"""The code stays ruff-clean, ruff-formatted and mypy-clean (checked with the project's own configuration)
and uses only the public interfaces of other projects."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_is_clean() -> None:
    result = run(str(BIN / "ruff"), "check", "engine", "benchmarks")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_applied() -> None:
    result = run(str(BIN / "ruff"), "format", "--check", "engine", "tests", "benchmarks")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean() -> None:
    result = run(str(BIN / "mypy"), "engine")
    assert result.returncode == 0, result.stdout + result.stderr


def private_uses(path: Path) -> list[str]:
    """Imports of ctypes, of another project's private module (`cmarkgfm._cmark`) or of a private name
    (`from x import _y`): each can break or crash on an upgrade without any error beforehand."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
            names: list[str] = []
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules, names = [node.module], [alias.name for alias in node.names]
        else:
            continue
        for module in modules:
            if module.split(".")[0] == "engine":
                continue
            private = [part for part in module.split(".") if part.startswith("_") and not part.startswith("__")]
            private += [name for name in names if name.startswith("_")]
            if module.split(".")[0] == "ctypes" or private:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {module} {' '.join(private)}".rstrip())
    return found


def test_the_engine_uses_only_public_interfaces_of_other_projects() -> None:
    found = [use for path in sorted((ROOT / "engine").rglob("*.py")) for use in private_uses(path)]
    assert found == []


# Other projects' private interfaces (CPython's JSON scanner and C encoder), and a column type's
# conversions done by hand beside SQLAlchemy: an upgrade can change any of them without an error.
PRIVATE = ("json.scanner", "c_make_encoder", "bind_processor(", "result_processor(", "dialect_impl(")


def test_the_engine_uses_no_private_interface_and_converts_no_column_type_by_hand() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted((ROOT / "engine").rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if any(name in line for name in PRIVATE)
    ]
    assert found == []
