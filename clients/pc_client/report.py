"""Output shared by the `pc` commands and the demo: JSON, job documents, the leakage report,
progress bars. Printing only; no connections, no servers.
"""
from __future__ import annotations

import json
import sys


def print_json(doc) -> None:
    print(json.dumps(doc, indent=2, ensure_ascii=False))


def print_leakage(leakage: dict) -> None:
    """The job's "who learned what" report, one party per entry."""
    if not leakage:
        return
    print("Leakage report — who learned what:")
    for party, what in leakage.items():
        if isinstance(what, list):
            print(f"  {party}:")
            for line in what:
                print(f"    - {line}")
        else:
            print(f"  {party}: {what}")


def result_doc(res, state: bool = True) -> dict:
    """A finished job's ``JobResult`` as printed by ``--json``."""
    doc = {"job_id": res.job_id, "state": res.state} if state else {"job_id": res.job_id}
    return {**doc, "out": res.out, "rows": res.rows, "summary": res.summary, "leakage": res.leakage}


def job_doc(job) -> dict:
    """A coordinator ``Job`` message as a plain document."""
    return {"job_id": job.job_id, "kind": job.kind, "requester": job.requester, "state": job.state,
            "reason": job.reason, "providers": list(job.providers), "created_at": job.created_at,
            "updated_at": job.updated_at, "summary": json.loads(job.summary_json or "{}"),
            "leakage": json.loads(job.leakage_json or "{}"),
            "progress": [{"step": p.step, "party": p.party, "done": p.done, "total": p.total} for p in job.progress]}


def print_job(d: dict) -> None:
    """A job document (``job_doc``) for people."""
    print(f"job {d['job_id']}  {d['kind']}  {d['state']}" + (f" ({d['reason']})" if d['reason'] else ""))
    print(f"  requester {d['requester']}; providers {', '.join(d['providers']) or '-'}")
    print(f"  created {d['created_at']}, updated {d['updated_at']}")
    for k, v in d["summary"].items():
        print(f"  {k}: {v}")
    print_leakage(d["leakage"])


def catalog_json(catalog) -> list[dict]:
    from google.protobuf import json_format
    return [json_format.MessageToDict(d, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
            for d in catalog.datasets]


def print_catalog(catalog) -> None:
    if not catalog.datasets:
        print("the catalog is empty")
    for d in catalog.datasets:
        print(f"{d.agency}.{d.name}  ({d.rows} rows, key {d.key_column})  {d.description}")
        for c in d.columns:
            unit = f" [{c.unit}]" if c.unit else ""
            cats = f"  categories: {', '.join(c.categories)}" if c.categories else ""
            print(f"    {c.name:22} {c.type:8} {c.sharing:11} level {c.sensitivity}{unit}  {c.description}{cats}")
        for g in d.grants:
            uses = ", ".join(f"{k}:{v}" for k, v in sorted(g.column_uses.items()))
            print(f"    grant → {g.requester} for {', '.join(g.purposes)} ({g.approval}; {uses or 'join only'})"
                  f"{_disclosure_text(g)}")


def _disclosure_text(g) -> str:
    """A grant's federated-query demands: minimum group size; DP (either ε field set) with its ε per query
    and budget per requester per period."""
    parts = [f"min group size {g.min_group_size}"] if g.min_group_size else []
    if g.HasField("epsilon"):
        parts.append(f"epsilon ≤ {g.epsilon:g} per query")
    if g.HasField("epsilon_budget"):
        parts.append(f"epsilon budget {g.epsilon_budget:g} per period")
    return f"  [{'; '.join(parts)}]" if parts else ""


def progress_printer(enabled: bool):
    """A tqdm bar per step and party, on stderr (None when disabled)."""
    if not enabled:
        return None
    from tqdm import tqdm
    bars: dict[str, tqdm] = {}

    def update(job) -> None:
        for p in job.progress:
            key = f"{p.step}/{p.party}"
            bar = bars.get(key)
            if bar is None:
                bar = bars[key] = tqdm(total=p.total or None, desc=f"{p.step} [{p.party}]", unit="item",
                                       file=sys.stderr, leave=False, dynamic_ncols=True)
            if p.total and bar.total != p.total:
                bar.total = p.total
            bar.n = p.done
            bar.refresh()
        if job.state in ("succeeded", "failed", "cancelled"):
            for bar in bars.values():
                bar.close()
    return update
