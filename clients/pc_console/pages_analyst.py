"""The caseworker's pages: start a verification (a rule of the console's rules folder and a
subjects CSV, uploaded to the agency's own node — never to the coordinator), follow it (a bar
per step, updated live by static/console.js), read the verdict counts and the leakage report,
and download the results file — the same bytes ``pc results`` writes.

Calls, all with the caseworker's own certificate: ``GetCatalog`` (the rule is checked against
it first, as ``pc verify`` does), ``UploadSubjects`` and ``PrepareJob`` at the own node,
``SubmitJob``/``GetJob``/``ListJobs`` at the coordinator, ``FetchResults`` at the own node.
The uploaded file lives only in a 0600 temporary file while it is streamed to the node.
"""
from __future__ import annotations

import csv
import io
import json
import os
import pathlib
import tempfile

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from pc_common.catalog import catalog_view
from pc_console import charts
from pc_console.masking import mask_identifier, mask_text
from pc_console.web import rpc_error
from pc_rules.rules import load_rule, validate_against_catalog

router = APIRouter()
MAX_UPLOAD = 64 * 1024 * 1024
TERMINAL = ("succeeded", "failed", "cancelled")


def rules_of(console) -> dict[str, pathlib.Path]:
    """The rules a caseworker of this agency may start: DIR/*.toml whose requester is this agency."""
    folder = console.config.rules_dir
    out = {}
    for p in sorted(folder.glob("*.toml")) if folder and folder.is_dir() else []:
        try:
            if load_rule(p).requester == console.config.party:
                out[p.name] = p
        except Exception:      # noqa: BLE001 - a broken rule file is not offered
            continue
    return out


@router.get("/analyst")
def analyst(request: Request):
    console = request.app.state.console
    s = console.session(request, "analyst")
    error, jobs = None, []
    try:
        jobs = console.client(s).jobs()
    except Exception as exc:       # noqa: BLE001
        error = rpc_error(exc)
    return console.render(request, s, "analyst.html", rules=list(rules_of(console)), jobs=jobs[::-1], error=error,
                          chart=verdict_chart(console, console.client(s), jobs) if not error else "")


def verdict_chart(console, fed, jobs, last: int = 10):
    """Eligible and not eligible groups of this agency's latest finished verifications."""
    rows = []
    for j in [j for j in jobs if j.kind == "verify" and j.state == "succeeded"
              and j.requester == console.config.party][-last:]:
        if j.job_id not in console.result_summaries:
            try:
                console.result_summaries[j.job_id] = fed.results(j.job_id)[1]
            except Exception:      # noqa: BLE001 - results expired or not ours: no bar
                continue
        summary = console.result_summaries[j.job_id]
        if isinstance(summary.get("eligible_groups"), int) and isinstance(summary.get("groups"), int):
            rows.append((j.job_id[:8], {"eligible": summary["eligible_groups"],
                                        "not eligible": summary["groups"] - summary["eligible_groups"]}))
    return charts.stacked(rows, ["eligible", "not eligible"], "", "verdicts per job") if rows else ""


@router.post("/analyst/verify")
async def start_verify(request: Request):
    console = request.app.state.console
    s = console.session(request, "analyst")
    form = await console.form(request, s)
    rules = rules_of(console)
    name, he = str(form.get("rule", "")), str(form.get("he", "bfv"))
    upload = form.get("subjects")
    if name not in rules or he not in ("bfv", "paillier") or upload is None or not hasattr(upload, "read"):
        raise HTTPException(400, "choose a rule, a scheme and a subjects CSV")
    fed = console.client(s)
    fd, tmp = tempfile.mkstemp(prefix="subjects-", suffix=".csv", dir=_uploads(console))
    try:
        size = 0
        with os.fdopen(fd, "wb") as fh:
            while chunk := await upload.read(1 << 20):
                size += len(chunk)
                if size > MAX_UPLOAD:
                    raise HTTPException(413, "the subjects file is too large")
                fh.write(chunk)
        receipt, job_id = await run_in_threadpool(_submit, fed, rules[name], tmp, he)
    except HTTPException:
        raise
    except Exception as exc:       # noqa: BLE001 - one line, nothing kept
        console.audit(s, "console.verify", outcome="failed", detail=f"rule {name}: {rpc_error(exc)[:300]}")
        return console.render(request, s, "error.html", status=400, message=rpc_error(exc))
    finally:
        pathlib.Path(tmp).unlink(missing_ok=True)
    console.audit(s, "console.verify", job=job_id, detail=f"rule {name}; {receipt.subjects} subject(s)")
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


def _submit(fed, rule_path: pathlib.Path, subjects: str, he: str):
    """What ``Federation.verify`` does before it waits: check, upload to the own node, submit."""
    rule = load_rule(rule_path)
    validate_against_catalog(rule, catalog_view(fed.catalog()))
    receipt = fed.upload_subjects(subjects, rule)
    return receipt, fed.submit("verify", {"rule": rule.to_dict(), "he": he}, receipt.subject_set)


def _uploads(console) -> str:
    d = console.config.data_dir / "uploads"
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return str(d)


def _job_id(job_id: str) -> str:
    if not job_id.isalnum() or len(job_id) > 64:
        raise HTTPException(404, "no such job")
    return job_id


def progress_doc(job) -> dict:
    return {"job_id": job.job_id, "state": job.state, "reason": mask_text(job.reason),
            "progress": [{"step": p.step, "party": p.party, "done": p.done, "total": p.total} for p in job.progress]}


def timings_of(summary: dict) -> dict[str, float]:
    return {k[:-2]: float(v) for k, v in summary.items()
            if k.endswith("_s") and k != "total_s" and isinstance(v, (int, float))}


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: str):
    console = request.app.state.console
    s = console.session(request, "analyst", "officer", "operator")
    fed = console.client(s)
    try:
        job = fed.job(_job_id(job_id))
    except Exception as exc:       # noqa: BLE001 - NOT_FOUND for a job this user may not see
        return console.render(request, s, "error.html", status=404, message=rpc_error(exc))
    summary = json.loads(job.summary_json or "{}")
    leakage = json.loads(job.leakage_json or "{}")
    t = timings_of(summary)
    chart = charts.stacked([(job.job_id[:8], t)], list(t), " s", "timings") if t else ""
    results = None
    if "analyst" in s.user.roles and job.state == "succeeded" and job.requester == console.config.party:
        results = _results_view(fed, job.job_id)
    return console.render(request, s, "job.html", job=job, doc=progress_doc(job), summary=summary,
                          leakage=leakage, chart=chart, results=results, terminal=job.state in TERMINAL)


@router.get("/jobs/{job_id}/status.json")
def job_status(request: Request, job_id: str):
    console = request.app.state.console
    s = console.session(request, "analyst", "officer", "operator")
    try:
        return JSONResponse(progress_doc(console.client(s).job(_job_id(job_id))))
    except HTTPException:
        raise
    except Exception as exc:       # noqa: BLE001
        return JSONResponse({"error": rpc_error(exc)}, status_code=404)


def _fetch(fed, job_id: str) -> tuple[bytes, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "results.csv"
        _, summary = fed.results(job_id, out)
        return out.read_bytes(), summary


def _results_view(fed, job_id: str) -> dict:
    try:
        data, summary = _fetch(fed, job_id)
    except Exception as exc:       # noqa: BLE001
        return {"error": rpc_error(exc)}
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    header, body = (rows[0], rows[1:]) if rows else ([], [])
    verdicts: dict[str, int] = {}
    if header and header[-1] == "eligible":
        # One verdict per group (household): the group column is the second when the rule has one.
        per_group = {(r[1] if len(r) > 2 else r[0]): r[-1] for r in body}
        for v in per_group.values():
            verdicts[v] = verdicts.get(v, 0) + 1
    preview = [[mask_identifier(r[0])] + [mask_text(c) for c in r[1:]] for r in body[:10]]
    return {"summary": summary, "header": header, "preview": preview, "rows": len(body), "verdicts": verdicts,
            "chart": charts.bars(sorted(verdicts.items()), title="verdicts") if verdicts else ""}


@router.get("/jobs/{job_id}/results.csv")
def download(request: Request, job_id: str):
    console = request.app.state.console
    s = console.session(request, "analyst")
    try:
        data, _ = _fetch(console.client(s), _job_id(job_id))
    except HTTPException:
        raise
    except Exception as exc:       # noqa: BLE001
        console.audit(s, "console.download", outcome="failed", job=job_id, detail=rpc_error(exc)[:300])
        return console.render(request, s, "error.html", status=404, message=rpc_error(exc))
    console.audit(s, "console.download", job=job_id, detail=f"{len(data)} bytes")
    return Response(data, media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="results-{job_id}.csv"'})
