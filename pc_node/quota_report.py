"""What a node's data officer sees of quota use: every grant with its limits and the counters now.

``quota_report(runtime) -> node_pb2.QuotaReport`` (``Node.QuotaUsage``; officers of this agency
only). Per grant (dataset, requester, purposes): the four quota limits of ``[grants.quota]`` and
what governance counted for the requester in the last hour and day, whether the requester is
suspended, the per-subject evaluation limit, and — where the grant sets ``epsilon_budget`` — the
ε the requester spent on the dataset within the grant's ``evaluation_period`` and what is left.

Governance counts jobs and subjects per requester at this node, whichever grant admitted them
(admission charges against the tightest quota of the job's grants), so two grants of one
requester show the same use against their own limits. Counts only: never an identifier, a
blind index or a job's content.
"""
from __future__ import annotations

from pc_common import clock
from pc_common.pb import node_pb2
from pc_node.policy import PERIODS, QUOTA_KEYS

WINDOWS = {"hour": 3600, "day": 86400}


def quota_report(runtime) -> node_pb2.QuotaReport:
    gov = runtime.governance
    grants = runtime.policy.grants()
    usage: dict[tuple[str, str], dict] = {}
    for requester in sorted({g.requester for g in grants}):
        for label, seconds in WINDOWS.items():
            usage[(requester, label)] = gov.usage(requester, seconds)
    out = node_pb2.QuotaReport(node_id=runtime.node_id, as_of=clock.iso(gov.clock()))
    for g in sorted(grants, key=lambda g: (g.dataset, g.requester, g.purposes)):
        row = out.grants.add(dataset=g.dataset, requester=g.requester, purposes=list(g.purposes),
                             suspended=gov.is_suspended(g.requester),
                             max_evaluations_per_subject=g.max_evaluations_per_subject,
                             evaluation_period=g.evaluation_period)
        for key in QUOTA_KEYS:        # e.g. subjects_per_day: the "subjects" counted in the last day
            what, _, window = key.split("_")
            row.counters.add(name=key, limit=int(g.quota[key]), used=int(usage[(g.requester, window)][what]))
        if g.epsilon_budget is not None:
            spent = gov.epsilon_spent(g.requester, g.dataset, PERIODS[g.evaluation_period])
            row.epsilon_budgeted = True
            row.epsilon_budget = float(g.epsilon_budget)
            row.epsilon_spent = spent
            row.epsilon_left = max(float(g.epsilon_budget) - spent, 0.0)
    return out
