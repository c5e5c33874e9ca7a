"""Logs carry no email address, token or key, in text or JSON, whoever wrote the line."""

from __future__ import annotations

import io
import json
import logging

import pytest

from engine import logs


@pytest.fixture
def captured() -> io.StringIO:
    stream = io.StringIO()
    yield stream
    logs.setup("text")  # leave the root logger with a plain handler


def emit(log_format: str, stream: io.StringIO) -> str:
    logs.setup(log_format)
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
    pseudonym = logs.scrub("ann.lee@example.com")
    assert pseudonym.startswith("<lead:") and pseudonym in out
    if log_format == "json":
        lines = [json.loads(line) for line in out.splitlines()]
        assert [line["level"] for line in lines] == ["INFO", "WARNING", "ERROR"]
        assert lines[2]["logger"] == "engine.runner" and "ValueError" in lines[2]["exc_info"]
