"""Masking (脱敏) for values revealed under the ``masked`` column use.

Masks never depend on more of the value than they show, and a value too short or too odd to
mask safely is masked completely. None passes through as None.
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

from pc_common.errors import InvalidInput

__all__ = ["mask_id", "mask_name", "mask_phone", "mask_address", "mask", "MASK_KINDS"]

_STAR = "*"
_FULL = "****"
_WS = re.compile(r"\s+")


def _clean(value: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput("only text values can be masked")
    if not value.isascii():
        value = unicodedata.normalize("NFKC", value)
    return _WS.sub("", value)


def mask_id(value: str) -> str:
    """``110101199003071234`` → ``110101********1234`` (region and last four kept)."""
    v = _clean(value).upper()
    if len(v) < 15:
        return _STAR * len(v) if v else ""
    return v[:6] + _STAR * (len(v) - 10) + v[-4:]


def mask_name(value: str) -> str:
    """Keep the first character: ``张三`` → ``张*``, ``欧阳娜娜`` → ``欧***``; one character → ``*``."""
    v = _clean(value)
    if len(v) <= 1:
        return _STAR * len(v)
    return v[0] + _STAR * (len(v) - 1)


def mask_phone(value: str) -> str:
    """``13812345678`` → ``138****5678``; a +86/0086 prefix and separators are dropped."""
    digits = "".join(c for c in _clean(value) if c.isdigit())
    for prefix in ("0086", "86"):
        if len(digits) == 11 + len(prefix) and digits.startswith(prefix):
            digits = digits[len(prefix):]
            break
    if len(digits) < 7:
        return _STAR * len(digits)
    return digits[:3] + _STAR * (len(digits) - 7) + digits[-4:]


# Province, prefecture and county levels. A name part excludes level suffixes, digits and
# street-level words, so it cannot run past a level boundary or swallow a street; county names
# that are really neighbourhoods (小区, 社区, …) are dropped.
_NAME = r"[^省市区县旗盟0-9路街道号巷弄村镇乡楼室栋#\-]"
_PROVINCE = rf"(?:北京市|天津市|上海市|重庆市|{_NAME}{{2,12}}?(?:省|自治区|特别行政区))"
_PREFECTURE = rf"(?:{_NAME}{{1,12}}?(?:自治州|地区|盟|市))"
_COUNTY = rf"(?:{_NAME}{{1,16}}?(?:区|县|旗|市))"
_ADMIN = re.compile(rf"^(?P<p>{_PROVINCE})?(?P<c>{_PREFECTURE})?(?P<k>{_COUNTY})?")
_NOT_COUNTY = ("小区", "社区", "园区", "校区", "景区", "街区", "片区", "厂区", "营区", "住区", "城区", "郊区", "市场")


def mask_address(value: str) -> str:
    """Keep the administrative prefix down to county level and mask the rest:
    ``北京市朝阳区建国路88号`` → ``北京市朝阳区****``. Addresses without a recognisable
    prefix are masked completely.
    """
    v = _clean(value)
    m = _ADMIN.match(v)
    if m is None:
        return _FULL if v else ""
    parts = [m.group("p"), m.group("c"), m.group("k")]
    if parts[2] and parts[2].endswith(_NOT_COUNTY):
        parts[2] = None
    if parts[1] and parts[1].endswith(_NOT_COUNTY):
        parts[1] = parts[2] = None
    kept = "".join(p for p in parts if p)
    if not kept:
        return _FULL if v else ""
    return kept if kept == v else kept + _FULL


def _mask_full(value: str) -> str:
    return _FULL if value else ""


MASK_KINDS: dict[str, Callable[[str], str]] = {
    "id_number": mask_id,
    "id": mask_id,
    "name": mask_name,
    "phone": mask_phone,
    "address": mask_address,
    "full": _mask_full,
}


def mask(value: str | None, kind: str) -> str | None:
    """Mask ``value`` as ``kind`` (one of :data:`MASK_KINDS`); None stays None."""
    fn = MASK_KINDS.get(kind)
    if fn is None:
        raise InvalidInput(f"unknown mask kind {kind!r}; expected one of {sorted(MASK_KINDS)}")
    if value is None:
        return None
    return fn(value)
