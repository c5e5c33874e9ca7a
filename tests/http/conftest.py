"""The HTTP app served by uvicorn on a loopback socket, in a thread of the test process, over a
migrated SQLite file: tests talk to it with a real HTTP client."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import uvicorn

from engine.http.api import create_app
from engine.settings import Settings
from engine.store import apikeys
from engine.store.database import create_engine_for, upgrade
from tests.smtp_server import _free_port

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


@dataclass
class Served:
    url: str
    engine: sa.Engine
    settings: Settings
    key: str

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key if key is not None else self.key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10)


class Clock:
    """The app's clock, which a test may move."""

    def __init__(self, at: datetime = NOW) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def start_server(app: Any, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    """uvicorn serving `app` on 127.0.0.1:`port` in a thread, once it accepts connections."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    return server, thread


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """Start the app with these settings (keyword arguments of `Settings`); stopped after the test."""
    stops: list[Callable[[], None]] = []

    def start(clock: Clock | None = None, **options: Any) -> Served:
        url = f"sqlite:///{tmp_path / 'funnel.db'}"
        upgrade(url)
        engine = create_engine_for(url)
        port = _free_port("127.0.0.1")
        settings = Settings(data_dir=tmp_path, base_url=f"http://127.0.0.1:{port}", **options)
        with engine.begin() as conn:
            key = apikeys.create(conn, "tests", NOW)
        server, thread = start_server(create_app(settings, engine, clock=clock or Clock()), port)

        def stop() -> None:
            server.should_exit = True
            thread.join(timeout=10)
            engine.dispose()

        stops.append(stop)
        return Served(f"http://127.0.0.1:{port}", engine, settings, key)

    try:
        yield start
    finally:
        for stop in stops:
            stop()


@pytest.fixture
def served(serve: Callable[..., Served]) -> Served:
    return serve()
