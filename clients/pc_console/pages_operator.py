"""The platform operator's page: nodes online or offline with their last heartbeat, jobs with
their state, time per step as a chart, jobs per day and requester, and the catalog — what
``pc nodes``, ``pc jobs`` and ``pc catalog`` show the operator's certificate (the coordinator
never holds identifiers, values or verdicts, so neither does this page)."""
from __future__ import annotations

import json

from fastapi import APIRouter, Request

from pc_console import charts
from pc_console.pages_analyst import timings_of
from pc_console.web import rpc_error

router = APIRouter()
CHART_JOBS = 20


def timing_chart(jobs) -> str:
    rows, series = [], []
    for j in jobs[-CHART_JOBS:]:
        t = timings_of(json.loads(j.summary_json or "{}"))
        if t:
            rows.append((f"{j.kind} {j.job_id[:8]}", t))
            series += [k for k in t if k not in series]
    return charts.stacked(rows, series, " s", "timings") if rows else ""


def volume_chart(jobs) -> str:
    per_day: dict[str, dict[str, float]] = {}
    requesters: list[str] = []
    for j in jobs:
        day = (j.created_at or "")[:10]
        per_day.setdefault(day, {})
        per_day[day][j.requester] = per_day[day].get(j.requester, 0) + 1
        if j.requester not in requesters:
            requesters.append(j.requester)
    return charts.stacked(sorted(per_day.items()), requesters, "", "jobs per day") if per_day else ""


@router.get("/operator")
def operator(request: Request):
    console = request.app.state.console
    s = console.session(request, "operator")
    fed = console.client(s)
    error, nodes, jobs, catalog = None, [], [], []
    try:
        nodes, jobs, catalog = fed.nodes(), fed.jobs(), list(fed.catalog().datasets)
    except Exception as exc:       # noqa: BLE001
        error = rpc_error(exc)
    return console.render(request, s, "operator.html", nodes=nodes, jobs=jobs[::-1], catalog=catalog,
                          timings=timing_chart(jobs), volume=volume_chart(jobs), error=error)
