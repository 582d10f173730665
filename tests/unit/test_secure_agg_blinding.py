"""Blinding gives the true answers: group sums, zero tests, folded zero tests, comparisons."""
from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pc_common.errors import CryptoError, InvalidInput, OverflowDetected
from pc_node.secure_agg import (
    Comparison,
    backend_for,
    blur_window_bits,
    fold_zero_tests,
    get_backend,
    greater_than,
    group_sum,
    less_than,
    random_permutation,
    rho_bits,
    shuffle_comparisons,
    shuffled,
    zero_test,
)
from pc_node.secure_agg.blinding import MIN_RHO_BITS

FAST = settings(max_examples=15, deadline=None)


def decrypt(sec, cv) -> np.ndarray:
    return backend_for(sec).decrypt(sec, cv)


def decrypt_zero_tests(sec, cv) -> np.ndarray:
    """As the requester reads a zero test (verify.finish): true where the value is zero."""
    return np.array([int(v) == 0 for v in decrypt(sec, cv)], dtype=bool)


def decrypt_comparisons(sec, cv) -> np.ndarray:
    """As the requester reads a comparison (verify.finish): true where the value is positive."""
    return np.array([int(v) > 0 for v in decrypt(sec, cv)], dtype=bool)


@pytest.fixture(scope="module", params=["bfv", "paillier"])
def keys(request):
    be = get_backend(request.param)
    if request.param == "paillier":
        pub, sec = be.generate_keypair(key_bits=1024, allow_test_key=True)
    else:
        pub, sec = be.generate_keypair()
    return be, pub, sec


@pytest.fixture(scope="module")
def bfv_keys():
    be = get_backend("bfv")
    return (be, *be.generate_keypair())


def test_group_sum_rows_layout(keys):
    be, pub, sec = keys
    rng = random.Random(7)
    sizes = sorted((rng.randint(1, 6) for _ in range(25)), reverse=True)
    providers = 3
    values = {
        (p, g, j): rng.randint(-1000, 1000) for p in range(providers) for g, s in enumerate(sizes) for j in range(s)
    }
    rows = []
    for p in range(providers):
        for j in range(max(sizes)):
            width = sum(1 for s in sizes if s > j)  # groups sorted by size: row j is a prefix
            rows.append(be.encrypt(pub, [values[(p, g, j)] for g in range(width)]))
    expected = [sum(values[(p, g, j)] for p in range(providers) for j in range(s)) for g, s in enumerate(sizes)]
    assert list(decrypt(sec, group_sum(pub, rows))) == expected


counts = st.lists(st.integers(0, 3), min_size=1, max_size=12)


@FAST
@given(counts)
def test_zero_test(keys, s):
    be, pub, sec = keys
    out = zero_test(pub, be.encrypt(pub, s))
    assert list(decrypt_zero_tests(sec, out)) == [v == 0 for v in s]


def test_zero_test_hides_magnitude(keys):
    be, pub, sec = keys
    raw = decrypt(sec, zero_test(pub, be.encrypt(pub, [1, 1, 1, 2])))
    assert len({int(v) for v in raw}) == 4  # independent uniform factors
    assert all(abs(int(v)) > 2**20 for v in raw)  # overwhelmingly likely for uniform ρ


@FAST
@given(st.lists(counts, min_size=1, max_size=4).filter(lambda c: len({len(x) for x in c}) == 1))
def test_fold_zero_tests(keys, criteria):
    be, pub, sec = keys
    cvs = [be.encrypt(pub, c) for c in criteria]
    out = fold_zero_tests(pub, cvs, count_bound=3)
    expected = [all(c[g] == 0 for c in criteria) for g in range(len(criteria[0]))]
    assert list(decrypt_zero_tests(sec, out)) == expected


def test_fold_with_large_counts_and_overflow_guard(keys):
    be, pub, sec = keys
    big = pub.plaintext_bound // 8
    cvs = [be.encrypt(pub, [0, big, 0]), be.encrypt(pub, [0, big, 1])]
    assert list(decrypt_zero_tests(sec, fold_zero_tests(pub, cvs, count_bound=big))) == [True, False, False]
    with pytest.raises(OverflowDetected):
        fold_zero_tests(pub, cvs, count_bound=pub.plaintext_bound)


money = st.integers(-(10**9), 10**9)


@FAST
@given(st.lists(st.tuples(money, money), min_size=1, max_size=10))
def test_less_than_and_greater_than(keys, pairs):
    be, pub, sec = keys
    s = [a for a, _ in pairs]
    t = [b for _, b in pairs]
    t[0] = s[0]  # boundary S = T is always present: "S < T" and "S > T" are both false
    cv = be.encrypt(pub, s)
    vb = 2 * 10**9
    assert list(decrypt_comparisons(sec, less_than(pub, cv, t, vb))) == [a < b for a, b in zip(s, t)]
    assert list(decrypt_comparisons(sec, greater_than(pub, cv, t, vb))) == [a > b for a, b in zip(s, t)]


def test_boundary_and_unit_margins(keys):
    be, pub, sec = keys
    s = [5, 5, 5, 0, 0, -1]
    t = [5, 6, 4, 0, 1, 0]
    cv = be.encrypt(pub, s)
    for _ in range(5):
        assert list(decrypt_comparisons(sec, less_than(pub, cv, t, 10))) == [False, True, False, False, True, True]
    exists = greater_than(pub, be.encrypt(pub, [0, 1, 3]), 0, 3)
    assert list(decrypt_comparisons(sec, exists)) == [False, True, True]


def test_comparison_magnitude_never_wraps_at_the_bound(keys):
    be, pub, sec = keys
    vb = 1000
    k = rho_bits(pub, vb)
    s = [-500, 500, 0]
    t = [500, -500, 0]  # |T - S| = 1000 = value_bound
    raw = decrypt(sec, less_than(pub, be.encrypt(pub, s), t, vb, random.Random(1)))
    assert int(raw[0]) > 0 and int(raw[1]) < 0 and int(raw[2]) < 0  # S = T is never 0
    assert all(abs(int(v)) < (vb + 1) << k for v in raw)


def test_rho_bits_and_overflow(keys):
    _, pub, _ = keys
    k = rho_bits(pub, 10**6)
    assert (10**6 + 1) << k <= pub.plaintext_bound < (10**6 + 1) << (k + 1)
    assert rho_bits(pub, 10**6, max_rho_bits=16) == 16
    with pytest.raises(OverflowDetected):
        rho_bits(pub, pub.plaintext_bound)
    be = get_backend(pub.backend_name)
    with pytest.raises(OverflowDetected):
        less_than(pub, be.encrypt(pub, [1]), [2], pub.plaintext_bound)
    with pytest.raises(OverflowDetected):
        rho_bits(pub, pub.plaintext_bound // 3)  # k would be 1: no room for ρ > ρ′ >= 1
    assert rho_bits(pub, pub.plaintext_bound // 5) == 2
    assert blur_window_bits(pub, 10**6) == k - MIN_RHO_BITS + 1
    with pytest.raises(InvalidInput):
        rho_bits(pub, -1)


def test_injected_rng_makes_blinding_reproducible(keys):
    be, pub, sec = keys
    cv = be.encrypt(pub, [3, 9, 27])
    a = decrypt(sec, less_than(pub, cv, [10, 10, 10], 100, random.Random(42)))
    b = decrypt(sec, less_than(pub, cv, [10, 10, 10], 100, random.Random(42)))
    c = decrypt(sec, less_than(pub, cv, [10, 10, 10], 100, random.Random(43)))
    assert list(a) == list(b) and list(a) != list(c)


def test_rho_is_log_uniform(keys):
    """ρ's bit length spreads over [MIN_RHO_BITS, k] (the margin is blurred in log scale)."""
    be, pub, sec = keys
    k = rho_bits(pub, 1)
    raw = decrypt(sec, less_than(pub, be.encrypt(pub, [0] * 200), 1, 1, random.Random(5)))
    lengths = [int(v).bit_length() for v in raw]
    assert min(lengths) <= MIN_RHO_BITS + k // 4 and max(lengths) >= k - k // 4


def test_shuffle_comparisons_per_group(keys):
    be, pub, sec = keys
    rng = random.Random(11)
    groups = 40
    crit = [
        (rng.choices(range(0, 50), k=groups), [25] * groups, "lt"),
        (rng.choices(range(0, 50), k=groups), rng.choices(range(0, 50), k=groups), "gt"),
        (rng.choices(range(0, 3), k=groups), 0, "gt"),
    ]
    comps = [Comparison(be.encrypt(pub, s), t, op) for s, t, op in crit]
    outs = shuffle_comparisons(pub, comps, value_bound=100, rng=rng)
    got = np.array([decrypt_comparisons(sec, o) for o in outs])  # [output, group]

    def truth(s, t, op, g):
        tg = t if isinstance(t, int) else t[g]
        return s[g] < tg if op == "lt" else s[g] > tg

    expected = np.array([[truth(s, t, op, g) for g in range(groups)] for s, t, op in crit])
    assert (got.sum(axis=0) == expected.sum(axis=0)).all()  # same verdict counts per group
    assert not (got == expected).all()  # and not in the criteria's order


def test_permutation_helpers():
    rng = random.Random(3)
    perm = random_permutation(10, rng)
    assert sorted(perm) == list(range(10))
    assert sorted(shuffled(list("abcdef"), rng)) == list("abcdef")


def test_refuses_secret_context_and_foreign_ciphertexts(keys):
    be, pub, sec = keys
    cv = be.encrypt(pub, [1])
    with pytest.raises(InvalidInput):
        zero_test(sec, cv)  # type: ignore[arg-type]
    other_pub, _ = (
        be.generate_keypair(key_bits=1024, allow_test_key=True)
        if pub.backend_name == "paillier"
        else be.generate_keypair()
    )
    with pytest.raises(CryptoError):
        zero_test(other_pub, cv)
    with pytest.raises(CryptoError):
        group_sum(pub, [cv, be.encrypt(other_pub, [1])])


def test_bfv_comparison_after_large_group_sum(bfv_keys):
    """Realistic noise: 24 rows × 4 providers summed, then blinded and shuffled."""
    be, pub, sec = bfv_keys
    rng = random.Random(2)
    rows = [[rng.randint(0, 10**6) for _ in range(50)] for _ in range(96)]
    s = group_sum(pub, [be.encrypt(pub, r) for r in rows])
    totals = [sum(col) for col in zip(*rows)]
    t = [rng.randint(0, 10**8) for _ in range(50)]
    vb = 10**8 + 96 * 10**6
    assert list(decrypt_comparisons(sec, less_than(pub, s, t, vb))) == [a < b for a, b in zip(totals, t)]
    outs = shuffle_comparisons(pub, [Comparison(s, t, "lt"), Comparison(s, t, "gt")], vb)
    got = np.array([decrypt_comparisons(sec, o) for o in outs]).sum(axis=0)
    assert list(got) == [int(a < b) + int(a > b) for a, b in zip(totals, t)]


def test_blinding_never_imports_key_holder_code(bfv_keys, tmp_path):
    _, pub, _ = bfv_keys
    pai = get_backend("paillier")
    ppub, _ = pai.generate_keypair(key_bits=1024, allow_test_key=True)
    (tmp_path / "bfv.pub").write_bytes(pub.serialize())
    (tmp_path / "pai.pub").write_bytes(ppub.serialize())
    code = textwrap.dedent(
        f"""
        import sys, pathlib
        from pc_node.secure_agg import blinding, get_backend
        d = pathlib.Path({str(tmp_path)!r})
        bfv = get_backend("bfv").load_public((d / "bfv.pub").read_bytes())
        pai = get_backend("paillier").load_public((d / "pai.pub").read_bytes(), min_key_bits=1024)
        for pub in (bfv, pai):
            be = get_backend(pub.backend_name)
            s = blinding.group_sum(pub, [be.encrypt(pub, [1, 2]), be.encrypt(pub, [3])])
            blinding.less_than(pub, s, [5, 5], 10)
            blinding.fold_zero_tests(pub, [s, s], 10)
        leaked = [m for m in sys.modules if m.endswith("_keys") or m == "phe" or m.startswith("phe.")]
        assert not leaked, leaked
        print("ok")
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2]
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
