"""`funnel run` and `funnel api` refuse to start where they would be unsafe or cannot work, with one
line saying why: a key anyone could guess or a base_url in clear beyond loopback, a signing secret anyone
could guess, a database that cannot be reached (named without its password)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.smtp_server import _free_port

ROOT = Path(__file__).resolve().parent.parent.parent

# Keys as `funnel secret` makes them; written out so each test run is the same.
STRONG = "bUfeRUVmPW_St1r3RoRzYiJtu1iLQW3lrOSgX637bdY"
OTHER = "VcxeBRovsm-WVPNdhl2VYTa9s01JgNytRWdOBkY_VZ8"
PUBLIC = {"FUNNEL_BASE_URL": "https://news.greenleaf.example"}


def funnel(tmp_path: Path, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FUNNEL_")}
    base.update({"FUNNEL_DATA_DIR": str(tmp_path / "data"), **env})
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], cwd=ROOT, env=base, capture_output=True, text=True, timeout=timeout
    )


def test_the_public_default_key_is_refused_when_links_or_the_app_reach_beyond_loopback(tmp_path: Path) -> None:
    public = funnel(tmp_path, "run", "--once", FUNNEL_BASE_URL="https://news.greenleaf.example")
    assert public.returncode == 2
    assert "secret_key is the public default key while base_url reaches beyond this machine" in public.stderr
    assert "Traceback" not in public.stderr
    api = funnel(tmp_path, "api", "--host", "0.0.0.0")
    assert api.returncode == 2 and "http.host" in api.stderr
    keyed = funnel(
        tmp_path,
        "run",
        "--once",
        FUNNEL_BASE_URL="https://news.greenleaf.example",
        FUNNEL_SECRET_KEY=STRONG,
    )
    assert keyed.returncode == 0, keyed.stderr
    assert "database: sqlite:///" in keyed.stdout


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"FUNNEL_SECRET_KEY": ""}, "secret_key"),
        ({"FUNNEL_SECRET_KEY": "k"}, "secret_key"),
        ({"FUNNEL_SECRET_KEY": "a-long-random-value-for-this-test"}, "secret_key"),
        ({"FUNNEL_SECRET_KEY": "q3Vn0c2Jx8wT5m1KfYpR7hLzA9bE4uGdS6oWiN2vXk0"}, "secret_key"),  # the docs' example
        ({"FUNNEL_SECRET_KEY": "ab" * 40}, "secret_key"),
        (
            {"FUNNEL_SECRET_KEY": STRONG, "FUNNEL_PREVIOUS_SECRET_KEYS": '["change-me-in-production"]'},
            "previous_secret_keys[0]",
        ),
        ({"FUNNEL_SECRET_KEY": STRONG, "FUNNEL_PREVIOUS_SECRET_KEYS": f'["{OTHER}", ""]'}, "previous_secret_keys[1]"),
    ],
)
def test_every_key_of_the_keyring_must_be_long_and_random_beyond_loopback(
    tmp_path: Path, env: dict[str, str], setting: str
) -> None:
    refused = funnel(tmp_path, "run", "--once", **PUBLIC, **env)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    (line,) = refused.stderr.splitlines()
    assert line.startswith(f"cannot start: {setting} ")
    assert "base_url reaches beyond this machine" in line and "`funnel secret`" in line
    assert "Traceback" not in refused.stderr and "database:" not in refused.stdout


def test_the_app_alone_refuses_an_empty_key_when_it_listens_beyond_loopback(tmp_path: Path) -> None:
    try:
        refused = funnel(
            tmp_path,
            "api",
            "--host",
            "0.0.0.0",
            "--port",
            str(_free_port("127.0.0.1")),
            timeout=30,
            FUNNEL_SECRET_KEY="",
        )
    except subprocess.TimeoutExpired:
        pytest.fail("funnel api started on 0.0.0.0 with an empty secret key")
    assert refused.returncode == 2
    assert refused.stderr.startswith("cannot start: secret_key is empty while http.host reaches beyond this machine")


def test_a_key_made_by_funnel_secret_starts_the_engine_beyond_loopback(tmp_path: Path) -> None:
    made = funnel(tmp_path, "secret")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    again = funnel(tmp_path, "secret").stdout.strip()
    assert len(key) >= 43 and key != again
    keyed = funnel(
        tmp_path, "run", "--once", **PUBLIC, FUNNEL_SECRET_KEY=key, FUNNEL_PREVIOUS_SECRET_KEYS=f'["{STRONG}"]'
    )
    assert keyed.returncode == 0, keyed.stderr


def test_a_base_url_in_clear_beyond_loopback_is_refused(tmp_path: Path) -> None:
    clear = funnel(tmp_path, "run", "--once", FUNNEL_BASE_URL="http://news.greenleaf.example", FUNNEL_SECRET_KEY=STRONG)
    assert clear.returncode == 2
    (line,) = clear.stderr.splitlines()
    assert line.startswith("cannot start: base_url is http://news.greenleaf.example")
    assert "https://" in line and "RFC 8058" in line
    local = funnel(tmp_path, "run", "--once", FUNNEL_BASE_URL="http://localhost:8000")
    assert local.returncode == 0, local.stderr  # development on this machine, with the default key


def test_the_demo_on_loopback_starts_with_the_default_key(tmp_path: Path) -> None:
    demo = funnel(tmp_path, "run", "--once", "--demo")
    assert demo.returncode == 0, demo.stderr
    assert "demo: 3 sample signup(s) recorded" in demo.stdout


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"FUNNEL_HOOKS__SHOP__SECRET": ""}, "hooks.shop.secret"),
        ({"FUNNEL_HOOKS__SHOP__SECRET": "whsec_test"}, "hooks.shop.secret"),  # the docs' example
        (
            {"FUNNEL_WEBHOOKS__CRM__URL": "https://crm.greenleaf.example/in", "FUNNEL_WEBHOOKS__CRM__SECRET": ""},
            "webhooks.subscriptions.crm.secret",
        ),
        ({"FUNNEL_WEBHOOKS__STEP_SECRET": "s3cret"}, "webhooks.step_secret"),
    ],
)
def test_a_signing_secret_that_anyone_could_guess_is_refused_when_the_settings_load(
    tmp_path: Path, env: dict[str, str], setting: str
) -> None:
    refused = funnel(tmp_path, "run", "--once", **env)  # on loopback too: the other side may be anywhere
    assert refused.returncode == 2, refused.stdout + refused.stderr
    first = refused.stderr.splitlines()[0]
    assert first.startswith(f"settings: {setting}: ") and "`funnel secret`" in first
    assert "Traceback" not in refused.stderr


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
