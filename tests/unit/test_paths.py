from __future__ import annotations

from pathlib import Path

import pytest

from jobs.errors import PathNotAllowed
from jobs.paths import resolve_inside


@pytest.fixture
def base(tmp_path: Path) -> Path:
    inbox = tmp_path / "inbox"
    (inbox / "sub").mkdir(parents=True)
    (inbox / "sub" / "a.csv").write_text("x")
    (tmp_path / "outside.csv").write_text("x")
    return inbox


def test_relative_path_resolves_inside(base: Path) -> None:
    assert resolve_inside(base, "sub/a.csv") == (base / "sub" / "a.csv").resolve()


def test_absolute_path_inside_is_allowed(base: Path) -> None:
    assert resolve_inside(base, str(base / "sub" / "a.csv")) == (base / "sub" / "a.csv").resolve()


def test_missing_file_inside_is_allowed_for_writers(base: Path) -> None:
    assert resolve_inside(base, "new.csv") == base.resolve() / "new.csv"


def test_dotdot_that_stays_inside_is_allowed(base: Path) -> None:
    assert resolve_inside(base, "sub/../sub/a.csv") == (base / "sub" / "a.csv").resolve()


@pytest.mark.parametrize("path", ["../outside.csv", "sub/../../outside.csv", "..", "."])
def test_dotdot_leaving_the_base_is_refused(base: Path, path: str) -> None:
    with pytest.raises(PathNotAllowed, match="is outside"):
        resolve_inside(base, path)


def test_absolute_path_outside_is_refused(base: Path, tmp_path: Path) -> None:
    with pytest.raises(PathNotAllowed, match=r"'/etc/passwd' is outside"):
        resolve_inside(base, "/etc/passwd")
    with pytest.raises(PathNotAllowed, match="is outside"):
        resolve_inside(base, str(tmp_path / "outside.csv"))


def test_sibling_directory_with_the_same_prefix_is_refused(base: Path, tmp_path: Path) -> None:
    (tmp_path / "inbox2").mkdir()
    with pytest.raises(PathNotAllowed, match="is outside"):
        resolve_inside(base, str(tmp_path / "inbox2" / "a.csv"))


def test_symlink_pointing_outside_is_refused(base: Path, tmp_path: Path) -> None:
    (base / "link.csv").symlink_to(tmp_path / "outside.csv")
    (base / "linkdir").symlink_to(tmp_path)
    with pytest.raises(PathNotAllowed, match=r"'link\.csv' is outside"):
        resolve_inside(base, "link.csv")
    with pytest.raises(PathNotAllowed, match="is outside"):
        resolve_inside(base, "linkdir/outside.csv")


def test_symlink_inside_is_followed(base: Path) -> None:
    (base / "alias.csv").symlink_to(base / "sub" / "a.csv")
    assert resolve_inside(base, "alias.csv") == (base / "sub" / "a.csv").resolve()


def test_base_reached_through_a_symlink_still_works(base: Path, tmp_path: Path) -> None:
    (tmp_path / "inbox-link").symlink_to(base)
    assert (
        resolve_inside(tmp_path / "inbox-link", "sub/a.csv") == (base / "sub" / "a.csv").resolve()
    )


def test_symlink_loop_is_refused(base: Path) -> None:
    (base / "loop").symlink_to(base / "loop")
    with pytest.raises(PathNotAllowed):
        resolve_inside(base, "loop")


def test_nul_byte_is_refused(base: Path) -> None:
    with pytest.raises(PathNotAllowed, match="not a usable file name"):
        resolve_inside(base, "a\x00.csv")
