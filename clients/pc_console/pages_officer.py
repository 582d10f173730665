"""The data officer's pages (事前审批): the node's approvals with the full request — requester,
purpose, datasets, the rule's criteria and thresholds, subject and group counts, and what this
agency and the others learn — approve or reject with a reason; and the grants of this agency's
datasets as the catalog summarises them, with their quota limits and use (a table and a chart).

Everything goes through the officer's own certificate: ``ListApprovals``, ``DecideApproval`` and
``QuotaUsage`` at the agency's node (officer role, own agency only), ``GetJob`` and ``GetCatalog``
at the coordinator (a job this agency takes part in).
"""
from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from pc_console import charts
from pc_console.labels import label
from pc_console.web import rpc_error

router = APIRouter()


def _request_leakage(a, party: str) -> list[tuple[str, list[str]]]:
    """What the job asks this agency to reveal and learn, from the approval's own fields (the
    coordinator's full report follows once the job has run)."""
    ours = [f"{a.subjects} identifier(s) the requester asks about, in random order with opaque slots",
            f"purpose '{a.purpose}'" + (f", rule '{a.rule_id}' and its criteria on this agency's data" if a.rule_id
                                        else "")]
    theirs = [f"per group ({a.groups}) one verdict bit" if a.reveal == "verdict"
              else f"per group ({a.groups}) and criterion one bit (reasons mode)"] if a.kind == "verify" else \
        [f"what a {a.kind} job releases (see its leakage report once it ran)"]
    return [(party, ours), (a.requester, theirs),
            ("coordinator", ["sizes and timings only; ciphertexts it cannot open; no identifier, value or verdict"])]


def quota_chart(report, lang: str) -> str:
    """Each requester's counters as shares of the tightest limit among its grants (governance
    counts per requester, and a job is held to the tightest quota of the grants it uses), then
    the ε ledger of every grant that budgets it."""
    grants = list(report.grants) if report is not None else []
    counters: dict[tuple[str, str], tuple[int, int]] = {}
    for g in grants:
        for c in g.counters:
            key = (g.requester, c.name)
            counters[key] = (c.used, min(c.limit, counters.get(key, (0, c.limit))[1]))
    rows = [(f"{requester} {label(lang, 'quota.' + name)}", used, limit)
            for (requester, name), (used, limit) in counters.items()]
    rows += [(f"{g.requester} ε {g.dataset}", round(g.epsilon_spent, 6), g.epsilon_budget)
             for g in grants if g.epsilon_budgeted]
    return charts.usage(rows, label(lang, "quota_chart"))


@router.get("/officer")
def officer(request: Request):
    console = request.app.state.console
    s = console.session(request, "officer")
    fed = console.client(s)
    error = None
    approvals, jobs, grants, quota = [], {}, [], None
    try:
        approvals = fed.approvals()
        for a in approvals:
            try:
                jobs[a.job_id] = fed.job(a.job_id)
            except Exception:      # noqa: BLE001 - the coordinator may have forgotten an old job
                pass
        grants = [(d, g) for d in fed.catalog().datasets if d.agency == console.config.party for g in d.grants]
        quota = fed.quota_usage()
    except Exception as exc:       # noqa: BLE001 - shown as one line
        error = rpc_error(exc)
    pending = [a for a in approvals if a.state == "pending"]
    decided = [a for a in approvals if a.state != "pending"]
    leak = {a.job_id: (json.loads(jobs[a.job_id].leakage_json or "{}") if a.job_id in jobs else {})
            or dict(_request_leakage(a, console.config.party)) for a in approvals}
    console.audit(s, "console.view", detail="approvals")
    return console.render(request, s, "officer.html", pending=pending, decided=decided, jobs=jobs, leak=leak,
                          grants=grants, quota=quota, quota_chart=quota_chart(quota, s.lang), error=error)


@router.post("/officer/decide")
async def decide(request: Request):
    console = request.app.state.console
    s = console.session(request, "officer")
    form = await console.form(request, s)
    job_id = str(form.get("job_id", ""))[:64]
    approve = form.get("decision") == "approve"
    reason = str(form.get("reason", ""))[:500]
    try:
        a = await run_in_threadpool(console.client(s).decide, job_id, approve, reason)
    except Exception as exc:       # noqa: BLE001 - shown as one line
        console.audit(s, "console.approval." + ("approve" if approve else "reject"), outcome="failed", job=job_id,
                      detail=rpc_error(exc)[:300])
        return console.render(request, s, "error.html", status=400, message=rpc_error(exc))
    console.audit(s, "console.approval." + ("approve" if approve else "reject"), job=job_id,
                  detail=f"state {a.state}")
    return RedirectResponse("/officer", status_code=303)
