"""The block layout of imported datasets (pc_node.blocks, pc_node.store) and its bulk
HMAC-SM3 (pc_common.sm3_bulk): equal to OpenSSL's, lookups equal to a plain scan, the old
"cells" layout still readable, an interrupted import leaves the previous version."""
from __future__ import annotations

import datetime as dt
import hmac
import json
import os
import sqlite3

import numpy as np
import pytest

from pc_common.errors import IntegrityError, InvalidInput
from pc_node import blocks, idnum
from pc_node.keystore import FieldCipher
from pc_node.psi.encoding import NormalIds, normalise_ids
from pc_node.runtime import open_cipher
from pc_common.sm3_bulk import MAX_LEN, hmac_sm3_rows
from pc_node.store import NodeStore
from pc_rules.metadata import ColumnMeta, DatasetMeta


def ids(n: int, start: int = 0) -> list[str]:
    return [idnum.make_id("110105", dt.date(1950, 1, 1) + dt.timedelta(days=(7 * i) % 20000), i % 1000)
            for i in range(start, start + n)]


@pytest.fixture
def store(tmp_path):
    s = NodeStore(tmp_path / "node.db", open_cipher(tmp_path, tmp_path / "master.key"))
    yield s
    s.close()


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(blocks, "BLOCK_ROWS", 64)     # many blocks from a few hundred rows


def meta(name: str = "cars") -> DatasetMeta:
    return DatasetMeta(name=name, key_column="id_number", description="",
                       columns=[ColumnMeta("plate", "text"), ColumnMeta("value", "decimal")])


def test_bulk_hmac_sm3_equals_openssl_for_every_length():
    rng = np.random.default_rng(1)
    for key in (os.urandom(32), os.urandom(7), os.urandom(80)):
        for length in (0, 1, 17, 18, 31, 32, 55, 56, 64, MAX_LEN):
            msgs = rng.integers(0, 256, (37, length), dtype=np.uint8)
            got = hmac_sm3_rows(key, msgs)
            assert [bytes(r) for r in got] == [hmac.digest(key, bytes(m), "sm3") for m in msgs]
    with pytest.raises(ValueError):
        hmac_sm3_rows(b"k", np.zeros((1, MAX_LEN + 1), np.uint8))


def test_bulk_blind_index_equals_the_one_by_one_index():
    cipher = FieldCipher(bytes(range(32)))
    keys = ids(50)
    codes, ok = blocks.codes_of(keys)
    assert ok.all()
    assert [bytes(r) for r in cipher.blind_index_rows(codes)] == [cipher.blind_index(k) for k in keys]


def test_identifiers_pack_into_17_digits_and_back():
    keys = ids(500) + ["11010519491231002X"]
    codes, _ = blocks.codes_of(keys)
    assert blocks.ids_as_text(blocks.unpack_ids(blocks.pack_ids(codes))) == keys


def test_rows_for_keys_equals_a_plain_scan_across_many_blocks(store, small_blocks):
    keys = ids(300)
    rows = [(keys[i % 250], [f"京A{i:05d}", f"{i}.50"]) for i in range(400)]     # some people twice
    store.write_dataset(meta(), rows)
    assert store.keys("cars") == [k for k, _ in rows]
    wanted = keys[::7] + ids(5, start=5000)                                        # some absent
    expect: dict[str, list] = {}
    for k, v in rows:
        if k in wanted:
            expect.setdefault(k, []).append(list(v))
    assert store.rows_for_keys("cars", wanted) == expect
    only_value = store.rows_for_keys("cars", wanted, columns=["value"])
    assert only_value == {k: [["", v[1]] for v in vs] for k, vs in expect.items()}
    assert store.rows_for_keys("cars", ["not an id", " " + keys[0]]) == {}          # keys come normalised
    assert len(list(store.blocks_dir.glob("*.pcb"))) == 1


def test_subject_ids_are_the_distinct_keys_kept_per_version(store, small_blocks):
    keys = ids(300)
    store.write_dataset(meta(), [(keys[i % 250], [f"京A{i:05d}", "1.00"]) for i in range(400)])
    first = store.subject_ids("cars")
    assert list(first) == keys[:250] == normalise_ids(store.keys("cars"))
    assert isinstance(first, NormalIds) and normalise_ids(first) is first    # no second pass
    assert store.subject_ids("cars") is first                                # cached for the version
    store.write_dataset(meta(), [(k, ["京A00001", "1.00"]) for k in keys[:10]], replace=True)
    assert list(store.subject_ids("cars")) == keys[:10]                      # a new version is read anew


def test_stored_identifiers_must_be_valid_and_normalised(store):
    with pytest.raises(InvalidInput):
        store.write_dataset(meta(), [(ids(1)[0][:17] + "0" if ids(1)[0][17] != "0" else ids(1)[0][:17] + "1",
                                      ["a", "1"])])
    assert store.datasets() == []
    assert list(store.blocks_dir.glob("*.pcb")) == []


def test_an_interrupted_import_keeps_the_previous_version(store, small_blocks):
    first = [(k, ["A", "1"]) for k in ids(100)]
    store.write_dataset(meta(), first)

    def failing():
        for i, k in enumerate(ids(200, start=100)):
            if i == 150:
                raise RuntimeError("disk went away")
            yield k, ["B", "2"]
    with pytest.raises(RuntimeError):
        store.write_dataset(meta(), failing(), replace=True)
    assert store.dataset("cars").version == 1
    assert store.keys("cars") == [k for k, _ in first]
    assert len(list(store.blocks_dir.glob("*.pcb"))) == 1
    store.write_dataset(meta(), [(k, ["C", "3"]) for k in ids(10)], replace=True)
    assert store.dataset("cars").version == 2 and store.dataset("cars").rows == 10
    assert len(list(store.blocks_dir.glob("*.pcb"))) == 1                         # the old file is gone


def test_a_crashed_import_file_is_removed_on_opening_but_not_one_in_progress(tmp_path, store):
    store.write_dataset(meta(), [(k, ["A", "1"]) for k in ids(5)])
    crashed = store.block_writer(2)
    crashed.add(blocks.codes_of(ids(3))[0], [blocks.pa.array(["x"] * 3)] * 2)
    crashed.finish()
    crashed.release()                          # as if its process died before the commit
    running = store.block_writer(2)            # still held by its (live) writer
    again = NodeStore(tmp_path / "node.db", open_cipher(tmp_path, tmp_path / "master.key"))
    names = {p.name for p in store.blocks_dir.glob("*.pcb")}
    assert crashed.path.name not in names and running.path.name in names and len(names) == 2
    assert again.keys("cars") == ids(5)
    running.abort()
    again.close()


def test_a_tampered_block_fails_to_decrypt(store):
    store.write_dataset(meta(), [(k, ["A", "1"]) for k in ids(20)])
    path = next(store.blocks_dir.glob("*.pcb"))
    data = bytearray(path.read_bytes())
    data[40] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        store.keys("cars")


def test_datasets_in_the_old_cells_layout_stay_readable(tmp_path):
    """A store written before the block layout: no storage column, one row per record."""
    cipher = open_cipher(tmp_path, tmp_path / "master.key")
    db = sqlite3.connect(tmp_path / "node.db")
    db.executescript("""
        CREATE TABLE datasets (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, key_column TEXT NOT NULL,
            description TEXT NOT NULL, columns_json TEXT NOT NULL, rows INTEGER NOT NULL, version INTEGER NOT NULL,
            updated_at TEXT NOT NULL, key_json TEXT NOT NULL DEFAULT '{}');
        CREATE TABLE rows (dataset_id INTEGER NOT NULL, row_no INTEGER NOT NULL, key_index BLOB NOT NULL,
            key_enc BLOB NOT NULL, payload_enc BLOB NOT NULL, PRIMARY KEY (dataset_id, row_no)) WITHOUT ROWID;
        CREATE INDEX rows_by_key ON rows (dataset_id, key_index);""")
    keys = ids(4)
    db.execute("INSERT INTO datasets VALUES (1, 'old', 'id_number', '', ?, 4, 3, '2025-01-01T00:00:00Z', '{}')",
               (json.dumps([{"name": "plate", "type": "text"}]),))
    for n, k in enumerate(keys):
        aad = f"old/{n}".encode()
        db.execute("INSERT INTO rows VALUES (1, ?, ?, ?, ?)", (n, cipher.blind_index(k), cipher.encrypt(k.encode(), aad),
                                                              cipher.encrypt(json.dumps([f"P{n}"]).encode(), aad)))
    db.commit()
    db.close()
    store = NodeStore(tmp_path / "node.db", cipher)
    assert store.keys("old") == keys
    assert store.rows_for_keys("old", [keys[2], ids(1, start=900)[0]]) == {keys[2]: [["P2"]]}
    assert store.rows_for_keys("old", [keys[2]], columns=[]) == {keys[2]: [[""]]}
    assert store.dataset("old").version == 3
    store.write_dataset(DatasetMeta("old", "id_number", "", [ColumnMeta("plate", "text")]),
                        [(k, ["new"]) for k in keys], replace=True)       # a re-import moves it to blocks
    assert store.dataset("old").version == 4 and store.rows_for_keys("old", keys[:1]) == {keys[0]: [["new"]]}
    store.close()
