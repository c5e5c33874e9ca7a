"""The keep-alive race: a client that reuses an idle connection as the server closes it gets no answer.
The HTTP server `funnel run` starts (`Runner.http_server`; `funnel api` passes the same setting) keeps an
idle connection open for `http.keep_alive_s` (75 s), past the clients' and proxies' own (60 s and less),
so a connection reused after uvicorn's old 5 s is answered. A raw socket on loopback, no mocks."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.runtime.runner import Runner
from engine.settings import Settings
from tests.smtp_server import _free_port

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@contextmanager
def serving(tmp_path: Path, **http: Any) -> Iterator[int]:
    port = _free_port("127.0.0.1")
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'funnel.db'}", data_dir=tmp_path / "data", http={"port": port, **http}
    )
    runner = Runner(settings, [], lambda: datetime.now(UTC))
    server = runner.http_server()
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the HTTP server did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        runner.close()


def ask(sock: socket.socket) -> bytes:
    """One request on the connection and the answer's head and body (`/healthz` answers a small JSON)."""
    sock.sendall(REQUEST)
    answer = b""
    while b'"ok"}' not in answer:
        chunk = sock.recv(4096)
        if not chunk:
            break  # the server closed the connection
        answer += chunk
    return answer


def test_a_connection_reused_after_an_idle_6_seconds_is_answered(tmp_path: Path) -> None:
    with serving(tmp_path) as port, socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert ask(sock).startswith(b"HTTP/1.1 200")
        time.sleep(6)  # past uvicorn's default of 5 s, which closed the connection here
        assert ask(sock).startswith(b"HTTP/1.1 200")


def test_the_idle_timeout_is_the_setting(tmp_path: Path) -> None:
    with serving(tmp_path, keep_alive_s=1) as port, socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert ask(sock).startswith(b"HTTP/1.1 200")
        time.sleep(2)
        assert sock.recv(4096) == b""  # closed by the server: the race a longer setting avoids
