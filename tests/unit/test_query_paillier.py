"""Queries whose answer is a product of two agencies' data, under Paillier (secure_agg.query_paillier):
packs of signed digits, a further agency's selection between the coordinator's masks, the
coordinator's per-group masks, and the release at the requester."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pc_common.errors import InvalidInput
from pc_node.secure_agg import get_backend
from pc_node.secure_agg import query_paillier as qp
from pc_node.secure_agg import query_release as qr
from pc_node.secure_agg.gc import ComparisonEvaluator, ComparisonGarbler

BACKEND = get_backend("paillier")
PUB, SECRET = BACKEND.generate_keypair()
PUB = BACKEND.load_public(PUB.serialize())              # as a provider or the coordinator loads it
DIGIT = st.integers(-(1 << 126), (1 << 126) - 1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(DIGIT, min_size=3, max_size=3), min_size=1, max_size=20))
def test_packed_signed_digits_add_up_without_interfering(rows):
    """Σ of packs = pack of column sums, digit by digit, while every sum stays within ±2^127."""
    cols = [[r[j] for r in rows] for j in range(3)]
    packed = qp.pack(cols)
    assert qp.unpack(packed, 3) == cols
    total = [sum(c) for c in cols]
    if all(-(1 << 127) <= s < (1 << 127) for s in total):
        assert qp.unpack([sum(packed)], 3) == [[s] for s in total]


def test_pack_refuses_what_would_spill_and_unpack_refuses_extra_digits():
    with pytest.raises(InvalidInput):
        qp.pack([[1 << 127]])
    with pytest.raises(InvalidInput):
        qp.pack([[1, 2], [3]])
    with pytest.raises(InvalidInput):
        qp.unpack([1 << 300], 2)
    assert qp.digits_per_pack(PUB) == 7
    names = qp.pack_names(("subjects", "rows") + tuple(f"sum:c{i}" for i in range(6)), 7)
    assert names == [("threshold", "subjects", "rows", "sum:c0", "sum:c1", "sum:c2", "sum:c3"), ("sum:c4", "sum:c5")]


def test_a_further_agencys_selection_is_exact_and_it_never_holds_the_answer_unmasked():
    """C masks, the agency selects and returns Enc(e), C unmasks: Enc(e·v). What the agency holds
    decrypts to v + R (R uniform below 2^99 per digit), never to v; its outputs are fresh."""
    names = [("threshold", "subjects")]
    values = [[1, 1, 0, 1, 1], [1, 1, 0, 1, 1]]
    sums = [5, -7, 0, 1 << 30, 3]
    packs = [BACKEND.encrypt(PUB, qp.pack([values[0], sums]))]
    masked, masks = qp.mask_for_selection(BACKEND, names, packs)
    held = qp.unpack(BACKEND.decrypt(SECRET, masked[0]).tolist(), 2)
    assert all(h != v for h, v in zip(held[1], sums)) and min(held[1]) > -(1 << 31)
    keep = np.array([1, 0, 1, 0, 1])
    selected, kept = qp.select(BACKEND, masked, keep, PUB)
    assert not set(masked[0].cts) & set(selected[0].cts) and len(set(selected[0].cts)) == 5
    assert BACKEND.decrypt(SECRET, kept).tolist() == keep.tolist()
    out = qp.unmask_selection(BACKEND, selected, kept, masks)
    assert qp.unpack(BACKEND.decrypt(SECRET, out[0]).tolist(), 2) == [[1, 0, 0, 0, 1], [5, 0, 0, 0, 3]]
    again, _ = qp.select(BACKEND, masked, keep, PUB)                 # fresh randomness every time
    assert not set(again[0].cts) & set(selected[0].cts)
    for bad in (np.array([1, 0, 2, 0, 1]), np.array([1, 0, 1, 1])):
        with pytest.raises(InvalidInput):
            qp.select(BACKEND, masked, bad, PUB)
    with pytest.raises(InvalidInput):
        qp.unmask_selection(BACKEND, selected, BACKEND.encrypt(PUB, [1, 1]), masks)


def _job(sizes, matched, k, further=True):
    """Provider answers for groups of ``sizes`` slots of which the first ``matched[g]`` match; with
    ``further`` a second agency that drops every third slot. Returns (suppression bits, released
    values per group or None, the truth per group, R's view)."""
    rng = np.random.default_rng(11)
    layout = np.repeat(np.arange(len(sizes)), sizes)
    n = len(layout)
    rank = np.concatenate([np.arange(s) for s in sizes])
    is_match = rank < np.repeat(matched, sizes)
    rows = np.where(is_match, rng.integers(1, 5, n), 0)
    wages = np.where(is_match, rng.integers(-10**6, 10**10, n), 0)
    vectors = ("subjects", "rows", "sum:wage")
    names = qp.pack_names(vectors, qp.digits_per_pack(PUB))
    values = {"subjects": is_match.astype(np.int64), "rows": rows, "sum:wage": wages}
    packs = qp.encrypt_packs(BACKEND, PUB, names, values)
    keep = np.ones(n, dtype=np.int64)
    if further:
        keep[::3] = 0
        masked, masks = qp.mask_for_selection(BACKEND, names, packs)
        packs = qp.unmask_selection(BACKEND, *qp.select(BACKEND, masked, keep, PUB), masks)
    n_groups = len(sizes)
    tp = qr.threshold_plan(k, int(max(sizes)), qp.DIGIT_MOD)
    cm = qp.mask(BACKEND, tp, names, vectors, packs, layout, n_groups)
    digits, bad = qp.open_packs(BACKEND, SECRET, names, cm.masked, n_groups)
    assert not bad.any()
    garbler = ComparisonGarbler(tp.spec, [cm.garbler_input])
    evaluator = ComparisonEvaluator(tp.spec, [qr.requester_input(tp, digits[qp.THRESHOLD], qp.DIGIT_MOD)[0]])
    suppressed = evaluator.evaluate(garbler.garble(evaluator.extend(garbler.respond(evaluator.start()))))
    d_agg = [digits[v] for v in vectors]
    msg = qr.release_message(garbler, cm.pads, b"job", qp.DIGIT_MOD)
    opened = qr.open_released(evaluator, suppressed, d_agg, msg, b"job", qp.DIGIT_MOD)
    sel = is_match & (keep == 1)
    truth = []
    for g in range(n_groups):
        at = (layout == g) & sel
        truth.append([int(at.sum()), int(rows[at].sum()), int(wages[at].sum())])
    return suppressed, opened, truth, (evaluator, d_agg, msg)


def test_released_groups_are_exact_and_small_groups_suppressed_with_a_further_agency():
    suppressed, opened, truth, _ = _job([12, 12, 30, 9], [12, 6, 25, 9], k=5)
    # after the further agency drops every third slot (global positions 0, 3, 6, …): 8, 4, 16, 6
    assert [t[0] for t in truth] == [8, 4, 16, 6]
    assert suppressed.tolist() == [False, True, False, False]
    for g, t in enumerate(truth):
        assert opened[g] == (None if suppressed[g] else t)


def test_a_group_exactly_at_the_threshold_is_released_and_one_below_is_not():
    suppressed, opened, truth, _ = _job([5, 5], [5, 4], k=5, further=False)
    assert suppressed.tolist() == [False, True] and opened[0] == truth[0] and opened[1] is None


def test_a_deviating_requester_cannot_open_a_suppressed_group():
    suppressed, _, truth, (evaluator, d_agg, msg) = _job([12, 12], [2, 12], k=5)
    assert suppressed.tolist() == [True, False]
    assert all(int(d_agg[j][0]) != truth[0][j] for j in range(len(d_agg)))       # masked, not the totals
    forged = qr.open_released(evaluator, np.array([False, False]), d_agg, msg, b"job", qp.DIGIT_MOD)
    assert forged[0] != truth[0] and forged[1] == truth[1]


def test_masked_group_values_do_not_depend_on_the_group_total():
    """R's masked digit of a group is total + pad with pad uniform below 2^(VALUE_BITS+40): two
    very different totals give values of the same size, far above either total."""
    seen = []
    for matched in (0, 12):
        _, _, truth, (_, d_agg, _) = _job([12], [matched], k=5, further=False)
        seen.append([int(d_agg[j][0]) for j in range(len(d_agg))])
    for row in seen:
        for v in row:
            assert (1 << (qp.VALUE_BITS + 20)) < v < (1 << (qp.VALUE_BITS + qp.STAT_BITS + 1))


def test_values_a_deviating_coordinator_makes_are_withheld_without_failing():
    """A group whose pack does not decode, or whose threshold value is out of range, is released
    to nobody and the requester's side goes on exactly as usual (failing would answer the
    coordinator's question, e.g. whether a slot it chose as a "group" matched)."""
    names = [("threshold", "subjects")]
    odd = BACKEND.encrypt(PUB, [qp.pack([[7], [1]])[0], 1 << 300])
    digits, bad = qp.open_packs(BACKEND, SECRET, names, [odd], 2)
    assert bad.tolist() == [False, True] and digits["threshold"][1] == 0
    tp = qr.threshold_plan(5, 10, qp.DIGIT_MOD)
    _, withheld = qr.requester_input(tp, [3, 1 << 200], qp.DIGIT_MOD)
    assert withheld.tolist() == [False, True]
