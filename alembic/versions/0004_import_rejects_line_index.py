"""import_rejects: index (import_id, line_number) for keyset pages; the import_id-only one goes

`etl rejects IMPORT_ID --after LINE` reads `WHERE import_id = :id AND line_number > :after ORDER
BY line_number LIMIT :n`; with this index a late page starts at its line instead of reading every
reject of the import before it. The new index serves every query the old one did (import_id is
its first column), so the old one is dropped in the same revision, once the new one is valid.

Online (worker/migrate.py has the rules): both steps run CONCURRENTLY, outside the migration's
transaction, so imports go on writing rejects meanwhile. Under the migration's lock_timeout, a
long transaction writing import_rejects makes the build give up (`etl migrate` says to retry),
leaving at most an invalid, unused index, which the retry drops and builds again. Both steps
are idempotent: a retry after a failure anywhere finishes the work.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from worker.migrate import create_index_concurrently, drop_index_concurrently

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEW = "ix_import_rejects_import_id_line_number"
OLD = "ix_import_rejects_import_id"


def upgrade() -> None:
    create_index_concurrently(NEW, "import_rejects", ["import_id", "line_number"])
    drop_index_concurrently(OLD, "import_rejects")


def downgrade() -> None:
    create_index_concurrently(OLD, "import_rejects", ["import_id"])
    drop_index_concurrently(NEW, "import_rejects")
