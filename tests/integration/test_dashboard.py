"""The dashboard over HTTP (Starlette's TestClient): what pages and the API show, who may act,
what may be downloaded, and that no password or token is ever in a response.

Redis is a private one with a password, the database URL carries one too, and the dashboard has
a token: every response body and header is searched for all three.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from arq.connections import ArqRedis
from starlette.testclient import TestClient

from tests.support.dashboard import (
    DB_PASSWORD,
    TOKEN,
    Scenario,
    private_redis,
    scenario,
    secret_settings,
    sign_in,
)
from tests.support.servers import PrivateRedis
from worker.dashboard.app import create_app
from worker.redis import connect
from worker.settings import Settings

__all__ = ["private_redis"]  # the module-scoped fixture, used by name


@pytest.fixture
def dash_settings(settings: Settings, private_redis: PrivateRedis) -> Settings:
    return secret_settings(settings, private_redis.url)


@pytest.fixture
async def dash_redis(dash_settings: Settings) -> AsyncIterator[ArqRedis]:
    pool = await connect(dash_settings)
    yield pool
    await pool.flushdb()
    await pool.aclose()


@pytest.fixture
async def jobs(dash_settings: Settings, dash_redis: ArqRedis, clean_db: None) -> Scenario:
    return await scenario(dash_settings, dash_redis)


@pytest.fixture
def client(dash_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(dash_settings), base_url="http://127.0.0.1:8787") as test_client:
        yield test_client


def test_the_api_shows_queues_jobs_and_failures(client: TestClient, jobs: Scenario) -> None:
    queues = client.get("/api/queues").json()
    assert queues["counts"] == {
        "queued": 3,
        "deferred": 1,
        "in_progress": 0,
        "failed": 1,
        "finished_last_hour": 4,
    }
    # Oldest first; jobs enqueued in the same millisecond come in id order.
    assert sorted(j["job_id"] for j in queues["queued"]["jobs"]) == sorted(jobs.queued)
    assert [j["job_id"] for j in queues["deferred"]["jobs"]] == [jobs.deferred]
    recent = {j["job_id"]: j["state"] for j in queues["recently_finished"]["jobs"]}
    assert recent == {
        jobs.pinged: "complete",
        jobs.imported: "complete",
        jobs.failed_import: "failed",
        jobs.exported: "complete",
    }

    failed = client.get("/api/failed").json()
    assert [j["job_id"] for j in failed["jobs"]] == [jobs.failed_import]
    assert "missing.csv" in failed["jobs"][0]["error"]["message"]
    assert client.get("/api/failed?function=ping").json()["jobs"] == []
    assert client.get("/api/failed?function=import_file").json()["total"] == 1
    assert client.get("/api/failed?since=2999-01-01T00:00").json()["jobs"] == []
    assert client.get("/api/failed?until=2000-01-01T00:00:00Z").json()["jobs"] == []


def test_an_import_page_pages_its_rejects_by_line(client: TestClient, jobs: Scenario) -> None:
    first = client.get(f"/api/jobs/{jobs.imported}").json()
    assert first["state"] == "complete"
    assert first["result"]["rejected"] == 2
    assert [r["line_number"] for r in first["rejects"]["rows"]] == [3, 5]
    assert first["rejects"]["rows"][0]["reason"].startswith("email:")
    assert first["rejects"]["next_after"] is None
    after = client.get(f"/api/jobs/{jobs.imported}?after=3").json()
    assert [r["line_number"] for r in after["rejects"]["rows"]] == [5]
    page = client.get(f"/jobs/{jobs.imported}")
    assert page.status_code == 200
    assert "Rejected lines" in page.text and "not-an-email" in page.text


def test_an_export_page_shows_its_file_and_manifest_and_serves_both(
    client: TestClient, jobs: Scenario, dash_settings: Settings
) -> None:
    job = client.get(f"/api/jobs/{jobs.exported}").json()
    (entry,) = job["files"]
    file = entry["file"]
    assert entry["dataset"] == "customers" and file["exists"]
    assert file["manifest"]["sha256"] == job["result"]["sha256"]
    assert file["manifest"]["rows"] == job["result"]["rows"] == 38
    download = client.get(file["download"])
    assert download.status_code == 200
    assert "attachment" in download.headers["content-disposition"]
    assert hashlib.sha256(download.content).hexdigest() == job["result"]["sha256"]
    page = client.get(f"/jobs/{jobs.exported}").text
    assert job["result"]["sha256"] in page
    manifest_link = re.search(r'href="(/download\?path=[^"]+manifest\.json)"', page)
    assert manifest_link is not None
    served = client.get(manifest_link.group(1).replace("&amp;", "&"))
    assert json.loads(served.content)["sha256"] == job["result"]["sha256"]


def test_every_page_renders(client: TestClient, jobs: Scenario) -> None:
    overview = client.get("/")
    assert overview.status_code == 200
    for text in ("In progress", "Queued", "Deferred", "Recently finished", "Failed", "Workers"):
        assert text in overview.text
    assert 'data-refresh="/fragments/running"' in overview.text
    assert "<svg" in overview.text and "imports: 2 jobs" in overview.text
    for path in ("/queued", "/deferred", "/finished", "/failed", "/workers", "/schedule"):
        assert client.get(path).status_code == 200, path
    assert jobs.queued[0] in client.get("/queued").text
    assert "missing.csv" in client.get("/failed?function=import_file").text
    assert client.get("/jobs/no-such-job").status_code == 404
    assert client.get("/api/jobs/no-such-job").json() == {
        "job_id": "no-such-job",
        "state": "not_found",
    }
    schedule = client.get("/api/schedule").json()
    assert [(e["name"], e["function"], e["cron"]) for e in schedule["entries"]] == [
        ("nightly_export", "nightly_export", "0 2 * * *")
    ]
    assert schedule["nightly_at_utc"] == "02:00"
    assert schedule["next_job_id"].startswith("nightly_export:")
    assert schedule["next_job_id"].endswith("123")  # arq's tick microseconds
    throughput = client.get("/api/throughput").json()
    assert len(throughput["minutes"]) == 60
    assert sum(throughput["families"]["imports"]["jobs_per_minute"]) == 2
    exports = throughput["families"]["exports"]
    assert sum(exports["rows_per_second"]) * 60 == pytest.approx(38, abs=0.1)
    assert client.get("/api/workers").json() == {"workers": []}


def test_bad_parameters_are_one_line_400s(client: TestClient, jobs: Scenario) -> None:
    assert client.get("/failed?since=yesterday").status_code == 400
    answer = client.get("/api/failed?function=drop_tables")
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("function: unknown job 'drop_tables'")
    assert client.get("/queued?page=-1").status_code == 400


def _state(client: TestClient, job_id: str) -> dict[str, object]:
    result: dict[str, object] = client.get(f"/api/jobs/{job_id}").json()
    return result


def test_actions_need_a_session_and_its_csrf_token(client: TestClient, jobs: Scenario) -> None:
    failed, queued = jobs.failed_import, jobs.queued[0]
    refused = [
        client.post(f"/jobs/{failed}/retry", data={}),  # no session
        client.post(f"/jobs/{queued}/cancel", data={"csrf": "0" * 64}),
        client.post("/login", data={"token": "wrong"}),
    ]
    assert [r.status_code for r in refused] == [403, 403, 403]
    csrf = sign_in(client)
    refused = [
        client.post(f"/jobs/{failed}/retry", data={}),  # session, no CSRF token
        client.post(f"/jobs/{failed}/retry", data={"csrf": "0" * 64}),
        client.post(
            f"/jobs/{failed}/retry",
            data={"csrf": csrf},
            headers={"origin": "http://evil.example"},
        ),
        client.post(f"/api/jobs/{failed}/retry"),  # the API wants the token itself
        client.post(f"/api/jobs/{failed}/retry", headers={"authorization": "Bearer nope"}),
    ]
    assert [r.status_code for r in refused] == [403] * 5
    assert "retried_as" not in _state(client, failed)
    assert _state(client, queued)["state"] == "queued"

    retried = client.post(f"/jobs/{failed}/retry", data={"csrf": csrf}, follow_redirects=False)
    assert retried.status_code == 303
    new_id = retried.headers["location"].removeprefix("/jobs/")
    assert _state(client, failed)["retried_as"] == new_id
    again = client.post(f"/jobs/{failed}/retry", data={"csrf": csrf})
    assert again.status_code == 409 and "already retried" in again.text

    cancelled = client.post(f"/jobs/{queued}/cancel", data={"csrf": csrf}, follow_redirects=False)
    assert (cancelled.status_code, cancelled.headers["location"]) == (303, f"/jobs/{queued}")
    assert _state(client, queued)["state"] == "cancelled"

    by_api = client.post(
        f"/api/jobs/{jobs.queued[1]}/cancel", headers={"authorization": f"Bearer {TOKEN}"}
    )
    assert by_api.status_code == 200 and by_api.json()["state"] == "cancelled"
    finished = client.post(
        f"/api/jobs/{jobs.pinged}/cancel", headers={"authorization": f"Bearer {TOKEN}"}
    )
    assert finished.status_code == 409
    assert "already finished" in finished.json()["error"]


def test_without_a_token_nothing_can_act(jobs: Scenario, dash_settings: Settings) -> None:
    read_only = dash_settings.model_copy(update={"dashboard_token": None})
    with TestClient(create_app(read_only), base_url="http://127.0.0.1:8787") as client:
        assert "read-only" in client.get("/").text
        assert "Actions are off" in client.get("/login").text
        answers = [
            client.post("/login", data={"token": ""}),
            client.post(f"/jobs/{jobs.queued[0]}/cancel", data={}),
            client.post(f"/api/jobs/{jobs.queued[0]}/cancel", headers={"authorization": "Bearer "}),
        ]
        assert [a.status_code for a in answers] == [403, 403, 403]
        assert _state(client, jobs.queued[0])["state"] == "queued"


def test_downloads_stay_inside_the_export_dir(
    client: TestClient, dash_settings: Settings, tmp_path: Path
) -> None:
    export_dir = dash_settings.export_dir
    (export_dir / "customers").mkdir(parents=True)
    (export_dir / "customers" / "ok.csv").write_text("id\n1\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve")
    os.symlink(secret, export_dir / "customers" / "link.csv")
    os.symlink(tmp_path, export_dir / "outside")
    assert client.get("/download?path=customers/ok.csv").text == "id\n1\n"
    for path in (
        "../secret.txt",
        str(secret),
        "customers/link.csv",
        "outside/secret.txt",
        "customers/../../secret.txt",
        "customers/ok.csv%00",
        "/etc/passwd",
    ):
        answer = client.get("/download", params={"path": path.replace("%00", "\x00")})
        assert answer.status_code == 403, path
        assert "do not serve" not in answer.text
    assert client.get("/download?path=customers").status_code == 404  # a directory
    assert client.get("/download?path=customers/none.csv").status_code == 404
    assert client.get("/download").status_code == 403


def _urls(client: TestClient, jobs: Scenario) -> list[str]:
    urls = [
        "/",
        "/queued",
        "/deferred",
        "/finished",
        "/failed",
        "/workers",
        "/schedule",
        "/login",
        "/fragments/running",
        "/fragments/counts",
        "/api/queues",
        "/api/failed",
        "/api/finished",
        "/api/workers",
        "/api/schedule",
        "/api/throughput",
        "/failed?since=bad",
        "/jobs/nothing",
        "/static/live.js",
    ]
    for job_id in (jobs.pinged, jobs.imported, jobs.failed_import, jobs.exported, jobs.deferred):
        urls += [f"/jobs/{job_id}", f"/api/jobs/{job_id}", f"/fragments/jobs/{job_id}"]
    return urls


def test_no_password_or_token_in_any_response(
    client: TestClient, jobs: Scenario, private_redis: PrivateRedis
) -> None:
    secrets = (private_redis.password, DB_PASSWORD, TOKEN)
    answers = [client.get(url) for url in _urls(client, jobs)]
    csrf = sign_in(client)
    answers += [client.get(url) for url in _urls(client, jobs)]
    answers += [
        client.post("/login", data={"token": TOKEN}, follow_redirects=False),
        client.post("/login", data={"token": TOKEN + "x"}),
        client.post(f"/jobs/{jobs.failed_import}/retry", data={"csrf": csrf}),
        client.post(f"/jobs/{jobs.queued[0]}/cancel", data={"csrf": csrf}),
        client.post(
            f"/api/jobs/{jobs.pinged}/cancel", headers={"authorization": f"Bearer {TOKEN}"}
        ),
    ]
    assert len(answers) > 50
    for answer in answers:
        seen = answer.text + json.dumps(dict(answer.headers))
        for secret in secrets:
            assert secret not in seen, (answer.url, secret[:6])
    assert any("redis" in a.text.lower() for a in answers)  # the URL is shown, redacted


def test_pages_carry_security_headers(client: TestClient) -> None:
    headers = client.get("/").headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    assert headers["cache-control"] == "no-store"
    login = client.post("/login", data={"token": TOKEN}, follow_redirects=False)
    cookie = login.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie


async def test_etl_dashboard_serves_on_loopback(settings: Settings, tmp_path: Path) -> None:
    import asyncio
    import signal
    import socket

    import httpx2

    from tests.support.etl_process import ETL, cli_env

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = cli_env(settings, tmp_path, ETL_DASHBOARD_TOKEN=TOKEN)
    proc = await asyncio.create_subprocess_exec(
        str(ETL),
        "dashboard",
        "--port",
        str(port),
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(100):
                try:
                    answer = await http.get("/api/queues")
                    break
                except httpx2.TransportError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("etl dashboard did not answer")
            assert answer.json()["queue"] == settings.queue_name
            assert (await http.get("/")).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    text = err.decode()
    assert f"on http://127.0.0.1:{port}/ (actions need ETL_DASHBOARD_TOKEN)" in text
    assert TOKEN not in text + out.decode()
    assert (proc.returncode, text.splitlines()[-1]) == (0, "dashboard stopped")


def test_the_schedule_page_lists_every_entry_of_the_schedules_file(
    dash_settings: Settings, tmp_path: Path
) -> None:
    schedules = tmp_path / "schedules.toml"
    schedules.write_text(
        '[[schedule]]\nname = "hourly-transfers"\ncron = "5 * * * *"\njob = "export_dataset"\n'
        'args = { dataset = "transfers", incremental = "hourly-transfers", format = "jsonl" }\n'
        "keep = 48\n\n"
        '[[schedule]]\nname = "nightly_export"\ncron = "0 2 * * *"\njob = "nightly_export"\n'
    )
    with_file = dash_settings.model_copy(update={"schedules_file": schedules})
    with TestClient(create_app(with_file), base_url="http://127.0.0.1:8787") as client:
        entries = client.get("/api/schedule").json()["entries"]
        assert [(e["name"], e["function"], e["cron"], e["keep"]) for e in entries] == [
            ("hourly-transfers", "export_dataset@hourly-transfers", "5 * * * *", 48),
            ("nightly_export", "nightly_export", "0 2 * * *", None),
        ]
        assert ":05:00" in entries[0]["next_run"]
        page = client.get("/schedule")
        assert page.status_code == 200
        assert "hourly-transfers" in page.text and "5 * * * *" in page.text
