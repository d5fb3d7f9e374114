"""`etl dashboard`: the app served by uvicorn, on loopback unless told otherwise."""

from __future__ import annotations

import ipaddress
import signal
from types import FrameType

from worker.cli.exits import EXIT_OK
from worker.cli.render import err
from worker.dashboard.app import create_app
from worker.settings import Settings


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(settings: Settings, *, host: str, port: int) -> int:
    """Serve the dashboard until interrupted."""
    import uvicorn

    if not is_loopback(host):
        err(
            f"etl: the dashboard listens on {host}, not only on this machine: whoever reaches it "
            "can read jobs and download exports (actions still need ETL_DASHBOARD_TOKEN)"
        )
    actions = "need ETL_DASHBOARD_TOKEN" if settings.dashboard_token else "off (read-only)"
    shown = f"[{host}]" if ":" in host else host
    err(f"dashboard of queue {settings.queue_name!r} on http://{shown}:{port}/ (actions {actions})")
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_config=None,  # keep the service's structlog set-up
        access_log=False,
        server_header=False,
    )
    # uvicorn stops gracefully on SIGINT and SIGTERM, then raises the signal again under the
    # handler it found: make both a KeyboardInterrupt, caught here, so either exits 0.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        uvicorn.Server(config).run()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    err("dashboard stopped")
    return EXIT_OK


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
