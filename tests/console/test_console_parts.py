"""The console's parts without servers or a browser: the user store (argon2, TOTP, lockout with
its expiry, replayed codes), idle sessions, masking, the SVG charts, console.toml, the HTTPS
certificate (no pc:// identity) and the sandbox users file."""
from __future__ import annotations

import pathlib

import pyotp
import pytest
from cryptography import x509

from pc_common import certs
from pc_common.errors import InvalidInput, Unauthenticated
from pc_common.identity import identity_of
from pc_console import charts, https_cert
from pc_console.config import ConsoleConfig
from pc_console.masking import mask_identifier, mask_text
from pc_console.sessions import Sessions
from pc_console.users import LOCKOUT_S, AccountLocked, LoginFailed, UserStore


class Clock:
    def __init__(self, t: float = 1_800_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    certs.init(d, ["housing"], ["analyst@housing", "officer:officer@housing", "operator:operator"])
    return d


@pytest.fixture
def store(tmp_path):
    clock = Clock()
    s = UserStore(tmp_path / "users.db", clock)
    yield s, clock
    s.close()


def test_passwords_are_argon2_and_officers_need_a_totp_code(store, ca):
    s, clock = store
    secret = s.add("olga", "housing", ["officer"], "correct horse battery", certs.client_files(ca, "housing", "officer"))
    assert secret
    raw = (s.path.read_bytes())
    assert b"correct horse" not in raw and b"$argon2id$" in raw
    with pytest.raises(LoginFailed):
        s.authenticate("olga", "correct horse battery", "")
    code = pyotp.TOTP(secret).at(clock.t)
    user = s.authenticate("olga", "correct horse battery", code)
    assert user.roles == ("officer",) and user.party == "housing" and user.identity.cert.exists()
    with pytest.raises(LoginFailed):                   # the same code is accepted once
        s.authenticate("olga", "correct horse battery", code)
    clock.t += 30
    assert s.authenticate("olga", "correct horse battery", pyotp.TOTP(secret).at(clock.t)).username == "olga"


def test_five_failures_lock_for_fifteen_minutes(store, ca):
    s, clock = store
    assert s.add("ann", "housing", ["analyst"], "a long password", certs.client_files(ca, "housing", "analyst")) is None
    for _ in range(4):
        with pytest.raises(LoginFailed):
            s.authenticate("ann", "wrong", "")
    with pytest.raises(AccountLocked):
        s.authenticate("ann", "wrong", "")
    with pytest.raises(AccountLocked):
        s.authenticate("ann", "a long password", "")
    clock.t += LOCKOUT_S + 1
    assert s.authenticate("ann", "a long password", "").username == "ann"
    with pytest.raises(LoginFailed):                   # an unknown name fails the same way
        s.authenticate("nobody", "a long password", "")


def test_a_user_acts_only_with_an_identity_of_its_role_and_party(store, ca):
    s, _ = store
    with pytest.raises(InvalidInput, match="not a officer"):
        s.add("x", "housing", ["officer"], "a long password", certs.client_files(ca, "housing", "analyst"))
    with pytest.raises(InvalidInput, match="not a client of 'tax'"):
        s.add("x", "tax", ["analyst"], "a long password", certs.client_files(ca, "housing", "analyst"))
    with pytest.raises(InvalidInput, match="needs the user's pc certificate"):
        s.add("x", "housing", ["operator"], "a long password")
    with pytest.raises(InvalidInput, match="no pc identity"):
        s.add("x", "housing", ["auditor"], "a long password", certs.client_files(ca, "housing", "analyst"))
    with pytest.raises(InvalidInput, match="at least"):
        s.add("x", "housing", ["auditor"], "short")
    assert s.add("aud", "housing", ["auditor"], "a long password")        # TOTP forced for auditors


def test_idle_sessions_end(store, ca):
    s, clock = store
    s.add("ann", "housing", ["analyst"], "a long password", certs.client_files(ca, "housing", "analyst"))
    sessions = Sessions(15 * 60, clock)
    a = sessions.create(s.authenticate("ann", "a long password", ""), "zh-CN")
    clock.t += 14 * 60
    assert sessions.get(a.token) is a                  # use keeps it alive
    clock.t += 14 * 60
    assert sessions.get(a.token) is a
    clock.t += 15 * 60 + 1
    assert sessions.get(a.token) is None
    assert sessions.get("forged") is None and sessions.get(None) is None


def test_masking():
    assert mask_text("申请人 440303196212062102 电话 13812345678") == "申请人 440303********2102 电话 138****5678"
    assert mask_identifier("440303196212062102") == "440303********2102"
    assert mask_identifier("粤B12345") == "粤*****5"


def test_charts_escape_labels_and_scale():
    svg = str(charts.stacked([("<b>x</b>", {"a": 1.0, "b": 3.0}), ("y", {"a": 2.0})], ["a", "b"], " s"))
    assert svg.startswith("<svg") and "<b>" not in svg and "&lt;b&gt;" in svg
    assert "a: 1 s" in svg and "b: 3 s" in svg and ">4 s<" in svg
    assert str(charts.bars([])) == ""


def test_the_https_certificate_is_no_pc_identity(ca, tmp_path):
    cert_path, key_path = https_cert.issue(ca, tmp_path / "https")
    assert oct(key_path.stat().st_mode & 0o777) == "0o600"
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    with pytest.raises(Unauthenticated):
        identity_of(cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)


def test_console_config(tmp_path):
    (tmp_path / "c.toml").write_text('party = "housing"\ndata_dir = "d"\ncoordinator = "127.0.0.1:1"\n'
                                     '[https]\ncert = "c.pem"\nkey = "k.pem"\n[audit_logs]\nhousing = "/x/audit.db"\n')
    c = ConsoleConfig.load(tmp_path / "c.toml")
    assert c.listen == "127.0.0.1:0" and c.data_dir == tmp_path / "d" and c.idle_timeout_s == 900
    assert c.audit_logs == {"housing": pathlib.Path("/x/audit.db")}
    (tmp_path / "bad.toml").write_text('party = "Bad Name"\ndata_dir = "d"\ncoordinator = "x"\n[https]\ncert="a"\nkey="b"\n')
    with pytest.raises(InvalidInput, match="party"):
        ConsoleConfig.load(tmp_path / "bad.toml")


def test_pc_console_cert_and_user_add(ca, tmp_path, capsys, monkeypatch):
    import io
    import json

    from pc_client.cli import main
    assert main(["console", "cert", "--certs", str(ca), "--out", str(tmp_path / "https")]) == 0
    (tmp_path / "console.toml").write_text('party = "housing"\ndata_dir = "d"\ncoordinator = "127.0.0.1:1"\n'
                                           '[https]\ncert = "https/cert.pem"\nkey = "https/key.pem"\n')
    officer = certs.client_files(ca, "housing", "officer")
    capsys.readouterr()
    assert main(["console", "user", "add", "bob", "--config", str(tmp_path / "console.toml"), "--role", "officer",
                 "--cert", str(officer.cert), "--key", str(officer.key), "--ca", str(officer.ca), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["totp_uri"].startswith("otpauth://totp/") and len(doc["password"]) >= 16
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough password\n"))
    assert main(["console", "user", "add", "carol", "--config", str(tmp_path / "console.toml"), "--role", "auditor",
                 "--password-stdin"]) == 0
    assert "TOTP secret:" in capsys.readouterr().out
    store = UserStore(tmp_path / "d" / "users.db")
    try:
        assert store.usernames() == ["bob", "carol"]
        assert oct(store.path.stat().st_mode & 0o777) == "0o600"
        code = pyotp.TOTP(doc["totp_secret"]).now()
        assert store.authenticate("bob", doc["password"], code).identity.cert == officer.cert.resolve()
    finally:
        store.close()
    # A certificate of another role is refused in one line.
    assert main(["console", "user", "add", "eve", "--config", str(tmp_path / "console.toml"), "--role", "analyst",
                 "--cert", str(officer.cert), "--key", str(officer.key), "--ca", str(officer.ca)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
