"""What the coordinator and the requester can see: a recorded transcript of every message
the coordinator exchanges with the nodes during real verifications, the signed specs it
receives, and every file left in the data directories.

"Data usable but invisible": no subject identifier in any spelling and no provider value
may appear in the coordinator's transcript or storage; nodes keep identifiers encrypted at
rest; the requester node receives no provider raw values.
"""
from __future__ import annotations

import csv
import json
import pathlib
import numpy as np
import pytest

from pc_devkit import ground_truth
from pc_common.pb import node_pb2
from pc_rules.rules import load_rule
from pc_coordinator.jobs import JobStore
from pc_coordinator.runner import JobContext

REQ = "civil_affairs"
RULES = ("dibao", "linshi")

# Identifier spellings are found by extracting every run of 17+ digits (ASCII/UTF-8, UTF-16LE,
# UTF-16BE) and intersecting its 17-digit windows with the identifiers' 17-digit bodies: this
# covers the 18-char form, the lowercase-x form and the digits-only prefix in one pass.
# (numpy keeps a pass over ~20 MB of transcript well under a second.)
MIN_ID = 17
# Provider text that never needs to leave its agency (property titles, employer names).
_PROVIDER_TEXT = ["不动产权第", "有限公司", "深圳市"]


def _is_digit(a: np.ndarray) -> np.ndarray:
    return (a >= 0x30) & (a <= 0x39)


def _runs(mask: np.ndarray, min_len: int) -> list[tuple[int, int]]:
    """(start, end) of every run of True at least ``min_len`` long."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    keep = ends - starts >= min_len
    return list(zip(starts[keep].tolist(), ends[keep].tolist()))


def _windows(digits: str) -> set[str]:
    return {digits[i:i + MIN_ID] for i in range(len(digits) - MIN_ID + 1)}


def identifier_bodies(data: bytes) -> set[str]:
    a = np.frombuffer(data, dtype=np.uint8)
    found: set[str] = set()
    for s, e in _runs(_is_digit(a), MIN_ID):
        found |= _windows(data[s:e].decode("ascii"))
    for parity in (0, 1):
        n = (len(a) - parity) // 2
        pairs = a[parity:parity + 2 * n].reshape(-1, 2)
        for enc, mask in (("utf-16-le", _is_digit(pairs[:, 0]) & (pairs[:, 1] == 0)),
                          ("utf-16-be", (pairs[:, 0] == 0) & _is_digit(pairs[:, 1]))):
            for s, e in _runs(mask, MIN_ID):
                found |= _windows(data[parity + 2 * s:parity + 2 * e].decode(enc))
    return found


def amounts_in(data: bytes) -> set[str]:
    """Every 'digits.dd' (not followed by a further digit), with each suffix of the integer part."""
    a = np.frombuffer(data, dtype=np.uint8)
    digit = _is_digit(a)
    out = set()
    dots = np.flatnonzero(a[:-2] == 0x2E) if len(a) > 2 else []
    for i in dots:
        i = int(i)
        if not (digit[i + 1] and digit[i + 2]) or (i + 3 < len(a) and digit[i + 3]) or i == 0 or not digit[i - 1]:
            continue
        j = i
        while j > 0 and digit[j - 1] and i - j < 12:
            j -= 1
        ints, cents = data[j:i].decode(), data[i + 1:i + 3].decode()
        out.update(f"{ints[k:]}.{cents}" for k in range(len(ints)))
    return out


def plates_in(data: bytes) -> set[str]:
    """Candidates shaped like a plate: one CJK character (UTF-8), a letter, 5 letters or digits."""
    a = np.frombuffer(data, dtype=np.uint8)
    if len(a) < 9:
        return set()
    m = len(a) - 8
    lead = (a[:m] >= 0xE4) & (a[:m] <= 0xE9) & (a[1:m + 1] >= 0x80) & (a[1:m + 1] <= 0xBF) \
        & (a[2:m + 2] >= 0x80) & (a[2:m + 2] <= 0xBF) & (a[3:m + 3] >= 0x41) & (a[3:m + 3] <= 0x5A)
    out = set()
    for i in np.flatnonzero(lead).tolist():
        try:
            cand = data[i:i + 9].decode("utf-8")
        except UnicodeDecodeError:
            continue
        if len(cand) == 7 and all(ch.isascii() and (ch.isupper() or ch.isdigit()) for ch in cand[1:]):
            out.add(cand)
    return out


def leaks(data: bytes, secrets: dict) -> dict:
    """Which of the secrets appear in ``data`` (empty dict: none)."""
    out = {}
    ids = identifier_bodies(data) & secrets["ids"]
    if ids:
        out["identifiers"] = sorted(ids)[:3]
    amounts = amounts_in(data) & secrets["amounts"]
    if amounts:
        out["amounts"] = sorted(amounts)[:3]
    plates = plates_in(data) & secrets["plates"]
    if plates:
        out["plates"] = sorted(plates)[:3]
    text = [t for t in _PROVIDER_TEXT if t.encode() in data]
    if text:
        out["text"] = text
    return out


def _rows(path: pathlib.Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def recorded(small_city, new_federation):
    city, _ = small_city(30, 21)
    fed = new_federation("privacy", city=city)
    root = fed.root.parent
    transcript: list[tuple[str, str, bytes]] = []      # (node, "to_node" | "from_node", message bytes)
    specs: list[bytes] = []
    mp = pytest.MonkeyPatch()
    original_step, original_create = JobContext.step, JobStore.create

    def recording_step(self, node_id, messages):
        def tap(msgs):
            for m in msgs:
                transcript.append((node_id, "to_node", m.SerializeToString()))
                yield m
        for m in original_step(self, node_id, tap(messages)):
            transcript.append((node_id, "from_node", m.SerializeToString()))
            yield m

    def recording_create(self, job_id, kind, requester, spec, signature, providers):
        specs.append(bytes(spec))
        return original_create(self, job_id, kind, requester, spec, signature, providers)

    mp.setattr(JobContext, "step", recording_step)
    mp.setattr(JobStore, "create", recording_create)
    try:
        subjects = city / REQ / "applicants.csv"
        results = {}
        with fed.client(f"analyst@{REQ}") as c:
            for name in RULES:
                out = root / f"{name}.csv"
                results[name] = (c.verify(city / "rules" / f"{name}.toml", subjects, out=out), _rows(out))
        subject_ids = {r["id_number"].strip().upper() for r in _rows(subjects)}
        # Provider values of the subjects' records: what a leak would expose.
        amounts, plates, all_ids = set(), set(), set(subject_ids)
        for agency, dataset in (("tax", "wages"), ("hrss", "pensions"), ("public_security", "vehicles"),
                                ("housing", "properties"), ("market_regulation", "businesses")):
            for r in _rows(city / agency / f"{dataset}.csv"):
                ident = ground_truth.normalise_id(r["id_number"])
                all_ids.add(ident)
                if ident not in subject_ids:
                    continue
                for col in ("monthly_income", "monthly_amount", "area_m2"):
                    if r.get(col):
                        amounts.add(r[col])
                if r.get("plate"):
                    plates.add(r["plate"])
        # Thresholds of the rules travel in the signed spec on purpose; they are not provider data.
        thresholds = {"1100.00", "1650.00", "3000.00"}
        secrets = {"ids": {i[:17] for i in subject_ids}, "amounts": amounts - thresholds, "plates": plates}
        yield {"fed": fed, "city": city, "transcript": transcript, "specs": specs, "results": results,
               "secrets": secrets, "all_ids": {i[:17] for i in all_ids}, "subject_ids": subject_ids}
    finally:
        mp.undo()


def test_detectors_find_what_they_look_for(recorded):
    """Controls: the same detectors do find identifiers and values where they are."""
    city, secrets = recorded["city"], recorded["secrets"]
    applicants = (city / REQ / "applicants.csv").read_bytes()
    assert identifier_bodies(applicants) >= secrets["ids"]
    assert identifier_bodies(applicants.decode().encode("utf-16-le")) >= secrets["ids"]
    assert identifier_bodies(applicants.decode().lower().encode("utf-16-be")) >= secrets["ids"]
    wages = (city / "tax" / "wages.csv").read_bytes() + (city / "hrss" / "pensions.csv").read_bytes()
    assert amounts_in(wages) & secrets["amounts"]
    vehicles = (city / "public_security" / "vehicles.csv").read_bytes()
    assert secrets["plates"] and plates_in(vehicles) >= secrets["plates"]
    assert leaks(applicants + wages + vehicles, secrets).keys() >= {"identifiers", "amounts", "plates"}


def test_the_verifications_really_ran(recorded):
    """The transcript holds the whole protocol: admission, sealed lists, ciphertexts, finish."""
    t = recorded["transcript"]
    fed = recorded["fed"]
    assert len(recorded["specs"]) == len(RULES)
    parties = {node for node, _, _ in t}
    rules = [load_rule(recorded["city"] / "rules" / f"{name}.toml") for name in RULES]
    assert parties == {REQ} | {p for r in rules for p in r.providers()}, parties
    steps = set()
    sealed_sizes = []
    for node, direction, raw in t:
        msg = node_pb2.StepMessage.FromString(raw)
        if msg.WhichOneof("kind") == "header":
            steps.add(msg.header.step)
        if msg.WhichOneof("kind") == "chunk" and msg.chunk.stream.startswith("sealed"):
            sealed_sizes.append(len(msg.chunk.data))
    assert {"job.admit", "verify.prepare", "verify.evaluate", "verify.compare", "job.cleanup"} <= steps
    n = len(recorded["subject_ids"])
    assert sealed_sizes and max(sealed_sizes) >= n * 18, "identifiers were sent, sealed"
    for name, (res, rows) in recorded["results"].items():
        assert res.state == "succeeded" and len(rows) == res.rows == n


def test_coordinator_transcript_holds_no_identifier_or_value(recorded):
    secrets = recorded["secrets"]
    everything = b"\x00".join(raw for _, _, raw in recorded["transcript"])
    if leaks(everything, secrets):
        found = {}
        for node, direction, raw in recorded["transcript"]:
            got = leaks(raw, secrets)
            if got:
                found.setdefault(f"{direction}:{node}", got)
        pytest.fail(f"leaked through the coordinator: {found or leaks(everything, secrets)}")


def test_signed_specs_carry_rule_and_purpose_but_no_identifier(recorded):
    secrets = recorded["secrets"]
    for spec in recorded["specs"]:
        doc = json.loads(spec)
        assert doc["purpose"] == "social_assistance.eligibility" and doc["requester"] == REQ
        assert doc["params"]["rule"]["id"] in RULES
        assert doc["params"]["subjects"] == len(recorded["subject_ids"])
        assert not leaks(spec, secrets), leaks(spec, secrets)


def test_requester_receives_no_provider_values(recorded):
    secrets = {**recorded["secrets"], "ids": set()}        # the requester knows its own subjects
    inbound = [raw for node, direction, raw in recorded["transcript"] if node == REQ and direction == "to_node"]
    assert inbound
    assert not leaks(b"\x00".join(inbound), secrets)
    # Nothing the providers sent reaches the requester unencrypted: every provider chunk is
    # a ciphertext that is never forwarded byte for byte.
    provider_chunks = {node_pb2.StepMessage.FromString(raw).chunk.data
                       for node, direction, raw in recorded["transcript"]
                       if node != REQ and direction == "from_node"
                       and node_pb2.StepMessage.FromString(raw).WhichOneof("kind") == "chunk"}
    provider_chunks.discard(b"")
    blob = b"".join(inbound)
    assert provider_chunks and not any(ch in blob for ch in provider_chunks if len(ch) >= 64)


def _files(directory: pathlib.Path) -> list[pathlib.Path]:
    return [p for p in sorted(directory.rglob("*")) if p.is_file()]


def test_coordinator_storage_holds_no_identifier(recorded):
    fed = recorded["fed"]
    cdir = fed.coordinator_config.data_dir
    files = _files(cdir)
    assert any(p.name == "coordinator.db" for p in files)
    secrets = {**recorded["secrets"], "ids": recorded["all_ids"]}
    found = {str(p.relative_to(cdir)): leaks(p.read_bytes(), secrets) for p in files}
    assert not {k: v for k, v in found.items() if v}, found


def test_node_storage_is_encrypted_at_rest(recorded):
    fed = recorded["fed"]
    secrets = {**recorded["secrets"], "ids": recorded["all_ids"]}
    checked = 0
    for agency in fed.agencies:
        d = fed.root / agency
        files = _files(d)
        assert any(p.name == "node.db" for p in files), agency
        for p in files:
            got = leaks(p.read_bytes(), secrets)
            assert not got, f"{agency}/{p.relative_to(d)}: {got}"
            checked += 1
    assert checked >= 3 * len(fed.agencies)
