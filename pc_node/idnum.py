"""PRC resident identity numbers (公民身份号码, GB 11643-1999).

Layout: 6-digit region code, 8-digit birth date YYYYMMDD, 3-digit sequence (odd = male), and an
ISO 7064 MOD 11-2 check character (0-9 or X). Only the 18-character form is accepted; the old
15-digit form is rejected as "wrong length".

Error messages state the reason only, never the value. The many-value helpers avoid per-item
Python arithmetic (the check digit is one ``int(s, 13) % 11``, since 13 ≡ 2 mod 11; the birth
date is a set lookup), so a million values validate in well under two seconds.
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from datetime import date, timedelta
from functools import lru_cache

from pc_common.errors import InvalidInput

__all__ = [
    "normalise",
    "check_digit",
    "is_valid",
    "validate",
    "validate_many",
    "is_valid_many",
    "valid_codes",
    "make_id",
    "birth_date",
    "is_male",
]

_CHECK_CHARS = "10X98765432"  # index = weighted sum mod 11
_WEIGHTS = tuple(pow(2, 17 - i, 11) for i in range(17))  # 7 9 10 5 8 4 2 1 6 3 7 9 10 5 8 4 2
_WS = re.compile(r"\s+")
_MIN_BIRTH = date(1900, 1, 1)
_REGION_FIRST = frozenset("12345678")
_DIGITS = frozenset("0123456789")
_LAST = frozenset("0123456789X")

WRONG_LENGTH = "wrong length"
BAD_CHARACTERS = "invalid characters"
BAD_REGION = "invalid region code"
BAD_BIRTH_DATE = "invalid birth date"
BAD_CHECK_DIGIT = "bad check digit"


def normalise(s: str) -> str:
    """Strip all whitespace (including full-width spaces), fold full-width digits, x → X."""
    if not isinstance(s, str):
        raise InvalidInput("identity number must be text")
    if not s.isascii():
        s = unicodedata.normalize("NFKC", s)
    return _WS.sub("", s).upper()


def check_digit(first17: str) -> str:
    """The MOD 11-2 check character for the first 17 digits."""
    if len(first17) != 17 or not first17.isascii() or not first17.isdigit():
        raise InvalidInput("check digit needs exactly 17 digits")
    total = sum(int(c) * w for c, w in zip(first17, _WEIGHTS))
    return _CHECK_CHARS[total % 11]


@lru_cache(maxsize=4)
def _birth_dates(today: date) -> frozenset[str]:
    """Every YYYYMMDD from 1900-01-01 to ``today`` (about 46k strings)."""
    out = []
    d, step = _MIN_BIRTH, timedelta(days=1)
    while d <= today:
        out.append(d.strftime("%Y%m%d"))
        d += step
    return frozenset(out)


def _reason(s: str, dates: frozenset[str]) -> str | None:
    """Reason an already normalised value is invalid, or None."""
    if len(s) != 18:
        return WRONG_LENGTH
    head = s[:17]
    if not (head.isascii() and head.isdigit() and s[17] in _LAST):
        return BAD_CHARACTERS
    if s[0] not in _REGION_FIRST:
        return BAD_REGION
    if s[6:14] not in dates:
        return BAD_BIRTH_DATE
    # Σ a_i·2^(18-i) ≡ 1 (mod 11) over all 18 positions, X = 10; base 13 ≡ base 2 (mod 11).
    if int(s.replace("X", "A"), 13) % 11 != 1:
        return BAD_CHECK_DIGIT
    return None


def validate(s: str, *, today: date | None = None) -> str:
    """Return the normalised identity number or raise InvalidInput with the reason (no value)."""
    n = normalise(s)
    reason = _reason(n, _birth_dates(today or date.today()))
    if reason is not None:
        raise InvalidInput(f"invalid identity number: {reason}")
    return n


def is_valid(s: str, *, today: date | None = None) -> bool:
    if not isinstance(s, str):
        return False
    return _reason(normalise(s), _birth_dates(today or date.today())) is None


def validate_many(
    values: Iterable[str], *, today: date | None = None
) -> tuple[list[str], list[str | None]]:
    """Normalise and check many values (e.g. an import's key column).

    Returns ``(normalised, reasons)`` of the same length; ``reasons[i]`` is None when value
    ``i`` is valid, otherwise one of the reason strings. Non-text values get ``"invalid characters"``.
    Clean values are checked in vectorised chunks (numpy); the rest one by one.
    """
    today = today or date.today()
    dates = _birth_dates(today)
    values = list(values)
    norm: list[str] = [""] * len(values)
    reasons: list[str | None] = [None] * len(values)
    try:
        fast = _fast_checker(today)
    except ImportError:  # pragma: no cover - numpy is a dependency; keep a pure-Python path
        fast = None
    for start in range(0, len(values), _CHUNK):
        chunk = values[start:start + _CHUNK]
        if set(map(type, chunk)) != {str}:
            chunk = [str(v) if isinstance(v, str) else None for v in chunk]
        passed = fast(chunk) if fast is not None and None not in chunk else None
        for i, v in enumerate(chunk):
            if passed is not None and passed[i]:
                norm[start + i] = v
                continue
            if v is None:
                reasons[start + i] = BAD_CHARACTERS
                continue
            n = normalise(v)
            norm[start + i] = n
            reasons[start + i] = _reason(n, dates)
    return norm, reasons


_CHUNK = 65536


@lru_cache(maxsize=4)
def _fast_checker(today: date):
    """A numpy function: chunk of str → bool array, True where the value is already normalised
    and valid. False only means "check this one the slow way"."""
    import numpy as np

    weights = np.array(_WEIGHTS + (1,), dtype=np.int32)
    month_days = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int32)
    today_ymd = today.year * 10000 + today.month * 100 + today.day

    def check(chunk: list[str]):
        n = len(chunk)
        lengths = np.fromiter(map(len, chunk), dtype=np.int32, count=n)
        codes = np.array(chunk, dtype="U18").view(np.uint32).reshape(n, 18)
        return (check_codes(codes) & (lengths == 18)).tolist()

    def check_codes(codes):
        d = codes.astype(np.int32)
        d -= 48
        is_x = codes[:, 17] == 88  # "X" counts 10
        d[is_x, 17] = 10
        ok = (d.min(axis=1) >= 0) & (d[:, :17].max(axis=1) <= 9) & (d[:, 17] <= 10)
        ok &= (d[:, 0] >= 1) & (d[:, 0] <= 8)
        y = d[:, 6] * 1000 + d[:, 7] * 100 + d[:, 8] * 10 + d[:, 9]
        m = d[:, 10] * 10 + d[:, 11]
        day = d[:, 12] * 10 + d[:, 13]
        mm = np.clip(m, 0, 12)
        leap = ((y % 4 == 0) & (y % 100 != 0)) | (y % 400 == 0)
        dim = month_days[mm] + ((mm == 2) & leap)
        ok &= (y >= 1900) & (m >= 1) & (m <= 12) & (day >= 1) & (day <= dim)
        ok &= (y * 10000 + m * 100 + day) <= today_ymd
        ok &= (d @ weights) % 11 == 1
        return ok

    check.codes = check_codes
    return check


def valid_codes(codes, *, today: date | None = None):
    """Bool array: which rows of ``codes`` (an (n, 18) integer array of character codes, e.g.
    the ASCII bytes of an Arrow string column) are normalised, valid identity numbers."""
    return _fast_checker(today or date.today()).codes(codes)


def is_valid_many(values: Iterable[str], *, today: date | None = None) -> list[bool]:
    _, reasons = validate_many(values, today=today)
    return [r is None for r in reasons]


def make_id(region6: str, birth: date, seq3: int) -> str:
    """Build a valid identity number (for synthetic data and tests)."""
    if len(region6) != 6 or not region6.isascii() or not region6.isdigit() or region6[0] not in _REGION_FIRST:
        raise InvalidInput("region code must be 6 digits starting 1-8")
    if not isinstance(birth, date) or not _MIN_BIRTH <= birth:
        raise InvalidInput("birth date must be a date from 1900 on")
    if isinstance(seq3, bool) or not isinstance(seq3, int) or not 0 <= seq3 <= 999:
        raise InvalidInput("sequence must be 0..999")
    first17 = f"{region6}{birth:%Y%m%d}{seq3:03d}"
    return first17 + check_digit(first17)


def birth_date(id_number: str) -> date:
    """Birth date encoded in a valid identity number."""
    n = validate(id_number)
    return date(int(n[6:10]), int(n[10:12]), int(n[12:14]))


def is_male(id_number: str) -> bool:
    """GB 11643: an odd sequence number is assigned to men, even to women."""
    return int(validate(id_number)[16]) % 2 == 1

