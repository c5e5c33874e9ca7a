"""The corpus of real bounces (tests/data/bounces, see tests/data/README.md) read by `read_report`: the
failed recipient is found in at least 98% of the reports that name one, the class is right in at least
95%, and no report of a class that must not suppress (sender's fault, mailbox trouble, not a failure)
names an address as gone or as a complaint. The figures are printed (`pytest -s`) over every sample,
and again without the samples the manifest marks `(doubtful)`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from engine.core.bounce_reports import Report, ReportKind, read_report

CORPUS = Path(__file__).resolve().parent.parent / "data" / "bounces"
SAFE = {"sender_fault", "mailbox_trouble", "not_failure"}
KINDS = {
    "dsn": {ReportKind.DSN},
    "success": {ReportKind.DSN},
    "delay": {ReportKind.DELAY},
    "non-standard": {ReportKind.NON_STANDARD, ReportKind.DSN},
    "arf": {ReportKind.COMPLAINT},
    "auto-reply": {ReportKind.AUTO_REPLY, ReportKind.NOT_REPORT},
    "not-bounce": {ReportKind.NOT_REPORT},
}


@dataclass(frozen=True)
class Sample:
    row: dict[str, str]
    report: Report

    @property
    def expected(self) -> set[str]:
        return set(self.row["recipient"].split())

    @property
    def found(self) -> set[str]:
        return {recipient.address for recipient in self.report.recipients}

    @property
    def doubtful(self) -> bool:
        return "(doubtful)" in self.row["note"]


@cache
def samples() -> tuple[Sample, ...]:
    with (CORPUS / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return tuple(Sample(row, read_report((CORPUS / row["file"]).read_bytes())) for row in rows)


def figures(chosen: list[Sample]) -> tuple[float, float, str]:
    named = [s for s in chosen if s.expected]
    recipients = sum(s.expected <= s.found for s in named)
    classes = sum(s.report.failure_class.value == s.row["class"] for s in chosen)
    kinds = sum(s.report.kind in KINDS[s.row["kind"]] for s in chosen)
    extra = sum(bool(s.found - s.expected) for s in named)
    line = (
        f"{len(chosen)} reports: recipient found {recipients}/{len(named)} ({recipients / len(named):.1%}), "
        f"class {classes}/{len(chosen)} ({classes / len(chosen):.1%}), kind {kinds}/{len(chosen)}, "
        f"reports naming an extra address {extra}"
    )
    return recipients / len(named), classes / len(chosen), line


def misses(chosen: list[Sample]) -> list[str]:
    out = []
    for s in chosen:
        wrong = []
        if not s.expected <= s.found:
            wrong.append(f"recipients {sorted(s.found)} (expected {sorted(s.expected)})")
        if s.report.failure_class.value != s.row["class"]:
            wrong.append(f"class {s.report.failure_class.value} (expected {s.row['class']})")
        if wrong:
            out.append(f"  {s.row['file']}: {'; '.join(wrong)}")
    return out


def test_the_corpus_agreement() -> None:
    everything = list(samples())
    recipient_rate, class_rate, line = figures(everything)
    _, _, certain_line = figures([s for s in everything if not s.doubtful])
    print(f"\nbounce corpus, every sample: {line}\nbounce corpus, without doubtful: {certain_line}")
    print("\n".join(misses(everything)))
    assert recipient_rate >= 0.98, line
    assert class_rate >= 0.95, line


def test_no_report_that_must_not_suppress_names_an_address_as_gone_or_complaining() -> None:
    suppressing = [
        f"{s.row['file']} ({s.row['class']}): {r.address} {r.failure_class.value}"
        for s in samples()
        if s.row["class"] in SAFE
        for r in s.report.recipients
        if r.failure_class.suppresses
    ]
    assert suppressing == []
    unsafe = [s.row["file"] for s in samples() if s.row["class"] in SAFE and s.report.failure_class.suppresses]
    assert unsafe == []


def test_auto_replies_and_mail_that_is_not_a_report_name_no_recipient() -> None:
    named = [s.row["file"] for s in samples() if s.row["kind"] in ("auto-reply", "not-bounce") and s.found]
    assert named == []
