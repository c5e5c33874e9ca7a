"""`funnel ops-user add NAME` prints a config line whose hash signs NAME in with that password, and only
that password; the password itself is never printed."""

from __future__ import annotations

import tomllib

import typer
from typer.testing import CliRunner

from engine.core.ops_auth import OpsSettings, check_password

PASSWORD = "a long enough passphrase"


def _app() -> typer.Typer:
    from engine.cli.main import app

    return app


def test_the_printed_line_is_a_config_entry_that_checks_the_password() -> None:
    runner = CliRunner()
    for args, typed in ((["--password-stdin"], f"{PASSWORD}\n"), ([], f"{PASSWORD}\n{PASSWORD}\n")):
        result = runner.invoke(_app(), ["ops-user", "add", "olivia", *args], input=typed)
        assert result.exit_code == 0, result.output
        line = result.stdout.strip().splitlines()[-1]
        assert PASSWORD not in result.output
        assert "under [ops.users] in config/funnel.toml" in result.output  # the section's name is shown as is
        ops = OpsSettings(**tomllib.loads(f"[ops.users]\n{line}\n")["ops"])
        assert list(ops.users) == ["olivia"] and ops.users["olivia"].startswith("$argon2id$")
        assert check_password(ops, "olivia", PASSWORD)
        assert not check_password(ops, "olivia", PASSWORD + "!")
        assert not check_password(ops, "oliver", PASSWORD)


def test_a_bad_name_or_a_short_password_is_refused() -> None:
    runner = CliRunner()
    bad_name = runner.invoke(_app(), ["ops-user", "add", "Olivia Smith", "--password-stdin"], input=f"{PASSWORD}\n")
    assert bad_name.exit_code == 2 and "lowercase" in bad_name.output
    short = runner.invoke(_app(), ["ops-user", "add", "olivia", "--password-stdin"], input="short\n")
    assert short.exit_code == 2 and "at least 12 characters" in short.output
    assert "$argon2id$" not in bad_name.output + short.output
