"""The console's FastAPI application: login (password, TOTP, lockout), logout, language, the
home page of each role, and the pages of ``pages_officer``, ``pages_analyst``,
``pages_operator`` and ``pages_auditor``.

Every response carries no-store caching, a strict Content-Security-Policy (scripts and styles
from this origin only), HSTS and frame denial; the session cookie is Secure, HttpOnly and
SameSite=Strict.
"""
from __future__ import annotations

import pathlib
import secrets

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from pc_console import pages_analyst, pages_auditor, pages_officer, pages_operator
from pc_console.config import ConsoleConfig
from pc_console.labels import LANGS
from pc_console.sessions import COOKIE, LOGIN_CSRF_COOKIE, Sessions, same_token
from pc_console.trail import open_trail
from pc_console.users import AccountLocked, LoginFailed, UserStore
from pc_console.web import LANG_COOKIE, Console, LoginRequired, lang_of, templates

STATIC = pathlib.Path(__file__).with_name("static")
HOME = {"analyst": "/analyst", "officer": "/officer", "operator": "/operator", "auditor": "/auditor"}
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Strict-Transport-Security": "max-age=31536000",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _cookie(response: Response, name: str, value: str, max_age: int | None = None) -> None:
    response.set_cookie(name, value, max_age=max_age, secure=True, httponly=True, samesite="strict", path="/")


def create_app(config: ConsoleConfig, clock=None) -> FastAPI:
    import time
    clock = clock or time.time
    console = Console(config, UserStore(config.data_dir / "users.db", clock), Sessions(config.idle_timeout_s, clock),
                      open_trail(config.data_dir, config.party), templates())
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.state.console = console

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        for k, v in HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    @app.exception_handler(LoginRequired)
    async def to_login(request: Request, exc: LoginRequired):
        return RedirectResponse("/login?next=" + request.url.path, status_code=303)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        s = console.sessions.get(request.cookies.get(COOKIE))
        return console.render(request, s, "error.html", status=exc.status_code, message=str(exc.detail))

    @app.get("/static/{name}")
    def static(name: str):
        if name not in ("console.css", "console.js"):
            raise HTTPException(404, "not found")
        return FileResponse(STATIC / name, media_type="text/css" if name.endswith(".css") else "text/javascript")

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = "/"):
        return _login_form(console, request, next)

    @app.post("/login")
    async def login(request: Request):
        form = await request.form()
        username = str(form.get("username", ""))[:64]
        if not same_token(request.cookies.get(LOGIN_CSRF_COOKIE), form.get("csrf")):
            console.audit(username or "-", "console.login", outcome="refused", detail="CSRF token missing or wrong")
            raise HTTPException(403, "CSRF token missing or wrong")
        try:
            user = await run_in_threadpool(console.users.authenticate, username, str(form.get("password", "")),
                                          str(form.get("totp", "")))
        except AccountLocked:
            console.audit(username or "-", "console.login", outcome="locked")
            return _login_form(console, request, str(form.get("next", "/")), error="locked", status=429)
        except LoginFailed:
            console.audit(username or "-", "console.login", outcome="failed")
            return _login_form(console, request, str(form.get("next", "/")), error="login_failed", status=401)
        s = console.sessions.create(user, lang_of(request))
        console.audit(s, "console.login", detail="roles " + ",".join(user.roles))
        target = str(form.get("next", "/"))
        response = RedirectResponse(target if target.startswith("/") and not target.startswith("//") else "/",
                                    status_code=303)
        _cookie(response, COOKIE, s.token)
        response.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
        return response

    @app.post("/logout")
    async def logout(request: Request):
        s = console.session(request)
        await console.form(request, s)
        console.sessions.end(s.token)
        console.audit(s, "console.logout")
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    @app.get("/lang/{code}")
    def set_lang(request: Request, code: str, next: str = "/"):
        if code not in LANGS:
            raise HTTPException(404, "not found")
        s = console.sessions.get(request.cookies.get(COOKIE))
        if s is not None:
            s.lang = code
        response = RedirectResponse(next if next.startswith("/") and not next.startswith("//") else "/",
                                    status_code=303)
        _cookie(response, LANG_COOKIE, code, max_age=365 * 86400)
        return response

    @app.get("/")
    def home(request: Request):
        s = console.session(request)
        return RedirectResponse(HOME[s.user.role], status_code=303)

    for pages in (pages_officer, pages_analyst, pages_operator, pages_auditor):
        app.include_router(pages.router)

    @app.on_event("shutdown")
    def closing() -> None:
        console.sessions.close()
        console.trail.close()
        console.users.close()

    return app


def _login_form(console: Console, request: Request, next_: str, error: str | None = None, status: int = 200):
    token = secrets.token_urlsafe(32)
    response = console.render(request, None, "login.html", status=status, csrf=token, next=next_,
                              login_error=error)
    _cookie(response, LOGIN_CSRF_COOKIE, token, max_age=3600)
    return response
