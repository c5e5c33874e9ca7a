"""The fast message writer says what `EmailMessage(policy=SMTP)` says: same headers and parts once decoded, in
strictly parseable, 7-bit, CRLF-only bytes; and no header value, whatever it holds, starts a header of its own."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import SMTP, compat32, strict
from email.utils import format_datetime, formataddr, getaddresses
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.mail.mime import build_mime

ONE_CLICK = "List-Unsubscribe=One-Click"
# The documented normalisation of free text: a run of line breaks (as str.splitlines sees them) becomes one space,
# ASCII blanks around the value go.
LINE_BREAK = re.compile(r"[ \t]*(?:(?:\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029])[ \t]*)+")


def one_line(value: str) -> str:
    return LINE_BREAK.sub(" ", value).strip(" \t")


@dataclass(frozen=True)
class Inputs:
    from_name: str
    from_address: str
    to: str
    subject: str
    date: datetime
    message_id: str
    reply_to: str | None
    list_unsubscribe: tuple[str, str] | None
    extra_headers: tuple[tuple[str, str], ...]
    text: str
    html: str

    def fast(self) -> bytes:
        return build_mime(**self.__dict__)


def slow(i: Inputs) -> EmailMessage:
    """What engine/mail/mailer.py builds, with free text normalised as build_mime documents (the email package
    refuses line breaks outright)."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = formataddr((one_line(i.from_name), i.from_address))
    msg["To"] = i.to
    msg["Subject"] = one_line(i.subject)
    msg["Date"] = format_datetime(i.date)
    msg["Message-ID"] = i.message_id
    if i.reply_to:
        msg["Reply-To"] = i.reply_to
    if i.list_unsubscribe:
        msg["List-Unsubscribe"] = f"<{i.list_unsubscribe[0]}>, <{i.list_unsubscribe[1]}>"
        msg["List-Unsubscribe-Post"] = ONE_CLICK
    for name, value in i.extra_headers:
        msg[name] = one_line(value)
    msg.set_content(i.text)
    msg.add_alternative(i.html, subtype="html")
    return msg


# --------------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------------

TRICKY = (
    '"',
    ",",
    "\\",
    "<",
    ">",
    "@",
    "(",
    ")",
    ";",
    ":",
    ".",
    "'",
    "  ",
    "\t",
    "=?",
    "?=",
    "\r",
    "\n",
    "\r\n",
    "\r\nBcc: victim@example.net",
    "\nX-Injected: yes\n",
    "\u2028",
    "é",
    "Zoë",
    "日本語",
    "🎉",
    "👩‍👩‍👧",
    "\u00a0",
)
chars = st.characters(blacklist_categories=("Cs", "Cc"))
long_word = st.builds(
    lambda n, c: c * n, st.sampled_from((70, 200, 990, 1100)), st.sampled_from(("x", "é", "🎉", "a-b/"))
)
free_text = st.lists(
    st.one_of(st.text(chars, max_size=12), st.sampled_from(TRICKY), st.just(" "), long_word), max_size=12
).map("".join)

atom = st.from_regex(r"[a-z0-9][a-z0-9+_-]{0,15}", fullmatch=True)
address = st.builds(lambda local, domain: f"{local}@{domain}.example", atom, atom)
name_addr = st.builds(lambda n, a: formataddr((one_line(n), a)), free_text, address)
url_path = st.text("abcXYZ0123456789._~%/?=&-", max_size=900)
unsubscribe = st.builds(
    lambda path, addr: (f"https://funnels.example/u/{path}", f"mailto:{addr}?subject=unsubscribe"), url_path, address
)

body_line = st.one_of(
    st.text(chars, max_size=40),
    st.sampled_from((".", "..", ". dot", "From me", "From ", "trailing  ", "tab\t", "=", "=3D", "--", "")),
    st.builds(lambda n, w: (w * n)[:n], st.sampled_from((75, 76, 77, 150, 1200)), st.sampled_from(("y", "word ", "ü"))),
)
body = st.tuples(st.lists(body_line, max_size=12), st.sampled_from(("\n", "\r\n", "\r")), st.booleans()).map(
    lambda t: t[1].join(t[0]) + (t[1] if t[2] else "")
)

inputs = st.builds(
    Inputs,
    from_name=free_text,
    from_address=address,
    to=st.one_of(address, name_addr),
    subject=free_text,
    date=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)).map(
        lambda d: d.replace(microsecond=0)
    ),
    message_id=st.builds(lambda h, a: f"<{h}@{a.partition('@')[2]}>", atom, address),
    reply_to=st.one_of(st.none(), address, name_addr),
    list_unsubscribe=st.one_of(st.none(), unsubscribe),
    extra_headers=st.tuples(st.tuples(st.just("X-Funnel"), free_text)),
    text=body,
    html=body.map(lambda b: f"<p>{b}</p>"),
)


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def parse(data: bytes) -> EmailMessage:
    msg = BytesParser(policy=strict).parsebytes(data)
    assert isinstance(msg, EmailMessage)
    return msg


def addresses(value: Any) -> list[tuple[str, str]]:
    return blanks_collapsed([(a.display_name, a.addr_spec) for a in value.addresses])


def rfc2047_addresses(data: bytes, name: str) -> list[tuple[str, str]] | None:
    """The addresses with display names decoded as RFC 2047 6.2 says, or None when no display name needs two
    encoded-words. The email package's parser keeps the whitespace between adjacent encoded-words in a phrase
    (RFC 2047 drops it; its unstructured parser drops it too), so a long encoded display name decodes there with
    a space too many."""
    raw = str(BytesParser(policy=compat32).parsebytes(data, headersonly=True)[name])
    if not re.search(r"\?=\s+=\?", raw):
        return None
    pairs = getaddresses([re.sub(r"\r\n([ \t])", r"\1", raw)])
    return blanks_collapsed([(str(make_header(decode_header(n))), a) for n, a in pairs])


def blanks_collapsed(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Display names are compared up to whitespace: the email package's phrase parser drops or merges some of it
    (even a no-break space next to an encoded-word boundary), and none of it carries meaning."""
    return [(" ".join(n.split()), a) for n, a in pairs]


def head_lines(data: bytes) -> list[bytes]:
    return data.partition(b"\r\n\r\n")[0].split(b"\r\n")


def assert_wire_format(data: bytes) -> None:
    assert data.isascii()
    assert b"\n" not in data.replace(b"\r\n", b"") and b"\r" not in data.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    for line in head_lines(data):
        if len(line) > 78:
            # Too long only where there is no whitespace to fold at (the field name stays with its first word).
            word = line.lstrip(b" \t") if line[:1] in b" \t" else line.partition(b": ")[2]
            assert b" " not in word and b"\t" not in word, line


def body_text(part: Any) -> str:
    return str(part.get_content()).replace("\r\n", "\n")


# --------------------------------------------------------------------------------------------------
# Equivalence with the email package
# --------------------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inputs)
def test_decodes_to_what_the_email_package_builds(i: Inputs) -> None:
    data = i.fast()
    assert_wire_format(data)
    fast, expected = parse(data), slow(i)
    assert [k.lower() for k in fast] == [k.lower() for k in expected]
    for name in ("From", "To", "Reply-To"):
        if name in expected:
            decoded = rfc2047_addresses(data, name)
            if decoded is None:
                assert addresses(fast[name]) == addresses(expected[name]), name
            else:
                assert decoded == addresses(expected[name]), name
    for name in ("Subject", "Date", "Message-ID", "List-Unsubscribe", "List-Unsubscribe-Post", "X-Funnel"):
        if name in expected:
            assert str(fast[name]) == str(expected[name]), name
    for header in fast.values():
        assert not header.defects, (header.name, header.defects)
    assert fast.get_content_type() == "multipart/alternative"
    assert fast.get_content_type() == expected.get_content_type()
    for kind in ("plain", "html"):
        got, want = fast.get_body((kind,)), expected.get_body((kind,))
        assert got is not None and want is not None
        assert got.get_content_type() == f"text/{kind}" and got.get_param("charset") == "utf-8"
        assert body_text(got) == body_text(want)
        assert all(len(line) <= 76 for line in str(got.get_payload()).split("\r\n"))


BASE = Inputs(
    from_name="Greenleaf Consulting",
    from_address="news@greenleaf.example",
    to="sam@example.com",
    subject="Your report is ready",
    date=datetime(2026, 3, 29, 9, 0, tzinfo=timezone(timedelta(hours=2))),
    message_id="<0123456789abcdef01234567@greenleaf.example>",
    reply_to="Support <help@greenleaf.example>",
    list_unsubscribe=("https://greenleaf.example/u/tok", "mailto:news@greenleaf.example?subject=unsubscribe"),
    extra_headers=(("X-Funnel", "lead-magnet/2"),),
    text="Hello Sam,\n\nhere it is.\n",
    html="<p>Hello Sam,</p><p>here it is.</p>\n",
)


def test_a_typical_email_reads_as_expected() -> None:
    msg = parse(BASE.fast())
    assert msg["From"] == "Greenleaf Consulting <news@greenleaf.example>"
    assert msg["Date"] == "Sun, 29 Mar 2026 09:00:00 +0200"
    assert msg["List-Unsubscribe"] == (
        "<https://greenleaf.example/u/tok>, <mailto:news@greenleaf.example?subject=unsubscribe>"
    )
    assert msg["List-Unsubscribe-Post"] == ONE_CLICK
    assert msg.get_body(("plain",)) is not None and msg.get_body(("html",)) is not None


def test_same_inputs_give_the_same_bytes() -> None:
    # A retry must be the same message: same boundary, same bytes, same DKIM body hash.
    assert BASE.fast() == BASE.fast()


def test_a_body_holding_the_boundary_line_stays_one_part() -> None:
    boundary = parse(BASE.fast()).get_boundary()
    assert boundary
    sneaky = f"before\n--{boundary}\nContent-Type: text/html\n\n<b>x</b>\n--{boundary}--\nafter\n"
    msg = parse(replace(BASE, text=sneaky).fast())
    parts = list(msg.iter_parts())
    assert len(parts) == 2
    assert body_text(parts[0]) == sneaky


def test_without_unsubscribe_or_reply_to_those_headers_are_absent() -> None:
    msg = parse(replace(BASE, list_unsubscribe=None, reply_to=None).fast())
    assert "List-Unsubscribe" not in msg and "List-Unsubscribe-Post" not in msg and "Reply-To" not in msg


# --------------------------------------------------------------------------------------------------
# Header injection and bad addresses
# --------------------------------------------------------------------------------------------------

INJECTIONS = ("x\r\nBcc: victim@example.net", "x\nBcc: victim@example.net", "x\rBcc: victim@example.net", "x\r\n\r\n")


@pytest.mark.parametrize("payload", INJECTIONS)
def test_line_breaks_in_free_text_never_start_a_header(payload: str) -> None:
    data = replace(BASE, from_name=payload, subject=payload, extra_headers=(("X-Funnel", payload),)).fast()
    msg = parse(data)
    assert [k.lower() for k in msg] == [k.lower() for k in parse(BASE.fast())]
    assert b"\r\nBcc:" not in data
    assert msg["Subject"] == one_line(payload)
    assert msg["From"].addresses[0].display_name == one_line(payload)


@pytest.mark.parametrize("payload", INJECTIONS)
@pytest.mark.parametrize("field", ["reply_to", "to", "from_address", "message_id"])
def test_line_breaks_in_addresses_and_ids_are_refused(field: str, payload: str) -> None:
    with pytest.raises(ValueError, match=r"line break|expected"):
        changes: dict[str, Any] = {field: f"a@example.com{payload}"}
        replace(BASE, **changes).fast()


@pytest.mark.parametrize("which", [0, 1])
def test_line_breaks_in_unsubscribe_urls_are_refused(which: int) -> None:
    urls = list(BASE.list_unsubscribe or ())
    urls[which] += "\r\nBcc: victim@example.net"
    with pytest.raises(ValueError, match="List-Unsubscribe"):
        replace(BASE, list_unsubscribe=(urls[0], urls[1])).fast()


def test_a_non_ascii_local_part_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="SMTPUTF8"):
        replace(BASE, to="zoë@example.com").fast()
    with pytest.raises(ValueError, match="SMTPUTF8"):
        replace(BASE, reply_to="Zoë <zoë@example.com>").fast()


def test_an_international_domain_goes_out_in_its_ascii_form() -> None:
    msg = parse(replace(BASE, to="Zoë <zoe@bücher.example>").fast())
    assert msg["To"].addresses == (Address("Zoë", "zoe", "xn--bcher-kva.example"),)


def test_a_domain_idna_2003_would_change_is_refused() -> None:
    with pytest.raises(ValueError, match="no exact ASCII form"):
        replace(BASE, to="sam@straße.example").fast()


@pytest.mark.parametrize("to", ["sam", "sam@", "<>", "Sam <sam>", "undisclosed-recipients:;"])
def test_something_that_is_not_an_address_is_refused(to: str) -> None:
    with pytest.raises(ValueError, match="address"):
        replace(BASE, to=to).fast()


@pytest.mark.parametrize("name", ["From", "subject", "Content-Transfer-Encoding", "Bad Name", "X:Y", ""])
def test_extra_headers_cannot_replace_ours_or_be_malformed(name: str) -> None:
    with pytest.raises(ValueError, match="extra header"):
        replace(BASE, extra_headers=((name, "v"),)).fast()


def test_a_from_address_with_a_display_name_is_refused() -> None:
    with pytest.raises(ValueError, match="from_address"):
        replace(BASE, from_address="News <news@greenleaf.example>").fast()
