"""The fault-injection suite: real processes, real servers, faults injected from outside.

Short by default (it runs with the rest of the suite in CI); `FUNNEL_FAULTS=full` runs every scenario at
its full size:

    FUNNEL_FAULTS=full .venv/bin/python -m pytest tests/faults

Each scenario records a `Tally` through the `fault_report` fixture; the summary is printed at the end of
the run (tests/conftest.py), and written as JSON when `FUNNEL_FAULTS_JSON` names a file.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from tests.faults.tally import Tally

# Where each scenario's tally travels: the test report's user properties, which reach the process that
# prints the summary (tests/conftest.py) whether the suite runs in one process or in several.
TALLY = "fault_tally"


def full() -> bool:
    return os.environ.get("FUNNEL_FAULTS", "short").lower() == "full"


def size(short: int, full_size: int) -> int:
    """A scenario's size in the current mode."""
    return full_size if full() else short


@pytest.fixture
def fault_report(request: pytest.FixtureRequest) -> Callable[[Tally], None]:
    def record(tally: Tally) -> None:
        request.node.user_properties.append((TALLY, tally.as_dict()))

    return record
