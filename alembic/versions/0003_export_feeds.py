"""export_feeds: named incremental exports, each with the cursor its last export left

A new, empty table: creating it takes no time whatever the size of the others.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "export_feeds",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("dataset", sa.Text(), nullable=False),
        sa.Column("cursor", sa.Text(), nullable=False),
        sa.Column("exports", sa.BigInteger(), nullable=False),
        sa.Column("exported_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("file", sa.Text(), nullable=False),
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.CheckConstraint(
            "name ~ '^[a-z0-9][a-z0-9_-]{0,63}$'", name=op.f("ck_export_feeds_name_pattern")
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_export_feeds")),
    )


def downgrade() -> None:
    op.drop_table("export_feeds")
