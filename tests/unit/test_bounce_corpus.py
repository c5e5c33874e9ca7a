"""The real bounces of tests/data/bounces through the report reader: the failed recipient and the class
of each, against what tests/data/bounces/manifest.csv says a careful reader finds.

The figures are printed at the end of the run. The floors asserted are today's, so that a change that
reads real bounces worse fails; the goal is 98% of recipients and 95% of classes. No report whose
class is the sender's fault, the mailbox's trouble or no failure at all may ever suppress an address.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from engine.core.bounce_outcome import ADDRESS_GONE, COMPLAINT, NOT_FAILURE
from engine.core.bounce_reports import read_report

CORPUS = Path(__file__).resolve().parents[1] / "data" / "bounces"
RECIPIENT_FLOOR = 0.965
CLASS_FLOOR = 0.90
NEVER_SUPPRESS = {"sender_fault", "mailbox_trouble", "not_failure"}


def agreement() -> tuple[int, int, int, int, list[str]]:
    with (CORPUS / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    found = named = right = 0
    wrongly_suppressing = []
    for row in rows:
        report = read_report((CORPUS / row["file"]).read_bytes(), "corpus")
        recipients = {o.recipient for o in report.outcomes if o.recipient}
        expected = set(row["recipient"].split())
        if expected:
            named += 1
            found += bool(expected & recipients)
        classes = {o.failure_class for o in report.outcomes} or {NOT_FAILURE}
        right += classes == {row["class"]}
        if row["class"] in NEVER_SUPPRESS and classes & {ADDRESS_GONE, COMPLAINT}:
            wrongly_suppressing.append(row["file"])
    return found, named, right, len(rows), wrongly_suppressing


@pytest.fixture(scope="module")
def figures(request: pytest.FixtureRequest) -> tuple[int, int, int, int, list[str]]:
    found, named, right, total, wrong = result = agreement()
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"bounce corpus: {total} reports; failed recipient found in {found}/{named} ({found / named:.1%}); "
            f"class right in {right}/{total} ({right / total:.1%}); {len(wrong)} would wrongly suppress"
        )
    return result


def test_the_failed_recipient_is_found(figures: tuple[int, int, int, int, list[str]]) -> None:
    found, named, *_ = figures
    assert found / named >= RECIPIENT_FLOOR, f"recipient found in {found}/{named}"


def test_the_class_is_right(figures: tuple[int, int, int, int, list[str]]) -> None:
    _, _, right, total, _ = figures
    assert right / total >= CLASS_FLOOR, f"class right in {right}/{total}"


def test_no_soft_sender_or_harmless_report_suppresses(figures: tuple[int, int, int, int, list[str]]) -> None:
    assert figures[4] == []
