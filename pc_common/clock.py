"""The one timestamp format: UTC, to the second, ``2025-01-31T08:00:00Z``.

Stored expiry times (node blobs, results, job records) are compared as text, which is
only right while every writer uses :func:`iso`.
"""
from __future__ import annotations

import datetime as dt

__all__ = ["FORMAT", "hours_from_now", "iso", "utc_now"]

FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def iso(ts: dt.datetime | float | int | None = None) -> str:
    """``ts`` (an aware datetime or a Unix time; now when omitted) in :data:`FORMAT`."""
    if ts is None:
        ts = utc_now()
    elif not isinstance(ts, dt.datetime):
        ts = dt.datetime.fromtimestamp(ts, dt.timezone.utc)
    elif ts.tzinfo is None:
        raise ValueError("naive datetime; pass an aware (UTC) one")
    return ts.astimezone(dt.timezone.utc).strftime(FORMAT)


def hours_from_now(hours: float) -> str:
    return iso(utc_now() + dt.timedelta(hours=hours))
