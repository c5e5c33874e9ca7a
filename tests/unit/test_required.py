"""A missing PostgreSQL or Chromium skips on a developer's machine and fails in CI (`tests/required.py`)."""

from __future__ import annotations

import pytest

from tests.required import in_ci, missing


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "yes", "anything"])
def test_a_missing_part_fails_when_ci_is_set(value: str) -> None:
    with pytest.raises(pytest.fail.Exception, match="no chromium binary on PATH"):
        missing("no chromium binary on PATH", {"CI": value})


@pytest.mark.parametrize("environ", [{}, {"CI": ""}, {"CI": "0"}, {"CI": "false"}, {"CI": " No "}])
def test_a_missing_part_skips_outside_ci(environ: dict[str, str]) -> None:
    assert not in_ci(environ)
    with pytest.raises(pytest.skip.Exception, match="no PostgreSQL binaries"):
        missing("no PostgreSQL binaries", environ)


def test_the_process_environment_is_read_when_none_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert in_ci()
    monkeypatch.delenv("CI")
    assert not in_ci()
