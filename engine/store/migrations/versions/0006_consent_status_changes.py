"""Consent records say the lead's status before and after each act, and are found by client IP (the
signup forms' limit on confirmation emails per client).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("consent_records") as batch:
        batch.add_column(sa.Column("status_before", sa.String(16), nullable=True))
        batch.add_column(sa.Column("status_after", sa.String(16), nullable=True))
    op.create_index("ix_consent_records_ip", "consent_records", ["ip", "at"])


def downgrade() -> None:
    op.drop_index("ix_consent_records_ip", table_name="consent_records")
    with op.batch_alter_table("consent_records") as batch:
        batch.drop_column("status_after")
        batch.drop_column("status_before")
