"""Confining a caller-supplied path to one directory (the import dir, the export dir)."""

from __future__ import annotations

from pathlib import Path

from jobs.errors import PathNotAllowed


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
