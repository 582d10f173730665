"""What every page of the console shares: the ``Console`` (config, users, sessions, audit trail,
templates), the session and role check, the CSRF check, rendering and audit entries.

A request without a live session is sent to /login (303); a role that may not open a page gets
403; a POST whose ``csrf`` field is not the session's token gets 403 and changes nothing.
"""
from __future__ import annotations

import dataclasses
import logging
import pathlib

import grpc
from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from pc_client.sdk import Federation
from pc_common.errors import PcError
from pc_console.config import ConsoleConfig
from pc_console.labels import DEFAULT_LANG, LANGS, label
from pc_console.masking import mask_text
from pc_console.sessions import COOKIE, Session, Sessions
from pc_console.users import UserStore

LANG_COOKIE = "pc_console_lang"
TEMPLATES = pathlib.Path(__file__).with_name("templates")
log = logging.getLogger("pc_console")


class LoginRequired(Exception):
    """No live session: answered with a redirect to /login."""


@dataclasses.dataclass
class Console:
    config: ConsoleConfig
    users: UserStore
    sessions: Sessions
    trail: object          # pc_common.audit.AuditLog
    templates: Jinja2Templates
    # The node's summary of a finished job's results (verdict counts), which never change: read
    # once per job for the caseworkers' chart.
    result_summaries: dict = dataclasses.field(default_factory=dict)

    # ----- sessions and roles ------------------------------------------------------------------
    def session(self, request: Request, *roles: str) -> Session:
        s = self.sessions.get(request.cookies.get(COOKIE))
        if s is None:
            raise LoginRequired()
        if roles and not set(roles) & set(s.user.roles):
            self.audit(s, "console.forbidden", outcome="refused", detail=request.url.path)
            raise HTTPException(403, label(s.lang, "forbidden"))
        return s

    async def form(self, request: Request, s: Session):
        """The POSTed form, after checking its CSRF token against the session's."""
        from pc_console.sessions import same_token
        form = await request.form()
        if not same_token(s.csrf, form.get("csrf")):
            self.audit(s, "console.csrf", outcome="refused", detail=request.url.path)
            raise HTTPException(403, "CSRF token missing or wrong")
        return form

    def client(self, s: Session) -> Federation:
        """The SDK client acting with the logged-in user's own certificate."""
        if s.user.identity is None:
            raise HTTPException(403, label(s.lang, "forbidden"))
        if s.client is None:
            s.client = Federation(self.config.coordinator, s.user.identity, node=self.config.node or None)
        return s.client

    # ----- audit -------------------------------------------------------------------------------
    def audit(self, who, action: str, outcome: str = "ok", job: str | None = None, detail: str | None = None) -> None:
        user = who.user.username if isinstance(who, Session) else str(who)
        text = f"user {user}" + (f"; {detail}" if detail else "")
        try:
            self.trail.append(action, job=job or None, detail=mask_text(text)[:2000], outcome=outcome)
        except PcError:
            log.warning("audit entry refused for %s", action)

    # ----- rendering ---------------------------------------------------------------------------
    def render(self, request: Request, s: Session | None, name: str, status: int = 200, **ctx) -> HTMLResponse:
        lang = s.lang if s else lang_of(request)
        return self.templates.TemplateResponse(request, name, {
            "s": s, "lang": lang, "t": lambda key: label(lang, key), "party": self.config.party, **ctx},
            status_code=status)


def lang_of(request: Request) -> str:
    lang = request.cookies.get(LANG_COOKIE, DEFAULT_LANG)
    return lang if lang in LANGS else DEFAULT_LANG


def rpc_error(exc: Exception) -> str:
    """One line for a failed call, masked: the status and the server's message."""
    if isinstance(exc, grpc.RpcError):
        code = exc.code().name if exc.code() else "ERROR"
        return mask_text(f"{code}: {exc.details()}")
    return mask_text(str(exc))


def templates() -> Jinja2Templates:
    t = Jinja2Templates(directory=str(TEMPLATES))
    t.env.filters["mask"] = mask_text
    return t
