"""The importer's fast path: validate and store a table batch by batch, column-wise.

Per batch of text columns (``pc_node.arrow_input``): identifiers checked as one (n, 18) byte
array (``idnum.valid_codes``; only the rows that fail it go through ``idnum.validate_many``,
which normalises blanks, full-width characters and lower-case x), values stripped and tested
against their declared type or narrowed to an inferred one with vectorised regular
expressions, the valid rows handed to the store's block writer. Row numbers, reasons and
types are exactly those of the line-by-line path in ``pc_node.importer``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pc_node import blocks, idnum

__all__ = ["Plan", "Outcome", "run", "KINDS"]

KINDS = ("integer", "decimal", "date")
_RE = {"integer": r"^-?[0-9]{1,18}$", "decimal": r"^-?[0-9]{1,15}(\.[0-9]{1,2})?$", "date": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}
_LEADING_ZERO = r"^-?0[0-9]"
_FILLER = "1" * 18


@dataclasses.dataclass
class Plan:
    key_pos: int
    others: list[int]               # positions of the value columns, in the dataset's order
    key_column: str
    names: list[str]                # names of the value columns
    declared: list[str]             # declared type per value column ("" = infer)
    check_declared: bool            # the metadata declared any column (then every type is checked)
    skip_invalid: bool
    keep_rejected: bool             # collect rejected rows' cells for the rejects file


@dataclasses.dataclass
class Outcome:
    rows: int = 0
    problems: list = dataclasses.field(default_factory=list)        # (row number, reason)
    rejected: dict = dataclasses.field(default_factory=dict)        # row number → cells
    types: list = dataclasses.field(default_factory=list)           # final type per value column


def _np(mask) -> np.ndarray:
    return np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)


def _fixed_codes(values: pa.Array, width: int) -> np.ndarray | None:
    """The bytes of ``values`` as an (n, width) array when every value is ``width`` bytes long."""
    if len(values) == 0 or values.null_count:
        return None
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int32, count=len(values) + 1, offset=values.offset * 4)
    if offsets[-1] - offsets[0] != width * len(values) or not (np.diff(offsets) == width).all():
        return None
    return np.frombuffer(values.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]].reshape(-1, width)


_MONTH_DAYS = np.array([0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


def _date_codes_ok(c: np.ndarray) -> np.ndarray:
    """YYYY-MM-DD checked arithmetically (the regex and strptime cost ten times more)."""
    d = c.astype(np.int32) - 48
    digits = np.delete(d, [4, 7], axis=1)
    ok = ((digits >= 0) & (digits <= 9)).all(axis=1) & (c[:, 4] == 45) & (c[:, 7] == 45)
    y = d[:, 0] * 1000 + d[:, 1] * 100 + d[:, 2] * 10 + d[:, 3]
    m = d[:, 5] * 10 + d[:, 6]
    day = d[:, 8] * 10 + d[:, 9]
    leap = ((y % 4 == 0) & (y % 100 != 0)) | (y % 400 == 0)
    mm = np.clip(m, 0, 12)
    dim = _MONTH_DAYS[mm] - ((mm == 2) & ~leap)
    return ok & (y >= 1) & (m >= 1) & (m <= 12) & (day >= 1) & (day <= dim)


def kind_mask(kind: str, values: pa.Array) -> np.ndarray:
    """True where a (stripped) value is empty or a valid ``kind``."""
    if kind == "date":
        fixed = _fixed_codes(values, 10)
        if fixed is not None:
            return _date_codes_ok(fixed)
    ok = _np(pc.match_substring_regex(values, _RE[kind]))
    if kind == "date" and ok.any():
        parsed = pc.strptime(values, format="%Y-%m-%d", unit="s", error_is_null=True)
        ok &= _np(pc.is_valid(parsed))
    return ok | _np(pc.equal(pc.binary_length(values), 0))


# Bytes that may begin or end a blank: ASCII whitespace and the lead bytes of the non-ASCII
# blanks str.strip() removes (U+0085, U+00A0: C2; U+1680: E1; U+2000-U+205F: E2; U+3000: E3).
_BLANK_BYTES = np.zeros(256, dtype=bool)
_BLANK_BYTES[[9, 10, 11, 12, 13, 28, 29, 30, 31, 32, 0xC2, 0xE1, 0xE2, 0xE3]] = True


def _stripped(arr: pa.Array) -> pa.Array:
    """``str.strip()`` of every value; returned as it is when no value can begin or end with a
    blank (first byte not a blank's first byte, last byte ASCII and not blank)."""
    data = arr.buffers()[2]
    if data is None or len(arr) == 0:
        return arr
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=len(arr) + 1, offset=arr.offset * 4)
    nonempty = offsets[1:] > offsets[:-1]
    raw = np.frombuffer(data, dtype=np.uint8)
    first, last = raw[offsets[:-1][nonempty]], raw[offsets[1:][nonempty] - 1]
    if not (_BLANK_BYTES[first].any() or _BLANK_BYTES[last].any() or (last >= 0x80).any()):
        return arr
    return pc.utf8_trim_whitespace(arr)


def _key_codes(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """(codes (n, 18), valid mask, {row: reason}) of a batch's identifier column."""
    lengths = pc.binary_length(arr).to_numpy(zero_copy_only=False)
    fixed = arr if (lengths == 18).all() else pc.if_else(pc.equal(pc.binary_length(arr), 18), arr, _FILLER)
    fixed = fixed.combine_chunks() if isinstance(fixed, pa.ChunkedArray) else fixed
    offsets = np.frombuffer(fixed.buffers()[1], dtype=np.int32, count=len(fixed) + 1, offset=fixed.offset * 4)
    codes = np.frombuffer(fixed.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]].reshape(-1, 18).copy()
    ok = idnum.valid_codes(codes) & (lengths == 18)
    reasons: dict[int, str] = {}
    slow = np.flatnonzero(~ok)
    if len(slow):
        norm, why = idnum.validate_many(arr.take(pa.array(slow)).to_pylist())
        fixed_rows = [(i, n) for i, n, w in zip(slow.tolist(), norm, why) if w is None]
        reasons = {i: w for i, w in zip(slow.tolist(), why) if w is not None}
        if fixed_rows:
            c, _ = blocks.codes_of([n for _, n in fixed_rows])
            rows = np.array([i for i, _ in fixed_rows])
            codes[rows] = c
            ok[rows] = True
    return codes, ok, reasons


def run(batches, plan: Plan, writer, progress: Callable[[float], None] | None = None) -> Outcome:
    out = Outcome()
    candidates = [set() if d else set(KINDS) for d in plan.declared]
    seen = [False] * len(plan.names)
    writing = True
    first = 0                                  # record index of the batch's first row
    for cols, done in batches():
        n = len(cols[0])
        codes, good, reasons = _key_codes(cols[plan.key_pos])
        for i, why in reasons.items():
            out.problems.append((first + i + 2, f"{plan.key_column}: invalid identity number: {why}"))
        values = [_stripped(cols[i]) for i in plan.others]
        for j, v in enumerate(values):         # inference over the rows with a valid identifier
            if plan.declared[j] or not candidates[j]:
                continue
            vg = v.filter(pa.array(good)) if not good.all() else v
            nonempty = _np(pc.greater(pc.binary_length(vg), 0))
            if not nonempty.any():
                continue
            seen[j] = True
            if _np(pc.match_substring_regex(vg, _LEADING_ZERO)).any():
                candidates[j] = set()          # codes such as '007' are labels, not numbers
                continue
            candidates[j] = {k for k in KINDS if k in candidates[j] and kind_mask(k, vg).all()}
        if plan.check_declared:
            bad_col = np.full(n, -1)
            for j in reversed(range(len(values))):
                if plan.declared[j] and plan.declared[j] != "text":
                    bad_col[good & ~kind_mask(plan.declared[j], values[j])] = j
            for i in np.flatnonzero(bad_col >= 0).tolist():
                j = int(bad_col[i])
                out.problems.append((first + i + 2, f"{plan.names[j]}: not a valid {plan.declared[j]}"))
            declared_bad = bad_col >= 0
        else:
            declared_bad = np.zeros(n, bool)
        rejected_here = ~good | declared_bad
        if plan.keep_rejected and rejected_here.any():
            idx = pa.array(np.flatnonzero(rejected_here))
            cells = [c.take(idx).to_pylist() for c in cols]
            for k, i in enumerate(np.flatnonzero(rejected_here).tolist()):
                row = [c[k] for c in cells]
                if good[i]:                        # as the line-by-line path: key already normalised
                    row[plan.key_pos] = blocks.ids_as_text(codes[i:i + 1])[0]
                out.rejected[first + i + 2] = row
        keep = good & ~declared_bad
        if out.problems and not plan.skip_invalid:
            writing = False                    # refused anyway: only count the rest
        if writing and keep.any():
            mask = pa.array(keep)
            writer.add(codes[keep], [v.filter(mask) if not keep.all() else v for v in values])
            out.rows += int(keep.sum())
        first += n
        if progress is not None:
            progress(done)
    out.problems.sort()
    for j, d in enumerate(plan.declared):
        if d:
            out.types.append(d)
        elif not seen[j]:
            out.types.append("text")
        else:
            out.types.append(next((k for k in KINDS if k in candidates[j]), "text"))
    return out
