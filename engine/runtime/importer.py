"""Bulk import of leads from CSV: parse and check each row, then write leads in batches.

Streaming throughout: rows are read one at a time and written in batches of `BATCH_SIZE`, so a file of
millions of rows costs the memory of one batch. The check pass keeps the good rows, parsed, in a
temporary file (`Parsed`), so nothing is written until every row is known good and the file is parsed
once. Each batch is a handful of set-based statements (one lookup of existing leads, one of
suppressions, one multi-row insert, one executemany update, events), not one round trip per row.

A file is imported whole or not at all: every batch goes into one transaction, so a failure while
writing (the database refusing a row, the disk filling up, the connection lost) leaves nothing behind,
and running the command again starts from a clean slate. What a database cannot store is refused by
the check like any other bad row, by the rule every entry uses (`engine.core.storable`), so a file that one
database takes is taken by the other.

Consent only ever gets stricter through an import: a lead who unsubscribed, bounced, complained or was
erased keeps that status whatever the file says, a lead whose signup is unconfirmed stays pending, and
an address on the suppression list comes in unsubscribed. Moving tools must never re-subscribe someone
who opted out (the rule is `engine.core.signup.operator_refusal`). Every change of an existing lead's
consent writes a consent record naming the import.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import marshal
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.core import addresses, journey, signup, storable
from engine.core.addresses import AddressError
from engine.core.definition import Funnel
from engine.core.languages import LanguageError, canonical
from engine.core.own_events import LEAD_IMPORTED, engine_id
from engine.core.signup import OPTED_OUT
from engine.store import imports, ingest
from engine.store import leads as store
from engine.store.database import Connection, DatabaseError, Engine, describe_failure, one_line
from engine.store.tables import CONSENT_STATUSES

BATCH_SIZE = 1000
MAX_REPORTED = 50
EVENT_NAME = LEAD_IMPORTED
KNOWN_COLUMNS = ("email", "tags", "timezone", "consent", "language")


class ImportFileError(Exception):
    """The file as a whole cannot be read (no header, no email column, not UTF-8)."""


# --------------------------------------------------------------------------------------------------
# Parsing and checking rows
# --------------------------------------------------------------------------------------------------


class LeadRow(NamedTuple):
    """A good row, checked. A tuple, so the check pass can keep batches of them cheaply (see `Parsed`)."""

    line: int
    email: str
    attributes: dict[str, str]
    tags: tuple[str, ...]
    timezone: str | None
    consent: str | None
    language: str | None = None  # a BCP 47 tag in canonical case


@dataclass(frozen=True, slots=True)
class BadRow:
    line: int
    problem: str
    stops: bool = False  # the file cannot be read past it


# Line breaks as the CSV reader counts lines (universal newlines, `newline=""`).
_LINE_BREAK = re.compile("\r\n|\r|\n")
# What `surrogateescape` made of bytes that are not UTF-8: one character per byte, U+DC80 to U+DCFF.
_NOT_UTF8 = re.compile("[\udc80-\udcff]+")


def _unstorable_field(fields: Sequence[str]) -> tuple[int, int, str] | None:
    """The first field holding what no database stores (`engine.core.storable`), or bytes that are not UTF-8:
    (its index, the offset of the bad character, the problem). One check of the whole row first: nearly
    every row is clean."""
    if storable.unstorable_at("".join(fields)) is None:
        return None
    for index, value in enumerate(fields):
        found = storable.unstorable_at(value)
        if found is None:
            continue
        bad, problem = found
        escaped = _NOT_UTF8.match(value, bad)
        if escaped is not None:
            shown = " ".join(f"0x{ord(c) - 0xDC00:02x}" for c in escaped.group())
            problem = f"bytes that are not UTF-8 ({shown}); save the file as UTF-8"
        return index, bad, problem
    return None


def _csv_problem(exc: csv.Error) -> str:
    text = str(exc)
    if text.startswith("field larger than field limit"):
        return f"a field longer than {csv.field_size_limit():,} characters"
    return text


@functools.lru_cache(maxsize=1024)
def _tags(cell: str) -> tuple[str, ...]:
    """`a; b;a` -> ('a', 'b'): a file repeats the same few tag cells, so each is split once."""
    return tuple(dict.fromkeys(t.strip() for t in cell.split(";") if t.strip()))


@functools.lru_cache(maxsize=1024)
def _zone_ok(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


@functools.lru_cache(maxsize=1024)
def _language(cell: str) -> str:
    """The cell's tag in canonical case (`FR_ca` -> `fr-CA`); a file repeats the same few, checked once.
    Raises LanguageError with what was found."""
    return canonical(cell)


def column_name(header: str) -> str:
    """`First Name` and `first-name` both become `first_name`, the name templates use."""
    return re.sub(r"[\s-]+", "_", header.strip().lower())


class RowReader:
    """Rows of a CSV file as `LeadRow`s or `BadRow`s, one at a time. `bytes_read` follows the file
    for a progress bar. Line numbers are the file's: the header is line 1, a row whose quoted field
    spans lines is numbered by its first line, and a problem inside such a field by its own line.

    Bytes that are not UTF-8 are kept as they are read (`surrogateescape`) and found in the row that
    holds them: the decoder reads the file ahead in chunks, so its own error would name whichever line
    was being read when it decoded the next chunk, and reading could not go on after it."""

    def __init__(self, binary: IO[bytes], name: str) -> None:
        self.name = name
        self._binary = binary
        self._text = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="surrogateescape", newline="")
        self._csv = csv.reader(self._text)
        try:
            header = next(self._csv)
        except StopIteration:
            raise ImportFileError(f"{name}:1: the file is empty; expected a header with an 'email' column") from None
        except csv.Error as exc:
            raise ImportFileError(f"{name}:1: cannot read the header ({_csv_problem(exc)})") from None
        unstorable = _unstorable_field(header)
        if unstorable is not None:
            index, _, problem = unstorable
            raise ImportFileError(f"{name}:1: column {index + 1} of the header: {problem}")
        self.columns = [column_name(h) for h in header]
        if "email" not in self.columns:
            found = ", ".join(repr(h) for h in header) or "nothing"
            raise ImportFileError(f"{name}:1: expected an 'email' column in the header, found {found}")
        seen: set[str] = set()
        for col in self.columns:
            if col in seen and col:
                raise ImportFileError(f"{name}:1: column {col!r} appears twice in the header")
            seen.add(col)
        self._email = self.columns.index("email")
        self._timezone = self.columns.index("timezone") if "timezone" in self.columns else None
        self._consent = self.columns.index("consent") if "consent" in self.columns else None
        self._language = self.columns.index("language") if "language" in self.columns else None
        self._tags = self.columns.index("tags") if "tags" in self.columns else None
        self._attributes = [(i, c) for i, c in enumerate(self.columns) if c and c not in KNOWN_COLUMNS]

    @property
    def bytes_read(self) -> int:
        return self._binary.tell()

    def __iter__(self) -> Iterator[LeadRow | BadRow]:
        previous_end = self._csv.line_num
        while True:
            try:
                fields = next(self._csv)
            except StopIteration:
                return
            except csv.Error as exc:
                # The parser cannot tell where the next row starts (inside a quoted field, or not?).
                yield BadRow(previous_end + 1, f"cannot parse the row ({_csv_problem(exc)})", stops=True)
                return
            line = previous_end + 1
            previous_end = self._csv.line_num
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue  # blank lines carry nothing
            yield self._row(line, fields)

    def _row(self, line: int, fields: list[str]) -> LeadRow | BadRow:
        if len(fields) != len(self.columns):
            return BadRow(line, f"expected {len(self.columns)} fields as in the header, found {len(fields)}")
        found = _unstorable_field(fields)
        if found is not None:
            index, at, problem = found
            # The line holding the bad character: a quoted field before it may span lines.
            before = "".join(fields[:index]) + fields[index][:at]
            return BadRow(line + len(_LINE_BREAK.findall(before)), f"column {self.columns[index]!r}: {problem}")
        raw_email = fields[self._email].strip()
        if not raw_email:
            return BadRow(line, "email is empty")
        try:
            email = addresses.normalise(raw_email)
        except AddressError as exc:
            return BadRow(line, str(exc))
        timezone = consent = None
        if self._timezone is not None:
            timezone = fields[self._timezone].strip() or None
            if timezone is not None and not _zone_ok(timezone):
                return BadRow(line, f"timezone {timezone!r} is not an IANA time zone such as 'Europe/London'")
        if self._consent is not None:
            consent = fields[self._consent].strip().lower() or None
            if consent is not None and consent not in CONSENT_STATUSES:
                return BadRow(line, f"consent {consent!r} is not one of {', '.join(CONSENT_STATUSES)}")
        language = None
        if self._language is not None and (cell := fields[self._language].strip()):
            try:
                language = _language(cell)
            except LanguageError as exc:
                return BadRow(line, f"language: {exc}")
        tags = _tags(fields[self._tags]) if self._tags is not None else ()
        # An empty cell says nothing: it never blanks an attribute the lead already has.
        attributes = {col: value for i, col in self._attributes if (value := fields[i].strip())}
        return LeadRow(line, email, attributes, tags, timezone, consent, language)


# --------------------------------------------------------------------------------------------------
# Writing batches
# --------------------------------------------------------------------------------------------------


@dataclass
class ImportResult:
    imported: int = 0
    updated: int = 0
    unchanged: int = 0
    repeated: int = 0  # rows whose address came earlier in the same file (merged into that lead)
    skipped: int = 0
    suppressed: int = 0  # on the suppression list: imported, kept unsubscribed
    kept_opted_out: int = 0  # existing leads who had opted out: the file could not re-subscribe them
    kept_pending: int = 0  # existing leads whose signup is unconfirmed: the file could not subscribe them
    events: int = 0
    bad: list[BadRow] = field(default_factory=list)
    bad_total: int = 0

    @property
    def rows(self) -> int:
        return self.imported + self.updated + self.unchanged + self.repeated

    def add_bad(self, row: BadRow) -> None:
        self.bad_total += 1
        if len(self.bad) < MAX_REPORTED:
            self.bad.append(row)


@dataclass(frozen=True, slots=True)
class ImportOptions:
    source: str  # consent_source for leads whose consent this import sets
    funnel: str | None = None
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


def _merge(into: LeadRow, row: LeadRow) -> LeadRow:
    return LeadRow(
        into.line,
        into.email,
        {**into.attributes, **row.attributes},
        tuple(dict.fromkeys((*into.tags, *row.tags))),
        row.timezone or into.timezone,
        row.consent or into.consent,
        row.language or into.language,
    )


def _consent_after(current: str | None, wanted: str | None, suppressed: bool) -> str | None:
    """The status to store (`current` None: a new lead), or None to leave it as it is."""
    if current in OPTED_OUT:
        return None  # only the lead (or a bounce) changes that, never a file from another tool
    if suppressed:
        status = wanted if wanted in OPTED_OUT else "unsubscribed"
        return status if status != current else None
    status = wanted or current or "subscribed"
    if signup.operator_refusal(current, status) is not None:
        return None  # a pending lead is subscribed only by its own confirmation
    return status if status != current else None


def write_batch(conn: Connection, rows: Sequence[LeadRow], options: ImportOptions, result: ImportResult) -> None:
    """Upsert one batch of leads (and their enrollment events) in the caller's transaction."""
    now = options.now
    wanted: dict[str, LeadRow] = {}
    for row in rows:
        if row.email in wanted:
            wanted[row.email] = _merge(wanted[row.email], row)
            result.repeated += 1
        else:
            wanted[row.email] = row
    emails = list(wanted)
    existing = imports.existing_leads(conn, emails)
    suppressed = imports.suppressed_among(conn, emails)

    inserts: list[dict[str, Any]] = []
    kept: list[dict[str, Any]] = []  # leads whose consent stays
    changed: list[dict[str, Any]] = []  # leads whose consent this import sets
    records: list[dict[str, Any]] = []  # a consent record per changed status
    final_consent: dict[str, str] = {}
    for email, row in wanted.items():
        is_suppressed = email in suppressed
        old = existing.get(email)
        if old is None:
            new_consent = _consent_after(None, row.consent, is_suppressed) or "subscribed"
            result.suppressed += is_suppressed
            inserts.append(
                {"email": email, "attributes": row.attributes, "tags": sorted(row.tags), "score": 0,
                 "timezone": row.timezone, "language": row.language, "consent_status": new_consent,
                 "consent_source": options.source, "consent_at": now, "created_at": now, "updated_at": now}
            )  # fmt: skip
            final_consent[email] = new_consent
            continue
        lead_id, old_attributes, old_tags, old_timezone, old_consent, old_language = old
        attributes = {**old_attributes, **row.attributes}
        tags = sorted(set(old_tags) | set(row.tags))
        timezone = row.timezone or old_timezone
        language = row.language or old_language
        consent = _consent_after(old_consent, row.consent, is_suppressed)
        if is_suppressed:
            result.suppressed += 1
        elif old_consent in OPTED_OUT and row.consent not in (None, *OPTED_OUT):
            result.kept_opted_out += 1
        elif old_consent == "pending" and row.consent == "subscribed":
            result.kept_pending += 1
        final_consent[email] = consent or old_consent
        same = attributes == old_attributes and tags == sorted(old_tags)
        if same and timezone == old_timezone and language == old_language and consent is None:
            result.unchanged += 1
            continue
        update = {"lead": lead_id, "new_attributes": attributes, "new_tags": tags, "new_timezone": timezone,
                  "new_language": language, "at": now}  # fmt: skip
        if consent is None:
            kept.append(update)
        else:
            changed.append({**update, "consent": consent, "source": options.source})
            records.append(
                {"lead_id": lead_id, "action": signup.act_name(consent), "source": options.source[:200], "fields": {},
                 "status_before": old_consent, "status_after": consent, "at": now}
            )  # fmt: skip
    imports.write_leads(conn, inserts, kept, changed, records)
    result.imported += len(inserts)
    result.updated += len(kept) + len(changed)
    if options.funnel is not None:
        _record_entries(conn, [e for e in emails if final_consent[e] not in OPTED_OUT], options, result)


def event_id(funnel: str, email: str) -> str:
    return engine_id("import", funnel, store.email_hash(email))


def _record_entries(conn: Connection, emails: list[str], options: ImportOptions, result: ImportResult) -> None:
    """One `lead_imported` event per lead; its id makes a second import of the same file a no-op."""
    if not emails or options.funnel is None:
        return
    ids = ingest.find_leads(conn, emails)
    properties = {"source": "csv", "funnel": options.funnel}
    new = [
        store.NewEvent(event_id(options.funnel, e), ids[e], EVENT_NAME, options.now, properties, "import")
        for e in emails
        if e in ids
    ]
    result.events += ingest.record(conn, new, options.now)[0]


def entry_event(funnel: str, now: datetime) -> journey.Event:
    return journey.Event(engine_id("import", funnel, "check"), EVENT_NAME, now, {"source": "csv", "funnel": funnel})


def funnel_admits_imports(funnel: Funnel, now: datetime) -> bool:
    """Whether the funnel's entry triggers let in a lead on the event this import records for it."""
    return journey.entry_trigger(funnel, journey.Lead("check@example.com"), entry_event(funnel.id, now)) is not None


# --------------------------------------------------------------------------------------------------
# The two passes
# --------------------------------------------------------------------------------------------------


class Parsed:
    """The good rows of a checked file, kept parsed in a temporary file a batch at a time, so the write
    pass does not read and check the CSV again, and memory stays at one batch whatever the file's size.
    Use as a context manager; the file goes when it closes."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close() / the with block

    def __enter__(self) -> Parsed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def add(self, rows: Sequence[LeadRow], bytes_read: int) -> None:
        # marshal: the fastest way to keep plain tuples, dicts and strings; read back by this process only.
        data = marshal.dumps((bytes_read, [tuple(row) for row in rows]))
        self._file.write(len(data).to_bytes(8, "little"))
        self._file.write(data)

    def batches(self) -> Iterator[tuple[list[LeadRow], int]]:
        """Each kept batch, with how far into the CSV file it ended (for a progress bar)."""
        self._file.seek(0)
        while size := self._file.read(8):
            # Whole blobs: marshal.load on a file reads it a few bytes at a time.
            bytes_read, rows = marshal.loads(self._file.read(int.from_bytes(size, "little")))  # noqa: S302 - written above, by this process
            yield [LeadRow._make(row) for row in rows], bytes_read


def check_file(
    path: Path,
    result: ImportResult,
    progress: Callable[[int], None] | None = None,
    keep: Parsed | None = None,
) -> None:
    """Read every row and collect the bad ones; writes nothing to the database. With `keep`, the good
    rows are kept there for `import_parsed`."""
    batch: list[LeadRow] = []
    with path.open("rb") as binary:
        reader = RowReader(binary, str(path))
        for item in reader:
            if isinstance(item, BadRow):
                result.add_bad(item)
            elif keep is not None:
                batch.append(item)
                if len(batch) >= BATCH_SIZE:
                    keep.add(batch, reader.bytes_read)
                    batch.clear()
            if progress is not None:
                progress(reader.bytes_read)
        if keep is not None and batch:
            keep.add(batch, reader.bytes_read)


def import_parsed(
    engine: Engine,
    parsed: Parsed,
    options: ImportOptions,
    result: ImportResult,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Write the rows `check_file` kept, a batch of `BATCH_SIZE` at a time, in one transaction: the whole
    file is imported, or nothing (`ImportWriteError`)."""
    with _one_transaction(engine, options, result) as write:
        for rows, bytes_read in parsed.batches():
            write(rows)
            if progress is not None:
                progress(bytes_read)


def import_file(
    engine: Engine,
    path: Path,
    options: ImportOptions,
    result: ImportResult,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Read the file and write its good rows in one pass, a batch of `BATCH_SIZE` at a time, in one
    transaction; bad rows are counted as skipped (and collected in `result.bad` unless a first pass
    already did). A row the file cannot be read past imports nothing (`ImportFileError`), nor does a
    write the database refuses (`ImportWriteError`)."""
    collect = result.bad_total == 0
    batch: list[LeadRow] = []
    with path.open("rb") as binary, _one_transaction(engine, options, result) as write:
        reader = RowReader(binary, str(path))
        for item in reader:
            if isinstance(item, BadRow):
                if item.stops:
                    raise ImportFileError(
                        f"{path}:{item.line}: {item.problem}; the rest of the file cannot be read: nothing imported"
                    )
                result.skipped += 1
                if collect:
                    result.add_bad(item)
                continue
            batch.append(item)
            if len(batch) >= BATCH_SIZE:
                write(batch)
                batch.clear()
                if progress is not None:
                    progress(reader.bytes_read)
        if batch:
            write(batch)
        if progress is not None:
            progress(reader.bytes_read)


class ImportWriteError(Exception):
    """The database refused a write (or the commit): the transaction is rolled back, nothing is imported.
    The message names the lines of the batch being written and what the database said, without the
    values it quotes."""


@contextlib.contextmanager
def _one_transaction(
    engine: Engine, options: ImportOptions, result: ImportResult
) -> Iterator[Callable[[Sequence[LeadRow]], None]]:
    """One transaction for the whole import, and a function writing one batch in it. On SQLite it holds
    the writer lock until the commit (other writers wait, up to the busy timeout); on PostgreSQL other
    writers wait only for the leads the import has touched."""
    lines: tuple[int, int] | None = None
    try:
        with engine.begin() as conn:

            def write(rows: Sequence[LeadRow]) -> None:
                nonlocal lines
                lines = (rows[0].line, rows[-1].line)
                write_batch(conn, rows, options, result)

            yield write
            lines = None  # what fails from here is the commit
    except DatabaseError as exc:
        said = describe_failure(engine, exc) or one_line(exc)
        where = f"the rows of lines {lines[0]} to {lines[1]}" if lines is not None else "the import at its commit"
        raise ImportWriteError(f"the database refused {where}: {said}") from exc
