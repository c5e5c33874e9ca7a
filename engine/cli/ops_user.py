"""`funnel ops-user add NAME`: the line that lets NAME sign in to the ops dashboard. Only an argon2id hash
of the password goes in the config; the password itself is asked for and never printed or stored."""

from __future__ import annotations

import re
import sys

import typer
from rich.console import Console

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

ops_user_app = typer.Typer(help="Users of the ops dashboard (/ops).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(ops_user_app, name="ops-user")


@ops_user_app.command("add")
def add(
    name: str = typer.Argument(..., help="The sign-in name: lowercase letters, digits, '.', '_' or '-'."),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from the first line of standard input (for scripts)."
    ),
) -> None:
    """Ask for a password and print the config line with its argon2id hash (nothing is written)."""
    from engine.core.ops_auth import hash_password

    err = Console(stderr=True)
    if not NAME.match(name):
        err.print(f"name {name!r}: expected lowercase letters, digits, '.', '_' or '-' (at most 64)", markup=False)
        raise typer.Exit(2)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    if len(password) < 12:
        err.print("the password must have at least 12 characters")
        raise typer.Exit(2)
    err.print(
        "Add this line under [ops.users] in config/funnel.toml (or the same in FUNNEL_OPS__USERS as JSON):",
        markup=False,
    )
    # A TOML basic string: the hash holds only $, letters, digits, '+', '/', '=' and ','.
    print(f'"{name}" = "{hash_password(password)}"')
