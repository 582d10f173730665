"""The auditor's page: ``pc audit verify`` for every log this console may read (console.toml's
[audit_logs], and the console's own), an export per log (the same self-contained JSON lines
as ``pc audit export``), and a timeline of entries filtered by job, requester and action.

An auditor has no `pc` certificate: the logs are files beside the node or the coordinator,
read here exactly as the `pc audit` command reads them."""
from __future__ import annotations

import pathlib
import tempfile

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from pc_common.audit import AuditLog

router = APIRouter()
TIMELINE_LIMIT = 500


def logs_of(console) -> dict[str, pathlib.Path]:
    return {**console.config.audit_logs, "console": console.trail.path}


def _open(console, party: str) -> AuditLog:
    if party == "console":
        return console.trail
    return AuditLog.open_existing(logs_of(console)[party])


def _close(console, log: AuditLog) -> None:
    if log is not console.trail:
        log.close()


@router.get("/auditor")
def auditor(request: Request, job: str = "", requester: str = "", action: str = "", party: str = ""):
    console = request.app.state.console
    s = console.session(request, "auditor")
    reports, timeline = [], []
    for name in logs_of(console):
        try:
            log = _open(console, name)
        except Exception as exc:       # noqa: BLE001 - a missing or broken file is a finding too
            reports.append({"party": name, "ok": False, "entries": 0, "problems": [str(exc)]})
            continue
        try:
            rep = log.verify()
            reports.append({"party": name, "ok": rep.ok, "entries": rep.entries, "problems": list(rep.problems)})
            if not party or party == name:
                for e in log.entries(job=job or None):
                    if requester and e.get("requester") != requester:
                        continue
                    if action and action not in (e.get("action") or ""):
                        continue
                    timeline.append({**e, "party": name})
        finally:
            _close(console, log)
    timeline.sort(key=lambda e: e["time"], reverse=True)
    console.audit(s, "console.audit_verify", outcome="ok" if all(r["ok"] for r in reports) else "tampered",
                  detail=", ".join(f"{r['party']} {'ok' if r['ok'] else 'FAILED'}" for r in reports))
    return console.render(request, s, "auditor.html", reports=reports, timeline=timeline[:TIMELINE_LIMIT],
                          parties=list(logs_of(console)),
                          filters={"job": job, "requester": requester, "action": action, "party": party})


@router.get("/auditor/export/{party}")
def export(request: Request, party: str):
    console = request.app.state.console
    s = console.session(request, "auditor")
    if party not in logs_of(console):
        raise HTTPException(404, "no such audit log")
    log = _open(console, party)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = pathlib.Path(tmp) / f"{party}.audit.jsonl"
            n = log.export(out)
            data = out.read_bytes()
    finally:
        _close(console, log)
    console.audit(s, "console.audit_export", detail=f"{party}: {n} entries")
    return Response(data, media_type="application/x-ndjson",
                    headers={"Content-Disposition": f'attachment; filename="{party}.audit.jsonl"'})
