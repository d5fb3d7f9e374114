"""The schema as declarative models: Alembic's migrations create it, a test checks both agree.

Relationships are `lazy="raise"`: in async code a lazy load would be hidden I/O (and fails
outside a greenlet), so a forgotten eager load raises at once instead of querying silently. Load
them with `selectinload(...)` in the query that needs them.

The jobs write through Core statements on the tables (`Customer.__table__`, exported below as
`customers` and so on): COPY, MERGE and set-based upserts move rows in bulk, not as objects.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
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
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_name)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class UpdatedAtMixin:
    """When the row last changed: set by the database on insert and by every write on update."""

    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class CreatedAtMixin:
    """When the row was written, by the database's clock."""

    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Customer(UpdatedAtMixin, Base):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    external_id: Mapped[str] = mapped_column(Text, unique=True)
    email: Mapped[str] = mapped_column(Text)
    full_name: Mapped[str] = mapped_column(Text)
    country: Mapped[str] = mapped_column(CHAR(2))
    # The customer's own creation time, as the importing system says (not the row's).
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    accounts: Mapped[list[Account]] = relationship(
        back_populates="customer", lazy="raise", order_by="Account.id"
    )

    __table_args__ = (Index("ix_customers_updated_at", "updated_at"),)


class Account(UpdatedAtMixin, Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    customer_external_id: Mapped[str | None] = mapped_column(
        Text, ForeignKey("customers.external_id", deferrable=True, initially="DEFERRED")
    )
    currency: Mapped[str] = mapped_column(CHAR(3))
    balance_cents: Mapped[int] = mapped_column(BigInteger)

    customer: Mapped[Customer | None] = relationship(back_populates="accounts", lazy="raise")
    sent: Mapped[list[Transfer]] = relationship(
        primaryjoin="foreign(Transfer.from_account_id) == Account.id",
        lazy="raise",
        viewonly=True,
    )
    received: Mapped[list[Transfer]] = relationship(
        primaryjoin="foreign(Transfer.to_account_id) == Account.id",
        lazy="raise",
        viewonly=True,
    )

    __table_args__ = (
        CheckConstraint("balance_cents >= 0", name="balance_not_negative"),
        # No index on updated_at: every transfer updates it, and an index on it would make each
        # balance update a non-HOT update touching every index (README, "Measured design
        # choices"). Incremental account exports scan the table instead.
        Index("ix_accounts_customer_external_id", "customer_external_id"),
    )


class Transfer(CreatedAtMixin, Base):
    """The ledger: one row per transfer id, applied or rejected (ids are idempotency keys)."""

    __tablename__ = "transfers"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    # No foreign keys: the ledger keeps its history whatever happens to accounts later.
    from_account_id: Mapped[int] = mapped_column(BigInteger)
    to_account_id: Mapped[int] = mapped_column(BigInteger)
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    # The arq job that recorded the row: a job run again after its commit (crashed before arq
    # stored its result) finds its own rows and reports them as it did; another job's are
    # duplicates. Read by primary key with the row, so it needs no index.
    job_id: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint("status in ('applied', 'rejected')", name="status_known"),
        CheckConstraint(
            "status <> 'applied' or (amount_cents > 0 and from_account_id <> to_account_id)",
            name="applied_is_valid",
        ),
        Index("ix_transfers_created_at", "created_at"),
    )


class ImportRun(Base):
    """One committed import: what it read and wrote (the recorded result of its job)."""

    __tablename__ = "import_runs"

    import_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    dataset: Mapped[str] = mapped_column(Text)
    file: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(Text)
    mode: Mapped[str] = mapped_column(String(16))
    rows_read: Mapped[int] = mapped_column(BigInteger)
    inserted: Mapped[int] = mapped_column(BigInteger)
    updated: Mapped[int] = mapped_column(BigInteger)
    skipped: Mapped[int] = mapped_column(BigInteger)
    rejected: Mapped[int] = mapped_column(BigInteger)
    finished_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class ImportReject(CreatedAtMixin, Base):
    """A quarantined line of an import: where it was, why, and its bytes."""

    __tablename__ = "import_rejects"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    import_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    dataset: Mapped[str] = mapped_column(Text)
    file: Mapped[str] = mapped_column(Text)
    line_number: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    raw_line: Mapped[str] = mapped_column(Text)

    # Keyset pages of an import's rejects read it from the cursor on (jobs/imports/quarantine.py);
    # built CONCURRENTLY by revision 0004, which dropped the import_id-only index it replaces.
    __table_args__ = (Index("ix_import_rejects_import_id_line_number", "import_id", "line_number"),)


class ExportFeed(Base):
    """A named incremental export (`export_dataset(..., incremental=name)`) and its cursor.

    Each export of a feed holds the rows of its dataset inserted or updated since the feed's
    previous export, by any writer; the first holds them all. `cursor` is a pg_snapshot (as
    text) that sees no transaction the last export's snapshot did not see: the rows written by
    transactions it does not see are the next export's (jobs/exports/xids.py). It is advanced
    in the export's own transaction, once the file is in place, so a failed export leaves it.
    Deletes are not carried: a deleted row simply stops appearing, and no file says so.
    """

    __tablename__ = "export_feeds"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    dataset: Mapped[str] = mapped_column(Text)
    """The dataset the feed follows, fixed by its first export."""
    cursor: Mapped[str] = mapped_column(Text)
    exports: Mapped[int] = mapped_column(BigInteger)
    """How many exports of the feed were taken."""
    exported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    """The database clock when the last export's snapshot was taken."""
    file: Mapped[str] = mapped_column(Text)
    job_id: Mapped[str] = mapped_column(Text)

    __table_args__ = (CheckConstraint("name ~ '^[a-z0-9][a-z0-9_-]{0,63}$'", name="name_pattern"),)


metadata = Base.metadata

# The tables behind the models, for the Core statements the jobs write with.
customers: Table = Customer.__table__  # type: ignore[assignment]
accounts: Table = Account.__table__  # type: ignore[assignment]
transfers: Table = Transfer.__table__  # type: ignore[assignment]
import_runs: Table = ImportRun.__table__  # type: ignore[assignment]
import_rejects: Table = ImportReject.__table__  # type: ignore[assignment]
export_feeds: Table = ExportFeed.__table__  # type: ignore[assignment]
