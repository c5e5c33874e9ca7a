"""Reports kept for an operator on the ops dashboard (`/ops/bounces`), over plain HTTP: real reports from
the corpus go through the real processor; the list shows what was kept (unmatched, unclassed) and nothing
that was acted on, newest first, paged, with the count of all in the navigation of every page; a report's
page shows its raw message as escaped text, cut at `RAW_SHOWN` bytes with its full size said, while the
database keeps every byte; a report carrying markup shows it as text; a stranger gets the login page."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import httpx
import sqlalchemy as sa

from engine.core.bounce_outcome import Verdict
from engine.http.dashboard import KEPT_PER_PAGE, RAW_SHOWN
from engine.runtime.bounce_processing import process_report
from engine.settings import BounceSettings
from engine.store import leads as store
from engine.store import tables
from tests.browser.conftest import Dashboard
from tests.browser.test_ops_http import sign_in

CORPUS = Path(__file__).parent.parent / "data" / "bounces"
UNMATCHED = CORPUS / "Mail-DeliveryStatus-BounceParser" / "aol.unknown.eml"  # 5.1.1 for recipient@example.net
UNCLASSED = CORPUS / "flufl.bounce" / "dumbass_01.eml"  # no recipient, no status: nothing says what failed
UNCLASSED_MESSAGE_ID = "<927suu$r5l$1@panix2.panix.com>"  # the original message it returns
ACTED_ON = CORPUS / "Mail-DeliveryStatus-BounceParser" / "cam-unknown.eml"  # 5.0.0 for recipient@example.net
HOSTILE = (
    b'550 <script>alert("kept")</script> <a href="https://evil.example/x">reset your password</a>'
    b" https://evil.example/y"
)


def _sent(ops: Dashboard, address: str, message_id: str | None = None) -> tuple[int, int]:
    """A lead with one message the relay took."""
    now = ops.clock()
    with ops.engine.begin() as conn:
        lead_id = store.upsert_lead(conn, address, now=now)
        outbox_id = conn.execute(
            sa.insert(tables.outbox)
            .values(
                lead_id=lead_id,
                funnel_id="trial",
                step="s",
                template="t",
                stage="s",
                transactional=False,
                status="sent",
                due_at=now,
                attempts=1,
                created_at=now,
                sent_at=now,
                message_id=message_id,
            )
            .returning(tables.outbox.c.id)
        ).scalar_one()
    return lead_id, int(outbox_id)


def _take(ops: Dashboard, raw: bytes, source: str = "pipe", after: int = 0) -> list[str]:
    at = ops.clock() + timedelta(minutes=after)
    verdict, applied = process_report(ops.engine, raw, source, at, BounceSettings())
    assert verdict == Verdict.TAKEN
    return [a.action for a in applied]


def _kept_ids(ops: Dashboard) -> list[int]:
    b = tables.bounce_reports
    with ops.engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(b.c.id)
                .where(sa.or_(b.c.outbox_id.is_(None), b.c.failure_class.is_(None)))
                .order_by(b.c.received_at.desc(), b.c.id.desc())
            ).scalars()
        )


def _rows(html: str) -> dict[int, str]:
    return {int(i): row for i, row in re.findall(r'<tr data-report="(\d+)">(.*?)</tr>', html, re.S)}


def test_kept_reports_are_listed_and_each_shows_its_raw_message(ops: Dashboard) -> None:
    lead_id, _ = _sent(ops, "dana@greenleaf.example", UNCLASSED_MESSAGE_ID)
    assert _take(ops, UNMATCHED.read_bytes(), "lmtp", after=1) == ["kept for an operator"]  # no such lead yet
    _sent(ops, "recipient@example.net")  # the lead ACTED_ON is about
    acted_on = _kept_ids(ops)
    assert _take(ops, UNCLASSED.read_bytes(), "imap", after=2) == ["kept for an operator"]
    assert _take(ops, ACTED_ON.read_bytes(), "pipe", after=3) == ["suppressed"]  # matched and classed: not kept
    unmatched_id, unclassed_id = acted_on[0], _kept_ids(ops)[0]
    client, _ = sign_in(ops)

    listed = client.get("/ops/bounces")
    assert listed.status_code == 200
    rows = _rows(listed.text)
    assert list(rows) == [unclassed_id, unmatched_id]  # newest first; the suppressing report is not there
    assert "2 kept" in listed.text and 'data-kept="2"' in listed.text
    unmatched = rows[unmatched_id]
    for shown in ("lmtp", "dsn", "address_gone", "5.1.1", "@example.net", "550 MAILBOX NOT FOUND", "unmatched"):
        assert shown in unmatched, shown
    assert "recipient@example.net" not in unmatched and "unclassed" not in unmatched  # the domain, no address
    unclassed = rows[unclassed_id]
    for shown in ("imap", "non_standard", "unclassed", f'href="/ops/leads/{lead_id}"', "dana@greenleaf.example"):
        assert shown in unclassed, shown
    assert "unmatched" not in unclassed  # its Message-ID named the lead's message
    assert f'href="/ops/bounces/{unclassed_id}"' in unclassed

    page = client.get(f"/ops/bounces/{unmatched_id}")
    assert page.status_code == 200
    size = UNMATCHED.stat().st_size
    assert f"{size} bytes." in page.text and "are shown" not in page.text
    raw = re.search(r'<pre class="raw" tabindex="0">(.*?)</pre>', page.text, re.S)
    assert raw is not None and "Subject: Returned mail: User unknown" in raw.group(1)
    assert "&lt;MAILER-DAEMON@aol.com&gt;" in raw.group(1)  # its own angle brackets, escaped
    assert "none matched" in page.text and "kept for an operator" in page.text
    detail = client.get(f"/ops/bounces/{unclassed_id}").text
    assert "unclassed" in detail and f'href="/ops/leads/{lead_id}"' in detail and "matched by message-id" in detail

    b = tables.bounce_reports
    with ops.engine.connect() as conn:
        suppressing = conn.execute(sa.select(b.c.id).where(b.c.action == "suppressed")).scalar_one()
    assert client.get(f"/ops/bounces/{suppressing}").status_code == 404  # acted on: nothing kept to show
    assert client.get("/ops/bounces/999999").status_code == 404
    assert client.get("/ops/bounces?page=0").status_code == 422
    for path in ("/ops/", "/ops/outbox", "/ops/leads"):
        assert (
            'href="/ops/bounces">Kept reports <span class="pill count" data-kept="2">2</span>' in client.get(path).text
        )
    assert len(_kept_ids(ops)) == 2  # reading changed nothing


def test_a_report_carrying_markup_shows_it_as_text_and_links_nowhere(ops: Dashboard) -> None:
    raw = UNMATCHED.read_bytes().replace(b"550 MAILBOX NOT FOUND", HOSTILE)
    raw = raw.replace(b"This is a MIME-encapsulated message", b"<script>alert(1)</script><img src=x onerror=alert(2)>")
    raw = raw.replace(b"*** ATTENTION ***", b"\x00\xff\xe2\x80\xaeRLO https://evil.example/z")
    assert raw.count(b"<script>") == 3  # in the text, the DSN's Diagnostic-Code and the returned headers
    _take(ops, raw, "webhook:ses")
    [report_id] = _kept_ids(ops)
    client, _ = sign_in(ops)
    for path in ("/ops/bounces", f"/ops/bounces/{report_id}"):
        page = client.get(path).text
        assert "<script>alert" not in page and "<img" not in page and '<a href="https://evil' not in page, path
        assert "&lt;script&gt;alert(" in page, path
        assert "evil.example" in page and not re.search(r"href=\"[^\"]*evil", page), path
        assert re.findall(r'<script[^>]*src="([^"]+)"', page) == [
            re.search(r'src="(/ops/static/ops\.js[^"]*)"', page).group(1)
        ]  # type: ignore[union-attr]
    detail = client.get(f"/ops/bounces/{report_id}").text
    assert "&lt;img src=x onerror=alert(2)&gt;" in detail
    assert r"\x00\xff\u202eRLO" in detail  # a NUL, a byte that is not UTF-8, a direction override: shown as codes
    assert "webhook:ses" in detail


def test_a_large_report_is_cut_on_its_page_and_kept_whole(ops: Dashboard) -> None:
    filler = b"".join(b"line %06d of a long returned message\n" % i for i in range(4000))
    raw = UNMATCHED.read_bytes().replace(b"*** ATTENTION ***", filler + b"THE END")
    assert len(raw) > RAW_SHOWN * 2
    _take(ops, raw)
    [report_id] = _kept_ids(ops)
    client, _ = sign_in(ops)
    page = client.get(f"/ops/bounces/{report_id}").text
    assert f"{len(raw)} bytes: the first {RAW_SHOWN} are shown" in page
    assert "line 000000" in page and "THE END" not in page
    with ops.engine.connect() as conn:
        kept = conn.execute(sa.select(tables.bounce_reports.c.raw).where(tables.bounce_reports.c.id == report_id))
        assert kept.scalar_one() == raw  # every byte, in the database


def test_the_list_is_paged_newest_first_with_the_count_of_all(ops: Dashboard) -> None:
    base = UNMATCHED.read_bytes()
    count = KEPT_PER_PAGE + 3
    for i in range(count):
        _take(ops, base.replace(b"550 MAILBOX NOT FOUND", b"550 report %d" % i), after=i)
    ids = _kept_ids(ops)
    client, _ = sign_in(ops)
    first = client.get("/ops/bounces").text
    assert f"{count} kept" in first and f"1&ndash;{KEPT_PER_PAGE} shown" in first and "page 1 of 2" in first
    assert list(_rows(first)) == ids[:KEPT_PER_PAGE] and f"550 report {count - 1}" in first
    assert 'href="/ops/bounces?page=2" rel="next"' in first
    second = client.get("/ops/bounces?page=2").text
    assert list(_rows(second)) == ids[KEPT_PER_PAGE:] and "550 report 0<" in second
    assert 'href="/ops/bounces?page=1" rel="prev"' in second and 'rel="next"' not in second
    beyond = client.get("/ops/bounces?page=9").text
    assert _rows(beyond) == {} and "No report on this page" in beyond


def test_a_stranger_gets_the_login_page(ops: Dashboard) -> None:
    _take(ops, UNMATCHED.read_bytes())
    [report_id] = _kept_ids(ops)
    with httpx.Client(base_url=ops.url, timeout=10) as client:
        for path in ("/ops/bounces", f"/ops/bounces/{report_id}", "/ops/bounces?page=2"):
            answer = client.get(path)
            assert answer.status_code == 303 and answer.headers["location"].startswith("/ops/login?next="), path
            assert "MAILBOX" not in answer.text
        assert "data-kept" not in client.get("/ops/login").text
