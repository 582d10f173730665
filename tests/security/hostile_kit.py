"""Shared by the hostile-peer tests (test_hostile_callers.py, test_hostile_inputs.py): the
federation's agencies, the grants each test starts from, rule files that need exactly one grant
each, and helpers that prepare, sign, submit and admit jobs as a client or as a coordinator.

The federation itself is the ``env`` fixture of tests/security/conftest.py.
"""
from __future__ import annotations

import json
import time

import grpc
import pytest

from pc_client.sdk import Federation
from pc_common import gm
from pc_common.pb import node_pb2
from pc_rules.rules import load_rule, parse_rule

AGENCIES = ["civil_affairs", "housing", "hrss", "public_security"]
REQ = "civil_affairs"
PURPOSE = "social_assistance.eligibility"

VEHICLES_GRANT = """
[[grants]]
dataset = "vehicles"
requester = "civil_affairs"
purposes = ["social_assistance.eligibility"]
approval = "{approval}"
reveal = "verdict"
max_evaluations_per_subject = 100
[grants.columns]
id_number = "join_key"
vehicle_type = "predicate"
"""
# Housing grants something to another agency only: civil affairs has no grant there.
HOUSING_POLICY = """
[[grants]]
dataset = "properties"
requester = "public_security"
purposes = ["social_assistance.eligibility"]
[grants.columns]
id_number = "join_key"
usage = "predicate"
"""
PENSIONS_GRANT = """
[[grants]]
dataset = "pensions"
requester = "civil_affairs"
purposes = ["social_assistance.eligibility"]
max_evaluations_per_subject = 100
[grants.columns]
id_number = "join_key"
monthly_amount = "aggregate"
{quota}
"""


def rule_text(rule_id: str, criteria: str, purpose: str = PURPOSE, reveal: str = "verdict",
              group: bool = True) -> str:
    return (f'id = "{rule_id}"\ntitle = "test"\npurpose = "{purpose}"\nrequester = "{REQ}"\n'
            f'subject_column = "id_number"\n' + ('group_column = "household_id"\n' if group else "")
            + f'reveal = "{reveal}"\n\n' + criteria)


CAR = '[[criteria]]\nname = "no_car"\ntype = "none_exists"\nsource = "public_security.vehicles"\n' \
      'where = "vehicle_type = \'car\'"\n'
RULES = {
    "car": rule_text("car", CAR),
    "car_reasons": rule_text("car_reasons", CAR, reveal="reasons"),
    "purpose": rule_text("purpose", CAR, purpose="tax.audit"),
    "plate": rule_text("plate", '[[criteria]]\nname = "no_plate"\ntype = "none_exists"\n'
                       'source = "public_security.vehicles"\nwhere = "plate = \'粤B00000\'"\n'),
    "home": rule_text("home", '[[criteria]]\nname = "one_home"\ntype = "count_at_most"\n'
                      'source = "housing.properties"\nwhere = "usage = \'residential\'"\nmax = 1\n'),
    "pension": rule_text("pension", '[[criteria]]\nname = "small_pension"\ntype = "sum_below"\n'
                         'source = "hrss.pensions.monthly_amount"\nlimit = 3000.00\n', group=False),
    "quoted": rule_text("quoted", '[[criteria]]\nname = "no_car"\ntype = "none_exists"\n'
                        'source = "public_security.vehicles"\n'
                        'where = "vehicle_type = \'\'\'; DROP TABLE rows; --\'"\n'),
}




def pins(agency: str, *names: str) -> str:
    """``[[grants.rules]]`` tables pinning rules of :data:`RULES` for ``agency``'s grant (this
    form has no braces, so the grant texts stay ``str.format`` templates)."""
    return "".join(f'[[grants.rules]]\nid = "{n}"\ndigest = "{parse_rule(RULES[n]).criteria_digest(agency)}"\n'
                   for n in names)


# Each grant serves the rules its tests run (the others are refused for what they lack).
VEHICLES_GRANT += pins("public_security", "car", "quoted")
PENSIONS_GRANT += pins("hrss", "pension")


def analyst(env) -> Federation:
    return env["fed"].client(f"analyst@{REQ}")


def rule(env, name):
    return env["rules"] / f"{name}.toml"


def prepare(c: Federation, env, name="car") -> node_pb2.SignedJobSpec:
    r = load_rule(rule(env, name))
    receipt = c.upload_subjects(env["subjects"], r)
    return c.node.PrepareJob(node_pb2.PrepareJobRequest(kind="verify", params=json.dumps(
        {"rule": r.to_dict(), "he": "bfv"}).encode(), subject_set=receipt.subject_set), timeout=10)


def submit(c: Federation, env, name="car") -> str:
    return c.coordinator.SubmitJob(prepare(c, env, name), timeout=10).job_id


def wait_state(c: Federation, job_id: str, states, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = c.job(job_id)
        if job.state in states:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} stayed {c.job(job_id).state}, expected one of {states}")


def job_ids(fed) -> set[str]:
    with fed.client() as c:
        return {j.job_id for j in c.jobs()}


def rpc_error(fn, *args, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        out = fn(*args, **kw)
        if hasattr(out, "__iter__") and not isinstance(out, (bytes, str)):
            list(out)
    return err.value


def requester_key(fed) -> gm.Sm2PrivateKey:
    return gm.Sm2PrivateKey.from_hex((fed.certs / "nodes" / REQ / "sm2.key").read_text().strip())


def admit(stub, signed: node_pb2.SignedJobSpec, job_id: str | None = None):
    job_id = job_id or json.loads(signed.spec)["job_id"]
    header = node_pb2.StepMessage(header=node_pb2.StepHeader(job_id=job_id, step="job.admit", spec=signed))
    return list(stub.Step(iter([header]), timeout=10))

