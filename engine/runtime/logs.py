"""Logging for `funnel run` and `funnel api`: text for a terminal, or one JSON object per line for a log
pipeline (`log_format = "json"`).

No address of a lead reaches the log in clear: every finished line goes through `scrub`, the second
guard of `engine.core.redaction` (the first is `pseudonymise`, where the engine logs text that may carry
an address).

Libraries (uvicorn's access lines, httpx, apscheduler, aiosmtplib, ...) log at WARNING and above unless
`log_level_libraries` asks for more; the engine's own loggers (`engine.*`) at `log_level`.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

from engine.core.redaction import scrub


class ScrubbingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


class ScrubbingJsonFormatter(JsonFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def _handler(log_format: str) -> logging.Handler:
    """A scrubbing handler on stderr in the given format."""
    out = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        out.setFormatter(
            ScrubbingJsonFormatter(
                "{asctime}{levelname}{name}{message}",
                style="{",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                # Characters as written, not as \u escapes: the scrubber reads addresses in any script.
                json_ensure_ascii=False,
            )
        )
    else:
        out.setFormatter(ScrubbingFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    return out


def setup(log_format: str = "text", level: str = "INFO", libraries: str = "WARNING") -> None:
    """Replace the root logger's handlers with one scrubbing handler on stderr; every library's logger
    propagates to it. The engine's loggers log from `level`, every other from `libraries`."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(_handler(log_format))
    root.setLevel(libraries)
    logging.getLogger("engine").setLevel(level)
    # The HTTP app's server: its start, its stop, and the traceback of a request the app failed.
    logging.getLogger("uvicorn.error").setLevel(level)
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # the local sink's chatter, whatever libraries log
    # flufl.bounce logs each detector it runs, and a traceback when one meets malformed input; the bounce
    # reader catches that and reads on (engine.core.bounce_reports), so neither is news to an operator.
    logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)
