"""Master key loading, data-key wrapping and field encryption."""
from __future__ import annotations

import os
import pickle
import stat

import pytest

from pc_common.errors import CryptoError, FailedPrecondition, IntegrityError, InvalidInput
from pc_node.keystore import (
    MASTER_KEY_ENV,
    FieldCipher,
    generate_data_key,
    load_master_key,
    rewrap_data_key,
    unwrap_data_key,
    wrap_data_key,
)

MASTER = bytes(range(16))
DATA_KEY = bytes(range(32))


# ----------------------------------------------------------------------------- master key
def test_env_var_wins(tmp_path):
    key = load_master_key(tmp_path / "master.key", env={MASTER_KEY_ENV: MASTER.hex().upper()})
    assert key == MASTER
    assert not (tmp_path / "master.key").exists()


@pytest.mark.parametrize("value", ["zz" * 16, "00" * 15, "00" * 32])
def test_env_var_must_be_16_bytes_of_hex(value):
    with pytest.raises(CryptoError) as e:
        load_master_key(None, env={MASTER_KEY_ENV: value})
    assert value not in str(e.value)


def test_no_source_is_a_clear_error():
    with pytest.raises(FailedPrecondition, match=MASTER_KEY_ENV):
        load_master_key(None, env={})


def test_key_file_created_0600_and_reused(tmp_path):
    path = tmp_path / "keys" / "master.key"
    key = load_master_key(path, env={})
    assert len(key) == 16
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_master_key(path, env={}) == key


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_file_readable_by_others_is_refused(tmp_path, mode):
    path = tmp_path / "master.key"
    load_master_key(path, env={})
    path.chmod(mode)
    with pytest.raises(FailedPrecondition, match="chmod 600"):
        load_master_key(path, env={})


def test_key_file_owned_by_someone_else_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "master.key"
    load_master_key(path, env={})
    monkeypatch.setattr(os, "getuid", lambda: path.stat().st_uid + 1)
    with pytest.raises(FailedPrecondition, match="owned"):
        load_master_key(path, env={})


def test_symlinked_key_file_is_refused(tmp_path):
    real = tmp_path / "real.key"
    load_master_key(real, env={})
    link = tmp_path / "link.key"
    link.symlink_to(real)
    with pytest.raises(FailedPrecondition):
        load_master_key(link, env={})


def test_corrupt_key_file(tmp_path):
    path = tmp_path / "master.key"
    path.write_text("not hex\n")
    path.chmod(0o600)
    with pytest.raises(CryptoError):
        load_master_key(path, env={})


# ----------------------------------------------------------------------------- data keys
def test_wrap_unwrap_round_trip_and_binding():
    dk = generate_data_key()
    wrapped = wrap_data_key(MASTER, dk, b"dataset:vehicles")
    assert unwrap_data_key(MASTER, wrapped, b"dataset:vehicles") == dk
    with pytest.raises(IntegrityError):
        unwrap_data_key(MASTER, wrapped, b"dataset:homes")
    with pytest.raises(IntegrityError):
        unwrap_data_key(bytes(16), wrapped, b"dataset:vehicles")
    bad = bytearray(wrapped)
    bad[20] ^= 1
    with pytest.raises(IntegrityError):
        unwrap_data_key(MASTER, bytes(bad), b"dataset:vehicles")


def test_rewrap_for_master_key_rotation():
    wrapped = wrap_data_key(MASTER, DATA_KEY, b"ds")
    new_master = bytes(16)
    rewrapped = rewrap_data_key(MASTER, new_master, wrapped, b"ds")
    assert unwrap_data_key(new_master, rewrapped, b"ds") == DATA_KEY
    with pytest.raises(IntegrityError):
        unwrap_data_key(MASTER, rewrapped, b"ds")


def test_key_sizes_checked():
    with pytest.raises(CryptoError):
        wrap_data_key(MASTER, bytes(16))
    with pytest.raises(CryptoError):
        wrap_data_key(bytes(32), DATA_KEY)
    with pytest.raises(CryptoError):
        FieldCipher(bytes(16))


# ----------------------------------------------------------------------------- fields
def test_field_round_trip_keeps_type():
    fc = FieldCipher(DATA_KEY)
    for value in ["张三", "", "110101199003071234", b"\x00\xffbytes", b""]:
        blob = fc.encrypt_field(value, b"ds/col/1")
        assert fc.decrypt_field(blob, b"ds/col/1") == value
        assert type(fc.decrypt_field(blob, b"ds/col/1")) is type(value)
    assert "张三".encode() not in fc.encrypt_field("张三")


def test_field_bound_to_its_cell_and_key():
    fc = FieldCipher(DATA_KEY)
    blob = fc.encrypt_field("value", b"ds/col/1")
    with pytest.raises(IntegrityError):
        fc.decrypt_field(blob, b"ds/col/2")
    with pytest.raises(IntegrityError):
        FieldCipher(generate_data_key()).decrypt_field(blob, b"ds/col/1")
    with pytest.raises(InvalidInput):
        fc.encrypt_field(12345)  # type: ignore[arg-type]


def test_batch_fields():
    fc = FieldCipher(DATA_KEY)
    values = [f"row {i}" for i in range(100)] + [b"raw"]
    aads = [f"ds/col/{i}".encode() for i in range(len(values))]
    blobs = fc.encrypt_fields(values, aads)
    assert fc.decrypt_fields(blobs, aads) == values
    assert [fc.decrypt_field(b, a) for b, a in zip(blobs, aads)] == values


def test_blind_index():
    fc = FieldCipher(DATA_KEY)
    a = fc.blind_index("11010519491231002X")
    assert len(a) == 32
    assert a == fc.blind_index(b"11010519491231002X") == FieldCipher(DATA_KEY).blind_index("11010519491231002X")
    assert a != fc.blind_index("110105194912310001")
    assert a != FieldCipher(generate_data_key()).blind_index("11010519491231002X")
    assert fc.blind_indexes(["a", "b"]) == [fc.blind_index("a"), fc.blind_index("b")]


def test_from_wrapped_and_no_leaks():
    wrapped = wrap_data_key(MASTER, DATA_KEY, b"ds")
    fc = FieldCipher.from_wrapped(MASTER, wrapped, b"ds")
    assert fc.decrypt_field(FieldCipher(DATA_KEY).encrypt_field("x")) == "x"
    assert DATA_KEY.hex() not in repr(fc)
    with pytest.raises(TypeError):
        pickle.dumps(fc)
