"""Server-side sessions: an unguessable cookie, an idle timeout, one CSRF token per session.

The cookie holds only a random token (``secrets.token_urlsafe(32)``); the session, and the
SDK client acting with the user's certificate, stay in this process. A session unused for
longer than the idle timeout is gone, and its client closed.
"""
from __future__ import annotations

import dataclasses
import hmac
import secrets
import threading
import time

from pc_console.users import User

COOKIE = "pc_console_session"
LOGIN_CSRF_COOKIE = "pc_console_login_csrf"


@dataclasses.dataclass
class Session:
    token: str
    user: User
    csrf: str
    last_seen: float
    lang: str = "zh-CN"
    client: object = None           # the user's pc_client.sdk.Federation, opened on first use

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


class Sessions:
    def __init__(self, idle_timeout_s: float, clock=time.time):
        self.idle_timeout_s = idle_timeout_s
        self.clock = clock
        self._by_token: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, user: User, lang: str) -> Session:
        s = Session(secrets.token_urlsafe(32), user, secrets.token_urlsafe(32), self.clock(), lang)
        with self._lock:
            self._by_token[s.token] = s
        return s

    def get(self, token: str | None) -> Session | None:
        """The live session of ``token`` (touched), or None; expired sessions are dropped."""
        if not token:
            return None
        now = self.clock()
        with self._lock:
            expired = [s for s in self._by_token.values() if now - s.last_seen > self.idle_timeout_s]
            for s in expired:
                del self._by_token[s.token]
            s = self._by_token.get(token)
            if s is not None:
                s.last_seen = now
        for old in expired:
            old.close()
        return s

    def end(self, token: str | None) -> Session | None:
        with self._lock:
            s = self._by_token.pop(token or "", None)
        if s is not None:
            s.close()
        return s

    def close(self) -> None:
        with self._lock:
            all_, self._by_token = list(self._by_token.values()), {}
        for s in all_:
            s.close()


def same_token(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))
