"""The corpus of real bounces and its manifest agree, so the corpus can be used to measure bounce processing.

Every sample in tests/data/bounces/ has exactly one row in manifest.csv and every row names a sample that
exists; kinds and classes come from the allowed sets; every source is credited in tests/data/README.md.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
CORPUS = DATA / "bounces"
MANIFEST = CORPUS / "manifest.csv"
COLUMNS = ["file", "source", "mta", "kind", "recipient", "class", "status", "note"]
KINDS = {"dsn", "non-standard", "arf", "auto-reply", "delay", "success", "not-bounce"}
CLASSES = {"address_gone", "mailbox_trouble", "sender_fault", "complaint", "not_failure"}
# An enhanced status code as RFC 3463 writes it: class.subject.detail, each part up to three digits.
STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
ADDRESS = re.compile(r"[^@\s]+@[^@\s]+")


def rows() -> list[dict[str, str]]:
    with MANIFEST.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == COLUMNS, f"manifest.csv header is {reader.fieldnames}, expected {COLUMNS}"
        return list(reader)


def samples() -> set[str]:
    return {p.relative_to(CORPUS).as_posix() for p in CORPUS.rglob("*.eml")}


def test_every_sample_is_listed_once_and_every_row_names_a_sample() -> None:
    listed = Counter(row["file"] for row in rows())
    twice = sorted(name for name, count in listed.items() if count > 1)
    assert not twice, f"listed more than once in manifest.csv: {twice}"
    missing = sorted(set(listed) - samples())
    assert not missing, f"manifest.csv rows whose file does not exist under tests/data/bounces: {missing}"
    unlisted = sorted(samples() - set(listed))
    assert not unlisted, f"samples with no row in manifest.csv: {unlisted}"
    strays = sorted(
        p.relative_to(CORPUS).as_posix()
        for p in CORPUS.rglob("*")
        if p.is_file() and p.suffix != ".eml" and p.name not in {"manifest.csv", ".gitattributes"}
    )
    assert not strays, f"files in the corpus that are neither samples (.eml) nor the manifest: {strays}"


def test_every_row_is_well_formed() -> None:
    problems = []
    for line, row in enumerate(rows(), start=2):
        where = f"manifest.csv line {line} ({row['file']})"
        if row["kind"] not in KINDS:
            problems.append(f"{where}: kind {row['kind']!r} is not one of {sorted(KINDS)}")
        if row["class"] not in CLASSES:
            problems.append(f"{where}: class {row['class']!r} is not one of {sorted(CLASSES)}")
        if row["status"] and not STATUS.fullmatch(row["status"]):
            problems.append(f"{where}: status {row['status']!r} is not an enhanced status code")
        if not row["mta"] or not row["source"]:
            problems.append(f"{where}: mta and source must not be empty")
        if not row["file"].startswith(row["source"] + "/"):
            problems.append(f"{where}: the file is not in its source's folder {row['source']}/")
        for address in row["recipient"].split():
            if address != address.lower() or not ADDRESS.fullmatch(address):
                problems.append(f"{where}: recipient {address!r} is not a lower-case address")
        if row["class"] == "complaint" and row["kind"] != "arf":
            problems.append(f"{where}: a complaint must be of kind arf")
        if row["kind"] in {"auto-reply", "not-bounce", "success"} and row["class"] != "not_failure":
            problems.append(f"{where}: a {row['kind']} must be of class not_failure")
    assert not problems, "\n".join(problems)


def test_the_corpus_is_large_and_varied_enough() -> None:
    table = rows()
    assert len(table) >= 150, f"only {len(table)} samples; the corpus needs at least 150"
    mtas = {row["mta"] for row in table if row["mta"] != "unknown"}
    assert len(mtas) >= 15, f"only {len(mtas)} distinct mta values; the corpus needs at least 15"
    for wanted in sorted(CLASSES):
        assert any(row["class"] == wanted for row in table), f"no sample of class {wanted}"


def test_every_source_is_credited_in_the_readme() -> None:
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    credited = set(re.findall(r"^### `([^`]+)`", readme, flags=re.MULTILINE))
    uncredited = sorted({row["source"] for row in rows()} - credited)
    assert not uncredited, f"sources with no '### `name`' section in tests/data/README.md: {uncredited}"
