"""The outbox's indexes, shaped for the send path.

- `ix_outbox_ready` also orders by id: a lease takes the oldest due messages, ties broken by id, straight
  from the index. On PostgreSQL the index on `next_attempt_at` alone left every ready row to be sorted at
  each lease (messages queued together are due at the same instant), a cost that grew with the outbox;
  SQLite's index already ended with the row id.
- `ix_outbox_sending` holds the messages in `sending` by id instead of by `claimed_at`: there are only as
  many as are in flight, the sweep reads them all and compares `claimed_at` itself, and with no index on
  `claimed_at` a lease (which writes nothing else) can update its row in place on PostgreSQL (a HOT
  update, no index entry written).
- On PostgreSQL the outbox's pages are filled to 80% (`fillfactor`), so that room is there.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | None = None
depends_on: str | None = None

READY = "status IN ('queued', 'deferred')"
SENDING = "status = 'sending'"


def _index(name: str, columns: list[str], where: str) -> None:
    op.drop_index(name, table_name="outbox")
    op.create_index(name, "outbox", columns, sqlite_where=sa.text(where), postgresql_where=sa.text(where))


def upgrade() -> None:
    _index("ix_outbox_ready", ["next_attempt_at", "id"], READY)
    _index("ix_outbox_sending", ["id"], SENDING)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE outbox SET (fillfactor = 80)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE outbox RESET (fillfactor)")
    _index("ix_outbox_sending", ["claimed_at"], SENDING)
    _index("ix_outbox_ready", ["next_attempt_at"], READY)
