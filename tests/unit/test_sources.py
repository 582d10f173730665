"""``pc_node.sources`` without a database: type mapping, scrubbing of driver messages, DSN references."""
from __future__ import annotations

import datetime as dt
import decimal

import pytest

from pc_common.errors import FailedPrecondition, InvalidInput
from pc_node.sources import Attachment, _scrub, _text, pg_column_type


@pytest.mark.parametrize("pg, ours", [("bigint", "integer"), ("smallint", "integer"), ("numeric(12,2)", "decimal"),
                                      ("double precision", "decimal"), ("date", "date"), ("text", "text"),
                                      ("character varying(20)", "text"), ("timestamp with time zone", "text")])
def test_postgres_types_map_to_column_types(pg, ours):
    assert pg_column_type(pg) == ours


def test_values_become_the_text_an_import_would_store():
    assert [_text(v) for v in (None, 7, decimal.Decimal("46.20"), decimal.Decimal("1E+2"), dt.date(2020, 1, 2),
                                True, "x")] == ["", "7", "46.20", "100", "2020-01-02", "true", "x"]


def test_driver_messages_lose_passwords_and_keep_one_line():
    dsn = "host=db user=u password=hunter2"
    msg = _scrub(f'connection failed: "{dsn}" bad\nDETAIL: more', dsn)
    assert "hunter2" not in msg and "\n" not in msg
    assert "hunter2" not in _scrub("postgresql://u:hunter2@db/x refused", "")
    assert "hunter2" not in _scrub("oops password=hunter2 here", "")


def test_dsn_references_resolve_at_read_time(tmp_path, monkeypatch):
    f = tmp_path / "dsn"
    f.write_text("host=/tmp dbname=x\n")
    assert Attachment("d", "s", "t", "k", [], dsn_file=str(f)).resolve_dsn() == "host=/tmp dbname=x"
    monkeypatch.setenv("PC_TEST_DSN", "host=/a")
    assert Attachment("d", "s", "t", "k", [], dsn_env="PC_TEST_DSN").resolve_dsn() == "host=/a"
    monkeypatch.delenv("PC_TEST_DSN")
    with pytest.raises(FailedPrecondition, match="PC_TEST_DSN"):
        Attachment("d", "s", "t", "k", [], dsn_env="PC_TEST_DSN").resolve_dsn()
    with pytest.raises(FailedPrecondition, match="DSN file"):
        Attachment("d", "s", "t", "k", [], dsn_file=str(tmp_path / "none")).resolve_dsn()
    with pytest.raises(InvalidInput):
        Attachment("d", "s", "t", "k", []).resolve_dsn()
