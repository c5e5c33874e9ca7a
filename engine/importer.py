"""Bulk import of leads from CSV: parse and check each row, then write leads in batches.

Streaming throughout: rows are read one at a time and written in transactions of `BATCH_SIZE`, so a
file of millions of rows costs the memory of one batch. Each batch is a handful of set-based
statements (one lookup of existing leads, one of suppressions, one multi-row insert, one executemany
update, events), not one round trip per row.

Consent only ever gets stricter through an import: a lead who unsubscribed, bounced, complained or was
erased keeps that status whatever the file says, and an address on the suppression list comes in
unsubscribed. Moving tools must never re-subscribe someone who opted out.
"""

from __future__ import annotations

import csv
import functools
import io
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from email_validator import EmailNotValidError, validate_email
from sqlalchemy.dialects import postgresql, sqlite

from engine import journey, store, tables
from engine.definition import Funnel
from engine.tables import CONSENT_STATUSES

BATCH_SIZE = 1000
MAX_REPORTED = 50
EVENT_NAME = "lead_imported"
# Statuses an import may not undo: the lead said no (or the address does not work).
OPTED_OUT = frozenset({"unsubscribed", "bounced", "complained", "erased"})
KNOWN_COLUMNS = ("email", "tags", "timezone", "consent")


class ImportFileError(Exception):
    """The file as a whole cannot be read (no header, no email column, not UTF-8)."""


# --------------------------------------------------------------------------------------------------
# Parsing and checking rows
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeadRow:
    line: int
    email: str
    attributes: dict[str, str]
    tags: tuple[str, ...]
    timezone: str | None
    consent: str | None


@dataclass(frozen=True, slots=True)
class BadRow:
    line: int
    problem: str


# A plain ASCII dot-atom local part (what nearly every real address is). email-validator accepts all of
# these; what it spends its time on is the domain (IDNA checks), so domains are checked once each and
# only addresses outside this shape go through the full validator.
_PLAIN_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


@functools.lru_cache(maxsize=4096)
def _domain(domain: str) -> str | None:
    """The normalised domain if email-validator accepts addresses there, else None."""
    try:
        return validate_email(f"a@{domain}", check_deliverability=False).domain
    except EmailNotValidError:
        return None


def check_email(value: str) -> str:
    """The address as the store keeps it (validated by email-validator, then `store.normalise_email`);
    raises ValueError naming what is wrong."""
    local, at, domain = value.rpartition("@")
    if at and _PLAIN_LOCAL.fullmatch(local) and len(local) <= 64 and len(value) <= 254:
        normalised = _domain(domain)
        if normalised is not None:
            return store.normalise_email(f"{local}@{normalised}")
    try:
        checked = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"email {value!r} is not a valid address ({exc})") from None
    return store.normalise_email(checked.normalized)


@functools.lru_cache(maxsize=1024)
def _zone_ok(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def column_name(header: str) -> str:
    """`First Name` and `first-name` both become `first_name`, the name templates use."""
    return re.sub(r"[\s-]+", "_", header.strip().lower())


class RowReader:
    """Rows of a CSV file as `LeadRow`s or `BadRow`s, one at a time. `bytes_read` follows the file
    for a progress bar. Line numbers are the file's: the header is line 1, and a row whose quoted
    field spans lines is numbered by its first line."""

    def __init__(self, binary: IO[bytes], name: str) -> None:
        self.name = name
        self._binary = binary
        self._text = io.TextIOWrapper(binary, encoding="utf-8-sig", newline="")
        self._csv = csv.reader(self._text)
        try:
            header = next(self._csv)
        except StopIteration:
            raise ImportFileError(f"{name}:1: the file is empty; expected a header with an 'email' column") from None
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ImportFileError(f"{name}:1: cannot read the header ({exc})") from None
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
        self._special = {c: self.columns.index(c) for c in KNOWN_COLUMNS if c in self.columns}
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
            except UnicodeDecodeError as exc:
                # The decoder cannot resynchronise: report the line and stop reading.
                yield BadRow(previous_end + 1, f"not valid UTF-8 ({exc.reason}); save the file as UTF-8")
                return
            except csv.Error as exc:
                yield BadRow(previous_end + 1, f"cannot parse the row ({exc})")
                return
            line = previous_end + 1
            previous_end = self._csv.line_num
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue  # blank lines carry nothing
            yield self._row(line, fields)

    def _row(self, line: int, fields: list[str]) -> LeadRow | BadRow:
        if len(fields) != len(self.columns):
            return BadRow(line, f"expected {len(self.columns)} fields as in the header, found {len(fields)}")
        raw_email = fields[self._email].strip()
        if not raw_email:
            return BadRow(line, "email is empty")
        try:
            email = check_email(raw_email)
        except ValueError as exc:
            return BadRow(line, str(exc))
        timezone = consent = None
        tags: tuple[str, ...] = ()
        if "timezone" in self._special:
            timezone = fields[self._special["timezone"]].strip() or None
            if timezone is not None and not _zone_ok(timezone):
                return BadRow(line, f"timezone {timezone!r} is not an IANA time zone such as 'Europe/London'")
        if "consent" in self._special:
            consent = fields[self._special["consent"]].strip().lower() or None
            if consent is not None and consent not in CONSENT_STATUSES:
                return BadRow(line, f"consent {consent!r} is not one of {', '.join(CONSENT_STATUSES)}")
        if "tags" in self._special:
            tags = tuple(dict.fromkeys(t.strip() for t in fields[self._special["tags"]].split(";") if t.strip()))
        # An empty cell says nothing: it never blanks an attribute the lead already has.
        attributes = {col: value for i, col in self._attributes if (value := fields[i].strip())}
        return LeadRow(line, email, attributes, tags, timezone, consent)


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
    )


def _consent_after(current: str | None, wanted: str | None, suppressed: bool) -> str | None:
    """The status to store (`current` None: a new lead), or None to leave it as it is."""
    if current in OPTED_OUT:
        return None  # only the lead (or a bounce) changes that, never a file from another tool
    if suppressed:
        status = wanted if wanted in OPTED_OUT else "unsubscribed"
        return status if status != current else None
    status = wanted or current or "subscribed"
    return status if status != current else None


def _insert(conn: sa.Connection, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
    return postgresql.insert(table) if conn.dialect.name == "postgresql" else sqlite.insert(table)


class _Converted(sa.types.TypeDecorator[Any]):
    """A parameter already converted for the dialect: bound as is, with no cast rendered."""

    impl = sa.types.NullType
    cache_ok = True


def _bound(
    conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]], shared: dict[str, Any]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A VALUES/SET clause of untyped parameters, and the rows with their values already converted by
    each column's own type for this dialect. Values the whole batch shares (timestamps) are converted
    once: left to SQLAlchemy, converting every row's parameters costs more than SQLite's insert."""
    names = [n for n in (*rows[0], *shared) if n in table.c]
    processors = {n: table.c[n].type.bind_processor(conn.dialect) for n in names}
    fixed = {k: (p(v) if (p := processors.get(k)) else v) for k, v in shared.items()}
    per_row = [(n, p) for n, p in processors.items() if p is not None and n not in shared]
    out = []
    for row in rows:
        values = {**row, **fixed}
        for name, process in per_row:
            values[name] = process(values[name])
        out.append(values)
    return {n: sa.bindparam(n, type_=_Converted()) for n in names}, out


def write_batch(conn: sa.Connection, rows: Sequence[LeadRow], options: ImportOptions, result: ImportResult) -> None:
    """Upsert one batch of leads (and their enrollment events) in the caller's transaction."""
    leads, now = tables.leads, options.now
    wanted: dict[str, LeadRow] = {}
    for row in rows:
        if row.email in wanted:
            wanted[row.email] = _merge(wanted[row.email], row)
            result.repeated += 1
        else:
            wanted[row.email] = row
    emails = list(wanted)
    existing = {
        r.email: r
        for r in conn.execute(
            sa.select(
                leads.c.id, leads.c.email, leads.c.attributes, leads.c.tags, leads.c.timezone, leads.c.consent_status
            ).where(leads.c.email.in_(emails))
        )
    }
    hashes = {store.email_hash(e): e for e in emails}
    s = tables.suppressions
    suppressed = {
        hashes[h] for h in conn.execute(sa.select(s.c.email_hash).where(s.c.email_hash.in_(list(hashes)))).scalars()
    }

    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    final_consent: dict[str, str] = {}
    for email, row in wanted.items():
        is_suppressed = email in suppressed
        old = existing.get(email)
        if old is None:
            new_consent = _consent_after(None, row.consent, is_suppressed) or "subscribed"
            result.suppressed += is_suppressed
            inserts.append(
                {
                    "email": email,
                    "attributes": row.attributes,
                    "tags": sorted(row.tags),
                    "score": 0,
                    "timezone": row.timezone,
                    "consent_status": new_consent,
                    "consent_source": options.source,
                }
            )
            final_consent[email] = new_consent
            continue
        attributes = {**old.attributes, **row.attributes}
        tags = sorted(set(old.tags) | set(row.tags))
        timezone = row.timezone or old.timezone
        consent = _consent_after(old.consent_status, row.consent, is_suppressed)
        if is_suppressed:
            result.suppressed += 1
        elif old.consent_status in OPTED_OUT and row.consent not in (None, *OPTED_OUT):
            result.kept_opted_out += 1
        final_consent[email] = consent or old.consent_status
        if attributes == old.attributes and tags == sorted(old.tags) and timezone == old.timezone and consent is None:
            result.unchanged += 1
            continue
        updates.append(
            {
                "_id": old.id,
                "attributes": attributes,
                "tags": tags,
                "timezone": timezone,
                "consent_status": consent or old.consent_status,
                "consent_changed": consent is not None,
                "consent_source": options.source,
            }
        )
    if inserts:
        clause, params = _bound(conn, leads, inserts, {"consent_at": now, "created_at": now, "updated_at": now})
        conn.execute(_insert(conn, leads).values(clause).on_conflict_do_nothing(index_elements=["email"]), params)
        result.imported += len(inserts)
    if updates:
        _update(conn, updates, now)
        result.updated += len(updates)
    if options.funnel is not None:
        _record_entries(conn, [e for e in emails if final_consent[e] not in OPTED_OUT], options, result)


def _update(conn: sa.Connection, updates: list[dict[str, Any]], now: datetime) -> None:
    leads = tables.leads
    changed: list[dict[str, Any]] = []
    kept: list[dict[str, Any]] = []
    for u in updates:
        if u.pop("consent_changed"):
            changed.append(u)
        else:
            del u["consent_status"], u["consent_source"]
            kept.append(u)
    where = leads.c.id == sa.bindparam("_id")
    if kept:
        clause, params = _bound(conn, leads, kept, {"updated_at": now})
        conn.execute(sa.update(leads).where(where).values(clause), params)
    if changed:
        clause, params = _bound(conn, leads, changed, {"updated_at": now, "consent_at": now})
        conn.execute(sa.update(leads).where(where).values(clause), params)


def event_id(funnel: str, email: str) -> str:
    return f"import:{funnel}:{store.email_hash(email)}"


def _record_entries(conn: sa.Connection, emails: list[str], options: ImportOptions, result: ImportResult) -> None:
    """One `lead_imported` event per lead; its id makes a second import of the same file a no-op."""
    if not emails or options.funnel is None:
        return
    leads, events = tables.leads, tables.events
    ids = {r.email: r.id for r in conn.execute(sa.select(leads.c.email, leads.c.id).where(leads.c.email.in_(emails)))}
    wanted = {event_id(options.funnel, e): ids[e] for e in emails if e in ids}
    seen = set(conn.execute(sa.select(events.c.event_id).where(events.c.event_id.in_(list(wanted)))).scalars())
    new = [
        {
            "event_id": eid,
            "lead_id": lead_id,
            "name": EVENT_NAME,
            "properties": {"source": "csv", "funnel": options.funnel},
            "source": "import",
        }
        for eid, lead_id in wanted.items()
        if eid not in seen
    ]
    if new:
        clause, params = _bound(conn, events, new, {"occurred_at": options.now, "received_at": options.now})
        conn.execute(_insert(conn, events).values(clause).on_conflict_do_nothing(index_elements=["event_id"]), params)
        result.events += len(new)


def entry_event(funnel: str, now: datetime) -> journey.Event:
    return journey.Event(f"import:{funnel}:check", EVENT_NAME, now, {"source": "csv", "funnel": funnel})


def funnel_admits_imports(funnel: Funnel, now: datetime) -> bool:
    """Whether the funnel's entry triggers let in a lead on the event this import records for it."""
    return journey.entry_trigger(funnel, journey.Lead("check@example.com"), entry_event(funnel.id, now)) is not None


# --------------------------------------------------------------------------------------------------
# The two passes
# --------------------------------------------------------------------------------------------------


def check_file(path: Path, result: ImportResult, progress: Callable[[int], None] | None = None) -> None:
    """Read every row and collect the bad ones; writes nothing."""
    with path.open("rb") as binary:
        reader = RowReader(binary, str(path))
        for item in reader:
            if isinstance(item, BadRow):
                result.add_bad(item)
            if progress is not None:
                progress(reader.bytes_read)


def import_file(
    engine: sa.Engine,
    path: Path,
    options: ImportOptions,
    result: ImportResult,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Write the good rows in transactions of `BATCH_SIZE`; bad rows are counted as skipped (and
    collected in `result.bad` unless a first pass already did)."""
    collect = result.bad_total == 0
    batch: list[LeadRow] = []
    with path.open("rb") as binary:
        reader = RowReader(binary, str(path))
        for item in reader:
            if isinstance(item, BadRow):
                result.skipped += 1
                if collect:
                    result.add_bad(item)
                continue
            batch.append(item)
            if len(batch) >= BATCH_SIZE:
                with engine.begin() as conn:
                    write_batch(conn, batch, options, result)
                batch.clear()
                if progress is not None:
                    progress(reader.bytes_read)
        if batch:
            with engine.begin() as conn:
                write_batch(conn, batch, options, result)
        if progress is not None:
            progress(reader.bytes_read)
