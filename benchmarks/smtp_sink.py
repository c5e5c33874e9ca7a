"""A minimal SMTP sink for benchmarks: speaks just enough SMTP for a client that does not pipeline,
keeps nothing but a count per Message-ID, and costs a few microseconds per message, so the benchmark
measures the sender and not the sink. (The behaviour tests use aiosmtpd, a real server.)

    python benchmarks/smtp_sink.py PORT_FILE STATS_FILE

Writes the port it listens on to PORT_FILE; on SIGTERM writes {"messages": n, "ids": {id: count}} to
STATS_FILE and exits.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from collections import Counter
from pathlib import Path

MESSAGE_ID = re.compile(rb"^Message-ID:\s*(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)


class Sink:
    def __init__(self) -> None:
        self.ids: Counter[str] = Counter()
        self.messages = 0

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 sink ESMTP\r\n")
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    writer.write(b"250-sink\r\n250-8BITMIME\r\n250 SIZE 52428800\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    data = await reader.readuntil(b"\r\n.\r\n")
                    found = MESSAGE_ID.search(data)
                    self.ids[found.group(1).decode() if found else ""] += 1
                    self.messages += 1
                    writer.write(b"250 2.0.0 queued\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    await writer.drain()
                    break
                else:  # MAIL, RCPT, RSET, NOOP
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def main(port_file: Path, stats_file: Path) -> None:
    sink = Sink()
    server = await asyncio.start_server(sink.session, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    port_file.write_text(str(port))
    async with server:
        await stop.wait()
    stats_file.write_text(json.dumps({"messages": sink.messages, "ids": dict(sink.ids)}))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
