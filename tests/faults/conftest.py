"""The fault-injection suite: real processes, real servers, faults injected from outside.

Short by default (it runs with the rest of the suite in CI); `FUNNEL_FAULTS=full` runs every scenario at
its full size:

    FUNNEL_FAULTS=full .venv/bin/python -m pytest tests/faults

Each scenario records a `Tally` through the `fault_report` fixture; the summary is printed at the end of
the run, and written as JSON when `FUNNEL_FAULTS_JSON` names a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.tally import Tally

_REPORTS: list[Tally] = []


def full() -> bool:
    return os.environ.get("FUNNEL_FAULTS", "short").lower() == "full"


def size(short: int, full_size: int) -> int:
    """A scenario's size in the current mode."""
    return full_size if full() else short


@pytest.fixture
def fault_report() -> Callable[[Tally], None]:
    def record(tally: Tally) -> None:
        _REPORTS.append(tally)

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _REPORTS:
        return
    columns = ("faults", "leads", "expected", "delivered", "duplicated", "lost", "unknown", "strays")
    mode = "full" if full() else "short"
    tr = terminalreporter
    tr.section(f"fault injection summary ({mode})")
    width = max(len("scenario"), *(len(t.scenario) for t in _REPORTS))
    tr.write_line(f"{'scenario':<{width}}  " + "  ".join(f"{c:>10}" for c in columns))
    for t in _REPORTS:
        tr.write_line(f"{t.scenario:<{width}}  " + "  ".join(f"{getattr(t, c):>10,}" for c in columns))
    totals = {c: sum(getattr(t, c) for t in _REPORTS) for c in columns}
    tr.write_line(f"{'total':<{width}}  " + "  ".join(f"{totals[c]:>10,}" for c in columns))
    for t in _REPORTS:
        for note in t.notes:
            tr.write_line(f"  {t.scenario}: {note}")
    target = os.environ.get("FUNNEL_FAULTS_JSON")
    if target:
        payload = {"mode": mode, "scenarios": [t.as_dict() for t in _REPORTS], "totals": totals}
        Path(target).write_text(json.dumps(payload, indent=2) + "\n")
