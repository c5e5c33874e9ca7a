"""The code stays ruff- and mypy-clean: checked with the project's own configuration."""

from __future__ import annotations

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


def test_mypy_is_clean() -> None:
    result = run(str(BIN / "mypy"), "engine")
    assert result.returncode == 0, result.stdout + result.stderr


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
