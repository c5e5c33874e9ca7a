"""A minimal SMTP sink for benchmarks: an asyncio protocol that speaks just enough SMTP for a client
that does not pipeline, keeps nothing but a count per Message-ID, and costs a few microseconds per
message, so the benchmark measures the sender and not the sink. (The behaviour tests use aiosmtpd, a
real server.)

    python benchmarks/smtp_sink.py PORT_FILE STATS_FILE [--envelopes] [--port N] [--links FILE]

Writes the port it listens on to PORT_FILE; on SIGTERM writes {"messages": n, "ids": {id: count}} to
STATS_FILE and exits. With --envelopes it also keeps each message's envelope, as
"envelopes": {id: [MAIL FROM, [RCPT TO, ...]]} (what a bounce is addressed to, and about). With --port it
listens on that port (a sink stopped and started again, as a relay outage). With --links it appends each
double opt-in confirmation link it receives to FILE, one a line, for a load generator that confirms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
from collections import Counter
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path
from typing import IO

MESSAGE_ID = re.compile(rb"^Message-ID:\s*(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)
END_OF_DATA = b"\r\n.\r\n"
CONFIRM = re.compile(r"https?://[^\s/]+/confirm/[A-Za-z0-9_.\-]+")


class Stats:
    def __init__(self) -> None:
        self.ids: Counter[str] = Counter()
        self.messages = 0
        self.envelopes: dict[str, tuple[str, list[str]]] | None = None
        self.links: IO[str] | None = None


class Session(asyncio.Protocol):
    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.buffer = b""
        self.in_data = False
        self.transport: asyncio.WriteTransport | None = None
        self.mail_from = ""
        self.rcpts: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport: it can write
        self.transport.write(b"220 sink ESMTP\r\n")  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while self.buffer:
            if self.in_data:
                end = self.buffer.find(END_OF_DATA)
                if end < 0:
                    return
                message, self.buffer = self.buffer[: end + 2], self.buffer[end + len(END_OF_DATA) :]
                found = MESSAGE_ID.search(message)
                mid = found.group(1).decode() if found else ""
                self.stats.ids[mid] += 1
                if self.stats.envelopes is not None:
                    self.stats.envelopes[mid] = (self.mail_from, self.rcpts)
                self.mail_from, self.rcpts = "", []
                self.stats.messages += 1
                if self.stats.links is not None:
                    self._links(message)
                self.in_data = False
                self.transport.write(b"250 2.0.0 queued\r\n")
                continue
            end = self.buffer.find(b"\r\n")
            if end < 0:
                return
            line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                self.transport.write(b"250-sink\r\n250-8BITMIME\r\n250 SIZE 52428800\r\n")
            elif verb == b"DATA":
                self.in_data = True
                self.transport.write(b"354 go ahead\r\n")
            elif verb == b"QUIT":
                self.transport.write(b"221 bye\r\n")
                self.transport.close()
                return
            else:  # MAIL, RCPT, RSET, NOOP
                if self.stats.envelopes is not None and verb in (b"MAIL", b"RCPT"):
                    self._envelope(verb, line)
                self.transport.write(b"250 ok\r\n")

    def _links(self, message: bytes) -> None:
        assert self.stats.links is not None
        if b"confirm" not in message:  # parse only what may hold a confirmation link
            return
        parsed = message_from_bytes(message.replace(b"\r\n..", b"\r\n."), policy=default_policy)
        body = parsed.get_body(preferencelist=("plain",))
        text = body.get_content() if body is not None else ""  # type: ignore[attr-defined]
        for link in CONFIRM.findall(text):
            self.stats.links.write(link + "\n")
        self.stats.links.flush()

    def _envelope(self, verb: bytes, line: bytes) -> None:
        address = line.partition(b":")[2].strip().split(b" ")[0].strip(b"<>").decode("utf-8", "replace")
        if verb == b"MAIL":
            self.mail_from, self.rcpts = address, []
        else:
            self.rcpts.append(address)


async def main(port_file: Path, stats_file: Path, envelopes: bool, port: int = 0, links: Path | None = None) -> None:
    stats = Stats()
    if envelopes:
        stats.envelopes = {}
    if links is not None:
        stats.links = links.open("a")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Session(stats), "127.0.0.1", port)
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    port_file.write_text(str(port))
    async with server:
        await stop.wait()
    out: dict[str, object] = {"messages": stats.messages, "ids": dict(stats.ids)}
    if stats.envelopes is not None:
        out["envelopes"] = stats.envelopes
    stats_file.write_text(json.dumps(out))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port_file", type=Path)
    parser.add_argument("stats_file", type=Path)
    parser.add_argument("--envelopes", action="store_true")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--links", type=Path, default=None)
    args = parser.parse_args()
    running = main(args.port_file, args.stats_file, args.envelopes, args.port, args.links)
    try:
        import uvloop  # a faster event loop, when installed, makes the sink cheaper still
    except ImportError:
        asyncio.run(running)
    else:
        uvloop.run(running)
