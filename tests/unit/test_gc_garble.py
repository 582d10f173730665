"""SIMD half-gates garbling and the TCCR hash (pc_node.secure_agg.gc.garble, .primitives)."""
from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from pc_common.errors import InvalidInput
from pc_node.secure_agg.gc import CircuitBuilder
from pc_node.secure_agg.gc.garble import evaluate_chunk, garble_chunk, permute_bits
from pc_node.secure_agg.gc.primitives import U64, Tccr, prg

KEY = bytes(range(16))


def random_labels(g, *shape):
    return g.integers(0, 2**64, (*shape, 2), dtype=np.uint64)


def garble_and_evaluate(cir, gbits, ebits, seed, first=0):
    """Garble with random labels, evaluate on the active labels, decode with lsb bits."""
    g = np.random.default_rng(seed)
    n = gbits.shape[0]
    delta = random_labels(g, 1)[0] | np.array([1, 0], dtype=U64)
    gz, ez = random_labels(g, cir.n_garbler, n), random_labels(g, cir.n_evaluator, n)
    tables = np.zeros((cir.n_and, 2, n, 2), dtype=U64)
    out0 = garble_chunk(cir, Tccr(KEY), delta, gz, ez, first, tables)
    sel = lambda bits: np.negative(bits.T.astype(U64))[..., None] & delta  # noqa: E731
    ga, ea = gz ^ sel(gbits), ez ^ sel(ebits)
    out = evaluate_chunk(cir, Tccr(KEY), ga, ea, first, tables)
    value = (permute_bits(out) ^ permute_bits(out0)).T
    # the evaluator holds exactly W^0 ⊕ v·Δ on every output wire
    assert np.array_equal(out, out0 ^ sel(value))
    return value


@st.composite
def circuits(draw):
    n_g, n_e = draw(st.integers(0, 4)), draw(st.integers(0, 4))
    if n_g + n_e == 0:
        n_e = 1
    cb = CircuitBuilder()
    wires = [cb.garbler_input() for _ in range(n_g)] + [cb.evaluator_input() for _ in range(n_e)]
    ops = []  # (op, i, j) over indices into `wires`, replayed in plaintext by the test
    for _ in range(draw(st.integers(1, 40))):
        op = draw(st.sampled_from(["xor", "and", "not"]))
        i, j = draw(st.integers(0, len(wires) - 1)), draw(st.integers(0, len(wires) - 1))
        w = cb.not_(wires[i]) if op == "not" else getattr(cb, "xor" if op == "xor" else "and_")(wires[i], wires[j])
        ops.append((op, i, j))
        wires.append(w)
    outs = draw(st.lists(st.integers(0, len(wires) - 1), min_size=1, max_size=6))
    for o in outs:
        cb.output(wires[o])
    return cb.build(), n_g, n_e, ops, outs


def plain(n_g, ops, outs, gbits, ebits):
    vals = [gbits[:, k] for k in range(n_g)] + [ebits[:, k] for k in range(ebits.shape[1])]
    for op, i, j in ops:
        vals.append(~vals[i] if op == "not" else (vals[i] ^ vals[j] if op == "xor" else vals[i] & vals[j]))
    return np.stack([vals[o] for o in outs], axis=1)


@settings(max_examples=60, deadline=None)
@given(circuits(), st.integers(1, 70), st.integers(0, 2**32), st.integers(0, 2**40))
def test_random_circuits_evaluate_like_plaintext(c, n, seed, first):
    cir, n_g, n_e, ops, outs = c
    g = np.random.default_rng(seed)
    gbits = g.integers(0, 2, (n, n_g)).astype(bool)
    ebits = g.integers(0, 2, (n, n_e)).astype(bool)
    expected = plain(n_g, ops, outs, gbits, ebits)
    assert np.array_equal(cir.evaluate_plain(gbits, ebits), expected)
    assert np.array_equal(garble_and_evaluate(cir, gbits, ebits, seed, first), expected)


def test_and_truth_table_and_gate_count():
    cb = CircuitBuilder()
    a, b = cb.garbler_input(), cb.evaluator_input()
    cb.output(cb.and_(a, b))
    cb.output(cb.not_(cb.xor(a, b)))
    cir = cb.build()
    assert cir.n_and == 1 and cir.n_outputs == 2
    gbits = np.array([[0], [0], [1], [1]], dtype=bool)
    ebits = np.array([[0], [1], [0], [1]], dtype=bool)
    out = garble_and_evaluate(cir, gbits, ebits, 5)
    assert out[:, 0].tolist() == [False, False, False, True]
    assert out[:, 1].tolist() == [True, False, False, True]


def test_levels_batch_independent_ands_and_slots_are_reused():
    cb = CircuitBuilder()
    xs = [cb.evaluator_input() for _ in range(64)]
    acc = xs[0]
    for x in xs[1:]:
        acc = cb.xor(acc, cb.and_(x, xs[0]))  # 63 independent ANDs: one level
    cb.output(acc)
    cir = cb.build()
    and_batches = [b for b in cir.batches if b.gate_ids is not None]
    assert cir.n_and == 63 and len(and_batches) == 1
    assert cir.n_wires < 1 + 64 + 2 * 63
    g = np.random.default_rng(1)
    ebits = g.integers(0, 2, (33, 64)).astype(bool)
    gbits = np.zeros((33, 0), bool)
    ref = ebits[:, 0] ^ np.bitwise_xor.reduce(ebits[:, 1:] & ebits[:, :1], axis=1)
    assert np.array_equal(garble_and_evaluate(cir, gbits, ebits, 2)[:, 0], ref)


def test_builder_rejects_misuse():
    cb = CircuitBuilder()
    a = cb.evaluator_input()
    with pytest.raises(InvalidInput):
        cb.xor(a, 99)
    with pytest.raises(InvalidInput):
        cb.and_(a, 0)  # the constant wire is not for users
    with pytest.raises(InvalidInput):
        cb.build()  # no outputs
    cb.output(cb.not_(a))
    with pytest.raises(InvalidInput):
        cb.garbler_input()  # inputs after gates
    cir = cb.build()
    with pytest.raises(InvalidInput):
        cir.evaluate_plain(np.zeros((2, 0), bool), np.zeros((2, 2), bool))


def _aes(block: bytes) -> bytes:
    return Cipher(algorithms.AES(KEY), modes.ECB()).encryptor().update(block)


def test_tccr_is_tmmo():
    """H(x, i) = π(π(x) ⊕ i) ⊕ π(x), tweak i = hi·2^64 + lo, checked block by block."""
    g = np.random.default_rng(9)
    x = random_labels(g, 3, 5)
    hi = np.arange(3, dtype=U64)[:, None] * np.uint64(7)
    lo = np.arange(5, dtype=U64) + np.uint64(2**63)
    h = Tccr(KEY).hash(x, hi, lo)
    for a in range(3):
        for b in range(5):
            px = _aes(x[a, b].tobytes())
            tweak = (int(hi[a, 0]) << 64 | int(lo[b])).to_bytes(16, "little")
            z = bytes(p ^ t for p, t in zip(px, tweak))
            want = bytes(p ^ q for p, q in zip(_aes(z), px))
            assert h[a, b].tobytes() == want


def test_tccr_tweaks_separate_equal_inputs():
    x = np.zeros((4, 2), dtype=U64)
    h = Tccr(KEY).hash(x, 0, np.arange(4, dtype=U64))
    assert len({h[i].tobytes() for i in range(4)}) == 4


def test_prg_is_seekable_aes_ctr():
    seed = bytes(16)
    whole = prg(seed, 96)
    assert np.array_equal(prg(seed, 32, 4), whole[64:96])
    ref = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor().update(bytes(96))
    assert whole.tobytes() == ref
