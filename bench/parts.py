"""An export in parts (`export_dataset(parts=2)`) run by two worker processes, against psql's
\\copy of the whole table to one file.

Both workers (bench.job_run `serve`, one job slot each, not in burst mode: the export enqueues its
parts while it runs) start first; then the export is enqueued with EtlClient, as an app does.
Its time runs from the job's enqueue to its finish as arq records them: the pick-up, the snapshot,
the split, both parts (one written by the export's own worker, the other by the second worker),
the manifest and the renames.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from bench import sessions
from bench.context import BenchContext
from bench.harness import BenchError, Measured, Row, compare
from jobs.models import ExportPayload
from worker.client import EtlClient
from worker.redis import connect

PARTS = 2
WORKERS = 2
TARGET = 1.4
READY_WAIT_S = 60.0
NOTE = (
    f"export_dataset(parts={PARTS}) enqueued with EtlClient and run by {WORKERS} worker "
    "processes (one job slot each): the export's worker writes one part, the other worker the "
    "other, from one exported snapshot; timed from enqueue to the export's finish as arq records "
    "them (pick-up, snapshot, key split, both parts, manifest, renames); the baseline is one "
    "psql \\copy of the whole table to one file on this 2-core machine, where the two parts' "
    "PostgreSQL backends and the two workers share the cores; psql runs with PGOPTIONS "
    f"{sessions.describe(sessions.EXPORT)}"
)


async def _start(bench: BenchContext, *, queue: str, ready: Path) -> asyncio.subprocess.Process:
    settings = bench.settings
    assert settings.redis_url is not None
    argv = [sys.executable, "-m", "bench.job_run", "--database-url", bench.url,
            "--import-dir", str(settings.import_dir), "--export-dir", str(settings.export_dir),
            "--log-file", str(bench.workdir / "jobs.log"), "serve", "--redis-url",
            settings.redis_url, "--queue", queue, "--ready-file", str(ready)]  # fmt: skip
    return await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


async def _wait_ready(procs: list[asyncio.subprocess.Process], ready: list[Path]) -> None:
    deadline = time.monotonic() + READY_WAIT_S
    while not all(path.exists() for path in ready):
        if any(proc.returncode is not None for proc in procs):
            raise BenchError("a worker process exited before it was ready (see jobs.log)")
        if time.monotonic() > deadline:
            raise BenchError(f"the worker processes were not ready within {READY_WAIT_S:g} s")
        await asyncio.sleep(0.02)


async def _stop(procs: list[asyncio.subprocess.Process]) -> list[float]:
    """Stop the workers; the peak RSS (MB) each reported in its last JSON line."""
    for proc in procs:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    peaks: list[float] = []
    for proc in procs:
        try:
            async with asyncio.timeout(30):
                out, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            continue
        with contextlib.suppress(ValueError, IndexError, KeyError, TypeError):
            peaks.append(float(json.loads(out.decode().strip().splitlines()[-1])["peak_rss_mb"]))
    return peaks


async def export_in_parts(bench: BenchContext, *, rows: int) -> Measured:
    """One export in PARTS parts, by WORKERS worker processes started beforehand."""
    queue = bench.queue_name()
    settings = bench.settings.model_copy(update={"queue_name": queue})
    ready = [bench.workdir / f"ready-{os.getpid()}-{i}" for i in range(WORKERS)]
    procs = [await _start(bench, queue=queue, ready=path) for path in ready]
    pool = await connect(settings)
    try:
        await _wait_ready(procs, ready)
        client = EtlClient.from_redis(pool, settings)
        handle = await client.export_dataset(ExportPayload(dataset="customers", parts=PARTS))
        result = await handle.result(timeout=3600)
        state = await handle.status()
        assert state.finished_at is not None and state.enqueued_at is not None
        seconds = (state.finished_at - state.enqueued_at).total_seconds()
        files = [Path(part.path) for part in result.parts or []]
        for path in [*files, Path(result.path)]:
            await asyncio.to_thread(path.unlink, missing_ok=True)
        if result.rows != rows or len(files) != PARTS:
            raise BenchError(
                f"export_dataset wrote {result.rows} rows in {len(files)} parts, "
                f"expected {rows} in {PARTS}"
            )
    finally:
        await pool.aclose()
        peaks = await _stop(procs)
        for path in ready:
            path.unlink(missing_ok=True)
    # The larger of the two workers' peaks: each holds one part's stream at a time.
    return Measured(seconds=seconds, rows=rows, peak_rss_mb=max(peaks, default=None))


async def scenario(bench: BenchContext, *, rows: int, rounds: int, size: str) -> Row:
    from bench.exports import psql_export  # exports runs this scenario

    async def job() -> Measured:
        return await export_in_parts(bench, rows=rows)

    async def baseline() -> Measured:
        return await psql_export(bench, compress=False, rows=rows)

    return await compare(
        scenario=f"export csv parts={PARTS} (two workers), {size} rows",
        rows=rows,
        rounds=rounds,
        subject=job,
        baseline_name="psql \\copy csv",
        baseline=baseline,
        target=TARGET,
        note=NOTE,
    )
