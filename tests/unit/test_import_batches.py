"""The importer's batched path (pyarrow, pc_node.import_batches) gives exactly what the
line-by-line path gives: the same stored rows, types, row numbers and reasons, rejects; files
it cannot read the same way go the line-by-line way; progress is reported."""
from __future__ import annotations

import datetime as dt
import decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pc_common.errors import InvalidInput
from pc_node import arrow_input, idnum, importer
from pc_node.runtime import open_cipher
from pc_node.store import NodeStore


def ids(n: int) -> list[str]:
    return [idnum.make_id("310104", dt.date(1960, 1, 1) + dt.timedelta(days=11 * i), i % 1000) for i in range(n)]


@pytest.fixture
def store(tmp_path):
    s = NodeStore(tmp_path / "node.db", open_cipher(tmp_path, tmp_path / "master.key"))
    yield s
    s.close()


def messy_csv(path, n: int = 40):
    good = ids(n)
    lines = ["id_number,plate,amount,since,code"]
    for i, k in enumerate(good):
        key = k
        if i % 5 == 1:
            key = f" {k[:6]} {k[6:]} "                     # blanks: normalised
        if i % 7 == 3 and k.endswith("X"):
            key = k.lower()
        lines.append(f"{key}, 京A{i:04d} ,{i}.5,2020-02-{1 + i % 28:02d},0{i % 9}")
    lines.append(f"{good[0][:17]}{'1' if good[0][17] != '1' else '2'},x,1,2020-01-01,01")   # bad check digit
    lines.append("12345,x,1,2020-01-01,01")                                             # wrong length
    lines.append(f"{good[3]},y,,,")                                                     # empty cells
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def both_ways(store, path, **kw):
    """(fast report, slow report) of importing ``path`` as two datasets."""
    fast = importer.import_file(store, path, dataset="fast", **kw)
    slow = importer._import_rows(store, path, "slow", path.with_suffix(".toml"),
                                 importer.read_metadata(path.with_suffix(".toml")), kw.get("skip_invalid", False),
                                 kw.get("rejects"), False, kw.get("rejects_with_values", True))
    return fast, slow


def test_the_batched_path_stores_what_the_line_by_line_path_stores(store, tmp_path):
    path = messy_csv(tmp_path / "cars.csv")
    fast, slow = both_ways(store, path, skip_invalid=True, rejects=tmp_path / "r.csv")
    assert (fast.imported, fast.rejected) == (slow.imported, slow.rejected) == (41, 2)
    assert [(c.name, c.type) for c in fast.columns] == [(c.name, c.type) for c in slow.columns] == [
        ("plate", "text"), ("amount", "decimal"), ("since", "date"), ("code", "text")]
    assert store.keys("fast") == store.keys("slow")
    keys = store.keys("fast")
    assert store.rows_for_keys("fast", keys) == store.rows_for_keys("slow", keys)
    assert store.rows_for_keys("fast", keys[:1])[keys[0]][0][0] == "京A0000"          # stripped


def test_refusals_name_the_same_rows_and_reasons(store, tmp_path):
    path = messy_csv(tmp_path / "cars.csv")
    with pytest.raises(InvalidInput) as fast:
        importer.import_file(store, path)
    with pytest.raises(InvalidInput) as slow:
        importer._import_rows(store, path, "cars", path.with_suffix(".toml"), importer.read_metadata(None),
                              False, None, False, True)
    assert str(fast.value) == str(slow.value)
    assert "2 invalid row(s), nothing imported: row 42: id_number: invalid identity number: bad check digit" \
        in str(fast.value)
    assert store.datasets() == [] and list(store.blocks_dir.glob("*.pcb")) == []


def test_declared_types_are_checked_column_by_column(store, tmp_path):
    k = ids(3)
    path = tmp_path / "w.csv"
    path.write_text(f"id_number,amount,day\n{k[0]},1.25,2024-02-29\n{k[1]},abc,2024-01-01\n{k[2]},3,2023-02-29\n")
    (tmp_path / "w.toml").write_text('[columns.amount]\ntype = "decimal"\n[columns.day]\ntype = "date"\n')
    fast, slow = both_ways(store, path, skip_invalid=True, rejects=tmp_path / "r.csv")
    assert fast.imported == slow.imported == 1
    rejects = (tmp_path / "r.csv").read_text()
    assert "row 3" not in rejects and "amount: not a valid decimal" in rejects and "day: not a valid date" in rejects


def test_files_the_batched_reader_reads_differently_go_line_by_line(store, tmp_path):
    k = ids(2)
    quoted = tmp_path / "q.csv"
    quoted.write_text(f'id_number,note\n{k[0]},"two\nlines"\n{k[1]},"say ""hi"""\n', encoding="utf-8")
    with pytest.raises(arrow_input.Fallback):
        list(arrow_input.open_table(quoted).batches())
    rep = importer.import_file(store, quoted)
    assert rep.imported == 2 and store.rows_for_keys("q", k) == {k[0]: [["two\nlines"]], k[1]: [['say "hi"']]}
    short = tmp_path / "short.csv"
    short.write_text(f"id_number,a\n{k[0]},1\n{k[1]}\n")
    with pytest.raises(InvalidInput, match="row 3: expected 2 fields, found 1"):
        importer.import_file(store, short)


def test_parquet_values_become_the_text_python_gives_them(store, tmp_path):
    k = ids(3)
    table = pa.table({"id_number": k, "n": pa.array([1, None, -3], pa.int64()),
                      "d": pa.array([dt.date(2024, 1, 2), None, dt.date(1999, 12, 31)]),
                      "m": pa.array([decimal.Decimal("12.50"), decimal.Decimal("0.05"), None], pa.decimal128(9, 2)),
                      "f": [1.0, 2.5, None], "b": [True, False, None]})
    pq.write_table(table, tmp_path / "p.parquet")
    rep = importer.import_file(store, tmp_path / "p.parquet")
    assert rep.imported == 3
    assert store.rows_for_keys("p", k) == {
        k[0]: [["1", "2024-01-02", "12.50", "1.0", "True"]], k[1]: [["", "", "0.05", "2.5", "False"]],
        k[2]: [["-3", "1999-12-31", "", "", ""]]}


def test_progress_is_reported_up_to_the_end(store, tmp_path, capsys):
    path = messy_csv(tmp_path / "cars.csv")
    seen = []
    importer.import_file(store, path, skip_invalid=True, rejects=tmp_path / "r.csv", progress=seen.append)
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)
    importer.import_file(store, path, dataset="again", skip_invalid=True, rejects=tmp_path / "r.csv", progress=True)
    assert "100%" in capsys.readouterr().err
