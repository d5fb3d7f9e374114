"""The one list of jobs: what the worker registers, the client enqueues and operators see.

`FUNCTIONS` run when enqueued; `SCHEDULED` run from the worker's cron (their times are settings);
`INTERNAL` are enqueued by other jobs only.
Everything else (worker settings, client, CLI, status, tests) reads these.
"""

from __future__ import annotations

from collections.abc import Mapping

from jobs.exports.job import export_dataset
from jobs.exports.nightly import nightly_export
from jobs.exports.part import export_part
from jobs.imports.job import import_file
from jobs.ping import ping
from jobs.spec import AnySpec
from jobs.transfers.job import transfer_funds
from jobs.upserts import upsert_rows

FUNCTIONS: tuple[AnySpec, ...] = (import_file, upsert_rows, export_dataset, transfer_funds, ping)
"""Jobs that apps enqueue."""

SCHEDULED: tuple[AnySpec, ...] = (nightly_export,)
"""Jobs the worker's cron enqueues (an operator may retry a failed run)."""

INTERNAL: tuple[AnySpec, ...] = (export_part,)
"""Jobs that other jobs enqueue (the parts of a parallel export); not for apps or schedules."""

BY_NAME: Mapping[str, AnySpec] = {spec.name: spec for spec in (*FUNCTIONS, *SCHEDULED)}
"""Every job by the name it has in Redis."""
