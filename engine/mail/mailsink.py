"""The embedded mail sink: with no relay configured, `funnel run` delivers to this local SMTP server,
which stores every message as an `.eml` file, so a fresh install shows real emails."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class EmlHandler:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content: bytes = envelope.original_content or envelope.content
        digest = hashlib.sha256(content).hexdigest()[:12]
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        final = self.folder / f"{stamp}-{digest}.eml"
        tmp = final.with_suffix(".tmp")
        # Write then rename, so a reader never sees half a message.
        with open(tmp, "wb") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        return "250 Message accepted for delivery"


def start_sink(folder: Path, host: str = "127.0.0.1", port: int = 0) -> Controller:
    """Start the sink on a free loopback port (port 0) in its own thread; `.port` tells where."""
    # A busy machine can take more than aiosmtpd's default 5 s to start the sink's thread; the engine
    # must not fail to start for that.
    controller = Controller(EmlHandler(folder), hostname=host, port=port or _free_port(host), ready_timeout=60)
    controller.start()
    return controller


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
