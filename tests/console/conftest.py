"""A real sandbox with its web consoles (``pc sandbox up DIR --console``: coordinator, two nodes
and three consoles as processes on loopback) and Debian's Chromium driven by Playwright.

* ``town`` — the sandbox of tests/integration/test_cli.py's town (civil_affairs asks whether a
  household owns a car, public_security holds the vehicles), brought up once per module with
  its consoles; ``town["consoles"]`` maps party → https URL, ``town["users"]`` the entries of
  console-users.json.
* ``browser`` — headless Chromium (skipped only when /usr/bin/chromium is absent).
* ``login(party, username)`` — a new browser page logged in as that console user (TOTP code
  from the user's secret); ``shot(page, name)`` saves a screenshot under a temporary folder.
"""
from __future__ import annotations

import json
import pathlib
import time

import pytest

from tests.conftest import write_csv
from tests.integration.test_cli import RULE, _ids

CHROMIUM = pathlib.Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def town(tmp_path_factory):
    from pc_client.sandbox import Sandbox
    d = tmp_path_factory.mktemp("console") / "town"
    p = _ids(7, start=10)
    members = [(p[0], "H1", "王芳"), (p[1], "H1", "李强"), (p[2], "H2", "张伟"), (p[3], "H2", "刘洋"),
               (p[4], "H3", "陈静"), (p[5], "H3", "杨磊")]
    write_csv(d / "civil_affairs" / "applicants.csv", ["id_number", "household_id", "name"], [list(m) for m in members])
    write_csv(d / "public_security" / "vehicles.csv", ["id_number", "plate", "vehicle_type"],
              [[p[3], "粤B12345", "car"], [p[4].lower(), "粤B6M001", "motorcycle"], [p[6], "粤B99999", "car"]])
    (d / "rules").mkdir()
    (d / "rules" / "nocar.toml").write_text(RULE, encoding="utf-8")
    subjects = write_csv(d.parent / "subjects.csv", ["id_number", "household_id"], [[m[0], m[1]] for m in members])
    expected = [[m[0], m[1], "false" if m[1] == "H2" else "true"] for m in members]
    sb = Sandbox(d)
    try:
        state = sb.up(log=lambda m: None, console=True)
        users = json.loads((sb.root / "console-users.json").read_text())
        yield {"dir": d, "root": sb.root, "sandbox": sb, "consoles": state["consoles"], "users": users,
               "subjects": subjects, "expected": expected, "ids": [m[0] for m in members]}
    finally:
        sb.down(quiet=True)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("Debian's Chromium (/usr/bin/chromium) is not installed; .ci/run installs the chromium package")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory):
    return tmp_path_factory.mktemp("console-screenshots")


@pytest.fixture
def shot(screenshots):
    def take(page, name: str) -> pathlib.Path:
        path = screenshots / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path
    return take


def user_of(town, party: str, username: str) -> dict:
    return next(u for u in town["users"] if u["party"] == party and u["username"] == username)


def totp_now(secret: str) -> str:
    import pyotp
    return pyotp.TOTP(secret).now()


def submit_login(page, url: str, username: str, password: str, code: str = "") -> None:
    page.goto(url + "/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.fill("input[name=totp]", code)
    page.click("#login")
    page.wait_for_load_state()


@pytest.fixture(scope="module")
def login(town, browser):
    """``login(party, username) -> page``: one logged-in browser context per console user
    (a TOTP code is accepted once, so each user logs in once per module)."""
    contexts = {}

    def get(party: str, username: str):
        if (party, username) not in contexts:
            u = user_of(town, party, username)
            ctx = browser.new_context(ignore_https_errors=True, accept_downloads=True, locale="zh-CN")
            page = ctx.new_page()
            url = town["consoles"][party]
            for _ in range(2):     # a code already used in this 30 s step is refused: wait for the next one
                submit_login(page, url, username, u["password"], totp_now(u["totp_secret"]) if u["totp_secret"] else "")
                if "/login" not in page.url:
                    break
                time.sleep(30 - time.time() % 30 + 0.5)
            assert "/login" not in page.url, page.content()[:500]
            contexts[(party, username)] = (ctx, page)
        return contexts[(party, username)][1]
    yield get
    for ctx, _ in contexts.values():
        ctx.close()
