"""A lead's language (a BCP 47 tag, None for the funnel's default) and the language each message was
written in, so that `funnel lead show` and the report can say which translation a lead read.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Nullable columns without a default: a constant-time change on both backends.
    with op.batch_alter_table("leads") as batch:
        batch.add_column(sa.Column("language", sa.String(64), nullable=True))
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("language", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("language")
    with op.batch_alter_table("leads") as batch:
        batch.drop_column("language")
