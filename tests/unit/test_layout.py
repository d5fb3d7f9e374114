"""The house's rules, checked: imports run one way, modules and functions stay small.

`worker/` runs `jobs/`, never the reverse; inside `worker/`, the frame (what runs a job and what
every entry point needs) never imports an entry point (what faces people and apps).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENTRY_POINTS = (
    "worker.main",
    "worker.cli",
    "worker.client",
    "worker.requests",
    "worker.status",
    "worker.demo",
    "worker.dashboard",
)
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
LONG_REASON = "# Long:"


def modules(package: str) -> Iterator[tuple[str, Path]]:
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path


def imported(path: Path, module: str) -> set[str]:
    """Every module `path` imports, at any depth (inside functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")[: -node.level]
                found.add(".".join([*base, node.module or ""]).rstrip("."))
            elif node.module:
                found.add(node.module)
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_no_job_module_imports_the_worker() -> None:
    offenders = {
        name: sorted(i for i in imported(path, name) if under(i, ("worker",)))
        for name, path in modules("jobs")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_frame_module_imports_an_entry_point() -> None:
    offenders = {}
    for name, path in modules("worker"):
        if under(name, ENTRY_POINTS):
            continue
        bad = sorted(i for i in imported(path, name) if under(i, ENTRY_POINTS))
        if bad:
            offenders[name] = bad
    assert offenders == {}


@pytest.mark.parametrize("package", ["worker", "jobs"])
def test_modules_and_functions_stay_small(package: str) -> None:
    too_long = []
    for name, path in modules(package):
        source = path.read_text()
        lines = source.splitlines()
        if len(lines) > MAX_MODULE_LINES:
            too_long.append(f"{name}: {len(lines)} lines")
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
            reason = lines[first - 2].strip().startswith(LONG_REASON) if first > 1 else False
            if length > MAX_FUNCTION_LINES and not reason:
                too_long.append(f"{name}.{node.name}: {length} lines")
    assert too_long == []


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from worker.settings import Settings\n")
    assert "worker.settings" in imported(module, "jobs.m")


FORBIDDEN_DOORS = re.compile(r"\bengine\.(connect|begin)\(|create_async_engine|AsyncEngine\b")


def test_jobs_touch_the_database_only_through_their_session() -> None:
    """One door: every job opens a session from the worker's sessionmaker, never the engine."""
    offenders = [
        f"{name}:{n}: {line.strip()}"
        for name, path in modules("jobs")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if FORBIDDEN_DOORS.search(line)
    ]
    assert offenders == []
    assert FORBIDDEN_DOORS.search("async with run.engine.begin() as conn:")
