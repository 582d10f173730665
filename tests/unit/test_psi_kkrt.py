"""KKRT16 PSI core (pc_node.psi.kkrt): correctness, re-hashing, message validation, determinism."""
from __future__ import annotations

import random

import blake3
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pc_common.errors import InvalidInput
from pc_common.ot.primitives import SessionStateError
from pc_node.psi import kkrt, kkrt_kernels, kkrt_params, kkrt_profiles
from pc_node.psi.encoding import normalise_ids


def seeded(seed: int):
    r = random.Random(seed)
    return lambda n: r.randbytes(n)


def plain(x, y):
    ys = set(normalise_ids(y))
    return [v for v in normalise_ids(x) if v in ys]


def run(x, y, **kw):
    s = kkrt.KkrtSender(y, rng=kw.get("rng"), bins=kw.get("bins"))
    r = kkrt.KkrtReceiver(x, **kw)
    return s, r, r.finish(s.masks(r.correct(s.extend(r.respond(s.start())))))


def test_blake3_kernel_matches_reference_for_every_length():
    key = bytes(range(32))
    words = np.frombuffer(key, dtype="<u4").copy()
    msgs = [bytes((i * 7 + j) % 256 for j in range(i)) for i in range(65)]
    rows = np.zeros((65, 64), dtype=np.uint8)
    for i, m in enumerate(msgs):
        rows[i, :i] = np.frombuffer(m, dtype=np.uint8)
    out = kkrt_kernels.blake3_rows(words, rows, np.arange(65, dtype=np.int64), 32)
    for i, m in enumerate(msgs):
        assert out[i].tobytes() == blake3.blake3(m, key=key).digest(), i
    long_ids = [b"x" * 100, b"short"]
    got = kkrt_params.hash_items(long_ids, words, 16)
    assert [g.tobytes() for g in got] == [blake3.blake3(b, key=key).digest(16) for b in long_ids]


def test_parameters_follow_cryptotools():
    assert kkrt_params.bin_count(1 << 20) == int((1 << 20) * (40 + 20 + 256) / 240)
    assert abs(kkrt_params.bin_count(1_000_000) / 1_000_000 - 1.3164) < 1e-3
    assert kkrt_params.mask_bytes(1_000_000, 1_000_000) == 10
    assert kkrt_params.mask_bytes(1, 1) == 5


@settings(max_examples=25, deadline=None)
@given(st.sets(st.integers(0, 60), max_size=40), st.sets(st.integers(0, 60), max_size=40))
def test_intersection_equals_plaintext(xs, ys):
    x = [f"ID{v}" for v in xs]
    y = [f"ID{v}" for v in ys]
    assert run(x, y)[2] == plain(x, y)


def test_duplicates_and_normalisation_are_handled():
    x = ["a1", "A1", " a 1", "b2", "c3", "b2"]
    y = ["B2", "a1", "zz", "zz"]
    s, r, got = run(x, y)
    assert got == ["A1", "B2"] and r.count == 3 and s.count == 3


def test_100k_exact():
    rnd = random.Random(5)
    x = [f"P{v}" for v in rnd.sample(range(300_000), 100_000)]
    y = [f"P{v}" for v in rnd.sample(range(300_000), 100_000)]
    assert run(x, y)[2] == plain(x, y)


def test_cuckoo_failure_rehashes_with_fresh_seeds():
    x = [f"ID{v}" for v in range(60)]
    y = [f"ID{v}" for v in range(30, 90)]
    _, r, got = run(x, y, rng=seeded(3), bins=62, max_rehash=500)
    assert r.cuckoo_attempts > 1
    assert got == plain(x, y)
    with pytest.raises(InvalidInput, match="cuckoo hashing failed"):
        run(x, y, rng=seeded(3), bins=59, max_rehash=3)


def test_deterministic_with_fixed_rng():
    x, y = [f"ID{v}" for v in range(200)], [f"ID{v}" for v in range(100, 300)]
    transcripts = []
    for _ in range(2):
        s = kkrt.KkrtSender(y, rng=seeded(9))
        r = kkrt.KkrtReceiver(x, rng=seeded(10))
        m = [s.start()]
        m.append(r.respond(m[-1]))
        m.append(s.extend(m[-1]))
        m.append(r.correct(m[-1]))
        m.append(s.masks(m[-1]))
        assert r.finish(m[-1]) == plain(x, y)
        transcripts.append(m)
    assert transcripts[0] == transcripts[1]


def _flow(x=("ID1", "ID2"), y=("ID2", "ID3")):
    s, r = kkrt.KkrtSender(list(y)), kkrt.KkrtReceiver(list(x))
    return s, r


def _upto(k):
    """A fresh flow and its first k messages."""
    s, r = _flow()
    steps = [lambda _: s.start(), r.respond, s.extend, r.correct, s.masks]
    msgs, last = [], None
    for f in steps[:k]:
        last = f(last)
        msgs.append(last)
    return s, r, msgs


def test_malformed_messages_are_refused():
    m1 = _upto(1)[2][0]
    for bad in (b"", m1[:10], m1[:-1], m1 + b"\0", b"XXXX" + m1[4:], m1[:5] + b"\x02" + m1[6:], 42):
        with pytest.raises(InvalidInput):
            kkrt.KkrtReceiver(["ID1"]).respond(bad)
    s, r, (m1, m2) = _upto(2)
    with pytest.raises(SessionStateError):
        r.respond(m1)                       # each step once
    s, r, (_, _, m3) = _upto(3)
    with pytest.raises(InvalidInput):
        r.correct(m3[:-1])
    s, r, (*_, m4) = _upto(4)
    with pytest.raises(InvalidInput):
        s.masks(m4[:-64])                   # one bin short
    s, r, (*_, m4, m5) = _upto(5)
    with pytest.raises(SessionStateError):
        s.masks(m4)
    with pytest.raises(InvalidInput):
        r.finish(m5 + m5[kkrt.HEADER_SIZE:])   # duplicated body
    s, r, (*_, m5) = _upto(5)
    assert r.finish(m5) == ["ID2"]


def test_wrong_announced_count_is_refused():
    s, r = _flow()
    m4 = r.correct(s.extend(r.respond(s.start())))
    m5 = bytearray(s.masks(m4))
    m5[8] += 1                              # count field
    with pytest.raises(InvalidInput, match="set size"):
        r.finish(bytes(m5))


def test_bins_count_is_checked_by_sender():
    s = kkrt.KkrtSender(["ID1"])
    r = kkrt.KkrtReceiver(["ID1", "ID2"], bins=40)
    with pytest.raises(InvalidInput, match="bins"):
        s.masks(r.correct(s.extend(r.respond(s.start()))))


def test_empty_sets():
    assert run([], ["ID1"])[2] == []
    assert run(["ID1"], [])[2] == []


def _cut(data: bytes, sizes):
    """``data`` in pieces of the given sizes, cycled (the last piece takes the rest)."""
    out, i, k = [], 0, 0
    while i < len(data):
        out.append(data[i:i + sizes[k % len(sizes)]])
        i, k = i + sizes[k % len(sizes)], k + 1
    return out


def test_pipelined_batches_equal_whole_messages(monkeypatch):
    """Message 4 produced batch by batch and messages 4 and 5 consumed in arbitrary cuts give
    byte-for-byte the transcript and the result of whole messages."""
    monkeypatch.setattr(kkrt, "BATCH_BINS", 256)          # several batches for 600 items
    x, y = [f"ID{v}" for v in range(600)], [f"ID{v}" for v in range(300, 900)]
    whole_s, whole_r = kkrt.KkrtSender(y, rng=seeded(3)), kkrt.KkrtReceiver(x, rng=seeded(4))
    m3 = whole_s.extend(whole_r.respond(whole_s.start()))
    m4 = whole_r.correct(m3)
    m5 = whole_s.masks(m4)
    assert whole_r.finish(m5) == plain(x, y)
    s, r = kkrt.KkrtSender(y, rng=seeded(3)), kkrt.KkrtReceiver(x, rng=seeded(4))
    assert s.extend(r.respond(s.start())) == m3
    parts = [bytes(p) for p in r.correct_parts(m3)]
    assert len(parts) > 3 and b"".join(parts) == m4
    s.prepare()
    assert s.masks_from(_cut(m4, [1000, 7, 64 * 130 + 3])) == m5
    r.prepare_finish()
    assert r.finish_from(_cut(m5, [333, 1, 4096])) == plain(x, y)


def test_pipelined_pieces_are_size_checked():
    s, r, (*_, m4) = _upto(4)
    with pytest.raises(InvalidInput, match="wrong size"):
        s.masks_from(_cut(m4 + b"\0" * 64, [100]))          # one row too many, in small pieces
    s, r, (*_, m5) = _upto(5)
    with pytest.raises(InvalidInput, match="wrong size"):
        r.finish_from(_cut(m5[:-1], [5]))
    s, r, (*_, m5) = _upto(5)
    with pytest.raises(InvalidInput):
        r.finish_from([m5[:3]])                              # shorter than a header


def test_preparing_out_of_order_is_refused():
    s, r, _ = _upto(2)
    with pytest.raises(SessionStateError):
        s.prepare()                         # before message 3
    with pytest.raises(SessionStateError):
        r.prepare_finish()                  # before message 4


@pytest.mark.parametrize("width", [5, 8, 10])
def test_row_matcher_is_exact_with_shared_prefixes_and_repeats(width):
    rng = np.random.default_rng(width)
    mine = rng.integers(0, 256, (3000, width), dtype=np.uint8)
    mine[1000:1100, :min(8, width)] = mine[0, :min(8, width)]     # many rows share one prefix
    mine[2000] = mine[2001]                                      # a repeated row
    theirs = np.concatenate([mine[::3], rng.integers(0, 256, (2000, width), dtype=np.uint8)])
    theirs[-1, :min(8, width)] = mine[1050, :min(8, width)]      # same prefix, another row
    theirs[-1, -1] ^= 1 if width > 8 else 0
    want = {r.tobytes() for r in theirs}
    m = kkrt_params.RowMatcher(mine)
    for piece in np.array_split(theirs, 7):                      # fed in pieces
        m.feed(piece)
    assert m.result().tolist() == [r.tobytes() in want for r in mine]
    assert not kkrt_params.RowMatcher(mine[:0]).result().size


# ----- the national profile (--crypto gm): SM4 for the PRG and code, HMAC-SM3 for the hashes ----------
@pytest.mark.parametrize("crypto", kkrt_profiles.PROFILES)
def test_both_profiles_give_the_plaintext_intersection(crypto):
    xs = [f"{i:018d}" for i in range(0, 3000)] + ["Ａ１２"]            # a non-ASCII identifier too
    ys = [f"{i:018d}" for i in range(2000, 6000)] + ["A12"]
    want = [i for i in normalise_ids(xs) if i in set(normalise_ids(ys))]
    assert kkrt.intersect(xs, ys, crypto=crypto) == want
    assert kkrt.intersect(xs, ys, crypto=crypto, domain=b"job-2") == want


def test_gm_profile_primitives_are_the_standard_ones():
    import hmac as std_hmac
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    gm = kkrt_profiles.profile("gm")
    key = gm.key("ctx", b"material")
    assert key == std_hmac.digest(b"ctx", b"material", "sm3")
    ids = ["110105194912310021", "x" * 130, "短"]                        # one beyond the kernel's length
    got = gm.hash_items(ids, key)
    assert [bytes(r) for r in got] == [std_hmac.digest(key, i.encode(), "sm3")[:16] for i in ids]
    seed = bytes(range(16))
    stream, want = gm.stream(seed), Cipher(algorithms.SM4(seed), modes.CTR(bytes(16))).encryptor()
    for n in (2048, 4096, 40):                                          # continuing, then a last partial piece
        buf, ref = np.empty(n + 16, np.uint8), np.empty(n + 16, np.uint8)
        stream.update_into(np.zeros(n, np.uint8), buf)
        want.update_into(np.zeros(n, np.uint8), ref)
        assert bytes(buf[:n]) == bytes(ref[:n])
    items = np.arange(32, dtype=np.uint8).reshape(2, 16)
    code = gm.code_words(items, seed)
    first_key = kkrt_profiles.kdf(b"pc.psi.kkrt.v1/gm/code", seed, b"\x00")
    assert bytes(code[0, :16]) == Cipher(algorithms.SM4(first_key), modes.ECB()).encryptor().update(bytes(items[0]))
    with pytest.raises(InvalidInput):
        kkrt_profiles.profile("sm9")


def test_profiles_do_not_interoperate():
    """A receiver and a sender on different profiles find nothing (both read it from the signed spec)."""
    ids = [f"{i:018d}" for i in range(200)]
    s, r = kkrt.KkrtSender(ids, crypto="gm"), kkrt.KkrtReceiver(ids, crypto="aes")
    assert r.finish(s.masks(r.correct(s.extend(r.respond(s.start()))))) == []
