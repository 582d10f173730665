"""Differential privacy of federated queries: OpenDP calibration, distributed discrete Laplace
shares, noise under encryption with the threshold on the noisy count, the ε ledger, grant and
metadata fields, and the differencing attack's advantage bounded per ε (many real draws)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pc_common.errors import InvalidInput, ResourceExhausted
from pc_node.governance import Governance
from pc_node.policy import parse_policy, pins_toml
from pc_node.secure_agg import dp_noise, get_backend
from pc_node.secure_agg import query_release as qr
from pc_node.secure_agg.gc import ComparisonEvaluator, ComparisonGarbler
from pc_rules.metadata import parse_metadata


def _source(seed: int) -> dp_noise.NegativeBinomialSource:
    return dp_noise.NegativeBinomialSource(np.random.Generator(np.random.PCG64(seed)))


def _laplace_pmf(x: np.ndarray, scale: float) -> np.ndarray:
    q = math.exp(-1 / scale)
    return (1 - q) / (1 + q) * q ** np.abs(x)


# ----- calibration and the distributed mechanism --------------------------------------------------------
def test_opendp_calibration_gives_sensitivity_over_epsilon():
    assert dp_noise.scale_for(0.5, 3) == pytest.approx(6.0)
    assert dp_noise.scale_for(1.0, 1) == pytest.approx(1.0)
    assert dp_noise.subject_scale(1.0, 4) == pytest.approx(4.0)       # ε split over 4 vectors
    for bad in (0, 0.001, 11, float("nan"), True):
        with pytest.raises(InvalidInput):
            dp_noise.check_epsilon(bad)


@pytest.mark.parametrize("parties", [2, 3])
def test_the_sum_of_the_parties_shares_is_discrete_laplace(parties):
    scale, n = 2.0, 200_000
    total = sum(_source(100 + i).share(scale, parties, n) for i in range(parties))
    values, counts = np.unique(total, return_counts=True)
    tv = 0.5 * (np.abs(counts / n - _laplace_pmf(values, scale)).sum() + (1 - _laplace_pmf(values, scale).sum()))
    assert tv < 0.01
    # One party's share alone is not the mechanism: it is visibly narrower.
    assert np.var(_source(7).share(scale, parties, n)) < 0.75 * np.var(total)


def test_shares_are_clamped_and_seeded_sources_repeat():
    s = _source(1).share(0.5, 2, 50_000)
    assert np.abs(s).max() <= dp_noise.share_bound(0.5)
    assert np.array_equal(_source(5).share(3.0, 2, 100), _source(5).share(3.0, 2, 100))


def test_differencing_attack_advantage_is_bounded_by_epsilon():
    """Two populations differing by one subject: counts c and c + 1 released with the summed
    shares. Over many draws, no output is much likelier under one than the other (ratio ≤ e^ε)
    and the best distinguisher's advantage (total variation) stays below (e^ε − 1)/(e^ε + 1)."""
    eps, n, c = 0.5, 400_000, 40
    scale = dp_noise.scale_for(eps, 1)
    a = c + _source(1).share(scale, 2, n) + _source(2).share(scale, 2, n)
    b = c + 1 + _source(3).share(scale, 2, n) + _source(4).share(scale, 2, n)
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    pa = np.bincount(a - lo, minlength=hi - lo + 1) / n
    pb = np.bincount(b - lo, minlength=hi - lo + 1) / n
    heavy = (pa > 2e-3) & (pb > 2e-3)
    assert heavy.sum() > 10
    assert np.max(pa[heavy] / pb[heavy]) < math.exp(eps) * 1.06
    assert np.max(pb[heavy] / pa[heavy]) < math.exp(eps) * 1.06
    advantage = 0.5 * np.abs(pa - pb).sum()
    assert advantage < (math.exp(eps) - 1) / (math.exp(eps) + 1) + 0.01
    # The naive attack (difference of the two answers = the victim) is right only rarely.
    assert np.mean(b - a == 1) < 0.2


# ----- noise under encryption --------------------------------------------------------------------------
def test_noise_under_encryption_is_the_sum_of_shares_and_the_threshold_uses_the_noisy_count():
    backend = get_backend("bfv")
    pub, secret = backend.generate_keypair()
    t = pub.plaintext_modulus
    layout = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 0], dtype=np.int64)
    subjects = [1] * len(layout)
    sums = [100 * (i + 1) for i in range(len(layout))]
    n_groups, k, eps = 3, 5, 1.0
    true_counts = np.bincount(layout, minlength=n_groups)                 # 5, 4, 3
    p_share = np.array([[1, 1, -3], [2, -1, 0]], dtype=np.int64)          # provider: subjects, sums
    c_share = np.array([[-2, 1, 4], [5, 0, -7]], dtype=np.int64)          # coordinator
    noise = p_share + c_share                                             # -1, 2, 1 | 7, -1, -7
    shift = qr.dp_shift(eps, 2, 2)
    tp = qr.dp_threshold_plan(k, int(true_counts.max()), t, shift)
    dn = qr.DpNoise([backend.encrypt(pub, p_share[0]), backend.encrypt(pub, p_share[1])], c_share, shift)
    cm = qr.mask(backend, tp, backend.encrypt(pub, subjects), [backend.encrypt(pub, subjects),
                                                               backend.encrypt(pub, sums)], layout, n_groups, dn)
    dec = [backend.decrypt(secret, cv) for cv in cm.masked_noise]
    d_sub = qr.group_values(backend.decrypt(secret, cm.masked_subjects), layout, n_groups, t, dec[0])
    d_agg = [qr.group_values(backend.decrypt(secret, cv), layout, n_groups, t, d)
             for cv, d in zip(cm.masked_aggregates, dec[1:])]
    garbler = ComparisonGarbler(tp.spec, [cm.garbler_input])
    ev = ComparisonEvaluator(tp.spec, [qr.requester_input(tp, d_sub, t)[0]])
    suppressed = ev.evaluate(garbler.garble(ev.extend(garbler.respond(ev.start()))))
    noisy = true_counts + noise[0]                                        # 4, 6, 4
    assert suppressed.tolist() == (noisy < k).tolist() == [True, False, True]
    opened = qr.open_released(ev, suppressed, d_agg, qr.release_message(garbler, cm.pads, b"j", t), b"j", t)
    true_sums = np.bincount(layout, weights=sums, minlength=n_groups).astype(int)
    # Group 0 has 5 true subjects but is suppressed by its noisy count; group 1 (4 true) released.
    assert opened[0] is None and opened[2] is None
    assert opened[1] == [int(noisy[1]), int(true_sums[1] + noise[1][1])]


# ----- the ledger --------------------------------------------------------------------------------------
def test_the_ledger_is_all_or_nothing_once_per_job_and_renews_per_period(tmp_path):
    now = [1_000_000.0]
    gov = Governance(tmp_path / "g.db", clock=lambda: now[0])
    budgets = [("wages", 2.0, 86400), ("vehicles", None, 86400)]
    assert gov.charge_epsilon("j1#epsilon", "civil", 1.5, budgets, now[0] + 3600)
    assert not gov.charge_epsilon("j1#epsilon", "civil", 1.5, budgets, now[0] + 3600)     # charged once
    with pytest.raises(ResourceExhausted, match=r"0\.5 of epsilon 2 left within a day, the query asks 1"):
        gov.charge_epsilon("j2#epsilon", "civil", 1.0, budgets, now[0] + 3600)
    assert gov.epsilon_spent("civil", "wages", 86400) == pytest.approx(1.5)
    assert gov.epsilon_spent("civil", "vehicles", 86400) == pytest.approx(1.5)          # recorded, no cap
    assert gov.charge_epsilon("j3#epsilon", "other", 2.0, budgets, now[0] + 3600)       # per requester
    now[0] += 86401
    assert gov.charge_epsilon("j2#epsilon", "civil", 1.0, budgets, now[0] + 3600)       # a new period


# ----- grants, metadata, sandbox ------------------------------------------------------------------------
def test_grant_fields_round_trip_and_are_checked():
    text = ('[[grants]]\ndataset = "wages"\nrequester = "civil"\npurposes = ["p"]\nepsilon = 0.5\n'
            'epsilon_budget = 5\n[grants.columns]\nid_number = "join_key"\n')
    g = parse_policy(text)[0]
    assert (g.epsilon, g.epsilon_budget) == (0.5, 5.0)
    assert "epsilon = 0.5\nepsilon_budget = 5.0\n" in pins_toml(g)
    for bad in ("0", "-1", '"x"', "true"):
        with pytest.raises(InvalidInput, match="'epsilon' must be a number > 0"):
            parse_policy(text.replace("epsilon = 0.5", f"epsilon = {bad}"))


def test_column_bounds_in_metadata():
    m = parse_metadata('[columns.w]\ntype = "decimal"\nmin = -10.5\nmax = 20000\n', "w.toml")
    assert (m.columns[0].min, m.columns[0].max) == ("-10.5", "20000")
    for bad, why in (("min = 5\nmax = 1", "min must not exceed max"), ('min = "x"', "min must be a number"),
                     ("max = 1.005", "at most two decimals")):
        with pytest.raises(InvalidInput, match=why):
            parse_metadata(f'[columns.w]\ntype = "decimal"\n{bad}\n', "w.toml")


def test_sandbox_epsilon_line_makes_the_grant_demand_dp():
    from pc_client.sandbox import query_grants
    sql = ("SELECT a.district, COUNT(*) FROM civil_affairs.applicants a JOIN tax.wages w "
           "ON a.id_number = w.id_number GROUP BY a.district")
    (g,) = query_grants("tax", ["-- epsilon: 0.5\n" + sql], {})
    assert (g.epsilon, g.epsilon_budget, g.min_group_size) == (0.5, 5.0, 5)
    (g,) = query_grants("tax", [sql], {})
    assert g.epsilon is None and g.epsilon_budget is None


def test_the_coordinator_refuses_a_provider_noise_scale_other_than_the_signed_epsilons():
    from pc_common import steps_schema as schema
    from pc_common.job_kinds import QueryParams
    from pc_coordinator.query_jobs import _dp_noise
    backend = get_backend("bfv")
    pub, _ = backend.generate_keypair()
    p = QueryParams(sql="SELECT 1", epsilon=1.0)
    names = ("subjects", "rows")
    blobs = {schema.ciphertext_stream("noise:" + n): backend.encrypt(pub, [0, 0]).serialize() for n in names}
    good = [repr(dp_noise.subject_scale(1.0, 2)), repr(dp_noise.scale_for(0.5, 8))]
    noise = _dp_noise(p, schema.QueryEvaluated(2, names, tuple(good)), blobs, backend, pub, names, 2, 2, 0)
    assert noise.shift == qr.dp_shift(1.0, 2, 2) and noise.coordinator.shape == (2, 2)
    for scales in ((repr(0.01), good[1]), (good[0],), ("x", good[1])):
        with pytest.raises(InvalidInput):
            _dp_noise(p, schema.QueryEvaluated(2, names, scales), blobs, backend, pub, names, 2, 2, 0)
    with pytest.raises(InvalidInput, match="noise shares"):          # shares for another number of groups
        _dp_noise(p, schema.QueryEvaluated(2, names, tuple(good)), blobs, backend, pub, names, 2, 3, 0)
