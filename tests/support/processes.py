"""Worker processes the tests start, signal and kill, and what the tests read back from Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, result_key_prefix

from worker.keys import PROGRESS_KEY_PREFIX

ROOT = Path(__file__).resolve().parents[2]


WORKER_WITH_STAND_INS = ("-m", "tests.support.worker_process")
ETL_WORKER = ("-m", "worker.cli", "worker")


class WorkerProcess:
    """A worker in a process of its own, given only `env`; stdout and stderr go to `log_path`.

    By default the fault tests' worker (the service's jobs plus the stand-ins); `command` can
    name another, such as `etl worker` itself.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        log_path: Path,
        command: tuple[str, ...] = WORKER_WITH_STAND_INS,
    ) -> None:
        self.log_path = log_path
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            # Lines reach the file as they are written, so a test can wait for them.
            "PYTHONUNBUFFERED": "1",
            "LOG_FORMAT": "json",
            **env,
        }
        with open(log_path, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, *command],
                cwd=ROOT,
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        """The JSON lines written so far (anything else, a traceback say, is skipped)."""
        out: list[dict[str, Any]] = []
        for line in self.text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    out.append(record)
        return out

    async def wait_for_event(self, event: str, *, within_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            for record in self.events():
                if record.get("event") == event:
                    return record
            if not self.alive():
                break
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {event!r} from the worker; its output:\n{self.text()[-4000:]}")

    async def started(self, *, within_s: float = 30) -> WorkerProcess:
        await self.wait_for_event("worker.started", within_s=within_s)
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, nothing is cleaned up, as when a machine dies."""
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    async def exited(self, *, within_s: float) -> int:
        deadline = time.monotonic() + within_s
        while self.alive():
            if time.monotonic() > deadline:
                raise AssertionError(f"the worker did not exit within {within_s} s")
            await asyncio.sleep(0.05)
        return int(self.process.returncode)


async def wait_until_running(redis: ArqRedis, job_id: str, *, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not await redis.exists(in_progress_key_prefix + job_id):
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} did not start within {within_s} s")
        await asyncio.sleep(0.02)


async def wait_for_progress(
    redis: ArqRedis, job_id: str, counter: str, at_least: int, *, within_s: float
) -> dict[str, Any]:
    """The job's published progress once `counter` has reached `at_least`."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        raw = await redis.get(PROGRESS_KEY_PREFIX + job_id)
        if raw is not None:
            progress: dict[str, Any] = json.loads(raw)
            if int(progress.get(counter, 0)) >= at_least:
                return progress
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} did not report {counter} >= {at_least} within {within_s} s")


async def stored_result(redis: ArqRedis, job_id: str) -> dict[str, Any] | None:
    """arq's result record for the job as Redis holds it (JSON), or None while it has none."""
    raw = await redis.get(result_key_prefix + job_id)
    if raw is None:
        return None
    record: dict[str, Any] = json.loads(raw)
    return record


async def wait_for_result(redis: ArqRedis, job_id: str, *, within_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        record = await stored_result(redis, job_id)
        if record is not None:
            return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} has no result after {within_s} s")


async def poll(check: Callable[[], Awaitable[bool]], *, within_s: float, what: str) -> None:
    """Wait until `check()` is true; fail naming `what` after `within_s` seconds."""
    deadline = time.monotonic() + within_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s} s waiting for {what}")
        await asyncio.sleep(0.05)
