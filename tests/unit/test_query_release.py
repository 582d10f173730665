"""Minimum group size under encryption and output-label-keyed release (secure_agg.query_release)."""
from __future__ import annotations

import numpy as np
import pytest

from pc_common.errors import InvalidInput
from pc_node.secure_agg import get_backend
from pc_node.secure_agg import query_release as qr
from pc_node.secure_agg.gc import ComparisonEvaluator, ComparisonGarbler


def _run(counts_per_group, k, modular=False):
    backend = get_backend("bfv")
    pub, secret = backend.generate_keypair()
    t = pub.plaintext_modulus
    layout, subjects, rows, sums = [], [], [], []
    rng = np.random.default_rng(7)
    for g, (size, matched) in enumerate(counts_per_group):
        for i in range(size):
            layout.append(g)
            m = 1 if i < matched else 0
            subjects.append(m)
            rows.append(m * int(rng.integers(1, 4)))
            sums.append(m * int(rng.integers(-50_000, 900_000)))
    layout = np.array(layout, dtype=np.int64)
    rng.shuffle(perm := np.arange(len(layout)))
    layout, subjects = layout[perm], [subjects[i] for i in perm]
    rows, sums = [rows[i] for i in perm], [sums[i] for i in perm]
    n_groups = len(counts_per_group)
    sizes = np.bincount(layout, minlength=n_groups)
    tp = qr.threshold_plan(k, qr.MAX_GROUP_ROWS if modular else int(sizes.max()), t)
    # C: masks over the providers' ciphertexts
    cm = qr.mask(backend, tp, backend.encrypt(pub, subjects), [backend.encrypt(pub, rows), backend.encrypt(pub, sums)],
                 layout, n_groups)
    # R: decrypts masked values only
    d_sub = qr.group_values(backend.decrypt(secret, cm.masked_subjects), layout, n_groups, t)
    d_agg = [qr.group_values(backend.decrypt(secret, cv), layout, n_groups, t) for cv in cm.masked_aggregates]
    garbler = ComparisonGarbler(tp.spec, [cm.garbler_input])
    evaluator = ComparisonEvaluator(tp.spec, [qr.requester_input(tp, d_sub, t)[0]])
    m1 = evaluator.start()
    m3 = evaluator.extend(garbler.respond(m1))
    suppressed = evaluator.evaluate(garbler.garble(m3))
    ctx = b"job-1"
    msg = qr.release_message(garbler, cm.pads, ctx, t)
    opened = qr.open_released(evaluator, suppressed, d_agg, msg, ctx, t)
    truth = []
    for g in range(n_groups):
        idx = np.nonzero(layout == g)[0]
        truth.append((sum(subjects[i] for i in idx), sum(rows[i] for i in idx), sum(sums[i] for i in idx)))
    return suppressed, opened, truth, (evaluator, d_sub, d_agg, msg, ctx, t)


def test_small_groups_suppressed_released_exact_and_threshold_inclusive():
    groups = [(10, 0), (10, 4), (10, 5), (30, 29), (6, 6), (1, 1)]
    suppressed, opened, truth, _ = _run(groups, 5)
    assert suppressed.tolist() == [True, True, False, False, False, True]
    for g, (c, r, s) in enumerate(truth):
        if suppressed[g]:
            assert opened[g] is None
        else:
            assert opened[g] == [r, s]            # exactly the group totals (sums may be negative)


def test_a_deviating_requester_cannot_open_a_suppressed_group():
    suppressed, _, truth, (evaluator, d_sub, d_agg, msg, ctx, t) = _run([(20, 3), (20, 12)], 5)
    assert suppressed.tolist() == [True, False]
    # What R decrypted for the small group is masked: neither its count nor its aggregates.
    assert int(d_sub[0]) != truth[0][0]
    assert int(d_agg[0][0]) != truth[0][1] and int(d_agg[0][1]) != truth[0][2]
    # Ignoring the bit and using its own label does not remove the pad: the pad is keyed by the
    # label of "released", which R does not hold for a suppressed group.
    forged = qr.open_released(evaluator, np.array([False, False]), d_agg, msg, ctx, t)
    assert forged[0] != [truth[0][1], truth[0][2]]
    assert forged[1] == [truth[1][1], truth[1][2]]


def test_plan_bounds():
    t = get_backend("bfv").generate_keypair()[0].plaintext_modulus
    assert qr.threshold_plan(5, 1000, t).plan.mode == "integer"
    assert qr.threshold_plan(5, qr.MAX_GROUP_ROWS, t).plan.mode == "modular"
    for bad in (0, -1, True):
        with pytest.raises(InvalidInput):
            qr.threshold_plan(bad, 10, t)


def test_modular_mode_threshold_end_to_end():
    suppressed, opened, truth, _ = _run([(8, 4), (8, 5), (9, 9)], 5, modular=True)
    assert suppressed.tolist() == [True, False, False]
    assert opened[0] is None and opened[1] == list(truth[1][1:]) and opened[2] == list(truth[2][1:])
