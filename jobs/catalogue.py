"""The one list of jobs: what the worker registers, the client enqueues and operators see.

`FUNCTIONS` run when enqueued; `SCHEDULED` run from the worker's cron (their times are settings).
Everything else (worker settings, client, CLI, status, tests) reads these.
"""

from __future__ import annotations

from collections.abc import Mapping

from jobs.exports.job import export_dataset
from jobs.exports.nightly import nightly_export
from jobs.imports.job import import_file
from jobs.ping import ping
from jobs.spec import AnySpec
from jobs.transfers.job import transfer_funds
from jobs.upserts import upsert_rows

FUNCTIONS: tuple[AnySpec, ...] = (import_file, upsert_rows, export_dataset, transfer_funds, ping)
"""Jobs that apps enqueue."""

SCHEDULED: tuple[AnySpec, ...] = (nightly_export,)
"""Jobs the worker's cron enqueues (an operator may retry a failed run)."""

BY_NAME: Mapping[str, AnySpec] = {spec.name: spec for spec in (*FUNCTIONS, *SCHEDULED)}
"""Every job by the name it has in Redis."""
