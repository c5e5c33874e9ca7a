"""`funnel run` serves the HTTP app beside the scheduler: an event posted over a real socket with a key
from `funnel apikey create` enrolls the lead, and its first email reaches the SMTP server once, even
when the event is posted twice. SIGTERM stops both cleanly."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx

from tests.acceptance.conftest import Project, write_emails
from tests.smtp_server import _free_port

GUIDE = """\
id: guide
name: Guide
entry:
  triggers:
    - event: form_submitted
stages:
  - id: inquiry
    steps:
      - id: welcome
        send: drip/welcome
    on_end: exit
"""


def _wait_until_up(url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("the HTTP app did not come up")


def test_an_event_over_http_enrolls_the_lead_and_its_email_goes_out_once(
    sqlite_project: Project, tmp_path: Path
) -> None:
    project = sqlite_project
    write_emails(project.root, ["welcome"])
    project.add_funnel("guide", GUIDE)
    created = project.funnel("apikey", "create", "--name", "shop")
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("fk_") and "shown only this once" in created.stderr

    port = _free_port("127.0.0.1")
    log = tmp_path / "run.log"
    proc = project.spawn("run", log=log, FUNNEL_HTTP__PORT=str(port), FUNNEL_TICK_SECONDS="0.2")
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, time.monotonic() + 60)
        event = {"id": "order-7", "type": "form_submitted", "email": "zoe@example.com"}
        headers = {"Authorization": f"Bearer {key}"}
        first = httpx.post(f"{url}/v1/events", json=event, headers=headers, timeout=10)
        again = httpx.post(f"{url}/v1/events", json=event, headers=headers, timeout=10)
        assert first.json() == {"accepted": 1, "duplicates": 0}
        assert again.json() == {"accepted": 0, "duplicates": 1}
        received = project.smtp.wait_for(1, timeout=30)
        time.sleep(1)  # a few more ticks: nothing else may arrive
        assert [m.funnel_step for m in project.smtp.messages()] == ["guide/welcome"]
        assert received[0].rcpt == ("zoe@example.com",)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0, log.read_text()
