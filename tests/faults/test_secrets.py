"""No password is ever printed: not by the worker, the `etl` command, arq, SQLAlchemy or redis-py.

DATABASE_URL and REDIS_URL carry real passwords here (the private PostgreSQL checks its role's
password with scram, the private Redis runs with requirepass), and wrong ones too. Everything the
processes write, and everything the jobs leave in Redis, is searched for each password's text.
"""

from __future__ import annotations

import asyncio
import secrets
import sys

import pytest

from tests.support.processes import ETL_WORKER, ROOT, wait_for_result
from tests.support.rig import Rig

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]


async def etl(rig: Rig, *args: str, **env: str) -> tuple[int, str]:
    """Run the `etl` command; its exit code and everything it wrote, stdout and stderr."""
    full_env = {"PATH": "/usr/bin:/bin", "HOME": str(rig.tmp), **rig.worker_env(**env)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker.cli",
        *args,
        cwd=ROOT,
        env=full_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    return int(process.returncode or 0), out.decode(errors="replace")


def with_password(url: str, old: str, new: str) -> str:
    assert old in url
    return url.replace(old, new)


async def everything_in_redis(rig: Rig) -> str:
    texts = []
    async for key in rig.redis.scan_iter(count=1000):
        texts.append(key.decode(errors="replace"))
        if await rig.redis.type(key) == b"string":
            value = await rig.redis.get(key)
            texts.append((value or b"").decode(errors="replace"))
    return "\n".join(texts)


async def test_no_password_in_any_output_or_stored_error(rig: Rig) -> None:
    pg_password, redis_password = rig.servers.passwords
    wrong_pg, wrong_redis = "pgwrong-" + secrets.token_hex(8), "rdwrong-" + secrets.token_hex(8)
    # with_password() also proves the URLs in use carry the passwords searched for.
    bad_pg_url = with_password(rig.servers.postgres.url, pg_password, wrong_pg)
    bad_redis_url = with_password(rig.servers.redis.url, redis_password, wrong_redis)
    captured: dict[str, str] = {}

    # `etl worker` with the right passwords, at DEBUG, running jobs that succeed and that fail.
    worker = await rig.spawn_worker(command=ETL_WORKER, LOG_LEVEL="DEBUG").started()
    code, captured["etl check"] = await etl(rig, "check")
    assert code == 0, captured["etl check"]
    code, captured["etl enqueue ping"] = await etl(rig, "enqueue", "ping")
    assert code == 0, captured["etl enqueue ping"]
    ping = captured["etl enqueue ping"].strip().splitlines()[-1]
    bad_payload = await rig.enqueue("ping", touch_db="perhaps")
    unknown = await rig.enqueue("import_file", dataset="orders", path="../../etc/passwd")
    transfer = await rig.enqueue(
        "transfer_funds",
        transfers=[
            {
                "id": "7b0f4f0e-3c1f-4b8e-9d0e-2a1f5c3e9b11",
                "from_account": 1,
                "to_account": 2,
                "amount_cents": 5,
            }
        ],
    )
    for job in (ping, bad_payload, unknown, transfer):
        await wait_for_result(rig.redis, job, within_s=30)
    code, captured["etl status"] = await etl(rig, "status", bad_payload)
    code, captured["etl failed"] = await etl(rig, "failed", "--json")
    worker.terminate()
    assert await worker.exited(within_s=30) == 0
    captured["etl worker"] = worker.text()

    # The worker with a wrong PostgreSQL password: its jobs fail, saying so without it.
    wrong_db = rig.spawn_worker(DATABASE_URL=bad_pg_url)
    await wrong_db.started()
    refused = await rig.enqueue("ping")
    record = await wait_for_result(rig.redis, refused, within_s=30)
    assert record["r"] == {
        "__error__": "UnexpectedError",
        "message": 'InvalidPasswordError: password authentication failed for user "etl_fault"',
    }
    wrong_db.terminate()
    await wrong_db.exited(within_s=30)
    captured["worker, wrong database password"] = wrong_db.text()
    code, captured["etl worker, wrong database password"] = await etl(
        rig, "worker", DATABASE_URL=bad_pg_url
    )
    assert code != 0

    # A wrong Redis password: nothing starts, and the message does not quote it either.
    wrong_redis_worker = rig.spawn_worker(REDIS_URL=bad_redis_url)
    assert await wrong_redis_worker.exited(within_s=60) != 0
    captured["worker, wrong redis password"] = wrong_redis_worker.text()
    code, captured["etl check, wrong redis password"] = await etl(
        rig, "check", REDIS_URL=bad_redis_url
    )
    assert code != 0
    captured["redis"] = await everything_in_redis(rig)

    # The output is there to search: the worker logged its database, the jobs, their failures.
    assert "etl_fault:***@" in captured["etl worker"]
    assert "InvalidPayload" in captured["etl worker"]
    assert "engine.created" in captured["worker, wrong database password"]
    for where, text in captured.items():
        for password in (pg_password, redis_password, wrong_pg, wrong_redis):
            assert password not in text, f"a password appears in {where}:\n{text[-3000:]}"
