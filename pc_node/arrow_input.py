"""Read a CSV or Parquet file in batches of text columns, with pyarrow (multithreaded, bounded memory).

The importer's fast path. Every cell comes back as text, exactly as the line-by-line reader
(``pc_node.importer.read_table``) would give it: CSV cells verbatim (empty cells are "", never
null), Parquet values as ``str(value)`` ("" for null). Where pyarrow cannot promise that — a row
with the wrong number of fields, text that is not UTF-8, a file it cannot parse — it raises
:class:`Fallback` and the importer reads the file the slow way, which reports the exact row.
"""
from __future__ import annotations

import csv
import dataclasses
import pathlib
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["Fallback", "Table", "open_table"]

CSV_BLOCK = 2 << 20              # bytes per CSV batch (~35k rows of a typical file); bounds read-ahead
PARQUET_BATCH = 65536
# Cells holding a quote or a line break are left to the csv module (quoted line breaks, escaped
# or stray quotes, which pyarrow reads more leniently: an unterminated quote, `"ab"c`).


class Fallback(Exception):
    """The fast reader cannot give exactly what the line-by-line reader gives."""


@dataclasses.dataclass
class Table:
    header: list[str]
    batches: Callable[[], Iterator[tuple[list[pa.Array], float]]]   # (text columns, fraction done)


def open_table(path: pathlib.Path) -> Table:
    if not path.exists():
        raise Fallback("no such file")
    if path.suffix.lower() == ".parquet":
        return _parquet(path)
    return _csv(path)


def _csv(path: pathlib.Path) -> Table:
    import pyarrow.csv as pacsv
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            header = next(csv.reader(fh, strict=True))
    except (UnicodeDecodeError, csv.Error, StopIteration):
        raise Fallback("header") from None
    header = [h.strip() for h in header]
    names = [f"c{i}" for i in range(len(header))]
    size = max(1, path.stat().st_size)
    with open(path, "rb") as fh:       # pyarrow accepts an unterminated quote at the end; csv does not
        fh.seek(max(0, size - 65536))
        last = fh.read().rstrip(b"\r\n").rsplit(b"\n", 1)[-1]
    if last.count(b'"') % 2:
        raise Fallback("unterminated quote")

    def batches():
        opts = dict(
            read_options=pacsv.ReadOptions(skip_rows=1, column_names=names, block_size=CSV_BLOCK, use_threads=True),
            parse_options=pacsv.ParseOptions(newlines_in_values=False),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names}, null_values=[],
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False))
        done = 0
        try:
            with pacsv.open_csv(path, **opts) as reader:
                for batch in reader:
                    cols = [batch.column(i) for i in range(len(names))]
                    if any(_has_odd(c) for c in cols):
                        raise Fallback("quotes or line breaks in a cell")
                    # Bytes consumed, about: the cells plus one separator each (quotes not counted).
                    done += sum(_text_bytes(c) for c in cols) + batch.num_rows * len(names)
                    yield cols, min(1.0, done / size)
        except (pa.ArrowException, UnicodeDecodeError) as exc:
            raise Fallback(type(exc).__name__) from None
    return Table(header, batches)


def _has_odd(arr: pa.Array) -> bool:
    data = arr.buffers()[2]
    if data is None or len(arr) == 0:
        return False
    raw = data.to_pybytes()                # one copy, then memchr: far faster than a byte table
    return b'"' in raw or b"\n" in raw or b"\r" in raw


def _text_bytes(arr: pa.Array) -> int:
    offsets = arr.buffers()[1]
    if offsets is None or len(arr) == 0:
        return 0
    import numpy as np
    o = np.frombuffer(offsets, dtype=np.int32, count=len(arr) + 1, offset=arr.offset * 4)
    return int(o[-1] - o[0])


def _parquet(path: pathlib.Path) -> Table:
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(path)
    except Exception:  # noqa: BLE001 - pyarrow raises many kinds; the slow reader words the error
        raise Fallback("parquet") from None
    header = list(pf.schema_arrow.names)
    total = max(1, pf.metadata.num_rows)

    def batches():
        done = 0
        try:
            for batch in pf.iter_batches(batch_size=PARQUET_BATCH):
                done += batch.num_rows
                yield [_as_text(batch.column(i)) for i in range(batch.num_columns)], done / total
        except pa.ArrowException as exc:
            raise Fallback(type(exc).__name__) from None
    return Table(header, batches)


def _as_text(col: pa.Array) -> pa.Array:
    """A Parquet column as text equal to ``str(value)`` of its Python value ("" for null)."""
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t) \
            or pa.types.is_date32(t) or pa.types.is_decimal(t):
        return pc.fill_null(pc.cast(col, pa.string()), "")
    return pa.array(["" if v is None else str(v) for v in col.to_pylist()], type=pa.string())
