"""Request bodies over a real socket: every route has a size limit (by kind: events, the rest of the API,
forms and pages), a declared length over it is refused before any of the body is read, a chunked body
is refused once it passes the limit, the served process's memory stays bounded whatever strangers
send, and a client that goes away mid-body leaves no traceback in the log."""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.core.signatures import sign
from engine.mail.links import Links
from tests.http.conftest import NOW, Served
from tests.http.raw_client import Raw
from tests.smtp_server import _free_port

ROOT = Path(__file__).resolve().parents[2]
SECRET = secrets.token_urlsafe(32)
LIMITS = {"events": 1 << 20, "api": 256 << 10, "forms": 16 << 10}
# What loopback socket buffers may hold beyond what the server has read when its answer arrives.
IN_FLIGHT = 8 << 20


def _signature(body: bytes = b"{}") -> str:
    """A well-formed, fresh signature header (for a body other than the one sent: it never verifies)."""
    return sign(SECRET, int(NOW.timestamp()), body)


@pytest.fixture
def limited(serve: Callable[..., Served]) -> Served:
    return serve(
        http={"body_limits": LIMITS},
        hooks={"shop": {"secret": SECRET}},
        forms={"report": {"fields": ["first_name"]}},
    )


def _routes(served: Served) -> dict[str, tuple[str, str, dict[str, str], int]]:
    """What each kind of route is reached with: (method, path, headers, its limit)."""
    token = Links(served.settings).unsubscribe_url("ann@example.com", None).rsplit("/", 1)[1]
    return {
        "events": ("POST", "/v1/events", {"Authorization": f"Bearer {served.key}"}, LIMITS["events"]),
        "hook": ("POST", "/hooks/shop", {"Funnel-Signature": _signature()}, LIMITS["events"]),
        "lead": ("PUT", "/v1/leads/ann@example.com", {"Authorization": f"Bearer {served.key}"}, LIMITS["api"]),
        "form": ("POST", "/forms/report", {"Content-Type": "application/x-www-form-urlencoded"}, LIMITS["forms"]),
        "unsubscribe": ("POST", f"/u/{token}", {"Content-Type": "application/x-www-form-urlencoded"}, LIMITS["forms"]),
        "ops sign-in": ("POST", "/ops/login", {"Content-Type": "application/x-www-form-urlencoded"}, LIMITS["forms"]),
    }


def test_a_declared_length_over_the_limit_is_refused_before_any_of_the_body_is_sent(limited: Served) -> None:
    for kind, (method, path, headers, limit) in _routes(limited).items():
        request = Raw(limited.url, method, path, headers).start(**{"Content-Length": str(400 << 20)})
        try:
            # Nothing of the 400 MiB has been sent: the server answers from the headers alone.
            assert request.answered(within=10), f"{kind}: no answer without the body"
            status, body = request.answer()
        finally:
            request.close()
        assert (kind, status) == (kind, 413)
        assert body == {"detail": f"the request body is larger than this route takes ({limit:,} bytes)"}, kind


def test_a_chunked_body_is_refused_once_it_passes_the_limit(limited: Served) -> None:
    for kind, (method, path, headers, limit) in _routes(limited).items():
        request = Raw(limited.url, method, path, headers)
        try:
            status, body = request.stream(64 << 20)
        finally:
            request.close()
        assert (kind, status) == (kind, 413), body
        assert limit < request.sent < limit + IN_FLIGHT, f"{kind}: {request.sent:,} bytes sent before the answer"


def test_bodies_within_the_limits_are_taken_as_before(limited: Served) -> None:
    big = [{"id": f"e{i}", "type": "page_viewed", "email": "ann@example.com", "properties": {"p": "x" * 500}}
           for i in range(1000)]  # fmt: skip
    body = json.dumps(big).encode()
    assert LIMITS["api"] < len(body) < LIMITS["events"]
    with limited.client() as client:
        response = client.post("/v1/events", content=body, headers={"Content-Type": "application/json"})
    assert (response.status_code, response.json()) == (200, {"accepted": 1000, "duplicates": 0})
    form = httpx.post(f"{limited.url}/forms/report", data={"email": "bob@example.com", "consent": "yes"}, timeout=10)
    assert form.status_code == 303


def test_a_client_that_goes_away_mid_body_leaves_no_traceback_in_the_log(
    limited: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for method, path, headers, _ in _routes(limited).values():
        request = Raw(limited.url, method, path, headers).start(**{"Content-Length": "1000"})
        request.send(b"email=ann%40example.com&x=")  # some of the body, then the client is gone
        time.sleep(0.2)
        request.close()
    time.sleep(1)  # let the server notice every disconnection
    with httpx.Client(base_url=limited.url, timeout=10) as client:
        assert client.get("/healthz").status_code == 200
    tracebacks = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert tracebacks == [], [r.getMessage() for r in tracebacks]
    assert "Traceback" not in caplog.text


# --------------------------------------------------------------------------------------------------
# The served process
# --------------------------------------------------------------------------------------------------


def _peak_resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


@pytest.fixture
def funnel_api(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """`funnel api` in a process of its own, on the default limits, with a hook source configured."""
    if not Path("/proc/self/status").exists():
        pytest.skip("reads the peak resident set size from /proc")
    port = _free_port("127.0.0.1")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNNEL_")}
    env.update({"FUNNEL_DATA_DIR": str(tmp_path / "data"), "FUNNEL_HOOKS__SHOP__SECRET": SECRET})
    log = tmp_path / "api.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "api", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise AssertionError(f"funnel api did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield url, process, log
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_strangers_posting_huge_bodies_at_once_leave_the_process_memory_bounded(
    funnel_api: tuple[str, subprocess.Popen[bytes], Path],
) -> None:
    url, process, log = funnel_api
    headers = {"Content-Type": "application/json", "Funnel-Signature": _signature()}
    # Warm up every path a refusal takes, so what is measured is what the bodies cost.
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/hooks/shop", content=b'{"id": "x"}', headers=headers).status_code == 401
    before = _peak_resident_bytes(process.pid)

    def stranger(path: str) -> tuple[int, Any]:
        request = Raw(url, "POST", path, headers)
        try:
            return request.stream(128 << 20)
        finally:
            request.close()

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(stranger, ["/hooks/shop", "/hooks/shop", "/hooks/nobody", "/v1/events"]))
    grown = _peak_resident_bytes(process.pid) - before
    assert [status for status, _ in answers] == [413, 413, 413, 401], answers
    # 4 x 128 MiB were offered; the default limit is 4 MiB of events per request.
    assert grown < 48 << 20, f"the peak resident set grew by {grown / 2**20:.0f} MiB"
    assert process.poll() is None
    assert "Traceback" not in log.read_text()
