"""transfers.job_id: the arq job that recorded each ledger row

A job run again after its commit (the worker died before arq stored the result) tells its own
rows from another job's by this column, and reports the outcomes it recorded. Nullable: rows
written before this revision belong to no known job. Adding a nullable column without a default
only changes the catalogue, so it takes no time whatever the ledger's size.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("transfers", sa.Column("job_id", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("transfers", "job_id")
