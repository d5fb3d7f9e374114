"""`etl demo`: the service's main path end to end, on whatever servers the settings point at.

Sample files go into the import dir; an in-process worker runs the jobs: an import of customers
(a few rows deliberately bad), an import of their accounts, a batch of transfers (some rejected),
an upsert, and an export. The summary says what each did.

Run twice, it still works and changes nothing. The sample rows have fixed keys and are imported
with mode=insert, which adds new rows and leaves rows already there alone, so the accounts keep the
balances the first run's transfers left. The transfers have fixed ids, so the second run reports
them as `duplicate` instead of moving the money again: fresh ids would drain the accounts run
after run and make every run's numbers different, and re-importing balances (mode=upsert) would
put money back that the recorded transfers say has moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from arq.worker import Worker
from pydantic import BaseModel
from sqlalchemy import select

from jobs.errors import ConfigError
from jobs.models import (
    ExportPayload,
    ImportFilePayload,
    TransferItem,
    TransferPayload,
    TransferResult,
    UpsertResult,
    UpsertRowsPayload,
)
from jobs.schema import import_rejects
from jobs.transfers.plan import CURRENCY_MISMATCH, INSUFFICIENT_FUNDS
from worker.client import EtlClient, JobHandle
from worker.db import create_engine
from worker.main import build_worker_settings
from worker.settings import Settings

ResultT = TypeVar("ResultT", bound=BaseModel)

CUSTOMERS_FILE = "demo-customers.csv"
ACCOUNTS_FILE = "demo-accounts.csv"
CUSTOMERS = 300
FIRST_ACCOUNT = 1001
JOB_TIMEOUT_S = 120.0

_TRANSFER_IDS = uuid.UUID("5d0c7a52-7f0e-4d5e-9c2b-8f1f1f3c0d11")
_FIRST = ("Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim")
_LAST = ("Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson")
_COUNTRIES = ("GB", "DE", "FR", "NL", "US", "JP", "BR", "IN")
_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


def _customer(n: int) -> list[str]:
    first, last = _FIRST[n % len(_FIRST)], _LAST[n % len(_LAST)]
    return [
        f"demo-c{n:04d}",
        f"{first.lower()}.{last.lower()}{n}@example.com",
        f"{first} {last}",
        _COUNTRIES[n % len(_COUNTRIES)],
        (_EPOCH + timedelta(hours=n)).isoformat(),
    ]


# Each bad row breaks one rule; the import rejects it (with that reason) and loads the rest.
_BAD_CUSTOMERS = [
    ["demo-bad-1", "not-an-email", "Nobody", "GB", ""],
    ["demo-bad-2", "ok@example.com", "Nobody", "Germany", ""],
    ["demo-bad-3", "ok@example.com", "", "FR", ""],
    ["", "ok@example.com", "No Key", "NL", ""],
    ["demo-bad-5", "ok@example.com", "Nobody", "US", "yesterday"],
]


def customers_csv() -> str:
    rows = [["external_id", "email", "full_name", "country", "created_at"]]
    rows += [_customer(n) for n in range(1, CUSTOMERS + 1)]
    # Spread the bad rows through the file, as they would be in real data.
    for i, bad in enumerate(_BAD_CUSTOMERS):
        rows.insert(7 + i * 60, bad)
    return "".join(",".join(row) + "\n" for row in rows)


def accounts_csv() -> str:
    rows = [["id", "customer_external_id", "currency", "balance_cents"]]
    for n in range(1, CUSTOMERS + 1):
        balance = 5_000 + (n % 10) * 1_000
        rows.append([str(FIRST_ACCOUNT + n - 1), f"demo-c{n:04d}", "EUR", str(balance)])
    rows.append([str(FIRST_ACCOUNT + CUSTOMERS), "demo-c0001", "EUR", "-500"])  # rejected
    return "".join(",".join(row) + "\n" for row in rows)


def transfers() -> list[TransferItem]:
    """30 that fit the balances, 6 far too large, 2 to an account that does not exist."""

    def item(n: int, src: int, dst: int, amount: int) -> TransferItem:
        return TransferItem(
            id=uuid.uuid5(_TRANSFER_IDS, f"transfer-{n}"),
            from_account=src,
            to_account=dst,
            amount_cents=amount,
        )

    items = [item(n, FIRST_ACCOUNT + n, FIRST_ACCOUNT + n + 1, 1_000 + n * 10) for n in range(30)]
    items += [item(30 + n, FIRST_ACCOUNT + 100 + n, FIRST_ACCOUNT, 10_000_000) for n in range(6)]
    items += [item(36 + n, FIRST_ACCOUNT + 200 + n, 999_999, 100) for n in range(2)]
    return items


def upsert_rows() -> list[dict[str, Any]]:
    """Three customers change their email, two are new, one row is bad."""
    rows: list[dict[str, Any]] = []
    for n in (1, 2, 3):
        external_id, _, full_name, country, created_at = _customer(n)
        rows.append(
            {
                "external_id": external_id,
                "email": f"new.address{n}@example.org",
                "full_name": full_name,
                "country": country,
                "created_at": created_at,
            }
        )
    for n in (CUSTOMERS + 1, CUSTOMERS + 2):
        external_id, email, full_name, country, created_at = _customer(n)
        rows.append(
            {"external_id": external_id, "email": email, "full_name": full_name, "country": country}
        )
    rows.append({"external_id": "demo-bad-6", "email": "x@example.com", "full_name": "X"})
    return rows


def write_samples(import_dir: Path) -> None:
    import_dir.mkdir(parents=True, exist_ok=True)
    # Written whole and renamed, so a worker never reads half a file.
    for name, text in ((CUSTOMERS_FILE, customers_csv()), (ACCOUNTS_FILE, accounts_csv())):
        partial = import_dir / f".{name}.partial"
        partial.write_text(text, encoding="utf-8")
        partial.replace(import_dir / name)


def _rule(reason: str) -> str:
    """The rule a rejection broke, without its numbers (which differ per transfer)."""
    for rule in (INSUFFICIENT_FUNDS, CURRENCY_MISMATCH):
        if reason.startswith(rule):
            return rule
    return reason


class DemoFailed(Exception):
    """A step of the demo failed; the summary so far is in `summary`."""

    def __init__(self, step: str, error: BaseException, summary: dict[str, Any]) -> None:
        super().__init__(f"{step}: {error}")
        self.summary = summary


async def _import_rejects(settings: Settings, import_id: uuid.UUID) -> list[dict[str, Any]]:
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(import_rejects.c.line_number, import_rejects.c.reason)
                .where(import_rejects.c.import_id == import_id)
                .order_by(import_rejects.c.line_number)
            )
            return [{"line": line, "reason": reason} for line, reason in rows]
    finally:
        await engine.dispose()


def _start_worker(settings: Settings) -> tuple[Worker, asyncio.Task[None]]:
    options = build_worker_settings(settings)
    worker = Worker(**options, burst=False, poll_delay=0.05, handle_signals=False)
    return worker, asyncio.create_task(worker.main())


async def _stop_worker(worker: Worker, task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    with contextlib.suppress(asyncio.CancelledError):
        await worker.close()


async def scenario(settings: Settings, *, say: Callable[[str], None]) -> dict[str, Any]:
    """Run the demo's jobs through a worker in this process; return the summary."""
    started = time.monotonic()
    if not isinstance(settings.import_dir, Path):
        raise ConfigError(
            "etl demo writes its sample files into ETL_IMPORT_DIR: give it a local directory, "
            "not an s3:// URL"
        )
    write_samples(settings.import_dir)
    worker, task = _start_worker(settings)
    demo = _Demo(settings=settings, say=say, worker_task=task)
    try:
        async with EtlClient(settings) as etl:
            await demo.imports(etl)
            await demo.transfers_and_upsert(etl)
            await demo.export(etl)
    except Exception as exc:
        demo.summary["failed_step"] = demo.step
        demo.summary["error"] = str(exc)
        raise DemoFailed(demo.step, exc, demo.summary) from exc
    finally:
        demo.summary["elapsed_s"] = round(time.monotonic() - started, 1)
        await _stop_worker(worker, task)
    return demo.summary


@dataclass
class _Demo:
    """The demo's steps, each adding to the summary; `step` names the one running."""

    settings: Settings
    say: Callable[[str], None]
    worker_task: asyncio.Task[None]
    step: str = "start"
    summary: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.summary.update(
            database=self.settings.database_url_safe(),
            redis=self.settings.redis_url_safe(),
            queue=self.settings.queue_name,
            import_dir=str(self.settings.import_dir),
        )

    def begin(self, step: str, said: str | None = None) -> None:
        self.step = step
        self.say(said or step)

    async def finish(self, handle: JobHandle[ResultT]) -> ResultT:
        """The job's result, unless the worker itself stops first (it could not start, say)."""
        waiting = asyncio.ensure_future(handle.result(timeout=JOB_TIMEOUT_S))
        await asyncio.wait({waiting, self.worker_task}, return_when=asyncio.FIRST_COMPLETED)
        if not waiting.done():
            waiting.cancel()
            self.worker_task.result()  # the worker's own error, if it had one
            raise RuntimeError("the worker stopped before the job finished")
        return waiting.result()

    async def imports(self, etl: EtlClient) -> None:
        self.summary["imports"] = []
        for dataset, name in (("customers", CUSTOMERS_FILE), ("accounts", ACCOUNTS_FILE)):
            self.begin(f"import {dataset}", f"import {dataset} from {name}")
            payload = ImportFilePayload(dataset=dataset, path=name, mode="insert")
            imported = await self.finish(await etl.import_file(payload))
            self.summary["imports"].append(
                {
                    "file": name,
                    "mode": "insert",
                    **imported.model_dump(mode="json"),
                    "rejects": await _import_rejects(self.settings, imported.import_id),
                }
            )

    async def transfers_and_upsert(self, etl: EtlClient) -> None:
        self.begin(
            "transfers and upsert", "transfers and an upsert, enqueued together in one batch"
        )
        moved, upserted = await etl.enqueue_many(
            [
                TransferPayload(transfers=transfers()),
                UpsertRowsPayload(dataset="customers", rows=upsert_rows()),
            ]
        )
        transferred = await self.finish(moved)
        assert isinstance(transferred, TransferResult)
        rejected = (o.reason or "" for o in transferred.results if o.status == "rejected")
        self.summary["transfers"] = {
            "applied": transferred.applied,
            "rejected": transferred.rejected,
            "duplicate": transferred.duplicate,
            "reasons": dict(Counter(_rule(reason) for reason in rejected)),
        }
        upsert = await self.finish(upserted)
        assert isinstance(upsert, UpsertResult)
        self.summary["upsert"] = upsert.model_dump(mode="json")

    async def export(self, etl: EtlClient) -> None:
        self.begin("export customers")
        job = await etl.export_dataset(
            ExportPayload(dataset="customers", format="csv", compress=True)
        )
        self.summary["export"] = (await self.finish(job)).model_dump(mode="json")


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The summary for a person to read."""
    lines = [
        f"PostgreSQL {summary['database']}",
        f"Redis {summary['redis']}, queue {summary['queue']!r}",
    ]
    for imp in summary.get("imports", []):
        lines.append(
            f"import {imp['dataset']} ({imp['file']}): {imp['rows_read']} rows read, "
            f"{imp['inserted']} inserted, {imp['skipped']} already there, "
            f"{imp['rejected']} rejected"
        )
        lines += [f"    line {r['line']}: {r['reason']}" for r in imp["rejects"]]
    if "transfers" in summary:
        t = summary["transfers"]
        lines.append(
            f"transfers: {t['applied']} applied, {t['rejected']} rejected, "
            f"{t['duplicate']} duplicate"
            + (" (recorded by an earlier run: not applied again)" if t["duplicate"] else "")
        )
        lines += [f"    rejected, {reason}: {count}" for reason, count in t["reasons"].items()]
    if "upsert" in summary:
        u = summary["upsert"]
        lines.append(
            f"upsert {u['dataset']}: {u['inserted']} inserted, {u['updated']} updated, "
            f"{u['rejected']} rejected"
        )
        lines += [f"    rows[{r['index']}]: {r['reason']}" for r in u["rejects"]]
    if "export" in summary:
        e = summary["export"]
        lines.append(f"export {e['dataset']}: {e['rows']} rows, {e['bytes']} bytes -> {e['path']}")
        lines.append(f"    sha256 {e['sha256']}")
    if "error" in summary:
        lines.append(f"FAILED at {summary['failed_step']}: {summary['error']}")
    else:
        lines.append(f"done in {summary['elapsed_s']} s")
    return lines
