"""Form to first email: how long a lead waits, from posting the example signup form to the moment an SMTP
server accepts the first email, with `funnel run` as a user starts it (its own process, the project's
settings, the default tick interval) and aiosmtpd on loopback recording when each message arrives.

    python benchmarks/form_latency.py [--samples 20]

The example form is double opt-in, so two waits are measured per lead: post → the confirmation email,
and confirm → the report (the funnel's first email). Prints both and, as its last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import httpx
from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parent.parent
FORM = "cost-of-not-recycling"


class Arrivals:
    """An SMTP handler that notes when each message arrived, by recipient."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: dict[str, list[tuple[float, str, str]]] = {}

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        at = time.perf_counter()
        msg = message_from_bytes(envelope.original_content or envelope.content, policy=default_policy)
        body = msg.get_body(preferencelist=("plain",))
        text = body.get_content() if body is not None else ""
        with self.lock:
            for rcpt in envelope.rcpt_tos:
                self.seen.setdefault(rcpt.lower(), []).append((at, str(msg["X-Funnel"]), text))
        return "250 OK"

    def wait(self, rcpt: str, count: int, timeout: float = 30.0) -> list[tuple[float, str, str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                got = list(self.seen.get(rcpt, []))
            if len(got) >= count:
                return got
            time.sleep(0.002)
        raise TimeoutError(f"{rcpt}: {count} message(s) did not arrive within {timeout} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(samples: int) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="funnel-form-bench-"))
    arrivals = Arrivals()
    smtp = Controller(arrivals, hostname="127.0.0.1", port=free_port())
    smtp.start()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    for name in ("funnels", "emails", "pages", "config"):
        shutil.copytree(ROOT / name, folder / name)
    # One client posts every sample: the form's limit on confirmations per client must not stop the run.
    config = folder / "config" / "funnel.toml"
    limit = f"confirm_within_hours = 72\nconfirmations_per_ip = {max(samples, 20)}"
    config.write_text(config.read_text().replace("confirm_within_hours = 72", limit, 1))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNNEL_")}
    env.update(
        FUNNEL_DATA_DIR=str(folder / "data"),
        FUNNEL_BASE_URL=url,
        FUNNEL_HTTP__PORT=str(port),
        FUNNEL_SMTP__HOST="127.0.0.1",
        FUNNEL_SMTP__PORT=str(smtp.port),
        FUNNEL_SMTP__SECURITY="none",
        PYTHONPATH=str(ROOT),
    )
    log = (folder / "run.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "run"], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    to_confirmation: list[float] = []
    to_report: list[float] = []
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("funnel run did not come up; see its log") from None
                time.sleep(0.05)
            for i in range(samples):
                address = f"lead{i}@bench.example"
                data = {"email": address, "name": f"Lead{i}", "company": "Bench Ltd", "consent": "yes"}
                started = time.perf_counter()
                assert client.post(f"/forms/{FORM}", data=data).status_code == 303
                [(arrived, step, text)] = arrivals.wait(address, 1)
                to_confirmation.append((arrived - started) * 1000)
                link = re.search(rf"{re.escape(url)}/confirm/[A-Za-z0-9_.\-]+", text)
                if link is None:
                    raise RuntimeError(f"no confirmation link in the email {step}")
                started = time.perf_counter()
                assert client.post(link.group(0)).status_code == 303
                arrived, step, _ = arrivals.wait(address, 2)[1]
                to_report.append((arrived - started) * 1000)
                time.sleep(0.3)  # leads arrive one by one, not in a burst
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        smtp.stop()
        log.close()
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "form_to_email_ms": round(statistics.median(to_confirmation), 1),
        "form_to_email_ms_max": round(max(to_confirmation), 1),
        "confirm_to_email_ms": round(statistics.median(to_report), 1),
        "confirm_to_email_ms_max": round(max(to_report), 1),
        "form_samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()
    figures = measure(args.samples)
    print(
        f"form post -> confirmation email accepted: median {figures['form_to_email_ms']} ms, "
        f"max {figures['form_to_email_ms_max']} ms ({args.samples} leads)"
    )
    print(
        f"confirm -> first funnel email accepted:  median {figures['confirm_to_email_ms']} ms, "
        f"max {figures['confirm_to_email_ms_max']} ms"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
