"""Parts of the machine a test needs (a PostgreSQL server, Chromium): on a developer's machine without
one, the tests that need it are skipped and say why; when `CI` is set they fail instead, so a broken
install step cannot turn the tests that prove the most into skips that pass."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NoReturn

import pytest


def in_ci(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this run is CI's: `CI` set to anything but empty, 0, false or no (CI services set `true`)."""
    value = (os.environ if environ is None else environ).get("CI", "")
    return value.strip().lower() not in ("", "0", "false", "no")


def missing(what: str, environ: Mapping[str, str] | None = None) -> NoReturn:
    """The test cannot run because `what` is missing: a skip, or in CI a failure."""
    if in_ci(environ):
        pytest.fail(f"{what} (CI is set: every part the tests need must be installed)", pytrace=False)
    pytest.skip(what)
