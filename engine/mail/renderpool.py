"""Render processes: composing an email (template, MIME, DKIM) is pure CPU work, and one Python process
runs on one core. With `smtp.render_processes` > 0, composing runs in that many processes beside the
dispatcher, whose own core is left to SMTP and the database.

The processes are spawned, not forked: the dispatcher holds database connections, sockets and threads
that a forked child must not inherit.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path

from engine.core.outbox_item import OutboxItem
from engine.mail.composer import Composer, Failed, Prepared
from engine.settings import Settings

_composer: Composer | None = None


def _start(
    settings: Settings, emails_dir: Path, funnel_names: dict[str, str], funnel_languages: dict[str, tuple[str, ...]]
) -> None:
    global _composer
    _composer = Composer(settings, emails_dir, funnel_names, funnel_languages)


def _compose(items: list[OutboxItem], now: datetime) -> list[Prepared | Failed]:
    if _composer is None:
        raise RuntimeError("render process not started")
    return _composer.compose_many(items, now)


class RenderPool:
    def __init__(
        self,
        processes: int,
        settings: Settings,
        emails_dir: Path,
        funnel_names: dict[str, str],
        funnel_languages: dict[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.executor = ProcessPoolExecutor(
            max_workers=processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start,
            initargs=(settings, emails_dir, funnel_names, funnel_languages or {}),
        )

    async def compose_many(self, items: list[OutboxItem], now: datetime) -> list[Prepared | Failed]:
        return await asyncio.get_running_loop().run_in_executor(self.executor, _compose, items, now)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
