"""Logging for `funnel run` and `funnel api`: text for a terminal, or one JSON object per line for a log
pipeline (`log_format = "json"`). Either way, the finished line is scrubbed of personal data and secrets
before it is written: email addresses become a short stable pseudonym, signed tokens and API keys are cut.
Scrubbing the output, not the call sites, also covers what libraries log (an SMTP server's reply that
quotes an address, uvicorn's access log of `/u/TOKEN`)."""

from __future__ import annotations

import hashlib
import logging
import re
import sys

from pythonjsonlogger.json import JsonFormatter

EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
# Links carrying a signed token: unsubscribe, preferences, clicks, opens, opt-in confirmations.
TOKEN_PATH = re.compile(r"/(u|p|c|o|confirm)/[A-Za-z0-9_=-]+\.[A-Za-z0-9_=.-]+")
API_KEY = re.compile(r"\bfk_[A-Za-z0-9_-]{8,}")
BEARER = re.compile(r"(?i)(bearer\s+)\S+")


def _pseudonym(match: re.Match[str]) -> str:
    # The same address always gives the same pseudonym, so ops can follow one lead through the logs.
    return "<lead:" + hashlib.sha256(match.group(0).lower().encode()).hexdigest()[:10] + ">"


def scrub(text: str) -> str:
    text = TOKEN_PATH.sub(lambda m: f"/{m.group(1)}/<token>", text)
    text = API_KEY.sub("fk_<key>", text)
    text = BEARER.sub(r"\1<key>", text)
    return EMAIL.sub(_pseudonym, text)


class ScrubbingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


class ScrubbingJsonFormatter(JsonFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def setup(log_format: str = "text", level: str = "INFO") -> None:
    """Replace the root logger's handlers with one scrubbing handler on stderr; every library's logger
    propagates to it."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(
            ScrubbingJsonFormatter(
                "{asctime}{levelname}{name}{message}",
                style="{",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(ScrubbingFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # the local sink's per-command chatter
    logging.getLogger("alembic").setLevel(logging.WARNING)  # migrations: silent unless something is wrong
