"""The engine's own event ids, names and sources cannot be written from outside, over real sockets with
`funnel run` serving the app beside the scheduler: a client that takes the id the signup form will give
the first confirmed signup, or that posts an operator's `manual_enroll`, is refused, and the real person
who then signs up and confirms gets the report."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import httpx
import sqlalchemy as sa

from engine.store import tables
from tests.acceptance.conftest import Project, write_emails
from tests.acceptance.test_form_journey import CONFIG, CONFIRM, GUIDE, WELCOME
from tests.acceptance.test_http_engine import _wait_until_up
from tests.smtp_server import _free_port

# The form's funnel, which an operator may also enroll leads in by hand.
MANUAL_GUIDE = GUIDE.replace("entry:\n  triggers:\n", "entry:\n  triggers:\n    - manual: true\n", 1)


def test_a_client_cannot_squat_the_forms_event_id_nor_enroll_as_an_operator(
    sqlite_project: Project, tmp_path: Path
) -> None:
    project = sqlite_project
    emails = write_emails(project.root, ["pitch"])
    (emails / "drip" / "welcome.md").write_text(WELCOME)
    (emails / "forms").mkdir()
    (emails / "forms" / "confirm-subscription.md").write_text(CONFIRM)
    (project.root / "config").mkdir()
    (project.root / "config" / "funnel.toml").write_text(CONFIG)
    project.add_funnel("guide", MANUAL_GUIDE)
    key = project.funnel("apikey", "create", "--name", "shop").stdout.strip()

    port = _free_port("127.0.0.1")
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "run.log"
    proc = project.spawn("run", log=log, FUNNEL_HTTP__PORT=str(port), FUNNEL_BASE_URL=url, FUNNEL_TICK_SECONDS="1")
    try:
        _wait_until_up(url, time.monotonic() + 60)
        api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
        # The form's first confirmed signup will be recorded as `form:guide-report:1`: taken first by an
        # event that enters nobody, the signup would be dropped as its duplicate.
        squat = {"id": "form:guide-report:1", "type": "page_viewed", "email": "mallory@example.com"}
        squatted = api.post("/v1/events", json=squat)
        impersonation = {"id": "m-1", "type": "manual_enroll", "email": "victim@example.com",
                         "properties": {"funnel": "guide", "by": "olivia"}}  # fmt: skip
        impersonated = api.post("/v1/events", json=impersonation)
        claimed = api.post("/v1/events", json={**impersonation, "type": "signed_up", "source": "ops"})

        posted = httpx.post(
            f"{url}/forms/guide-report",
            data={"email": "hana@example.com", "name": "Hana", "consent": "yes", "website": ""},
            timeout=10,
        )
        assert posted.status_code == 303
        [confirmation] = project.smtp.wait_for(1, timeout=30)
        link = re.search(rf"{re.escape(url)}/confirm/[A-Za-z0-9_.\-]+", confirmation.body)
        assert link, confirmation.body
        assert httpx.post(link.group(0), timeout=10).status_code == 303

        welcome = project.smtp.wait_for(2, timeout=30)[1:]
        assert [(m.rcpt, m.funnel_step) for m in welcome] == [(("hana@example.com",), "guide/welcome")]
        time.sleep(1.5)  # more ticks: nothing else goes, to the victim least of all
        assert len(project.smtp.messages()) == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0, log.read_text()
    for refused, where, why in (
        (squatted, "id", "'form:' is kept for the engine's own event ids"),
        (impersonated, "type", "'manual_enroll' is the name of an event the engine records itself"),
        (claimed, "source", "'ops' is a source the engine keeps for itself"),
    ):
        assert refused.status_code == 422, refused.text
        (problem,) = [p for p in refused.json()["detail"] if p["loc"][-1] == where]
        assert why in problem["msg"], problem

    with project.db().connect() as conn:
        recorded = conn.execute(sa.select(tables.events.c.event_id, tables.events.c.name, tables.events.c.source))
        leads = conn.execute(sa.select(tables.leads.c.email)).scalars().all()
    assert [tuple(r) for r in recorded] == [("form:guide-report:1", "form_submitted", "form")]
    assert leads == ["hana@example.com"]
