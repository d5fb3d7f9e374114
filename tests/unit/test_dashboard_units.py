"""The dashboard's pure parts, the registry's records and the finished index's parsing: no I/O."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr
from starlette.requests import Request

from worker.dashboard.actions import _safe_next
from worker.dashboard.auth import SESSION_COOKIE, SESSION_MAX_AGE_S, Auth, same_origin
from worker.dashboard.queries import FamilySeries, Throughput
from worker.dashboard.server import is_loopback
from worker.dashboard.views import chart, job_json, progress_of, redact
from worker.finished import family_of, parse_finished, rows_of
from worker.requests import _cancelled_result
from worker.serialization import serialize
from worker.status import JobState, _from_result
from worker.workers import STALE_AFTER_S, WorkerRecord


def _request(*, cookie: str = "", headers: dict[str, str] | None = None) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if cookie:
        raw.append((b"cookie", f"{SESSION_COOKIE}={cookie}".encode()))
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": raw,
        "scheme": "http",
        "server": ("127.0.0.1", 8787),
        "query_string": b"",
    }
    return Request(scope)


def test_redact_masks_secret_names_and_url_passwords_and_cuts_long_values() -> None:
    value = {
        "dataset": "customers",
        "password": "hunter2",
        "api_key": "k",
        "nested": {"dsn": "postgresql://app:s3cret@db/x", "Token": ""},
        "rows": list(range(30)),
        "text": "x" * 600,
    }
    shown = redact(value)
    assert shown["password"] == shown["api_key"] == "***"
    assert shown["nested"] == {"dsn": "postgresql://app:***@db/x", "Token": ""}
    assert shown["rows"][-1] == "… 10 more" and len(shown["rows"]) == 21
    assert len(shown["text"]) == 500
    assert "hunter2" not in json.dumps(shown) and "s3cret" not in json.dumps(shown)


def test_job_json_redacts_arguments_and_errors() -> None:
    state = JobState(
        job_id="j",
        state="complete",
        function="f",
        kwargs={"secret": "x", "url": "redis://:pw@host:6379/0"},
        result={"token": "t"},
    )
    out = job_json(state)
    assert out["kwargs"] == {"secret": "***", "url": "redis://:***@host:6379/0"}
    assert out["result"] == {"token": "***"}


def test_progress_has_a_rate_and_an_eta_only_when_the_total_is_known() -> None:
    now = datetime(2026, 1, 1, 12, 0, 10, tzinfo=UTC)
    started = now - timedelta(seconds=10)
    rows = progress_of({"rows": 5000, "rejected": 3}, started_at=started, now=now)
    assert rows is not None
    assert (rows.done, rows.total, rows.rate, rows.eta_s, rows.percent) == (
        5000,
        None,
        500.0,
        None,
        None,
    )
    transfers = progress_of({"transfers_done": 250, "transfers": 1000}, started_at=started, now=now)
    assert transfers is not None
    assert (transfers.unit, transfers.rate, transfers.eta_s, transfers.percent) == (
        "transfers",
        25.0,
        30.0,
        25.0,
    )
    assert progress_of(None, started_at=started, now=now) is None
    assert progress_of({"other": 1}, started_at=started, now=now) is None
    assert progress_of({"rows": 0}, started_at=None, now=now).rate is None  # type: ignore[union-attr]


def test_chart_stacks_families_per_minute() -> None:
    minutes = [datetime(2026, 1, 1, 12, m, tzinfo=UTC) for m in range(60)]
    data = Throughput(
        minutes,
        {
            "imports": FamilySeries([0] * 59 + [2], [0] * 59 + [600], [0] * 60),
            "exports": FamilySeries([0] * 59 + [2], [0] * 60, [0] * 60),
        },
    )
    jobs = chart(data, what="jobs", width=600, height=100)
    assert jobs.peak == 4
    assert [(round(b.height), round(b.y)) for b in jobs.bars] == [(50, 50), (50, 0)]
    assert jobs.legend[0] == ("imports", "#2b6cb0", "2 jobs, 0.2 rows/s avg")
    rows = chart(data, what="rows")
    assert rows.peak == 10  # 600 rows in a minute
    assert chart(Throughput(minutes, {}), what="jobs").bars == []


def test_sessions_are_signed_fresh_and_tied_to_their_csrf_token() -> None:
    auth = Auth(SecretStr("s3cret-token"))
    assert auth.enabled and auth.token_matches("s3cret-token")
    assert not auth.token_matches("s3cret-tokeN") and not auth.token_matches("")
    cookie = auth.new_session(now=1_000_000)
    session = auth.session_of(_request(cookie=cookie), now=1_000_010)
    assert session is not None and session == cookie.split(".")[0]
    assert "s3cret" not in cookie
    assert auth.session_of(_request(cookie=cookie), now=1_000_000 + SESSION_MAX_AGE_S + 1) is None
    session_id, issued, mac = cookie.split(".")
    forged = f"{session_id}.{int(issued) + 3600}.{mac}"
    assert auth.session_of(_request(cookie=forged), now=1_000_010) is None
    assert auth.session_of(_request(cookie="a.b"), now=1_000_010) is None
    other = Auth(SecretStr("another-token"))
    assert other.session_of(_request(cookie=cookie), now=1_000_010) is None  # token changed
    token = auth.csrf_token(session)
    assert auth.csrf_matches(session, token)
    assert not auth.csrf_matches("another-session", token)
    assert not auth.csrf_matches(session, "")


def test_without_a_token_nothing_is_accepted() -> None:
    auth = Auth(None)
    assert not auth.enabled
    assert not auth.token_matches("")
    assert not auth.bearer_matches(_request(headers={"authorization": "Bearer "}))
    assert auth.session_of(_request(cookie="a.1.b")) is None


def test_bearer_and_origin_checks() -> None:
    auth = Auth(SecretStr("tok"))
    assert auth.bearer_matches(_request(headers={"authorization": "Bearer tok"}))
    assert not auth.bearer_matches(_request(headers={"authorization": "Basic tok"}))
    assert same_origin(_request())
    assert same_origin(_request(headers={"origin": "http://127.0.0.1:8787"}))
    assert not same_origin(_request(headers={"origin": "http://evil.example"}))
    assert not same_origin(_request(headers={"origin": "null"}))


@pytest.mark.parametrize(
    ("target", "safe"),
    [
        ("/failed?function=ping", "/failed?function=ping"),
        ("//evil.example/x", "/"),
        ("https://evil.example", "/"),
        ("/\\evil.example", "/"),
        ("", "/"),
        (None, "/"),
    ],
)
def test_login_only_redirects_within_the_site(target: str | None, safe: str) -> None:
    assert _safe_next(target) == safe


def test_loopback_hosts() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("db")


def test_results_map_to_outcomes_rows_and_families() -> None:
    base = {"t": 1, "a": [], "et": 1, "st": 2, "ft": 1_700_000_000_000, "q": "q"}
    done = serialize({**base, "f": "import_file", "k": {}, "s": True, "r": {"rows_read": 7}})
    entry = parse_finished("a", done)
    assert entry is not None and (entry.outcome, entry.rows) == ("complete", 7)
    failed = serialize({**base, "f": "transfer_funds", "k": {}, "s": False, "r": ValueError("bad")})
    assert parse_finished("b", failed).outcome == "failed"  # type: ignore[union-attr]
    upsert = {"rows": [{}, {}, {}]}
    assert rows_of("upsert_rows", {"inserted": 1}, upsert) == 3
    assert rows_of("nightly_export", {"exports": [{"rows": 2}, {"rows": 5}]}, {}) == 7
    assert rows_of("transfer_funds", {"applied": 2, "rejected": 1, "duplicate": 1}, {}) == 4
    assert (family_of("export_dataset"), family_of("nightly_export"), family_of("ping")) == (
        "exports",
        "exports",
        "other",
    )
    assert parse_finished("c", b"\x80 not json") is None


def test_a_cancel_of_a_waiting_job_records_what_arq_records_for_an_abort() -> None:
    record = serialize({"t": 1, "f": "ping", "a": [], "k": {"touch_db": False}, "et": 5})
    raw = _cancelled_result("j1", record, b"2", queue_name="q", now_ms=1_000)
    state = _from_result("j1", raw, retried_as=None)
    assert (state.state, state.function, state.kwargs, state.tries) == (
        "cancelled",
        "ping",
        {"touch_db": False},
        2,
    )
    assert state.finished and state.error is not None and state.error.is_cancellation
    entry = parse_finished("j1", raw)
    assert entry is not None and (entry.outcome, entry.finished_ms) == ("cancelled", 1_000)
    # arq's own record of a job aborted while it ran reads back the same way
    aborted = serialize({"t": 1, "f": "ping", "s": False, "r": asyncio_cancelled(), "ft": 9})
    assert _from_result("j2", aborted, retried_as=None).state == "cancelled"


def asyncio_cancelled() -> BaseException:
    import asyncio

    return asyncio.CancelledError()


def test_worker_records_go_stale_after_missed_beats() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    ms = int(now.timestamp() * 1000)
    raw = json.dumps(
        {
            "host": "h",
            "pid": 1,
            "queue": "q",
            "started_ms": ms - 60_000,
            "heartbeat_ms": ms - int(STALE_AFTER_S * 1000) - 1,
            "running": {"j": ms - 1000, "bad": "x"},
            "max_jobs": 4,
        }
    ).encode()
    record = WorkerRecord.parse("w", raw, now=now)
    assert record is not None and record.stale and list(record.running) == ["j"]
    fresh = WorkerRecord.parse("w", raw, now=now - timedelta(seconds=5))
    assert fresh is not None and not fresh.stale
    assert WorkerRecord.parse("w", b"[]", now=now) is None
    assert record.as_json()["running"] == {"j": "2025-12-31T23:59:59+00:00"}
