"""Garbled-circuit secure comparison end to end (pc_node.secure_agg.gc)."""
from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pc_common.errors import InvalidInput
from pc_node.secure_agg.gc import (
    STAT_BITS,
    CircuitSpec,
    ComparisonEvaluator,
    ComparisonGarbler,
    SessionStateError,
    Test,
    integer_garbler_input,
    integer_inputs,
    integer_mask,
    message_layout,
    message_size,
    modular_garbler_input,
    modular_inputs,
    modular_mask,
)
from pc_node.secure_agg.gc.compare import HEADER_SIZE

T_BFV = 1152921504606601217  # the repo's BFV plaintext modulus (60-bit prime)


def seeded(seed):
    r = random.Random(seed)
    return lambda n: r.randbytes(n)


class Crit:
    """A criterion with its plaintext values, threshold and (optionally) fixed masks."""

    def __init__(self, test, xs, threshold, t=None, masks=None):
        self.test, self.xs, self.threshold, self.t, self.masks = test, list(xs), threshold, t, masks

    def inputs(self, rng):
        n, l, T = len(self.xs), self.test.bits, self.threshold
        if self.test.mode == "integer":
            if self.masks is None:
                offsets, g_in = integer_mask(l, T, n, rng)
            else:
                g_in = integer_garbler_input(l, self.masks)
                offsets = [(1 << l) - T + r for r in self.masks]
            return g_in, integer_inputs([x + o for x, o in zip(self.xs, offsets)], l)
        if self.masks is None:
            r, g_in = modular_mask(self.t, T, n, rng)
        else:
            r = np.array(self.masks, dtype=np.uint64)
            g_in = modular_garbler_input(self.t, T, r)
        d = [(x + int(ri)) % self.t for x, ri in zip(self.xs, r)]
        return g_in, modular_inputs(np.array(d, dtype=np.uint64), self.t)

    def expected(self):
        return np.array([(x < self.threshold) != self.test.invert for x in self.xs])


def run(crits, reveal="verdict", seed=None, **kw):
    rng = None if seed is None else seeded(seed)
    spec = CircuitSpec([c.test for c in crits], reveal)
    pairs = [c.inputs(rng) for c in crits]
    g = ComparisonGarbler(spec, [p[0] for p in pairs], rng=rng, **kw)
    e = ComparisonEvaluator(spec, [p[1] for p in pairs], rng=rng, **kw)
    m1 = e.start()
    m2 = g.respond(m1)
    m3 = e.extend(m2)
    m4 = g.garble(m3)
    bits = e.evaluate(m4)
    want = np.stack([c.expected() for c in crits], axis=1)
    return bits, (want.all(axis=1) if reveal == "verdict" else want), (spec, [m1, m2, m3, m4])


def boundary_values(T, top):
    return sorted({v for v in (0, 1, T - 1, T, T + 1, top - 1, top - 2) if 0 <= v < top})


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 62), st.data())
def test_integer_mode_matches_predicate(bits, data):
    top = 1 << bits
    T = data.draw(st.one_of(st.sampled_from([0, 1, top - 1, top]), st.integers(0, top)))
    xs = boundary_values(T, top) + data.draw(st.lists(st.integers(0, top - 1), max_size=20))
    invert = data.draw(st.booleans())
    bits_out, want, _ = run([Crit(Test(bits, invert=invert), xs, T)], reveal="reasons")
    assert np.array_equal(bits_out, want)


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 20), st.data())
def test_integer_mode_extreme_masks(bits, data):
    top = 1 << bits
    T = data.draw(st.integers(0, top))
    xs = boundary_values(T, top)
    hi = (1 << (bits + STAT_BITS)) - 1
    for masks in ([0] * len(xs), [hi] * len(xs), [top - 1] * len(xs), [top] * len(xs)):
        out, want, _ = run([Crit(Test(bits), xs, T, masks=masks)], reveal="reasons")
        assert np.array_equal(out, want)


@settings(max_examples=15, deadline=None)
@given(st.data())
def test_modular_mode_matches_predicate_with_wrap(data):
    t = T_BFV
    T = data.draw(st.one_of(st.sampled_from([0, 1, t - 1, 2**28]), st.integers(0, t - 1)))
    xs = boundary_values(T, t) + data.draw(st.lists(st.integers(0, t - 1), max_size=8))
    near = [0, 1, 2, t - 1, t - 2, (t - T) % t, (t - T - 1) % t, (t - T + 1) % t]
    masks = [data.draw(st.one_of(st.sampled_from(near), st.integers(0, t - 1))) for _ in xs]
    invert = data.draw(st.booleans())
    out, want, _ = run([Crit(Test(60, "modular", invert), xs, T, t=t, masks=masks)], reveal="reasons")
    assert np.array_equal(out, want)


@pytest.mark.parametrize("t", [2, 3, 251, 65537])
def test_modular_mode_small_moduli_exhaustive(t):
    bits = t.bit_length()
    xs = [x for x in sorted(set(range(min(t, 64))) | {t - 2, t - 1}) if x >= 0 for _ in range(4)]
    for T in sorted({0, 1, t // 2, t - 1}):
        masks = [(7 * i + T) % t for i in range(len(xs))]
        out, want, _ = run([Crit(Test(bits, "modular"), xs, T, t=t, masks=masks)], reveal="reasons")
        assert np.array_equal(out, want)


def _mixed(n, seed):
    g = np.random.default_rng(seed)
    return [
        Crit(Test(9), g.integers(0, 512, n).tolist(), 100),
        Crit(Test(9, invert=True), g.integers(0, 3, n).tolist(), 1),  # "exists": x >= 1
        Crit(Test(60, "modular"), g.integers(0, 2 * 10**17, n).tolist(), 10**17, t=T_BFV),
        Crit(Test(28), g.integers(0, 2**28, n).tolist(), 2**27),
    ]


@pytest.mark.parametrize("reveal", ["verdict", "reasons"])
@pytest.mark.parametrize("n", [1, 2, 129])
def test_several_criteria(reveal, n):
    out, want, _ = run(_mixed(n, n), reveal)
    assert out.shape == ((n,) if reveal == "verdict" else (n, 4)) and out.dtype == np.bool_
    assert np.array_equal(out, want)


def test_large_batch_many_chunks_two_workers():
    out, want, _ = run(_mixed(3000, 1)[:3], "verdict", chunk=512, workers=2)
    assert np.array_equal(out, want) and 0 < want.sum() < 3000
    out, want, _ = run(_mixed(777, 2), "reasons", chunk=128, workers=1)
    assert np.array_equal(out, want)


def test_deterministic_with_fixed_rng():
    crits = _mixed(40, 3)
    _, _, (_, a) = run(crits, seed=11)
    _, _, (_, b) = run(crits, seed=11)
    _, _, (_, c) = run(crits, seed=12)
    assert a == b and a[3] != c[3]


@pytest.mark.parametrize("reveal", ["verdict", "reasons"])
def test_evaluator_view_has_decoding_bits_for_outputs_only(reveal):
    n = 13
    crits = _mixed(n, 4)
    _, _, (spec, msgs) = run(crits, reveal)
    cir = spec.circuit
    n_out = 1 if reveal == "verdict" else 4
    assert cir.n_outputs == n_out
    lay = message_layout(spec, n, 4)
    assert list(lay) == ["header", "ot", "garbler_labels", "tables", "decoding"]
    assert lay["garbler_labels"][1] == n * cir.n_garbler * 16
    assert lay["tables"][1] == n * cir.n_and * 32
    assert lay["decoding"][1] == -(-n * n_out // 8)
    assert lay["ot"][1] == 16 + n * cir.n_evaluator * 32
    assert len(msgs[3]) == sum(size for _, size in lay.values()) == message_size(spec, n, 4)
    for r, m in enumerate(msgs, 1):
        assert len(m) == message_size(spec, n, r)
    # AND gates per household: 9 + 9 + (2·60 + 2) + 28, plus 3 to fold in verdict mode
    assert cir.n_and == 168 + (3 if reveal == "verdict" else 0)


def test_same_outputs_from_different_masks_look_the_same_to_the_evaluator():
    g = np.random.default_rng(5)
    xs = g.integers(0, 512, 50).tolist()
    ys = g.integers(0, T_BFV, 50).tolist()
    outs, m4s = [], []
    for seed in (1, 2):
        crits = [Crit(Test(9), xs, 200), Crit(Test(60, "modular"), ys, T_BFV // 2, t=T_BFV)]
        out, want, (_, msgs) = run(crits, "reasons", seed=seed)
        assert np.array_equal(out, want)
        outs.append(out)
        m4s.append(msgs[3])
    assert np.array_equal(outs[0], outs[1])
    assert len(m4s[0]) == len(m4s[1]) and m4s[0] != m4s[1]


def _sessions(n=10, reveal="verdict"):
    crits = _mixed(n, 6)
    spec = CircuitSpec([c.test for c in crits], reveal)
    pairs = [c.inputs(None) for c in crits]
    return spec, ComparisonGarbler(spec, [p[0] for p in pairs]), ComparisonEvaluator(spec, [p[1] for p in pairs])


def test_each_session_method_once():
    _, g, e = _sessions()
    with pytest.raises(SessionStateError):
        e.extend(b"")
    m1 = e.start()
    with pytest.raises(SessionStateError):
        e.start()
    m2 = g.respond(m1)
    with pytest.raises(SessionStateError):
        g.respond(m1)
    m3 = e.extend(m2)
    with pytest.raises(SessionStateError):
        e.extend(m2)
    m4 = g.garble(m3)
    with pytest.raises(SessionStateError):
        g.garble(m3)
    e.evaluate(m4)
    with pytest.raises(SessionStateError):
        e.evaluate(m4)


def test_received_messages_checked():
    spec, g, e = _sessions()
    m1 = e.start()
    for bad in (m1[:-1], m1 + b"\0", b"XXXX" + m1[4:], m1[:5] + b"\x03" + m1[6:]):
        with pytest.raises(InvalidInput):
            _sessions()[1].respond(bad)
    other = bytearray(m1)
    other[16] ^= 1  # spec digest
    with pytest.raises(InvalidInput, match="another comparison circuit"):
        _sessions()[1].respond(bytes(other))
    with pytest.raises(InvalidInput, match="instance count"):
        _sessions(n=11)[1].respond(_sessions()[2].start())
    with pytest.raises(InvalidInput, match="another comparison circuit"):
        _sessions(reveal="reasons")[1].respond(m1)
    m3 = e.extend(g.respond(m1))
    m4 = g.garble(m3)
    with pytest.raises(InvalidInput):
        e.evaluate(m4[:-1])
    _, g2, e2 = _sessions()
    m4b = g2.garble(e2.extend(g2.respond(e2.start())))
    bad = bytearray(m4b)
    bad[HEADER_SIZE] ^= 0xFF  # embedded OT header
    with pytest.raises(InvalidInput):
        e2.evaluate(bytes(bad))


def test_decoding_padding_must_be_zero():
    _, g, e = _sessions(n=10)
    m4 = bytearray(g.garble(e.extend(g.respond(e.start()))))
    m4[-1] |= 0x80  # 10 verdict bits: the top bits of the last byte are padding
    with pytest.raises(InvalidInput, match="padding"):
        e.evaluate(bytes(m4))


def test_input_validation():
    spec = CircuitSpec([Test(9), Test(60, "modular")])
    _, gi = integer_mask(9, 5, 4)
    r, gm = modular_mask(T_BFV, 5, 4)
    ComparisonGarbler(spec, [gi, gm])
    with pytest.raises(InvalidInput):
        ComparisonGarbler(spec, [gm, gi])  # wrong modes
    with pytest.raises(InvalidInput):
        ComparisonGarbler(spec, [gi])  # one per criterion
    with pytest.raises(InvalidInput):
        ComparisonGarbler(spec, [gi, modular_mask(T_BFV, 5, 5)[1]])  # different counts
    with pytest.raises(InvalidInput):
        ComparisonEvaluator(spec, [gi, gm])  # garbler objects on the evaluator side
    with pytest.raises(InvalidInput):
        # β wider than 8 bits (a mask whose low 9 bits are 256; a random one is narrower 1 time in 16)
        ComparisonGarbler(CircuitSpec([Test(8), Test(60, "modular")]), [integer_garbler_input(9, [256] * 4), gm])
    with pytest.raises(InvalidInput):
        ComparisonGarbler(spec, [gi, gm], chunk=100)


def test_spec_and_helper_validation():
    for bad in (dict(bits=0), dict(bits=63), dict(bits=9, mode="float"), dict(bits=9, invert=1)):
        with pytest.raises(InvalidInput):
            Test(**bad)
    with pytest.raises(InvalidInput):
        CircuitSpec([])
    with pytest.raises(InvalidInput):
        CircuitSpec([Test(9)], reveal="all")
    with pytest.raises(InvalidInput):
        integer_mask(9, 513, 3)
    with pytest.raises(InvalidInput):
        integer_inputs([-1], 9)
    with pytest.raises(InvalidInput):
        integer_inputs([1 << (9 + STAT_BITS + 1)], 9)
    with pytest.raises(InvalidInput):
        modular_mask(T_BFV, T_BFV, 3)
    with pytest.raises(InvalidInput):
        modular_inputs(np.array([T_BFV], dtype=np.uint64), T_BFV)
    assert CircuitSpec([Test(9)]).digest != CircuitSpec([Test(9, invert=True)]).digest


def test_modular_inputs_take_centred_decryptions():
    d = modular_inputs(np.array([-1, 0, 5, -(T_BFV - 1)], dtype=np.int64), T_BFV).d
    assert d.tolist() == [T_BFV - 1, 0, 5, 1]
    with pytest.raises(InvalidInput):
        modular_inputs(np.array([-T_BFV - 1], dtype=np.int64), T_BFV)


def test_masks_have_the_documented_ranges():
    offsets, g_in = integer_mask(9, 100, 2000, seeded(1))
    rs = [o - (512 - 100) for o in offsets]
    assert all(0 <= r < 1 << (9 + STAT_BITS) for r in rs)
    assert max(rs) > 1 << (9 + STAT_BITS - 2)
    assert np.array_equal(g_in.beta, np.array([r % 512 for r in rs], dtype=np.uint64))
    r, g_m = modular_mask(T_BFV, 10**17, 2000, seeded(2))
    assert (r < T_BFV).all() and 50 < g_m.wrap.sum() < 400  # P(wrap) = T/t ≈ 8.7 %
    assert np.array_equal(g_m.wrap, g_m.a > g_m.b)
    assert np.array_equal(g_m.b, (r + np.uint64(10**17)) % np.uint64(T_BFV))
