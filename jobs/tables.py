"""The tables the jobs read and write. Alembic's migrations create them; tests check both agree."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import CHAR, UUID

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

customers = Table(
    "customers",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("external_id", Text, nullable=False, unique=True),
    Column("email", Text, nullable=False),
    Column("full_name", Text, nullable=False),
    Column("country", CHAR(2), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_customers_updated_at", "updated_at"),
)

accounts = Table(
    "accounts",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column(
        "customer_external_id",
        Text,
        ForeignKey("customers.external_id", deferrable=True, initially="DEFERRED"),
        nullable=True,
    ),
    Column("currency", CHAR(3), nullable=False),
    Column("balance_cents", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("balance_cents >= 0", name="balance_not_negative"),
    # No index on updated_at: every transfer updates it, and an index on it would make each
    # balance update a non-HOT update touching every index (README, "Measured design choices").
    # Incremental account exports scan the table instead.
    Index("ix_accounts_customer_external_id", "customer_external_id"),
)

transfers = Table(
    "transfers",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("from_account_id", BigInteger, nullable=False),
    Column("to_account_id", BigInteger, nullable=False),
    Column("amount_cents", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("status in ('applied', 'rejected')", name="status_known"),
    CheckConstraint(
        "status <> 'applied' or (amount_cents > 0 and from_account_id <> to_account_id)",
        name="applied_is_valid",
    ),
    Index("ix_transfers_created_at", "created_at"),
)

import_runs = Table(
    "import_runs",
    metadata,
    Column("import_id", UUID(as_uuid=True), primary_key=True),
    Column("dataset", Text, nullable=False),
    Column("file", Text, nullable=False),
    Column("sha256", Text, nullable=False),
    Column("mode", String(16), nullable=False),
    Column("rows_read", BigInteger, nullable=False),
    Column("inserted", BigInteger, nullable=False),
    Column("updated", BigInteger, nullable=False),
    Column("skipped", BigInteger, nullable=False),
    Column("rejected", BigInteger, nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

import_rejects = Table(
    "import_rejects",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("import_id", UUID(as_uuid=True), nullable=False),
    Column("dataset", Text, nullable=False),
    Column("file", Text, nullable=False),
    Column("line_number", Integer, nullable=False),
    Column("reason", Text, nullable=False),
    Column("raw_line", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_import_rejects_import_id", "import_id"),
)
