"""`arq worker.main.WorkerSettings`: JSON lines, engine life logged, clean exit on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_arq_cli_worker_logs_json_and_stops_on_sigterm(settings: Settings) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url or "",
        "REDIS_URL": settings.redis_url or "",
        "ETL_QUEUE": settings.queue_name,
        "LOG_FORMAT": "json",
    }
    arq = Path(sys.executable).with_name("arq")
    proc = subprocess.Popen(
        [str(arq), "worker.main.WorkerSettings"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if '"worker.started"' in line:
                break
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines += out.splitlines()
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in lines if line.strip()]
    events = [record["event"] for record in records]
    for expected in ("engine.created", "worker.started", "engine.disposed", "worker.stopped"):
        assert expected in events, (expected, events)
    assert events.index("engine.created") < events.index("engine.disposed")
    assert all(record["level"] for record in records)
    assert any("shutdown on SIGTERM" in event for event in events)
