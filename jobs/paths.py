"""Confining a caller-supplied path to one directory (the import dir, the export dir), or to one
prefix of a bucket when that directory is an `s3://` URL."""

from __future__ import annotations

from pathlib import Path

from jobs.errors import PathNotAllowed
from jobs.storage import S3_SCHEME, ObjectPath, is_s3_url, key_problem


def resolve_inside(base: Path, path: str) -> Path:
    """`path` (relative to `base`, or absolute) resolved, symlinks included; it must stay in `base`.

    The check is made on the resolved path, so `..` components and symlinks that lead out of
    `base` are refused however they are spelled. The file itself need not exist yet (exports
    resolve the path they are about to write).
    """
    if not path or "\x00" in path:
        raise PathNotAllowed(f"path {path[:80]!r} is not a usable file name")
    try:
        root = base.resolve(strict=False)
        target = (root / path).resolve(strict=False)
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long
        raise PathNotAllowed(f"path {path[:200]!r} cannot be resolved: {exc}") from None
    if target == root or not target.is_relative_to(root):
        raise PathNotAllowed(
            f"path {path[:200]!r} is outside {str(base)!r}; give a path inside that directory"
        )
    return target


def object_inside(root: ObjectPath, path: str) -> ObjectPath:
    """`path` (a key relative to `root`, or its `s3://` URL inside it) as an object under `root`.

    S3 keys are taken literally (no store resolves `..`), so rather than resolve anything, a key
    with a `.`, `..` or empty segment is refused, as are absolute paths and URLs elsewhere.
    """
    if not path or "\x00" in path:
        raise PathNotAllowed(f"path {path[:80]!r} is not a usable file name")
    outside = PathNotAllowed(
        f"path {path[:200]!r} is outside {str(root)!r}; give a key relative to it "
        "(no '..', '.' or empty segments)"
    )
    if is_s3_url(path):
        bucket, _, key = path.strip()[len(S3_SCHEME) :].partition("/")
        target = ObjectPath(bucket, key, root.options)
        if key_problem(key) is not None or not target.is_inside(root):
            raise outside
        return target
    if "://" in path or path.startswith("/") or key_problem(path) is not None:
        raise outside
    return root / path
