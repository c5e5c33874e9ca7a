"""`funnel run` and `funnel api` refuse to start where they would be unsafe or cannot work, with one
line saying why: the public default key beyond loopback, a database that cannot be reached (named
without its password)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def funnel(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FUNNEL_")}
    base.update({"FUNNEL_DATA_DIR": str(tmp_path / "data"), **env})
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], cwd=ROOT, env=base, capture_output=True, text=True, timeout=120
    )


def test_the_public_default_key_is_refused_when_links_or_the_app_reach_beyond_loopback(tmp_path: Path) -> None:
    public = funnel(tmp_path, "run", "--once", FUNNEL_BASE_URL="https://news.greenleaf.example")
    assert public.returncode == 2
    assert "secret_key is the public default while base_url reaches beyond this machine" in public.stderr
    assert "Traceback" not in public.stderr
    api = funnel(tmp_path, "api", "--host", "0.0.0.0")
    assert api.returncode == 2 and "http.host" in api.stderr
    keyed = funnel(
        tmp_path,
        "run",
        "--once",
        FUNNEL_BASE_URL="https://news.greenleaf.example",
        FUNNEL_SECRET_KEY="a-long-random-value-for-this-test",
    )
    assert keyed.returncode == 0, keyed.stderr
    assert "database: sqlite:///" in keyed.stdout


def test_a_database_that_cannot_be_reached_is_named_without_its_password(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = funnel(tmp_path, "run", "--once", FUNNEL_DATABASE_URL=f"postgresql+psycopg://bob:s3cret@127.0.0.1:{port}/x")
    assert done.returncode == 1
    assert done.stderr.startswith(f"cannot start: database postgresql+psycopg://127.0.0.1:{port}/x: connection failed")
    assert "s3cret" not in done.stderr + done.stdout and "Traceback" not in done.stderr


def test_a_missing_or_unusable_ca_file_stops_the_start_naming_the_setting_and_the_file(tmp_path: Path) -> None:
    relay = {"FUNNEL_SMTP__HOST": "127.0.0.1", "FUNNEL_SMTP__PORT": "1", "FUNNEL_SMTP__SECURITY": "starttls"}
    missing = tmp_path / "relay-ca.pem"
    done = funnel(tmp_path, "run", "--once", FUNNEL_SMTP__CA_FILE=str(missing), **relay)
    assert (done.returncode, done.stderr) == (2, f"cannot start: smtp.ca_file: {missing}: file not found\n")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    done = funnel(tmp_path, "run", "--once", FUNNEL_SMTP__CA_FILE=str(garbage), **relay)
    assert done.returncode == 2
    assert done.stderr.startswith(f"cannot start: smtp.ca_file: {garbage}: no PEM certificate in it")
    assert len(done.stderr.splitlines()) == 1
    sent = funnel(tmp_path, "send-test", "lead-magnet/report-delivery", "--to", "me@example.com",
                  FUNNEL_SMTP__CA_FILE=str(missing), **relay)  # fmt: skip
    assert (sent.returncode, sent.stderr) == (2, f"smtp.ca_file: {missing}: file not found\n")
