"""Tamper-evident audit log: every edit, deletion, insertion, reordering and truncation of
signed entries is detected, in the database and in an export verified alone."""
from __future__ import annotations

import json
import sqlite3
import threading
from datetime import datetime, timedelta, timezone

import pytest

from pc_common.audit import AuditLog, assert_no_personal_data, canonical_json, verify_export
from pc_common.errors import FailedPrecondition, InvalidInput, NotFound
from pc_common.gm import Sm2PrivateKey, sm3

# Fixed keys: SM2 key generation and signing are slow in pure Python; keep tests quick.
SIGNER = Sm2PrivateKey(0x1234567890ABCDEF1234567890ABCDEF)
OTHER = Sm2PrivateKey(0xFEDCBA0987654321)
START = datetime(2025, 1, 1, tzinfo=timezone.utc)


class FakeClock:
    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def _fill(log: AuditLog, n: int) -> None:
    for i in range(n):
        log.append("psi.request", job=f"job-{i}", dataset="vehicles", requester="civil_affairs",
                   purpose="dibao", counts={"rows": i, "matched": i // 2}, detail="ok")


@pytest.fixture
def log(tmp_path):
    log = AuditLog(tmp_path / "audit.db", "node:public_security", SIGNER, checkpoint_every=25,
                   clock=FakeClock())
    _fill(log, 50)  # checkpoints at 25 and 50
    yield log
    log.close()


def _sql(log: AuditLog, statement: str, *args) -> None:
    db = sqlite3.connect(log.path)
    db.execute(statement, args)
    db.commit()
    db.close()


def test_append_and_verify(log):
    report = log.verify()
    assert report.ok, report.problems
    assert report.entries == 50 and report.checkpoints == 2 and report.key_trusted
    e = log.entries(job="job-7")[0]
    assert e["seq"] == 8 and e["actor"] == "node:public_security" and e["counts"] == {"rows": 7, "matched": 3}
    assert e["time"].endswith("Z")
    assert log.head() == (50, log.entries(since_seq=49)[0]["hash"])


def test_entry_hash_is_sm3_of_canonical_entry_and_previous_hash(log):
    first, second = log.entries(limit=2)
    payload = {k: v for k, v in first.items() if k not in ("prev_hash", "hash")}
    assert first["prev_hash"] == "00" * 32
    assert first["hash"] == sm3(canonical_json(payload) + bytes(32)).hex()
    assert second["prev_hash"] == first["hash"]
    assert canonical_json({"b": 1, "a": "张"}) == '{"a":"张","b":1}'.encode()


def test_edited_field_is_detected(log):
    _sql(log, "UPDATE audit_log SET requester='tax' WHERE seq=10")
    report = log.verify()
    assert not report.ok
    assert any("entry 10 has been altered" in p for p in report.problems)


def test_edit_with_recomputed_chain_is_caught_by_checkpoint(log):
    # An attacker who rewrites entry 10 and recomputes every later hash still fails the
    # signed checkpoints.
    db = sqlite3.connect(log.path)
    db.row_factory = sqlite3.Row
    db.execute("UPDATE audit_log SET outcome='denied' WHERE seq=10")
    prev = bytes.fromhex(db.execute("SELECT hash FROM audit_log WHERE seq=9").fetchone()[0])
    for row in db.execute("SELECT * FROM audit_log WHERE seq>=10 ORDER BY seq").fetchall():
        e = dict(row)
        e["counts"] = json.loads(e["counts"])
        payload = {k: v for k, v in e.items() if k not in ("prev_hash", "hash")}
        h = sm3(canonical_json(payload) + prev)
        db.execute("UPDATE audit_log SET prev_hash=?, hash=? WHERE seq=?", (prev.hex(), h.hex(), e["seq"]))
        prev = h
    db.commit()
    db.close()
    report = log.verify()
    assert not report.ok
    assert any("does not match its signed checkpoint" in p for p in report.problems)


def test_deleted_row_is_detected(log):
    _sql(log, "DELETE FROM audit_log WHERE seq=20")
    report = log.verify()
    assert not report.ok
    assert any("20..20 are missing" in p for p in report.problems)


def test_inserted_row_is_detected(log):
    # make room at seq 21 and insert a plausible entry there
    _sql(log, "UPDATE audit_log SET seq=seq+1000 WHERE seq>20")
    _sql(log, "UPDATE audit_log SET seq=seq-999 WHERE seq>1000")
    _sql(log, "INSERT INTO audit_log(seq, time, actor, action, outcome, prev_hash, hash) "
              "SELECT 21, time, actor, 'psi.request', 'ok', hash, hash FROM audit_log WHERE seq=20")
    report = log.verify()
    assert not report.ok
    assert any("entry 21" in p for p in report.problems)


def test_inserted_row_at_the_end_is_detected(log):
    _sql(log, "INSERT INTO audit_log(seq, time, actor, action, outcome, prev_hash, hash) "
              "VALUES (51, '2025-01-01T00:00:00.000000Z', 'node:public_security', 'x', 'ok', ?, ?)",
         "00" * 32, "11" * 32)
    report = log.verify()
    assert not report.ok
    assert any("entry 51" in p for p in report.problems)


def test_swapped_rows_are_detected(log):
    _sql(log, "UPDATE audit_log SET seq=-1 WHERE seq=10")
    _sql(log, "UPDATE audit_log SET seq=10 WHERE seq=11")
    _sql(log, "UPDATE audit_log SET seq=11 WHERE seq=-1")
    report = log.verify()
    assert not report.ok
    assert any("entry 10" in p for p in report.problems)
    assert any("entry 11" in p for p in report.problems)


def test_truncation_after_a_checkpoint_is_detected(log):
    _sql(log, "DELETE FROM audit_log WHERE seq>45")
    report = log.verify()
    assert not report.ok
    assert any("truncated" in p for p in report.problems)


def test_forged_or_foreign_checkpoints_are_detected(log):
    _sql(log, "UPDATE audit_checkpoints SET signature=? WHERE seq=25", "00" * 64)
    report = log.verify()
    assert not report.ok
    assert any("invalid signature" in p for p in report.problems)
    assert not log.verify(OTHER.public_key()).ok  # checkpoints not by the trusted key
    assert log.verify(all_signatures=False).ok  # only the latest signature checked: 25 skipped
    _sql(log, "UPDATE audit_checkpoints SET signature=? WHERE seq=50", "00" * 64)
    assert not log.verify(all_signatures=False).ok


def test_verify_without_trusted_key_uses_stated_keys(tmp_path):
    path = tmp_path / "a.db"
    with AuditLog(path, "node:a", SIGNER, checkpoint_every=5) as log:
        _fill(log, 5)
    with AuditLog(path, "node:a") as reader:  # an auditor without the signing key
        report = reader.verify()
        assert report.ok and not report.key_trusted and report.checkpoints == 1
        assert reader.verify(SIGNER.public_key()).ok
        assert not reader.verify([OTHER.public_key()]).ok
        with pytest.raises(FailedPrecondition):
            reader.checkpoint()


def test_log_belongs_to_one_actor(tmp_path):
    AuditLog(tmp_path / "a.db", "node:a").close()
    with pytest.raises(FailedPrecondition):
        AuditLog(tmp_path / "a.db", "node:b")
    with AuditLog.open_existing(tmp_path / "a.db") as log:
        assert log.actor_id == "node:a"
    with pytest.raises(NotFound):
        AuditLog.open_existing(tmp_path / "missing.db")
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 10)
    with pytest.raises(FailedPrecondition):
        AuditLog.open_existing(tmp_path / "junk.db")


def test_checkpoint_forced_and_idempotent(tmp_path):
    with AuditLog(tmp_path / "a.db", "node:a", SIGNER, checkpoint_every=0) as log:
        assert log.checkpoint() is None  # empty log
        _fill(log, 3)
        cp = log.checkpoint()
        assert cp["seq"] == 3 and cp["head"] == log.head()[1]
        assert log.checkpoint() is None
        assert log.verify().checkpoints == 1


def test_export_verifies_alone_and_detects_tampering(log, tmp_path):
    _fill(log, 3)  # unsigned tail: export seals it with a checkpoint
    out = tmp_path / "export.jsonl"
    assert log.export(out) == 53
    report = verify_export(out, SIGNER.public_key())
    assert report.ok and report.entries == 53 and report.key_trusted, report.problems
    assert verify_export(out).ok and not verify_export(out).key_trusted
    assert not verify_export(out, OTHER.public_key()).ok

    lines = out.read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0])
    assert header["actor"] == "node:public_security" and header["public_keys"] == [SIGNER.public_key().to_hex()]

    def tampered(mutate) -> bool:
        recs = [json.loads(line) for line in lines]
        mutate(recs)
        bad = tmp_path / "bad.jsonl"
        bad.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in recs) + "\n", encoding="utf-8")
        return not verify_export(bad, SIGNER.public_key()).ok

    entry_index = [i for i, r in enumerate(map(json.loads, lines)) if r["type"] == "entry"]
    assert tampered(lambda r: r[entry_index[5]].update(purpose="other"))
    assert tampered(lambda r: r.pop(entry_index[5]))
    assert tampered(lambda r: r.__setitem__(slice(entry_index[5], entry_index[7]),
                                            [r[entry_index[6]], r[entry_index[5]]]))
    assert tampered(lambda r: r.pop())  # last (checkpointed) entry dropped
    assert tampered(lambda r: r.__setitem__(slice(1, entry_index[0]), []))  # all checkpoints dropped
    assert tampered(lambda r: r[1].update(head=r[entry_index[0]]["hash"]))  # checkpoint re-pointed
    assert tampered(lambda r: r[0].update(actor="node:tax"))


def test_export_file_unreadable(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    report = verify_export(bad)
    assert not report.ok
    assert not verify_export(tmp_path / "missing.jsonl").ok


def test_retention_purge_keeps_chain_verifiable(tmp_path):
    clock = FakeClock()
    with AuditLog(tmp_path / "a.db", "node:a", SIGNER, checkpoint_every=10, clock=clock) as log:
        _fill(log, 30)
        clock.now += timedelta(days=200)
        _fill(log, 5)
        with pytest.raises(InvalidInput):
            log.purge_older_than(30)
        assert log.purge_older_than() == 30
        remaining = log.entries()
        assert remaining[0]["seq"] == 31 and remaining[-1]["action"] == "audit.retention"
        assert remaining[-1]["counts"] == {"purged": 30, "last_purged_seq": 30}
        report = log.verify()
        assert report.ok, report.problems
        _fill(log, 3)
        assert log.verify().ok
        assert log.purge_older_than() == 0  # nothing old enough any more
        out = tmp_path / "e.jsonl"
        log.export(out)
        assert verify_export(out, SIGNER.public_key()).ok
        # deleting the oldest kept entry, or forging the anchor, is detected
        _sql(log, "DELETE FROM audit_log WHERE seq=31")
        assert not log.verify().ok


def test_forced_short_retention_and_anchor_forgery(tmp_path):
    clock = FakeClock()
    with AuditLog(tmp_path / "a.db", "node:a", SIGNER, checkpoint_every=0, clock=clock) as log:
        _fill(log, 5)
        clock.now += timedelta(days=2)
        assert log.purge_older_than(1, force=True) == 5
        assert log.verify().ok
        _sql(log, "UPDATE audit_checkpoints SET head=? WHERE kind='retention'", "22" * 32)
        assert not log.verify().ok


def test_purge_needs_a_signer(tmp_path):
    with AuditLog(tmp_path / "a.db", "node:a") as log:
        with pytest.raises(FailedPrecondition):
            log.purge_older_than()


def test_personal_data_is_refused(log):
    for text in ["subject 110101199003071234 checked", "11010519491231002x", "110101 19900307 1234",
                 "call 13812345678"]:
        with pytest.raises(InvalidInput) as e:
            log.append("note", detail=text)
        assert text not in str(e.value)
    for kw in ("job", "dataset", "requester", "purpose"):
        with pytest.raises(InvalidInput):
            log.append("note", **{kw: "110101199003071234"})
    with pytest.raises(InvalidInput):
        log.append("note", counts={"110101199003071234": 1})
    assert_no_personal_data("job 2025-000123 matched 1200 of 13000 rows")
    assert log.verify().entries == 50


@pytest.mark.parametrize("kwargs", [
    {"action": ""}, {"action": None}, {"action": "x", "counts": {"a": 1.5}},
    {"action": "x", "counts": {"a": True}}, {"action": "x", "detail": "d" * 3000},
    {"action": "x", "outcome": ""}, {"action": "x", "job": 5},
])
def test_malformed_entries_are_refused(log, kwargs):
    action = kwargs.pop("action")
    with pytest.raises(InvalidInput):
        log.append(action, **kwargs)


def test_thread_safe_appends(tmp_path):
    with AuditLog(tmp_path / "a.db", "node:a", SIGNER, checkpoint_every=40) as log:
        def work(t: int) -> None:
            for i in range(20):
                log.append("job.step", job=f"t{t}-{i}")
        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        entries = log.entries()
        assert [e["seq"] for e in entries] == list(range(1, 81))
        report = log.verify()
        assert report.ok and report.checkpoints == 2
