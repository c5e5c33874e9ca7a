"""Logs carry no email address, token or key, in text or JSON, whoever wrote the line."""

from __future__ import annotations

import hashlib
import io
import json
import logging

import pytest

from engine.core import redaction
from engine.core.redaction import pseudonym
from engine.runtime import logs


@pytest.fixture
def captured() -> io.StringIO:
    stream = io.StringIO()
    yield stream
    logs.setup("text")  # leave the root logger with a plain handler


def emit(log_format: str, stream: io.StringIO) -> str:
    logs.setup(log_format, libraries="INFO")
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    log = logging.getLogger("some.library")
    log.info('127.0.0.1 - "GET /u/eyJlIjoiYW5uQGV4YW1wbGUuY29tIn0.Zm9v_bar-1 HTTP/1.1" 200')
    log.warning("relay said: 550 5.1.1 <Ann.Lee@Example.com> unknown; key fk_AbCdEf123456 rejected")
    try:
        raise ValueError("lead bo@example.org has no zone")
    except ValueError:
        logging.getLogger("engine.runner").exception("tick failed for %s", "bo@example.org")
    return stream.getvalue()


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_addresses_tokens_and_keys_are_scrubbed(log_format: str, captured: io.StringIO) -> None:
    out = emit(log_format, captured)
    for secret in ("@example", "eyJlIjoi", "fk_AbCdEf123456", "Zm9v_bar"):
        assert secret not in out
    assert "/u/<token>" in out and "fk_<key>" in out
    # The same address gives the same pseudonym, whatever its case.
    pseudonym = redaction.scrub("ann.lee@example.com")
    assert pseudonym.startswith("<lead:") and pseudonym in out
    if log_format == "json":
        lines = [json.loads(line) for line in out.splitlines()]
        assert [line["level"] for line in lines] == ["INFO", "WARNING", "ERROR"]
        assert lines[2]["logger"] == "engine.runner" and "ValueError" in lines[2]["exc_info"]


# Addresses as the operator review found them in clear, and other spellings a line may hold.
UNICODE_ADDRESSES = [
    "josé@example.com",
    "user@straße.example",
    "ｆｕｌｌ@example.com",
    "jose\u0301@example.com",  # é as e and a combining accent
    "idn@bücher.example",
    "用户@例子.广告",
    "ann@example。com",  # an ideographic full stop, which IDNA reads as a dot
    "ann＠example.com",  # a fullwidth at-sign
    "quokka%40stra%C3%9Fe.example",  # a request's path, percent-encoded
]


@pytest.mark.parametrize("address", UNICODE_ADDRESSES)
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_an_address_in_any_script_is_pseudonymised_in_every_format(
    address: str, log_format: str, captured: io.StringIO
) -> None:
    logs.setup(log_format)
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(captured)
    logging.getLogger("engine.test").warning("relay said: 550 <%s> unknown; from '%s' (%s)", address, address, address)
    out = captured.getvalue()
    local = address.replace("%40", "@").split("@")[0].split("＠")[0]
    assert local not in out and "\\u" not in out, out
    assert out.count(pseudonym(address)) == 3, out


def test_one_address_has_one_pseudonym_however_it_is_written() -> None:
    assert pseudonym("idn@bücher.example") == pseudonym("IDN@xn--bcher-kva.example") == pseudonym(" idn@Bücher.example")
    assert pseudonym("quokka%40stra%C3%9Fe.example") == pseudonym("quokka@xn--strae-oqa.example")
    assert pseudonym("ann@example.com") != pseudonym("bob@example.com")
    # Unchanged for the plain addresses logs already held: a lead keeps its pseudonym across versions.
    assert pseudonym("Ann.Lee@Example.com") == f"<lead:{hashlib.sha256(b'ann.lee@example.com').hexdigest()[:10]}>"


def test_text_about_a_lead_names_it_by_its_pseudonym_in_every_spelling() -> None:
    said = "550 5.1.1 <quokka7@straße.example>: no mailbox; recipient QUOKKA7@XN--STRAE-OQA.EXAMPLE"
    out = redaction.pseudonymise(said, "quokka7@xn--strae-oqa.example")
    assert "quokka7" not in out.lower() and "stra" not in out.lower()
    assert out == f"550 5.1.1 <{pseudonym('quokka7@xn--strae-oqa.example')}>: no mailbox; recipient " + pseudonym(
        "quokka7@xn--strae-oqa.example"
    )


def test_a_path_keeps_no_address_nor_token() -> None:
    assert redaction.safe_path("/v1/leads/josé@example.com") == f"/v1/leads/{pseudonym('josé@example.com')}"
    assert redaction.safe_path("/u/eyJlIjoiYW5uQGV4YW1wbGUuY29tIn0") == "/u/<token>"  # no signature: still cut
    assert redaction.safe_path("/forms/report") == "/forms/report"


def test_a_url_is_logged_by_its_origin() -> None:
    line = 'HTTP Request: POST https://hooks.example.com/services/T00/B00/XoXo?api_key=sk_live_123 "HTTP/1.1 200 OK"'
    assert redaction.scrub(line) == 'HTTP Request: POST https://hooks.example.com "HTTP/1.1 200 OK"'
    assert redaction.origin("https://user:pw@crm.example:8443/x?y=1") == "https://crm.example:8443"


def test_libraries_log_from_warning_unless_asked(captured: io.StringIO) -> None:
    logs.setup("text", "INFO")
    assert logging.getLogger("engine.runner").isEnabledFor(logging.INFO)
    # (The runner keeps two of APScheduler's loggers at ERROR on purpose: a skipped overlapping tick is
    # no news. Their parent, and every other library, log from WARNING.)
    for library in ("httpx", "httpcore", "apscheduler", "aiosmtplib", "uvicorn.access", "asyncio"):
        assert not logging.getLogger(library).isEnabledFor(logging.INFO), library
        assert logging.getLogger(library).isEnabledFor(logging.WARNING), library
    logs.setup("text", "INFO", libraries="INFO")
    assert logging.getLogger("httpx").isEnabledFor(logging.INFO)
