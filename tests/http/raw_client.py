"""A request written by hand with the standard library's HTTP client, for tests that decide how much of
a body goes out and when, and see when the answer comes (before the body, during it, after it)."""

from __future__ import annotations

import http.client
import json
import select
from typing import Any
from urllib.parse import urlsplit


class Raw:
    """One request written by hand with the standard library's HTTP client, so a test decides how much
    of the body goes out and when, and sees when the answer comes."""

    def __init__(self, url: str, method: str, path: str, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
        self.conn.putrequest(method, path, skip_accept_encoding=True)
        self.headers = headers
        self.sent = 0

    def start(self, **more: str) -> Raw:
        for name, value in {**self.headers, **more}.items():
            self.conn.putheader(name, value)
        self.conn.endheaders()
        return self

    def answered(self, within: float) -> bool:
        assert self.conn.sock is not None
        readable, _, _ = select.select([self.conn.sock], [], [], within)
        return bool(readable)

    def answer(self) -> tuple[int, Any]:
        response = self.conn.getresponse()
        body = response.read()
        try:
            return response.status, json.loads(body)
        except ValueError:
            return response.status, body.decode("utf-8", "replace")

    def send(self, data: bytes) -> None:
        self.conn.send(data)
        self.sent += len(data)

    def stream(self, total: int) -> tuple[int, Any]:
        """Send up to `total` bytes in chunks (chunked transfer encoding), stopping as soon as the server
        answers; the answer. `sent` says how much went out before it."""
        self.start(**{"Transfer-Encoding": "chunked"})
        chunk = b"x" * (64 << 10)
        try:
            while self.sent < total and not self.answered(0):
                self.conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.sent += len(chunk)
            if not self.answered(0):
                self.conn.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while we were still sending
        return self.answer()

    def close(self) -> None:
        self.conn.close()
