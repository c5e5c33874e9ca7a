"""Fuzzing: malformed funnel files and malformed HTTP input from hypothesis, through the real entry points.

Funnel files go through `load_funnels`, what `funnel validate` runs, and a handful of them through the
`funnel validate` command itself: each loads, or fails with errors that name the file and a line and
column within it and say what is wrong, never an exception, never a hang (each example has a time
limit), never the memory an alias bomb asks for. A funnel that loads is run for a few virtual leads.

HTTP input (event batches, lead updates, form posts) goes over a real socket to the app under uvicorn,
on SQLite and on PostgreSQL: never a 5xx, a refused request changes nothing, an accepted batch stores
each new event id exactly once and creates leads only for new events, a replay changes nothing
(invariants 7 and 12).
"""

from __future__ import annotations

import json
import re
import resource
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.authoring.simulation import simulate
from engine.authoring.validation import FunnelError, load_funnels
from engine.core.addresses import normalise
from engine.http.api import create_app
from engine.settings import Settings
from engine.store import apikeys, tables
from engine.store.database import create_engine_for
from tests.faults.conftest import size
from tests.faults.fuzz_inputs import (
    Body,
    FunnelFile,
    Kind,
    event_bodies,
    form_posts,
    funnel_files,
    lead_puts,
)
from tests.faults.tally import Tally
from tests.http.conftest import NOW, Clock, Served, start_server
from tests.smtp_server import _free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = (ROOT / "funnels" / "lead-magnet.yaml").read_bytes()
SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]
# Loading a funnel file takes milliseconds (PyYAML needs up to ~2 s for a line of a thousand `[`); ten
# seconds mean something walks far more than the file holds.
EXAMPLE_LIMIT_S = 10.0
MEMORY_GROWTH_LIMIT_MB = 300

Report = Callable[[Tally], None]


class Hang(Exception):
    pass


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the block after `seconds` (the tests run in the main thread, where signals arrive)."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


# --------------------------------------------------------------------------------------------------
# Funnel files
# --------------------------------------------------------------------------------------------------

# The line breaks YAML positions count (PyYAML's), so that "a line within the file" means the same thing.
_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")
# Words of Python or pydantic that mean an exception's text reached the marketer.
_INTERNALS = ("Traceback", " object at 0x", "NoneType", "function-after", "function-before", "<class", "pydantic")


def example_with(old: bytes, new: bytes) -> bytes:
    """The example funnel with one change; it must still hold what the change replaces."""
    assert old in EXAMPLE, f"the example funnel no longer holds {old!r}"
    return EXAMPLE.replace(old, new, 1)


def lines_of(content: bytes) -> list[str]:
    return _LINE_BREAK.split(content.decode("utf-8", "replace"))


def check_error(error: FunnelError, path: Path, lines: list[str]) -> None:
    """An error a marketer can act on: the file, a line and column inside it, what was expected."""
    text = str(error)
    assert error.path == path, text
    assert text.startswith(f"{path}:{error.line}:{error.column}: "), text
    assert 1 <= error.line <= len(lines), f"line {error.line} of a file of {len(lines)} lines: {text}"
    assert 1 <= error.column <= len(lines[error.line - 1]) + 1, f"column past the end of line {error.line}: {text}"
    message = error.message
    assert "expected" in message or message.startswith("invalid YAML: "), text
    assert not any(word in message for word in _INTERNALS), text
    assert len(message) <= 1000, f"a message of {len(message):,} characters: {message[:300]}..."


_KINDS = (
    "invalid YAML", "not UTF-8", "unknown key", "missing key", "duplicate key", "unknown stage", "unknown step",
    "unreachable", "email template", "loop without a wait",
)  # fmt: skip


def kind_of(message: str) -> str:
    """A name for the kind of error, for the summary."""
    for phrase in _KINDS:
        if phrase in message:
            return phrase
    found = re.search(r"expected ([^,(':]{1,30})", message)
    return f"expected {found.group(1).strip()}" if found else message[:30]


@dataclass
class FileRun:
    inputs: int = 0
    loaded: int = 0
    rejected: int = 0
    slowest: tuple[float, str] = (0.0, "")
    kinds: Counter[str] = field(default_factory=Counter)
    kept: dict[str, bytes] = field(default_factory=dict)  # a few broken files for the command line, by kind

    def keep(self, file: FunnelFile, errors: list[FunnelError]) -> None:
        kind = f"{file.how.split(' ')[0]}|{kind_of(errors[0].message)}"
        if kind not in self.kept and len(self.kept) < 8:
            self.kept[kind] = file.content


def test_funnel_files_load_or_say_where_they_are_wrong(tmp_path: Path, fault_report: Report) -> None:
    work = tmp_path / "funnels"
    work.mkdir()
    no_templates = tmp_path / "emails"  # there, but empty: every `send` is an error located in the funnel file
    no_templates.mkdir()
    run = FileRun()
    memory_before = peak_memory_mb()

    @settings(max_examples=size(80, 5000), deadline=None, suppress_health_check=SLOW)
    # A quarter of the files meet an empty templates folder: each `send` is then an error in the funnel file.
    @given(file=funnel_files(), templates=st.sampled_from((False, False, False, True)))
    @example(FunnelFile(b"a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n" * 1, "laughs"), False)
    @example(
        FunnelFile(
            b"a: &a [x,x,x,x,x,x,x,x,x]\n"
            + b"".join(
                f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 9)}]\n".encode() for i in range(7)
            ),
            "billion laughs: 9 ** 8 values in 8 lines (it took PyYAML's node walk seconds, then minutes)",
        ),
        False,
    )
    @example(FunnelFile(b"stages: " + b"[" * 5000 + b"]" * 5000, "deep nesting (a RecursionError)"), False)
    @example(FunnelFile(b"a: &a [*a]\n", "an alias inside its own anchor (a RecursionError)"), False)
    @example(FunnelFile(b"id: x\nallowed_lateness: " + b"9" * 5000 + b"\n", "more digits than int() reads"), False)
    @example(FunnelFile(b"id: 2026-13-45\nname: !!int abc\nx: !!timestamp 99999-01-01\n", "unbuildable"), False)
    @example(FunnelFile(b"id: x\x00\n", "a NUL character"), False)
    @example(FunnelFile(b"id: x\n\xff\xfename: y\n", "not UTF-8 on line 2"), False)
    @example(FunnelFile("".join(f"k{i}: {i}\n" for i in range(5000)).encode(), "5,000 unknown keys"), False)
    @example(
        FunnelFile(
            example_with(b"wait: 28d", b"wait: 99999999999999999999w"),
            "a wait longer than a date can hold (an OverflowError)",
        ),
        False,
    )
    @example(
        FunnelFile(
            example_with(b"wait: 28d", b"wait: 999999999d"),
            "a wait that loaded, then overflowed the journey's date arithmetic",
        ),
        False,
    )
    @example(
        FunnelFile(
            example_with(b"id: deliver-report", b"id: " + b"x" * 70_000),
            "an id of 70,000 letters, repeated whole in its error as the step's name",
        ),
        False,
    )
    def check(file: FunnelFile, templates: bool) -> None:
        path = work / "funnel.yaml"
        path.write_bytes(file.content)
        started = time.perf_counter()
        with time_limit(EXAMPLE_LIMIT_S):
            result = load_funnels([path], emails_dir=no_templates if templates else None)
            if result.ok:
                [funnel] = result.funnels
                simulate(funnel, leads=3, days=45)
        elapsed = time.perf_counter() - started
        run.inputs += 1
        run.slowest = max(run.slowest, (elapsed, file.how[:80]))
        if result.ok:
            run.loaded += 1
            return
        run.rejected += 1
        lines = lines_of(file.content)
        for error in result.errors:
            check_error(error, path, lines)
            run.kinds[kind_of(error.message)] += 1
        run.keep(file, result.errors)

    check()
    memory_growth = peak_memory_mb() - memory_before
    assert memory_growth < MEMORY_GROWTH_LIMIT_MB, f"peak memory grew by {memory_growth:.0f} MB"

    # The command itself on a handful of the broken files at once: exactly what the loader said.
    files = []
    for n, content in enumerate(run.kept.values()):
        files.append(tmp_path / f"broken-{n}.yaml")
        files[-1].write_bytes(content)
    expected = [str(e) for e in load_funnels(files, emails_dir=no_templates).errors]
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", "validate", *map(str, files), "--emails", str(no_templates)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    cli_s = time.perf_counter() - started
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    printed = done.stderr.splitlines()
    assert printed == [*expected, f"{len(expected)} error(s) in {len(files)} file(s)"]
    assert all(re.match(r"^\S+\.yaml:\d+:\d+: \S", line) for line in printed[:-1])
    assert {line.split(":")[0] for line in printed[:-1]} == {str(f) for f in files}

    tally = Tally(scenario="fuzz: funnel files", faults=run.rejected)
    tally.notes.append(
        f"{run.inputs} inputs ({run.rejected} rejected with file:line:column errors, {run.loaded} loaded and"
        f" simulated), 0 crashes, 0 hangs; slowest {run.slowest[0]:.2f} s ({run.slowest[1]});"
        f" peak memory +{max(memory_growth, 0):.0f} MB"
    )
    tally.notes.append("most frequent errors: " + ", ".join(f"{k} ({n})" for k, n in run.kinds.most_common(6)))
    tally.notes.append(
        f"funnel validate on {len(files)} broken files: exit 1, {len(expected)} file:line:column lines as loaded,"
        f" no traceback ({cli_s:.1f} s)"
    )
    fault_report(tally)


# A funnel holding these loaded, then failed later: the journey's date arithmetic overflowed, or the
# database refused the lead's row (PostgreSQL's 32-bit score, JSON without infinities).
@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        (b"wait: 28d", b"wait: 999999999d", "expected a duration of at most 100 years"),
        (b"score: 10}", b"score: 3000000000}", "expected a score between"),
        (b"score: 10}", b"score: 1.0e999}", "expected a finite number"),
        (b"score: 10}", b"score: 10, set: {x: 1.0e999}}", "update.set.x"),
        (b"gte: 50}", b"gte: 1.0e999}", "expected a finite number"),
    ],
    ids=["wait", "score", "infinite-score", "infinite-attribute", "infinite-bound"],
)
def test_a_value_the_engine_cannot_use_is_refused_where_it_is_written(
    tmp_path: Path, old: bytes, new: bytes, words: str
) -> None:
    path = tmp_path / "funnel.yaml"
    path.write_bytes(example_with(old, new))
    result = load_funnels([path], emails_dir=None)
    line = EXAMPLE[: EXAMPLE.index(old)].count(b"\n") + 1
    assert [(e.line, words in e.message) for e in result.errors] == [(line, True)], result.errors


# --------------------------------------------------------------------------------------------------
# The API over a socket
# --------------------------------------------------------------------------------------------------

FORM = "application/x-www-form-urlencoded"
FORMS = {"report": {"fields": ["company", "employees"], "consent_version": "v1"}}


@pytest.fixture
def api(db_url: str, tmp_path: Path) -> Iterator[Served]:
    """The app under uvicorn on loopback over a migrated database of each backend, with an API key and a form."""
    engine = create_engine_for(db_url)
    port = _free_port("127.0.0.1")
    options: dict[str, Any] = {"forms": FORMS}
    app_settings = Settings(data_dir=tmp_path, base_url=f"http://127.0.0.1:{port}", **options)
    with engine.begin() as conn:
        key = apikeys.create(conn, "fuzz", NOW)
    server, thread = start_server(create_app(app_settings, engine, clock=Clock()), port)
    try:
        yield Served(f"http://127.0.0.1:{port}", engine, app_settings, key)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.dispose()


def backend(api: Served) -> str:
    return api.engine.dialect.name


def counts(api: Served) -> tuple[int, int, int]:
    """(events, leads, consent records)."""
    with api.engine.connect() as conn:
        events, leads, consents = (
            int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
            for t in (tables.events, tables.leads, tables.consent_records)
        )
    return events, leads, consents


def stored(api: Served, ids: list[str]) -> dict[str, tuple[int, str, str]]:
    """Event id -> (rows with that id, event name, the lead's address), for the given ids."""
    e, leads = tables.events, tables.leads
    found: dict[str, tuple[int, str, str]] = {}
    with api.engine.connect() as conn:
        for start in range(0, len(ids), 500):
            rows = conn.execute(
                sa.select(e.c.event_id, e.c.name, leads.c.email)
                .join(leads, leads.c.id == e.c.lead_id)
                .where(e.c.event_id.in_(ids[start : start + 500]))
            )
            for event_id, name, email in rows:
                n = found[event_id][0] + 1 if event_id in found else 1
                found[event_id] = (n, name, email)
    return found


def storable(text: str) -> bool:
    """Text a database can be asked about: no NUL, no lone surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def existing_leads(api: Served, addresses: set[str]) -> set[str]:
    with api.engine.connect() as conn:
        found = conn.execute(sa.select(tables.leads.c.email).where(tables.leads.c.email.in_(sorted(addresses))))
        return set(found.scalars())


def address_of(item: dict[str, Any]) -> str | None:
    """The address the API keeps for an item's email (its own normalisation), if it is one."""
    try:
        return normalise(str(item.get("email")))
    except ValueError:
        return None


def json_items(body: Body) -> list[dict[str, Any]] | None:
    """The events a body holds, when it is JSON events with text ids (what could be stored)."""
    try:
        items = body.items
    except (ValueError, RecursionError):  # not JSON, or deeper than Python's parser goes (the server's too)
        return None
    if all(isinstance(i, dict) and isinstance(i.get("id"), str) for i in items):
        return items
    return None


JSON = "application/json"
EVENT = {"id": "example-1", "type": "signed_up", "email": "ann@example.com"}


def json_body(kind: Kind, value: Any) -> Body:
    return Body(kind, json.dumps(value).encode(), JSON, f"example: {json.dumps(value)[:80]}")


@dataclass
class Ledger:
    """What the API acknowledged, to compare with what the database holds."""

    requests: int = 0
    refused: int = 0
    malformed: int = 0
    replays: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    by_input: Counter[tuple[str, int]] = field(default_factory=Counter)  # (kind of body, status)
    valid_ids: set[str] = field(default_factory=set)  # ids of valid events, acknowledged
    names: dict[str, str] = field(default_factory=dict)  # every stored id -> the event name first accepted


def post_events(api: Served, client: httpx.Client, body: Body, ledger: Ledger) -> httpx.Response:
    items = json_items(body)
    # Ids a database can be asked about (what has a NUL or a lone surrogate cannot be stored either).
    ids = [i for i in dict.fromkeys(i["id"] for i in items or []) if storable(i)]
    before, already = counts(api), set(stored(api, ids))
    addresses = {a for a in map(address_of, items or []) if a is not None}
    known_addresses = existing_leads(api, addresses)
    headers = {"Content-Type": body.content_type} if body.content_type is not None else {}
    response = client.post("/v1/events", content=body.content, headers=headers)
    ledger.requests += 1
    ledger.statuses[response.status_code] += 1
    ledger.by_input[(body.how.split(":")[0], response.status_code)] += 1
    where = f"{body.how} ({backend(api)}): {response.status_code} {response.text[:300]}"
    assert response.status_code < 500, where
    if body.kind == "valid":
        assert response.status_code == 200, where
    elif body.kind == "invalid":
        assert 400 <= response.status_code < 500, where
    if response.status_code != 200:
        ledger.refused += 1
        assert counts(api) == before, f"a refused request changed the database: {where}"
        return response
    assert items is not None, where
    assert len(ids) == len({i["id"] for i in items}), f"accepted ids no database can hold: {where}"
    new = [i for i in ids if i not in already]
    assert response.json() == {"accepted": len(new), "duplicates": len(items) - len(new)}, where
    after = counts(api)
    assert after[0] - before[0] == len(new), where
    first = {}
    for item in items:
        first.setdefault(item["id"], item)
    # A lead for each new address among the new events; a duplicate changes nothing, whatever it names.
    new_addresses = {address_of(first[i]) for i in new} - known_addresses
    assert after[1] - before[1] == len(new_addresses), (
        f"{after[1] - before[1]} new leads, expected {len(new_addresses)}: {where}"
    )
    rows = stored(api, ids)
    for event_id in ids:
        count, name, email = rows[event_id]
        assert count == 1, f"event {event_id!r} stored {count} times: {where}"
        if event_id in new:
            ledger.names[event_id] = first[event_id]["type"]
            assert email == normalise(first[event_id]["email"]), where
        assert name == ledger.names[event_id], f"event {event_id!r} changed by a later request: {where}"
    if body.kind == "valid":
        ledger.valid_ids.update(ids)
    return response


def event_tally(api: Served, ledger: Ledger, scenario: str) -> Tally:
    with api.engine.connect() as conn:
        e = tables.events
        twice = conn.execute(
            sa.select(e.c.event_id, sa.func.count()).group_by(e.c.event_id).having(sa.func.count() > 1)
        ).all()
        leads = conn.execute(sa.select(sa.func.count()).select_from(tables.leads)).scalar_one()
        orphans = conn.execute(
            sa.select(sa.func.count()).select_from(tables.leads).where(~tables.leads.c.id.in_(sa.select(e.c.lead_id)))
        ).scalar_one()
    assert orphans == 0, f"{orphans} lead(s) without an event: created by a refused or duplicate event"
    found = stored(api, sorted(ledger.valid_ids))
    return Tally(
        scenario=scenario,
        faults=ledger.malformed,
        leads=leads,
        expected=len(ledger.valid_ids),
        delivered=sum(1 for i in ledger.valid_ids if i in found),
        duplicated=sum(n - 1 for _, n in twice),
        lost=sum(1 for i in ledger.valid_ids if i not in found),
    )


def test_event_api_refuses_bad_bodies_whole_and_stores_each_event_once(api: Served, fault_report: Report) -> None:
    ledger = Ledger()

    with api.client() as client:

        @settings(max_examples=size(70, 2000), deadline=None, suppress_health_check=SLOW)
        @given(body=event_bodies(), replay=st.booleans())
        # Each of these once failed. A repeated id naming another address created a lead for nothing:
        @example(body=json_body("valid", [EVENT, dict(EVENT, type="b", email="bob@example.org")]), replay=True)
        # Answered 500 on PostgreSQL (NUL in text and JSON; NaN and Infinity in JSON):
        @example(body=json_body("unknown", dict(EVENT, id="nul\x00id")), replay=False)
        @example(body=json_body("unknown", dict(EVENT, properties={"n": float("nan")})), replay=False)
        # Dropped the connection: the 422 answer repeated a value its own encoder refuses.
        @example(body=json_body("invalid", dict(EVENT, id="", properties={"n": float("inf")})), replay=False)
        @example(body=Body("invalid", b'{"id": "\xed\xa0\x80", "type": "a"}', JSON, "a lone surrogate"), replay=False)
        # Answered 500 on SQLite: no UTC date before year 1.
        @example(body=json_body("invalid", dict(EVENT, occurred_at="0001-01-01T00:00:00+05:00")), replay=False)
        def check(body: Body, replay: bool) -> None:
            if body.kind != "valid":
                ledger.malformed += 1
            first = post_events(api, client, body, ledger)
            if replay and first.status_code == 200:
                before = counts(api)
                again = post_events(api, client, body, ledger)
                ledger.replays += 1
                assert again.json()["accepted"] == 0 and counts(api) == before, body.how

        started = time.perf_counter()
        check()
        elapsed = time.perf_counter() - started

    tally = event_tally(api, ledger, f"fuzz: POST /v1/events ({backend(api)})")
    statuses = ", ".join(f"{n} x {code}" for code, n in sorted(ledger.statuses.items()))
    tally.notes.append(
        f"{ledger.requests} requests ({ledger.malformed} malformed, {ledger.replays} replays) in {elapsed:.1f} s:"
        f" {statuses}; 0 crashes, 0 5xx, {ledger.refused} refused with nothing changed"
    )
    shapes: dict[str, list[str]] = {}
    for (shape, status), n in sorted(ledger.by_input.items()):
        shapes.setdefault(shape, []).append(f"{n} x {status}")
    tally.notes.append("by input: " + "; ".join(f"{shape} {', '.join(s)}" for shape, s in shapes.items()))
    fault_report(tally)
    assert tally.duplicated == 0 and tally.lost == 0


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values. PostgreSQL's jsonb keeps numbers as decimals: 4.648358693843331e+16 comes
    back as the integer 46483586938433310, the same float but not the same Python number."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    return type(a) is type(b) and a == b


def lead_rows(api: Served) -> list[tuple[Any, ...]]:
    lead = tables.leads.c
    with api.engine.connect() as conn:
        rows = conn.execute(
            sa.select(lead.id, lead.email, lead.attributes, lead.tags, lead.timezone, lead.consent_status).order_by(
                lead.id
            )
        )
        return [tuple(r) for r in rows]


def test_lead_api_and_form_posts_never_fail_and_a_refusal_changes_nothing(api: Served, fault_report: Report) -> None:
    statuses: Counter[str] = Counter()
    sent = Counter[str]()

    with api.client() as client, httpx.Client(base_url=api.url, timeout=10) as browser:

        @settings(max_examples=size(40, 1000), deadline=None, suppress_health_check=SLOW)
        @given(put=lead_puts(), replay=st.booleans())
        @example(put=("ann@example.com", json_body("unknown", {"attributes": {"a": "\x00"}})), replay=False)
        @example(put=("ann@example.com", json_body("unknown", {"tags": ["\x00"], "x": float("nan")})), replay=False)
        def check_put(put: tuple[str, Body], replay: bool) -> None:
            address, body = put
            sent["put"] += 1
            before = lead_rows(api)
            url = f"/v1/leads/{quote(address, safe='@+')}"
            response = client.put(url, content=body.content, headers={"Content-Type": JSON})
            statuses[f"PUT {response.status_code}"] += 1
            where = f"PUT {address!r} {body.how} ({backend(api)}): {response.status_code} {response.text[:300]}"
            assert response.status_code < 500, where
            if body.kind == "invalid":
                assert 400 <= response.status_code < 500, where
            if response.status_code != 200:
                assert lead_rows(api) == before, f"a refused request changed the leads: {where}"
                return
            given_body = json.loads(body.content)
            row = next(r for r in lead_rows(api) if r[1] == response.json()["email"])
            assert all(same_json(row[2].get(k), v) for k, v in given_body.get("attributes", {}).items()), where
            assert set(given_body.get("tags", [])) <= set(row[3]), where
            if replay:
                after = lead_rows(api)
                again = client.put(url, content=body.content, headers={"Content-Type": JSON})
                assert again.status_code == 200 and lead_rows(api) == after, f"a replay changed the lead: {where}"

        @settings(max_examples=size(40, 1000), deadline=None, suppress_health_check=SLOW)
        @given(body=form_posts(), form=st.sampled_from(("report", "report", "report", "no-such-form")))
        @example(body=Body("unknown", b"email=ann%40example.com&consent=yes&company=a%00b", FORM, "NUL"), form="report")
        def check_form(body: Body, form: str) -> None:
            sent["form"] += 1
            before = counts(api)
            headers = {"Content-Type": body.content_type} if body.content_type is not None else {}
            response = browser.post(f"/forms/{form}", content=body.content, headers=headers)
            statuses[f"form {response.status_code}"] += 1
            where = f"form {form} {body.how} ({backend(api)}): {response.status_code} {response.text[:300]}"
            assert response.status_code < 500, where
            if body.kind == "valid" and form == "report":
                assert response.status_code == 303, where
            after = counts(api)
            if response.status_code != 303:
                assert after == before, f"a refused post changed the database: {where}"
                return
            events, leads, consents = (a - b for a, b in zip(after, before, strict=True))
            assert events in (0, 1) and leads in (0, 1) and consents in (0, 1), where
            if body.kind == "valid" and leads == 1:  # a new address on a single opt-in form: in at once
                assert consents == 1 and events == 1, f"a signup without its consent record or event: {where}"
            elif leads == 0:  # an address with a lead: at most a request for its owner to confirm
                assert events == 0, f"an unconfirmed post entered an existing lead in a funnel: {where}"

        started = time.perf_counter()
        check_put()
        check_form()
        elapsed = time.perf_counter() - started

    # Every input here is fuzzed: faults counts them all (the valid signups among them are a few).
    tally = Tally(
        scenario=f"fuzz: PUT /v1/leads, POST /forms ({backend(api)})", faults=sent.total(), leads=len(lead_rows(api))
    )
    shown = ", ".join(f"{n} x {s}" for s, n in sorted(statuses.items()))
    tally.notes.append(f"{sent['put']} lead puts, {sent['form']} form posts in {elapsed:.1f} s: {shown}; 0 5xx")
    fault_report(tally)
