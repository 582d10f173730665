"""IKNP OT extension over Chou–Orlandi base OTs (pc_node.secure_agg.gc.ot)."""
from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pc_common.errors import InvalidInput
from pc_node.secure_agg.gc import OtReceiver, OtSender, SessionStateError
from pc_node.secure_agg.gc.ot import HEADER_SIZE, message_size, transpose


def seeded(seed: int):
    r = random.Random(seed)
    return lambda n: r.randbytes(n)


def run(choices, m0, m1, seed=None):
    rr = OtReceiver(choices, rng=None if seed is None else seeded(seed))
    ss = OtSender(len(choices), rng=None if seed is None else seeded(seed + 1))
    msgs = [rr.start()]
    msgs.append(ss.respond(msgs[0]))
    msgs.append(rr.extend(msgs[1]))
    msgs.append(ss.send(msgs[2], m0, m1))
    return rr.receive(msgs[3]), msgs


def random_messages(count, seed):
    g = np.random.default_rng(seed)
    return g.integers(0, 256, (count, 16), dtype=np.uint8), g.integers(0, 256, (count, 16), dtype=np.uint8)


@settings(max_examples=12, deadline=None)
@given(st.integers(1, 700), st.integers(0, 2**32))
def test_receiver_gets_exactly_the_chosen_message(count, seed):
    g = np.random.default_rng(seed)
    choices = g.integers(0, 2, count).astype(bool)
    m0, m1 = random_messages(count, seed)
    out, _ = run(choices, m0, m1)
    assert out.shape == (count, 16) and out.dtype == np.uint8
    assert np.array_equal(out, np.where(choices[:, None], m1, m0))
    other = np.where(choices[:, None], m0, m1)
    assert not (out == other).all(axis=1).any()


def test_all_zero_and_all_one_choices():
    m0, m1 = random_messages(300, 1)
    for c in (np.zeros(300, bool), np.ones(300, bool)):
        out, _ = run(c, m0, m1)
        assert np.array_equal(out, m1 if c[0] else m0)


def test_deterministic_with_fixed_rng():
    choices = np.random.default_rng(3).integers(0, 2, 257).astype(bool)
    m0, m1 = random_messages(257, 3)
    out_a, msgs_a = run(choices, m0, m1, seed=7)
    out_b, msgs_b = run(choices, m0, m1, seed=7)
    _, msgs_c = run(choices, m0, m1, seed=8)
    assert msgs_a == msgs_b and np.array_equal(out_a, out_b)
    assert msgs_a[1] != msgs_c[1] and msgs_a[3] != msgs_c[3]


@pytest.mark.parametrize("count", [1, 127, 128, 129, 1000])
def test_message_sizes(count):
    choices = np.ones(count, bool)
    m0, m1 = random_messages(count, count)
    _, msgs = run(choices, m0, m1)
    assert [len(m) for m in msgs] == [message_size(count, r) for r in (1, 2, 3, 4)]
    assert len(msgs[0]) == HEADER_SIZE + 32 and len(msgs[1]) == HEADER_SIZE + 128 * 32
    assert len(msgs[2]) == HEADER_SIZE + 128 * 16 * -(-count // 128)
    assert len(msgs[3]) == HEADER_SIZE + 32 * count


def _parties(count=200):
    rr, ss = OtReceiver(np.ones(count, bool)), OtSender(count)
    return rr, ss


@pytest.mark.parametrize("cut", [0, 1, HEADER_SIZE, -1])
def test_short_messages_rejected(cut):
    rr, ss = _parties()
    m1 = rr.start()
    with pytest.raises(InvalidInput):
        ss.respond(m1[:cut] if cut >= 0 else m1 + b"\0")


def test_tampered_headers_rejected():
    rr, ss = _parties()
    m1 = rr.start()
    for bad in (b"XXOT" + m1[4:], m1[:4] + b"\x09" + m1[5:], m1[:5] + b"\x02" + m1[6:]):
        with pytest.raises(InvalidInput):
            OtSender(200).respond(bad)
    with pytest.raises(InvalidInput):  # count differs
        OtSender(201).respond(m1)
    with pytest.raises(InvalidInput):
        OtSender(200).respond("not bytes")


def test_invalid_points_rejected():
    rr, ss = _parties()
    m1 = rr.start()
    for point in (bytes(32), b"\xff" * 32, (1).to_bytes(32, "little")):  # non-canonical, identity
        with pytest.raises(InvalidInput, match="group element"):
            OtSender(200).respond(m1[:HEADER_SIZE] + point)
    m2 = ss.respond(m1)
    bad = bytearray(m2)
    bad[HEADER_SIZE + 5 * 32:HEADER_SIZE + 6 * 32] = b"\xff" * 32
    with pytest.raises(InvalidInput, match="group element"):
        rr.extend(bytes(bad))


def test_round3_and_round4_sizes_checked():
    rr, ss = _parties()
    m3 = rr.extend(ss.respond(rr.start()))
    m0, m1 = random_messages(200, 0)
    with pytest.raises(InvalidInput):
        ss.send(m3[:-16], m0, m1)
    rr2, ss2 = _parties()
    m4 = ss2.send(rr2.extend(ss2.respond(rr2.start())), m0, m1)
    with pytest.raises(InvalidInput):
        rr2.receive(m4[:-1])


def test_each_step_once_and_in_order():
    rr, ss = _parties()
    with pytest.raises(SessionStateError):
        rr.extend(b"")
    m1 = rr.start()
    with pytest.raises(SessionStateError):
        rr.start()
    m2 = ss.respond(m1)
    with pytest.raises(SessionStateError):
        ss.respond(m1)
    m3 = rr.extend(m2)
    with pytest.raises(SessionStateError):
        rr.extend(m2)
    m0, m1_ = random_messages(200, 0)
    m4 = ss.send(m3, m0, m1_)
    with pytest.raises(SessionStateError):
        ss.send(m3, m0, m1_)
    rr.receive(m4)
    with pytest.raises(SessionStateError):
        rr.receive(m4)


def test_failed_step_is_not_retryable():
    rr, ss = _parties()
    m1 = rr.start()
    with pytest.raises(InvalidInput):
        ss.respond(m1[:-1])
    with pytest.raises(SessionStateError):
        ss.respond(m1)


def test_bad_arguments():
    with pytest.raises(InvalidInput):
        OtReceiver(np.array([0, 1]))  # not bool
    with pytest.raises(InvalidInput):
        OtReceiver(np.zeros(0, bool))
    with pytest.raises(InvalidInput):
        OtSender(0)
    with pytest.raises(InvalidInput):
        OtReceiver(np.ones(4, bool), rng=lambda n: b"short").start()
    rr, ss = _parties(4)
    m3 = rr.extend(ss.respond(rr.start()))
    with pytest.raises(InvalidInput):
        ss.send(m3, np.zeros((4, 15), np.uint8), np.zeros((4, 15), np.uint8))


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 40), st.integers(0, 2**32))
def test_transpose_matches_unpackbits(w, seed):
    mat = np.random.default_rng(seed).integers(0, 256, (128, w), dtype=np.uint8)
    bits = np.unpackbits(mat, axis=1, bitorder="little")
    ref = np.packbits(bits.T, axis=1, bitorder="little")
    assert np.array_equal(transpose(mat), ref)
