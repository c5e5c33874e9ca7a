"""`funnel bounces poll --once` through the real CLI entry point, against a real dovecot over TLS.

The command wires the poller `funnel run` starts to the engine's own report processor on the
configured database: reports are recorded and leave the mailbox, the rest stays; it prints what it
took, left and handed back, and says in its exit status and one line when the mailbox cannot be used.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from engine.store import tables
from engine.store.database import create_engine_for
from tests.mail_servers import Dovecot, free_port, require
from tests.mta.test_bounce_mailbox import ARF, LATE_DSN, NEWSLETTER, deliver, folder

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture(scope="module")
def dovecot() -> Iterator[Dovecot]:
    require()
    with Dovecot(dict.fromkeys(("ann", "bob"))) as server:
        yield server


def funnel(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FUNNEL_")}
    base.update({"FUNNEL_DATA_DIR": str(tmp_path / "data"), "FUNNEL_DATABASE_URL": database_url(tmp_path), **env})
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], cwd=ROOT, env=base, capture_output=True, text=True, timeout=120
    )


def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'funnel.db'}"


def mailbox(dovecot: Dovecot, user: str, **changes: str) -> dict[str, str]:
    settings = {
        "HOST": "127.0.0.1",
        "PORT": str(dovecot.imaps_port),
        "USERNAME": user,
        "PASSWORD": dovecot.password,
        "CA_FILE": str(dovecot.cert),
    } | changes
    return {f"FUNNEL_BOUNCES__IMAP__{name}": value for name, value in settings.items()}


def recorded(tmp_path: Path) -> list[tuple[str, str | None, str | None]]:
    engine = create_engine_for(database_url(tmp_path))
    try:
        b = tables.bounce_reports
        with engine.connect() as conn:
            rows = conn.execute(sa.select(b.c.source, b.c.kind, b.c.action).order_by(b.c.id)).all()
        return [(str(s), k, a) for s, k, a in rows]
    finally:
        engine.dispose()


def test_one_poll_takes_the_reports_leaves_the_rest_and_prints_the_counts(tmp_path: Path, dovecot: Dovecot) -> None:
    deliver(dovecot, "ann", LATE_DSN, NEWSLETTER, ARF)
    env = mailbox(dovecot, "ann")

    first = funnel(tmp_path, "bounces", "poll", "--once", **env)

    assert first.returncode == 0, first.stdout + first.stderr
    assert f"bounce mailbox 127.0.0.1:{dovecot.imaps_port} INBOX: taken 2, left 1, retried 0" in first.stdout
    # Recorded by the engine's processor, each once: neither report names a message sent from this
    # database, so both wait for an operator.
    assert recorded(tmp_path) == [
        ("imap", "dsn", "kept for an operator"),
        ("imap", "complaint", "kept for an operator"),
    ]
    assert list(folder(dovecot, "ann")) == ["Our spring newsletter"]
    assert set(folder(dovecot, "ann", "Processed")) == {"Delivery Status Notification", "FW: Earn money"}
    unknown = funnel(tmp_path, "bounces", "unknown")
    assert unknown.returncode == 0 and "2 report(s) for an operator" in unknown.stdout, unknown.stdout

    # A new process does not remember the newsletter: it is read again, and left again.
    second = funnel(tmp_path, "bounces", "poll", "--once", **env)
    assert second.returncode == 0, second.stderr
    assert "taken 0, left 1, retried 0" in second.stdout
    assert len(recorded(tmp_path)) == 2
    assert list(folder(dovecot, "ann")) == ["Our spring newsletter"]


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"PASSWORD": "wrong"}, "login refused"),
        ({"PORT": "free"}, "Connection refused"),
        ({"CA_FILE": ""}, "certificate not trusted"),
    ],
)
def test_a_mailbox_that_cannot_be_used_exits_1_saying_which_and_why(
    tmp_path: Path, dovecot: Dovecot, changes: dict[str, str], said: str
) -> None:
    deliver(dovecot, "bob", LATE_DSN)
    if changes.get("PORT") == "free":
        changes = {"PORT": str(free_port())}
    env = mailbox(dovecot, "bob", **changes)
    if changes.get("CA_FILE") == "":
        del env["FUNNEL_BOUNCES__IMAP__CA_FILE"]  # the system's CAs do not know the test's certificate

    done = funnel(tmp_path, "bounces", "poll", "--once", **env)

    assert done.returncode == 1, done.stdout + done.stderr
    port = changes.get("PORT", str(dovecot.imaps_port))
    assert f"cannot poll bounce mailbox 127.0.0.1:{port} INBOX: " in done.stderr
    assert said in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert recorded(tmp_path) == []
    assert list(folder(dovecot, "bob")) == ["Delivery Status Notification"]


def test_without_a_mailbox_configured_it_says_what_to_set(tmp_path: Path) -> None:
    done = funnel(tmp_path, "bounces", "poll", "--once")
    assert done.returncode == 2
    assert "bounces.imap.host" in done.stderr and "FUNNEL_BOUNCES__IMAP__HOST" in done.stderr
