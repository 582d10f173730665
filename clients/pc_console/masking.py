"""Identifiers as the console may show them: an identity number as 440303********1234, a
mobile number as 138****5678. Applied to every text a page shows from a server (reasons,
audit details, results previews), whatever the role: the full file is a download, never a page."""
from __future__ import annotations

import re

ID_NUMBER = re.compile(r"(?<![0-9])([0-9]{6})[0-9]{8}([0-9]{3}[0-9Xx])(?![0-9])")
MOBILE = re.compile(r"(?<![0-9])(1[3-9][0-9])[0-9]{4}([0-9]{4})(?![0-9])")


def mask_text(text) -> str:
    text = "" if text is None else str(text)
    text = ID_NUMBER.sub(lambda m: f"{m.group(1)}********{m.group(2)}", text)
    return MOBILE.sub(lambda m: f"{m.group(1)}****{m.group(2)}", text)


def mask_identifier(value: str) -> str:
    """Any identifier in a results column: first 6 and last 4 characters kept when long enough."""
    value = value or ""
    if len(value) >= 12:
        return value[:6] + "*" * (len(value) - 10) + value[-4:]
    if len(value) >= 3:
        return value[0] + "*" * (len(value) - 2) + value[-1]
    return "*" * len(value)
