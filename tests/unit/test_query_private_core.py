"""The intersection-sum core (``pc_node.psi.intersection_sum``) and the release over provider
positions (``pc_node.secure_agg.position_release``), in process, against plain arithmetic."""
from __future__ import annotations

import numpy as np
import pytest

from pc_common.errors import CryptoError, InvalidInput
from pc_node.psi import intersection_sum as isum
from pc_node.psi.randomness import deterministic_rng
from pc_node.secure_agg import get_backend
from pc_node.secure_agg import position_release as pr
from pc_node.secure_agg import query_release as qr
from pc_node.secure_agg.gc import ComparisonEvaluator, ComparisonGarbler

A, B = bytes(range(32)), bytes(range(32, 64))
DOM = isum.domain_for("job-1")


def _sets(n=300, m=200, groups=7, seed=3):
    rng = np.random.default_rng(seed)
    xs = [f"X{i:017d}" for i in range(n)]
    ys = [f"X{i:017d}" for i in range(n - m // 2, n - m // 2 + m)]
    return xs, ys, rng.integers(0, groups, n), rng.integers(1, 1000, m), groups


def _protocol(xs, ys, g, groups, rng=None):
    pts, sizes = isum.blind_groups(xs, g, groups, A, DOM, "libsodium", rng)
    double = isum.double_blind(pts, sizes, B, "libsodium", rng)
    table = isum.provider_table(ys, len(xs), B, DOM, "libsodium", rng)
    layout, matches = isum.assign_positions(double, sizes, table.points, table.real_positions, table.total, A,
                                            "libsodium", rng)
    return sizes, table, layout, matches


def test_assignment_gives_every_group_its_size_and_the_true_matches():
    xs, ys, g, v, groups = _sets()
    sizes, table, layout, matches = _protocol(xs, ys, g, groups)
    yset, value = set(ys), dict(zip(ys, v.tolist()))
    assert matches.tolist() == np.bincount(g[[x in yset for x in xs]], minlength=groups).tolist()
    assert np.bincount(layout[layout >= 0], minlength=groups).tolist() == sizes.tolist()
    spread = table.spread(v)
    got = np.bincount(layout[layout >= 0], weights=spread[layout >= 0], minlength=groups).astype(int)
    want = [sum(value.get(x, 0) for x, gg in zip(xs, g) if gg == k) for k in range(groups)]
    assert got.tolist() == want
    assert (spread[table.row_of_position < 0] == 0).all()        # dummies carry zero


def test_batches_are_shuffled_inside_groups_only():
    xs, ys, g, _, groups = _sets()
    pts, sizes = isum.blind_groups(xs, g, groups, A, DOM, "libsodium")
    double = isum.double_blind(pts, sizes, B, "libsodium")
    # Raising the batch with B gives the same rows per batch, in another order.
    direct = isum.double_blind(pts, sizes, B, "libsodium", deterministic_rng(1))
    bounds = np.cumsum(sizes)
    for lo, hi in zip(np.concatenate([[0], bounds[:-1]]), bounds):
        assert sorted(map(bytes, double[lo:hi])) == sorted(map(bytes, direct[lo:hi]))
    assert not np.array_equal(double, direct)


def test_malformed_peer_data_is_refused():
    xs, ys, g, _, groups = _sets(60, 40, 3)
    pts, sizes = isum.blind_groups(xs, g, groups, A, DOM, "libsodium")
    with pytest.raises(InvalidInput):
        isum.double_blind(pts[:-1], sizes, B, "libsodium")
    bad = pts.copy()
    bad[0] = 0
    with pytest.raises(CryptoError):
        isum.double_blind(bad, sizes, B, "libsodium")
    double = isum.double_blind(pts, sizes, B, "libsodium")
    table = isum.provider_table(ys, 0, B, DOM, "libsodium")      # no dummy positions: cannot pad
    with pytest.raises(InvalidInput):
        isum.assign_positions(double, sizes, table.points, table.real_positions, table.total, A, "libsodium")
    with pytest.raises(InvalidInput):
        isum.assign_positions(double, sizes, table.points, table.real_positions[::-1], table.total, A, "libsodium")
    with pytest.raises(InvalidInput):
        pr.check_assignment(np.zeros(10, dtype=np.int64), np.array([5, 5]), 10)    # group 1 gets nothing


def test_released_groups_are_exact_and_suppressed_ones_stay_padded():
    xs, ys, g, v, groups = _sets(240, 160, 6)
    sizes, table, layout, matches = _protocol(xs, ys, g, groups)
    k = int(np.sort(matches)[2]) + 1          # some groups fall below k
    backend = get_backend("bfv")
    pub, secret = backend.generate_keypair()
    t = pub.plaintext_modulus
    subjects = backend.encrypt(pub, table.spread(np.ones(len(ys), dtype=np.int64)))
    sums = backend.encrypt(pub, table.spread(v))
    lay = pr.check_assignment(layout, sizes, table.total)
    tp = qr.threshold_plan(k, int(sizes.max()), t)
    cm = pr.mask_positions(backend, tp, subjects, [sums], lay, groups)
    d_thr = pr.requester_groups(backend.decrypt(secret, cm.masked_subjects), lay, groups, t)
    d_sum = pr.requester_groups(backend.decrypt(secret, cm.masked_aggregates[0]), lay, groups, t)
    garbler = ComparisonGarbler(tp.spec, [cm.garbler_input])
    ev = ComparisonEvaluator(tp.spec, [qr.requester_input(tp, d_thr, t)[0]])
    m2 = garbler.respond(ev.start())
    suppressed = ev.evaluate(garbler.garble(ev.extend(m2)))
    opened = qr.open_released(ev, suppressed, [d_sum], qr.release_message(garbler, cm.pads, b"ctx", t), b"ctx", t)
    value = dict(zip(ys, v.tolist()))
    for grp in range(groups):
        want = sum(value.get(x, 0) for x, gg in zip(xs, g) if gg == grp)
        assert (opened[grp] is None) == (matches[grp] < k)
        if opened[grp] is not None:
            assert opened[grp] == [want]
    assert any(o is None for o in opened) and any(o is not None for o in opened)
