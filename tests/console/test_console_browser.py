"""The web console in Debian's Chromium against a real sandbox (tests/console/conftest.py):
login with TOTP, lockout, no session, forged CSRF, a caseworker's verification and its results
file (the same bytes as ``pc results``), an officer approving a pending job, the operator's
page, and an auditor seeing a tampered log fail. Screenshots of each page go to a temporary
folder (printed by ``-s``)."""
from __future__ import annotations

import json
import os
import re
import sqlite3
import ssl
import socket
import time
import urllib.parse

import pytest

from pc_client.cli import main
from pc_common.audit import AuditLog
from tests.console.conftest import submit_login, totp_now, user_of

FULL_ID = re.compile(r"(?<![0-9])[0-9]{17}[0-9Xx](?![0-9])")


def _wait(predicate, timeout: float = 60, every: float = 0.3):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(every)
    raise AssertionError("timed out")


def test_https_only_with_the_sandbox_ca(town):
    url = urllib.parse.urlparse(town["consoles"]["civil_affairs"])
    ctx = ssl.create_default_context(cafile=str(town["root"] / "certs" / "ca.pem"))
    with socket.create_connection((url.hostname, url.port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=url.hostname) as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    with socket.create_connection((url.hostname, url.port), timeout=5) as raw:   # plain HTTP gets no page
        raw.sendall(b"GET /login HTTP/1.1\r\nHost: x\r\n\r\n")
        raw.settimeout(5)
        try:
            answer = raw.recv(100)
        except (ConnectionResetError, socket.timeout):
            answer = b""
        assert not answer.startswith(b"HTTP/1.1 200")
    assert oct(os.stat(town["root"] / "console-users.json").st_mode & 0o777) == "0o600"
    assert {u["party"] for u in town["users"]} == {"platform", "civil_affairs", "public_security"}


def test_a_page_without_a_session_redirects_to_login(town, browser, shot):
    ctx = browser.new_context(ignore_https_errors=True)
    try:
        page = ctx.new_page()
        url = town["consoles"]["public_security"]
        for path in ("/officer", "/analyst", "/auditor", "/jobs/abc"):
            page.goto(url + path)
            assert urllib.parse.urlparse(page.url).path == "/login", path
        r = ctx.request.get(url + "/jobs/abc/results.csv", max_redirects=0)
        assert r.status == 303 and r.headers["location"].startswith("/login")
        assert "用户名" in page.content() and "动态验证码" in page.content()     # zh-CN by default
        shot(page, "login")
    finally:
        ctx.close()


def test_login_needs_the_totp_code_of_an_officer(town, browser, shot):
    u = user_of(town, "civil_affairs", "officer")
    url = town["consoles"]["civil_affairs"]
    ctx = browser.new_context(ignore_https_errors=True)
    try:
        page = ctx.new_page()
        submit_login(page, url, "officer", u["password"], "")
        assert "/login" in page.url and page.locator("#login-error").is_visible()
        submit_login(page, url, "officer", u["password"], "000000" if totp_now(u["totp_secret"]) != "000000" else "111111")
        assert "/login" in page.url and page.locator("#login-error").is_visible()
        submit_login(page, url, "officer", u["password"], totp_now(u["totp_secret"]))
        assert urllib.parse.urlparse(page.url).path == "/officer", page.content()[:300]
        cookie = next(c for c in ctx.cookies() if c["name"] == "pc_console_session")
        assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert page.locator("#no-approvals").is_visible()
        shot(page, "officer-empty")
    finally:
        ctx.close()
    entries = _console_entries(town, "civil_affairs")
    outcomes = [e["outcome"] for e in entries if e["action"] == "console.login" and "officer" in e["detail"]]
    assert outcomes[-3:] == ["failed", "failed", "ok"]


def test_five_wrong_passwords_lock_the_account(town, browser):
    u = user_of(town, "public_security", "analyst")
    url = town["consoles"]["public_security"]
    ctx = browser.new_context(ignore_https_errors=True)
    try:
        page = ctx.new_page()
        for i in range(5):
            submit_login(page, url, "analyst", "wrong-password-" + str(i))
            assert "/login" in page.url
        assert "锁定" in page.locator("#login-error").inner_text()
        submit_login(page, url, "analyst", u["password"])            # the right password, still locked
        assert "/login" in page.url and "锁定" in page.locator("#login-error").inner_text()
    finally:
        ctx.close()
    outcomes = [e["outcome"] for e in _console_entries(town, "public_security")
                if e["action"] == "console.login" and "user analyst" in e["detail"]]
    assert outcomes[-6:] == ["failed"] * 4 + ["locked", "locked"]


def test_a_forged_csrf_token_is_refused(town, login):
    page = login("civil_affairs", "analyst")
    url = town["consoles"]["civil_affairs"]
    with town["sandbox"].federation("analyst@civil_affairs") as fed:
        before = len(fed.jobs())
        page.goto(url + "/analyst")
        page.set_input_files("input[name=subjects]", str(town["subjects"]))
        page.evaluate("document.querySelector('#verify-form input[name=csrf]').value = 'forged'")
        with page.expect_response(lambda r: r.url.endswith("/analyst/verify")) as resp:
            page.click("#start")
        assert resp.value.status == 403
        assert len(fed.jobs()) == before                              # nothing was submitted
    # Another role's page is refused too.
    page.goto(url + "/officer")
    assert "无权访问" in page.content()


def test_a_caseworker_verifies_and_downloads_the_cli_results_file(town, login, shot, tmp_path):
    page = login("civil_affairs", "analyst")
    url = town["consoles"]["civil_affairs"]
    page.goto(url + "/analyst")
    shot(page, "analyst")
    page.select_option("select[name=rule]", "nocar.toml")
    page.set_input_files("input[name=subjects]", str(town["subjects"]))
    page.click("#start")
    page.wait_for_url(re.compile(r"/jobs/[a-z0-9]+$"))
    job_id = page.url.rsplit("/", 1)[1]
    _wait_until_ended(page)                                         # the page reloads itself when the job ends
    assert page.locator("#verdicts").is_visible() and "eligible_groups" in page.locator("#verdicts").inner_text()
    # Households: H1 and H3 have no car, H2 has one.
    assert page.locator(".verdict-true").inner_text() == "2" and page.locator(".verdict-false").inner_text() == "1"
    assert not FULL_ID.search(page.content()), "a full identity number on the page"
    assert "440303********" in page.locator("#preview").inner_text()
    shot(page, "job")
    with page.expect_download() as dl:
        page.click("#download")
    got = tmp_path / "from-console.csv"
    dl.value.save_as(got)
    cli = tmp_path / "from-cli.csv"
    assert main(["results", job_id, "--sandbox", str(town["dir"]), "--as", "analyst@civil_affairs",
                 "--out", str(cli)]) == 0
    assert got.read_bytes() == cli.read_bytes()
    rows = [ln.split(",") for ln in got.read_text(encoding="utf-8").splitlines()[1:]]
    assert rows == town["expected"]
    page.goto(url + "/analyst")                               # verdicts per job, as a chart
    assert page.locator("#verdict-chart svg.chart").count() == 1
    actions = [e["action"] for e in _console_entries(town, "civil_affairs") if e.get("job") == job_id]
    assert "console.verify" in actions and "console.download" in actions


def test_an_officer_approves_a_pending_job_and_it_completes(town, login, shot):
    policy = town["root"] / "public_security" / "policy.toml"
    original = policy.read_text()
    assert 'approval = "auto"' in original
    _write_policy(policy, original.replace('approval = "auto"', 'approval = "manual"'))
    try:
        analyst = login("civil_affairs", "analyst")
        analyst.goto(town["consoles"]["civil_affairs"] + "/analyst")
        analyst.set_input_files("input[name=subjects]", str(town["subjects"]))
        analyst.click("#start")
        analyst.wait_for_url(re.compile(r"/jobs/[a-z0-9]+$"))
        job_id = analyst.url.rsplit("/", 1)[1]
        officer = login("public_security", "officer")
        url = town["consoles"]["public_security"]

        def pending():
            officer.goto(url + "/officer")
            return officer.locator(f"#approval-{job_id}").count() == 1
        _wait(pending, 30)
        card = officer.locator(f"#approval-{job_id}")
        text = card.inner_text()
        for what in ("civil_affairs", "social_assistance.eligibility", "nocar", "no_car", "none_exists",
                     "public_security.vehicles", "vehicle_type != 'motorcycle'"):
            assert what in text, what
        assert card.locator(".subjects").inner_text() == "6"
        assert "the 6 identifier(s)" in text or "6 identifier(s)" in text
        shot(officer, "officer-pending")
        card.locator("input[name=reason]").fill("checked against the allowance file")
        card.locator("button.approve").click()
        officer.wait_for_url(re.compile(r"/officer$"))
        assert officer.locator(f"#approval-{job_id}").count() == 0
        assert "approved" in officer.locator("#decided").inner_text()
        analyst.goto(town["consoles"]["civil_affairs"] + f"/jobs/{job_id}")
        _wait_until_ended(analyst)
        officer.goto(url + "/officer")                        # the grants' quota use: a table and a chart
        row = officer.locator("#quota tr.quota-row", has_text="civil_affairs").first
        used, limit = row.locator("td.jobs_per_day").inner_text().split(" / ")
        assert int(used) >= 1 and int(limit) >= int(used)
        assert int(row.locator("td.subjects_per_day").inner_text().split(" / ")[0]) >= 6
        chart = officer.locator("#quota-chart svg.chart.usage")
        assert chart.count() == 1 and "任务/天" in chart.inner_html()
        assert not FULL_ID.search(officer.content())
        shot(officer, "officer-quota")
    finally:
        _write_policy(policy, original)
    assert any(e["action"] == "console.approval.approve" and e.get("job") == job_id
               for e in _console_entries(town, "public_security"))


def test_the_operator_sees_nodes_jobs_and_charts(town, login, shot):
    page = login("platform", "operator")
    page.goto(town["consoles"]["platform"] + "/operator")
    nodes = page.locator("#nodes").inner_text()
    assert "civil_affairs" in nodes and "public_security" in nodes and "在线" in nodes
    assert page.locator("#jobs tr").count() >= 3          # header + the verifications of this module
    assert page.locator("svg.chart").count() >= 2          # time per step, jobs per day
    assert "civil_affairs.applicants" in page.locator("#catalog").inner_text()
    assert not FULL_ID.search(page.content())
    shot(page, "operator")
    with page.expect_navigation():      # a link: read the page only once the new one has loaded
        page.click("#lang")
    assert "Log out" in page.content() and "Nodes" in page.content()
    shot(page, "operator-en")
    with page.expect_navigation():
        page.click("#lang")


def test_an_auditor_sees_a_tampered_log_fail_verification(town, login, shot, tmp_path):
    page = login("platform", "auditor")
    url = town["consoles"]["platform"]
    page.goto(url + "/auditor")
    for party in ("coordinator", "civil_affairs", "public_security", "console"):
        assert page.locator(f"#audit-{party}").get_attribute("class") == "ok", party
    # Exports are `pc audit export`'s: a node's log (unsigned tail included) and the console's own
    # log, which the console checkpoints first, so its export verifies on its own.
    with page.expect_download() as dl:
        page.locator("#audit-public_security a").click()
    dl.value.save_as(tmp_path / "ps.jsonl")
    lines = [json.loads(ln) for ln in (tmp_path / "ps.jsonl").read_text().splitlines()]
    assert lines[0]["type"] == "header" and lines[0]["entries"] == sum(x["type"] == "entry" for x in lines) > 0
    with page.expect_download() as dl:
        page.locator("#audit-console a").click()
    dl.value.save_as(tmp_path / "console.jsonl")
    assert main(["audit", "verify-export", "--file", str(tmp_path / "console.jsonl")]) == 0
    page.goto(url + "/auditor?action=job.submit")
    actions = page.locator("#timeline td.action").all_inner_texts()
    assert actions and set(actions) == {"job.submit"}
    con = sqlite3.connect(town["root"] / "public_security" / "audit.db")
    try:
        with con:
            assert con.execute("UPDATE audit_log SET requester = 'someone_else' WHERE seq = "
                               "(SELECT MAX(seq) FROM audit_log WHERE requester IS NOT NULL)").rowcount == 1
    finally:
        con.close()
    page.goto(url + "/auditor")
    assert page.locator("#audit-public_security").get_attribute("class") == "tampered"
    assert "已被篡改" in page.locator("#audit-public_security").inner_text()
    for party in ("coordinator", "civil_affairs", "console"):
        assert page.locator(f"#audit-{party}").get_attribute("class") == "ok", party
    shot(page, "auditor")


# ----- helpers ---------------------------------------------------------------------------------------------
def _wait_until_ended(page) -> None:
    page.wait_for_selector("#job[data-terminal=yes]", timeout=90000)
    reason = page.locator("#reason").inner_text() if page.locator("#reason").count() else ""
    assert page.locator("#state").inner_text() == "succeeded", reason
    assert page.locator("#download").count() == 1


def _console_entries(town, party: str) -> list[dict]:
    folder = "coordinator" if party == "platform" else party
    with AuditLog.open_existing(town["root"] / folder / "console" / "audit.db") as log:
        assert log.verify().ok
        return log.entries()


def _write_policy(path, text: str) -> None:
    path.write_text(text)
    t = time.time() + 2                 # the node re-reads the file when its mtime changes
    os.utime(path, (t, t))


@pytest.fixture(autouse=True, scope="module")
def _report_screenshots(screenshots):
    yield
    print(f"\nconsole screenshots: {screenshots}")
