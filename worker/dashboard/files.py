"""Export files as the dashboard shows and serves them: never anything outside ETL_EXPORT_DIR.

A path from a job's result or from a download link is resolved (symlinks included) and must stay
inside the export directory (`jobs.paths.resolve_inside`), and only regular files are served.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response

from jobs.errors import PathNotAllowed
from jobs.exports.staging import manifest_path
from jobs.paths import resolve_inside
from worker.dashboard.state import dashboard

MAX_MANIFEST_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class ExportFileInfo:
    """An export file named by a job's result, as it is on disk now."""

    relative: str
    exists: bool
    bytes: int | None
    manifest_relative: str | None
    manifest: dict[str, Any] | None


def regular_file(export_dir: Path, path: str) -> Path:
    """The file `path` names inside `export_dir`; PathNotAllowed outside it, FileNotFoundError
    when it is missing or not a regular file."""
    target = resolve_inside(export_dir, path)
    if not stat.S_ISREG(os.stat(target).st_mode):
        raise FileNotFoundError(path)
    return target


def _manifest(path: Path) -> dict[str, Any] | None:
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            return None
        value = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def file_info(export_dir: Path, path: str) -> ExportFileInfo | None:
    """What the page shows of an export's file; None when the result names a path outside the
    export directory. Blocking: run it in a thread."""
    try:
        target = resolve_inside(export_dir, path)
    except PathNotAllowed:
        return None
    root = export_dir.resolve()
    relative = str(target.relative_to(root))
    try:
        size: int | None = regular_file(export_dir, relative).stat().st_size
    except (OSError, PathNotAllowed):
        size = None
    manifest = manifest_path(target)
    found = _manifest(manifest) if size is not None else None
    return ExportFileInfo(
        relative=relative,
        exists=size is not None,
        bytes=size,
        manifest_relative=str(manifest.relative_to(root)) if found is not None else None,
        manifest=found,
    )


async def download(request: Request) -> Response:
    """GET /download?path=<relative to the export dir>: the file, as an attachment."""
    export_dir = dashboard(request).settings.export_dir
    path = request.query_params.get("path", "")
    if not isinstance(export_dir, Path):
        return PlainTextResponse(
            "exports are in object storage (ETL_EXPORT_DIR); fetch it there", 404
        )
    try:
        target = await asyncio.to_thread(regular_file, export_dir, path)
    except PathNotAllowed:
        return PlainTextResponse("refused: that path is outside the export directory", 403)
    except OSError:
        return PlainTextResponse("no such export file", 404)
    return FileResponse(target, filename=target.name, content_disposition_type="attachment")
