"""Nested export lines (jobs/exports/nested.py) written by template equal the JSON encoder's."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import BigInteger, Boolean, Column, DateTime, Float, MetaData, Table, Text

from jobs.exports.nested import _members, pg_timestamp

TABLE = Table(
    "things",
    MetaData(),
    Column("id", BigInteger, primary_key=True),
    Column("name", Text, nullable=False),
    Column("note", Text, nullable=True),
    Column("flag", Boolean, nullable=False),
    Column("ratio", Float, nullable=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("100%", Text, nullable=False),
)
COLUMNS = tuple(column.name for column in TABLE.columns)


def encoded(values: dict[str, Any]) -> str:
    def default(value: object) -> object:
        assert isinstance(value, datetime)
        return pg_timestamp(value)

    return json.dumps(values, ensure_ascii=False, separators=(",", ":"), default=default)


@pytest.mark.parametrize(
    "values",
    [
        {"id": 1, "name": "plain", "note": None, "flag": True, "ratio": None,
         "at": datetime(2026, 1, 2, tzinfo=UTC), "100%": ""},
        {"id": -(2**63), "name": 'q"uote\\back\nline\ttab\x01\x1f', "note": "Zoë 名前 \u2028",
         "flag": False, "ratio": 0.1, "at": datetime(2026, 1, 2, 3, 4, 5, 500000, tzinfo=UTC),
         "100%": "%s %d"},
        {"id": 2**63 - 1, "name": "", "note": "", "flag": True, "ratio": 1e300,
         "at": datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=timezone(timedelta(hours=2))),
         "100%": "x"},
        {"id": 0, "name": "infinite", "note": None, "flag": False, "ratio": -0.0,
         "at": datetime.max, "100%": "y"},
    ],
)  # fmt: skip
def test_members_write_what_the_encoder_writes(values: dict[str, Any]) -> None:
    line = "{" + _members(TABLE, COLUMNS)(SimpleNamespace(**values)) + "}"
    assert line == encoded(values)
    assert json.loads(line)["name"] == values["name"]


def test_a_single_column() -> None:
    obj = SimpleNamespace(name='one "value"')
    assert _members(TABLE, ("name",))(obj) == '"name":"one \\"value\\""'
