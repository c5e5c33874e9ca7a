"""One outbox message as the send pipeline carries it: the row, the lead's address, consent and
fields. Kept apart from the database code so that render processes, which only compose, import no
database library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class OutboxItem:
    id: int
    lead_id: int
    email: str
    consent_status: str
    attributes: dict[str, Any]
    funnel_id: str
    step: str
    template: str
    stage: str
    transactional: bool
    attempts: int
    suppressed: bool
    timezone: str | None = None
    language: str | None = None  # the lead's, read with the row: the translation is chosen when composing

    @property
    def domain(self) -> str:
        return self.email.rpartition("@")[2].lower()
