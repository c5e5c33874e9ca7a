"""Properties of `read_report` over random and mutated reports: it never raises, and it never names an
address that is not in the message as one to suppress (gone, or complaining)."""

from __future__ import annotations

import email
from email import policy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.core.bounce_reports import Report, read_report
from engine.core.failure_classes import FailureClass

LOCALS = st.from_regex(r"[a-z][a-z0-9._-]{0,10}[a-z0-9]", fullmatch=True)
DOMAINS = st.sampled_from(["example.org", "example.net", "mail.example.com", "aol.com", "isp.example"])
ADDRESSES = st.builds(lambda local, domain: f"{local}@{domain}", LOCALS, DOMAINS)
STATUSES = st.one_of(
    st.from_regex(r"[245]\.[0-9]{1,2}\.[0-9]{1,2}", fullmatch=True),
    st.sampled_from(["5.1.1", "5.0.0", "5.7.1", "4.2.2", "", "garbage", "5.1"]),
)
ACTIONS = st.sampled_from(["failed", "delayed", "delivered", "relayed", "expanded", "", "Failed (comment)", "error"])
WORDS = st.sampled_from(
    [
        "550 user unknown",
        "No such user here",
        "mailbox full",
        "blocked using a blocklist",
        "Host not found",
        "550 5.1.1",
        "(#5.1.1)",
        "try again later",
        "",
        "Requested action not taken: mailbox unavailable",
    ]
)
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def dsn(recipients: list[tuple[str, str, str, str]], notice: str, returned_to: str) -> str:
    blocks = "\n".join(
        f"Final-Recipient: rfc822; {address}\nAction: {action}\nStatus: {status}\nDiagnostic-Code: smtp; {words}\n"
        for address, status, action, words in recipients
    )
    return f"""\
From: MAILER-DAEMON@mx.example.org
To: bounces+tok@bounce.example.com
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="XX"

--XX
Content-Type: text/plain

{notice}

--XX
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.org

{blocks}
--XX
Content-Type: message/rfc822

From: news@example.com
To: {returned_to}
Message-ID: <id@example.com>

hello
--XX--
"""


def plain(address: str, words: str) -> str:
    return f"""\
From: Mail Delivery System <Mailer-Daemon@mx.example.org>
To: bounces@bounce.example.com
Subject: Mail delivery failed
X-Failed-Recipients: {address}

This message was created automatically by mail delivery software.
The following address(es) failed:

  {address}
    {words}

------ This is a copy of the message, including all the headers. ------
To: {address}
"""


def aol_screen_name(name: str, words: str) -> str:
    # AOL's reports name a screen name; the detector completes it to name@aol.com, an address the
    # message does not contain.
    return f"""\
From: Mail Delivery Subsystem <MAILER-DAEMON@aol.com>
To: bounces@bounce.example.com
Subject: Returned mail: {words}
Content-Type: text/plain

Your mail to the following recipients could not be delivered because {words}:

\t{name}
"""


def arf(address: str, feedback_type: str) -> str:
    return f"""\
From: abuse@isp.example
To: fbl@example.com
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="P"

--P
Content-Type: text/plain

An abuse report.
--P
Content-Type: message/feedback-report

Feedback-Type: {feedback_type}
Original-Rcpt-To: {address}

--P
Content-Type: message/rfc822

To: {address}
Message-ID: <x@example.com>

hi
--P--
"""


TEMPLATES = st.one_of(
    st.builds(
        dsn,
        st.lists(st.tuples(ADDRESSES, STATUSES, ACTIONS, WORDS), min_size=0, max_size=4),
        WORDS,
        ADDRESSES,
    ),
    st.builds(plain, ADDRESSES, WORDS),
    st.builds(aol_screen_name, LOCALS, WORDS),
    st.builds(arf, ADDRESSES, st.sampled_from(["abuse", "opt-out", "not-spam", "", "virus"])),
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A report, its line ends chosen, then damaged a few times: slices cut, repeated or replaced by
    random bytes, a boundary or a header broken, a part base64-encoded."""
    text = draw(TEMPLATES)
    raw = text.replace("\n", draw(st.sampled_from(["\n", "\r\n"]))).encode()
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(raw)))
        end = draw(st.integers(at, min(len(raw), at + 40)))
        raw = draw(
            st.sampled_from(
                [
                    raw[:at] + raw[end:],  # cut
                    raw[:end] + raw[at:],  # repeat
                    raw[:at] + draw(st.binary(max_size=20)) + raw[end:],  # replace with noise
                    raw[:at],  # truncate
                    raw.replace(b"boundary=", b"boundary", 1),
                    raw.replace(b"Content-Type: text/plain", b"Content-Type: text/plain; charset=bogus-8", 1),
                    raw.replace(b": ", b":\r\n ", 1),  # a folded header
                    raw[:at] + b"\xff\xfe=?utf-8?b?" + raw[at:],
                ]
            )
        )
    return raw


def named_in(raw: bytes) -> str:
    """Everything the message says, as written and as decoded, lower-cased."""
    texts = [raw.decode("latin-1")]
    try:
        for part in email.message_from_bytes(raw, policy=policy.compat32).walk():
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                texts.append(payload.decode("latin-1"))
    except Exception:  # the oracle's own parse may fail where read_report's copes: raw bytes remain
        pass
    return "\n".join(texts).lower()


def suppressed_unnamed(report: Report, raw: bytes) -> list[str]:
    said = named_in(raw)
    return [r.address for r in report.recipients if r.failure_class.suppresses and r.address not in said]


@SETTINGS
@given(st.binary(max_size=2000))
def test_random_bytes_never_raise(raw: bytes) -> None:
    report = read_report(raw)
    assert suppressed_unnamed(report, raw) == []


@SETTINGS
@given(mutated())
def test_mutated_reports_never_raise_and_never_suppress_an_address_they_do_not_name(raw: bytes) -> None:
    report = read_report(raw)
    assert suppressed_unnamed(report, raw) == []
    assert report.failure_class in FailureClass


@SETTINGS
@given(LOCALS, WORDS)
def test_a_screen_name_completed_by_the_detector_is_never_suppressed(name: str, words: str) -> None:
    raw = aol_screen_name(name, words).encode()
    report = read_report(raw)
    assert all(not r.failure_class.suppresses for r in report.recipients if f"{name}@aol.com" not in raw.decode())


@SETTINGS
@given(st.lists(st.tuples(ADDRESSES, STATUSES, ACTIONS, WORDS), min_size=1, max_size=4), ADDRESSES)
def test_a_dsn_names_only_the_recipients_of_its_blocks(blocks: list[tuple[str, str, str, str]], to: str) -> None:
    report = read_report(dsn(blocks, "", to).encode())
    assert {r.address for r in report.recipients} <= {address for address, *_ in blocks}


def test_long_runs_without_structure_are_read_in_linear_time() -> None:
    # An address pattern that may start anywhere takes quadratic time on a long run of letters (13 s for
    # 64,000 of them); read from each `@` outwards it takes milliseconds.
    import time

    for body in (b"a" * 64_000, b"a@" * 32_000, b"<" * 64_000, b"a." * 32_000 + b"@b"):
        raw = b"From: MAILER-DAEMON@mx.example.org\nSubject: failure notice\n\n" + body + b"\n"
        started = time.perf_counter()
        read_report(raw)
        assert time.perf_counter() - started < 5, body[:8]
