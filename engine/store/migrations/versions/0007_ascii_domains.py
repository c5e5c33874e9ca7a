"""Stored addresses under the address rules: a domain kept in Unicode goes to its ASCII form.

Before this revision the API, forms and imports stored an internationalised domain in Unicode
(`idn@bücher.example`) while `funnel event` stored what it was given (`idn@xn--bcher-kva.example`);
every entry now gives the ASCII form (`engine.core.addresses`), so a lead kept in Unicode would no longer
be found and the same person would become a second lead. Each such lead moves to the ASCII form, and
a suppression of its Unicode form is copied to the ASCII form.

Left as they were, and logged: a lead whose ASCII form is already another lead (an operator merges
them, e.g. by erasing one), and a lead the rules refuse (a local part that needs SMTPUTF8: no relay
was ever given it). The hash of an address erased before this revision cannot be read back: an IDN
address erased then stays suppressed under its Unicode form only (docs/security.md).

The rules are written out here rather than imported, so that this revision does the same thing
whatever later versions of the engine make of addresses.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24
"""

from __future__ import annotations

import hashlib
import logging

import sqlalchemy as sa
from alembic import op
from email_validator import EmailNotValidError, validate_email

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None

log = logging.getLogger("engine.migrations")

_leads = sa.table("leads", sa.column("id", sa.Integer), sa.column("email", sa.String))
_suppressions = sa.table(
    "suppressions",
    sa.column("email_hash", sa.String),
    sa.column("reason", sa.String),
    sa.column("created_at", sa.DateTime(timezone=True)),
)


def _ascii_form(email: str) -> str | None:
    try:
        valid = validate_email(email, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError:
        return None
    return f"{valid.local_part.lower()}@{valid.ascii_domain.lower()}"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _carry_suppression(conn: sa.Connection, before: str, after: str) -> None:
    """A suppression of the address as it was stored also holds for the form it is now stored in."""
    s = _suppressions
    found = conn.execute(sa.select(s.c.reason, s.c.created_at).where(s.c.email_hash == _sha(before))).first()
    if found is None or conn.execute(sa.select(s.c.email_hash).where(s.c.email_hash == _sha(after))).first():
        return
    conn.execute(sa.insert(s).values(email_hash=_sha(after), reason=found.reason, created_at=found.created_at))


def upgrade() -> None:
    conn = op.get_bind()
    # Only addresses with a non-ASCII character can change; every lead is read once, a row at a time.
    unicode = [
        (i, e) for i, e in conn.execute(sa.select(_leads.c.id, _leads.c.email)).yield_per(10_000) if not e.isascii()
    ]
    taken: list[int] = []
    refused: list[int] = []
    for lead_id, email in unicode:
        target = _ascii_form(email)
        if target is None:
            refused.append(lead_id)
            continue
        if conn.execute(sa.select(_leads.c.id).where(_leads.c.email == target)).first() is not None:
            taken.append(lead_id)
            continue
        conn.execute(sa.update(_leads).where(_leads.c.id == lead_id).values(email=target))
        _carry_suppression(conn, email, target)
    if taken:
        log.warning(
            "leads %s keep a Unicode domain: their ASCII form is another lead already; merge each pair by hand",
            ", ".join(map(str, taken)),
        )
    if refused:
        log.warning(
            "leads %s keep their address: the address rules refuse it (e.g. a local part that needs SMTPUTF8)",
            ", ".join(map(str, refused)),
        )


def downgrade() -> None:
    # Nothing to undo: the ASCII form is the same address, and the engine before this revision takes it.
    pass
