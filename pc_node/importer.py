"""Import a CSV or Parquet file into the node's store.

All-or-nothing by default: one invalid row refuses the whole file and the store is
untouched. With ``skip_invalid`` the valid rows are imported and the rejected ones are
written, with row numbers and reasons, to a rejects file for the operator.
Column types come from the optional ``<dataset>.toml`` metadata (read by
:mod:`pc_rules.metadata`, the one dataset-metadata model) or are inferred.

Files are read in batches with pyarrow and validated column-wise (``pc_node.import_batches``),
the rows written as encrypted column blocks (``pc_node.blocks``); the new version replaces the
old one only when complete. Files the batched reader cannot read exactly as Python's csv module
does (a row with the wrong number of fields, text that is not UTF-8) go the line-by-line way.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import pathlib
import re
import sys

from pc_node import arrow_input, idnum, import_batches
from pc_common.errors import InvalidInput
from pc_common.identity import check_name
from pc_node.store import NodeStore
from pc_rules.metadata import ColumnMeta, DatasetMeta, load_metadata as read_metadata
from pc_rules.where import COLUMN_NAME_RE

INT_RE = re.compile(r"^-?\d{1,18}$")
DEC_RE = re.compile(r"^-?\d{1,15}(\.\d{1,2})?$")
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
LEADING_ZERO_RE = re.compile(r"^-?0\d")
MAX_ERRORS_SHOWN = 5


@dataclasses.dataclass
class ImportReport:
    dataset: str
    imported: int
    rejected: int
    rejects_file: str | None
    columns: list[ColumnMeta]


def _valid_value(kind: str, value: str) -> bool:
    if value == "":
        return True  # empty cells are allowed (missing data)
    if kind == "integer":
        return bool(INT_RE.match(value))
    if kind == "decimal":
        return bool(DEC_RE.match(value))
    if kind == "date":
        if not DATE_RE.match(value):
            return False
        try:
            dt.date.fromisoformat(value)
        except ValueError:
            return False
    return True


def infer_type(values: list[str]) -> str:
    present = [v for v in values if v != ""]
    if not present:
        return "text"
    if any(LEADING_ZERO_RE.match(v) for v in present):
        return "text"   # codes such as '007' or '0101' are labels, not numbers
    for kind in ("integer", "decimal", "date"):
        if all(_valid_value(kind, v) for v in present):
            return kind
    return "text"


def declared_key_column(metadata: pathlib.Path | None) -> str | None:
    """The key column the metadata file at ``metadata`` names, if it exists and names one."""
    return read_metadata(metadata, default_key="").key_column or None


def load_metadata(metadata: pathlib.Path | None) -> dict:
    """``{"key_column": …}`` when the file names one, else ``{}``.

    Transitional: only for ``pc_node/admin.py``'s ``key_column_of`` until it calls
    :func:`declared_key_column`; delete it then.
    """
    key = declared_key_column(metadata)
    return {"key_column": key} if key else {}


def read_table(path: pathlib.Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows as strings, from CSV (UTF-8) or Parquet."""
    if not path.exists():
        raise InvalidInput(f"no such file: {path}")
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq
            table = pq.read_table(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds
            raise InvalidInput(f"{path.name}: not a readable Parquet file ({type(exc).__name__})") from None
        header = list(table.column_names)
        cols = [["" if v is None else str(v) for v in table.column(i).to_pylist()] for i in range(len(header))]
        return header, [list(r) for r in zip(*cols)] if cols else []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput(f"{path.name}: not UTF-8 text") from None
    try:
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        rows = list(reader)
    except csv.Error as exc:
        raise InvalidInput(f"{path.name}: malformed CSV ({exc})") from None
    if not rows:
        raise InvalidInput(f"{path.name}: empty file (a header row is required)")
    return [h.strip() for h in rows[0]], rows[1:]


def detect_key_column(path: pathlib.Path) -> str | None:
    """The column holding the most valid identity numbers (at least half its values), if any.

    Used by the sandbox for CSVs without metadata whose key column is not ``id_number``.
    """
    header, rows = read_table(path)
    if "id_number" in header:
        return "id_number"
    sample = rows[:2000]
    best, best_share = None, 0.5
    for i, name in enumerate(header):
        values = [r[i] for r in sample if i < len(r) and r[i].strip()]
        share = sum(idnum.is_valid(v) for v in values) / len(values) if values else 0
        if share >= best_share and (best is None or share > best_share):
            best, best_share = name, share
    return best


def import_file(store: NodeStore, path: pathlib.Path, dataset: str | None = None,
                metadata: pathlib.Path | None = None, skip_invalid: bool = False,
                rejects: pathlib.Path | None = None, replace: bool = False,
                key_column: str | None = None, rejects_with_values: bool = True,
                progress=None) -> ImportReport:
    """Import ``path`` as dataset ``dataset`` (default: the file's stem).

    ``progress``: a callable given the fraction done (0..1) after every batch, or True for a
    bar on stderr. Large files go through the batched fast path (pyarrow, column blocks);
    files it cannot read exactly as the line-by-line reader does go through that one."""
    path = pathlib.Path(path)
    name = check_name("dataset", dataset or path.stem)
    if metadata is None:
        metadata = path.with_suffix(".toml")
    declared_meta = read_metadata(metadata, default_key=key_column or "id_number")
    store.check_new(name, replace)
    if progress is True:
        progress = progress_bar(path.name)
    progress = progress or None
    try:
        table = arrow_input.open_table(path)
        plan = _plan(path, metadata, table.header, declared_meta, skip_invalid, rejects_with_values)
        writer = store.block_writer(len(plan.others))
        try:
            outcome = import_batches.run(table.batches, plan, writer, progress)
        except BaseException:
            writer.abort()
            raise
    except arrow_input.Fallback:
        return _import_rows(store, path, name, metadata, declared_meta, skip_invalid, rejects, replace,
                            rejects_with_values)
    header = table.header
    try:
        rejects_file = _finish_problems(path, header, outcome.problems, skip_invalid, rejects,
                                        rejects_with_values, lambda r: outcome.rejected.get(r, []))
        if not outcome.rows:
            raise InvalidInput(f"{path.name}: no valid rows to import")
    except BaseException:
        writer.abort()
        raise
    columns = [dataclasses.replace(_declared(declared_meta, header[i]), type=t)
               for i, t in zip(plan.others, outcome.types)]
    meta = _meta(name, declared_meta, plan.key_column, columns)
    store.commit_blocks(meta, writer, replace=replace)
    if progress is not None:
        progress(1.0)
    return ImportReport(name, outcome.rows, len(outcome.problems), rejects_file, columns)


def _declared(declared_meta: DatasetMeta, name: str) -> ColumnMeta:
    return {c.name: c for c in declared_meta.all_columns()}.get(name) or ColumnMeta(name, "")


def _plan(path, metadata, header, declared_meta, skip_invalid, rejects_with_values) -> import_batches.Plan:
    key_pos, others, declared = _check_header(path, metadata, header, declared_meta)
    return import_batches.Plan(
        key_pos=key_pos, others=others, key_column=declared_meta.key_column, names=[header[i] for i in others],
        declared=[(declared.get(header[i]) or ColumnMeta(header[i], "")).type for i in others],
        check_declared=bool(declared), skip_invalid=skip_invalid, keep_rejected=skip_invalid and rejects_with_values)


def _check_header(path, metadata, header, declared_meta) -> tuple[int, list[int], dict]:
    if len(set(header)) != len(header):
        raise InvalidInput(f"{path.name}: duplicate column names in the header")
    for h in header:
        if not COLUMN_NAME_RE.match(h):
            raise InvalidInput(f"{path.name}: column name '{h[:40]}' is not allowed (letters, digits, underscore)")
    key_column = declared_meta.key_column
    if key_column not in header:
        raise InvalidInput(f"{path.name}: key column '{key_column}' not in the header "
                           f"(columns: {', '.join(header)})")
    declared = {c.name: c for c in declared_meta.all_columns()}
    for col in declared:
        if col not in header:
            raise InvalidInput(f"{metadata.name}: describes column '{col}' which the file does not have")
    key_pos = header.index(key_column)
    return key_pos, [i for i in range(len(header)) if i != key_pos], declared


def _finish_problems(path, header, problems, skip_invalid, rejects, rejects_with_values, cells) -> str | None:
    """Refuse the file (all-or-nothing) or write the rejects file; its path, if any."""
    if problems and not skip_invalid:
        shown = "; ".join(f"row {r}: {why}" for r, why in problems[:MAX_ERRORS_SHOWN])
        more = f" (and {len(problems) - MAX_ERRORS_SHOWN} more)" if len(problems) > MAX_ERRORS_SHOWN else ""
        raise InvalidInput(f"{path.name}: {len(problems)} invalid row(s), nothing imported: {shown}{more}")
    if not problems:
        return None
    rejects_path = pathlib.Path(rejects) if rejects else path.with_name(path.stem + ".rejects.csv")
    with open(rejects_path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["row", "reason", *header] if rejects_with_values else ["row", "reason"])
        for r, why in problems:
            w.writerow([r, why, *cells(r)] if rejects_with_values else [r, why])
    return str(rejects_path)


def _meta(name, declared_meta, key_column, columns) -> DatasetMeta:
    key_meta = declared_meta.key_meta or ColumnMeta(key_column, "text")
    key_meta = dataclasses.replace(key_meta, description=key_meta.description or "Resident identity number (GB 11643)")
    return DatasetMeta(name=name, key_column=key_column, description=declared_meta.description,
                       columns=columns, key_meta=key_meta)


def _import_rows(store, path, name, metadata, declared_meta, skip_invalid, rejects, replace,
                 rejects_with_values) -> ImportReport:
    """The line-by-line path: files the fast reader cannot read exactly (malformed rows, not
    UTF-8, …); it names the first bad rows precisely."""
    header, rows = read_table(path)
    key_pos, others, declared = _check_header(path, metadata, header, declared_meta)
    key_column = declared_meta.key_column

    problems: list[tuple[int, str]] = []
    shaped: list[int] = []
    for n, row in enumerate(rows):
        if len(row) != len(header):
            problems.append((n + 2, f"expected {len(header)} fields, found {len(row)}"))  # 1-based, after header
        else:
            shaped.append(n)
    normalised, reasons = idnum.validate_many(rows[n][key_pos] for n in shaped)
    good: list[int] = []
    for n, norm, why in zip(shaped, normalised, reasons):
        if why is not None:
            problems.append((n + 2, f"{key_column}: invalid identity number: {why}"))
        else:
            rows[n][key_pos] = norm
            good.append(n)

    columns: list[ColumnMeta] = []
    for i in others:
        d = _declared(declared_meta, header[i])
        columns.append(dataclasses.replace(d, type=d.type or infer_type([rows[n][i].strip() for n in good])))
    if declared:
        still_good = []
        for n in good:
            bad = next((c for c, i in zip(columns, others) if not _valid_value(c.type, rows[n][i].strip())), None)
            if bad is not None:
                problems.append((n + 2, f"{bad.name}: not a valid {bad.type}"))
            else:
                still_good.append(n)
        good = still_good

    problems.sort()
    rejects_file = _finish_problems(path, header, problems, skip_invalid, rejects, rejects_with_values,
                                    lambda r: rows[r - 2])
    if not good:
        raise InvalidInput(f"{path.name}: no valid rows to import")
    meta = _meta(name, declared_meta, key_column, columns)
    store.write_dataset(meta, ((rows[n][key_pos], [rows[n][i].strip() for i in others]) for n in good),
                        replace=replace)
    return ImportReport(name, len(good), len(problems), rejects_file, columns)


def progress_bar(label: str, stream=None, width: int = 30):
    """A text progress bar on ``stream`` (stderr): ``label [#####     ]  42%``, redrawn in place."""
    stream = stream or sys.stderr
    last = [-1]

    def show(fraction: float) -> None:
        pct = int(max(0.0, min(1.0, fraction)) * 100)
        if pct == last[0]:
            return
        last[0] = pct
        filled = width * pct // 100
        stream.write(f"\r{label} [{'#' * filled}{' ' * (width - filled)}] {pct:3d}%" + ("\n" if pct == 100 else ""))
        stream.flush()
    return show
