"""Who may act: the operator's token, a signed session cookie, and CSRF tokens for its forms.

The dashboard reads without any login. Retrying and cancelling need ETL_DASHBOARD_TOKEN: an
operator gives it once on the login page and gets a session cookie (HttpOnly, SameSite=Strict)
holding a random session id, its issue time and an HMAC of both under a key derived from the
token. Every action is a POST whose form carries that session's CSRF token (an HMAC of the
session id): a page of another site can neither read it nor send the cookie along. Scripts use
the JSON API with `Authorization: Bearer <token>` instead. Without ETL_DASHBOARD_TOKEN there is
no way to act at all. The token itself is never written into a page, a cookie or a log line;
changing it ends every session.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from pydantic import SecretStr
from starlette.requests import Request

SESSION_COOKIE = "etl_dashboard_session"
SESSION_MAX_AGE_S = 12 * 3600
CSRF_FIELD = "csrf"


def _mac(key: bytes, *parts: str) -> str:
    return hmac.new(key, "|".join(parts).encode(), hashlib.sha256).hexdigest()


class Auth:
    """The dashboard's token check, sessions and CSRF tokens."""

    def __init__(self, token: SecretStr | None) -> None:
        value = token.get_secret_value() if token is not None else ""
        self._digest = hashlib.sha256(value.encode()).digest() if value else None
        self._key = _mac(value.encode(), "etl-dashboard-session-key").encode() if value else None

    @property
    def enabled(self) -> bool:
        """Whether actions are possible at all (ETL_DASHBOARD_TOKEN is set)."""
        return self._key is not None

    def token_matches(self, given: str) -> bool:
        if self._digest is None or not given:
            return False
        return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), self._digest)

    def new_session(self, *, now: float | None = None) -> str:
        """A cookie value for a new session."""
        assert self._key is not None
        session_id = secrets.token_urlsafe(18)
        issued = str(int(now if now is not None else time.time()))
        return f"{session_id}.{issued}.{_mac(self._key, 'session', session_id, issued)}"

    def session_of(self, request: Request, *, now: float | None = None) -> str | None:
        """The request's session id when its cookie is genuine and fresh; None otherwise."""
        cookie = request.cookies.get(SESSION_COOKIE, "")
        if self._key is None or cookie.count(".") != 2:
            return None
        session_id, issued, mac = cookie.split(".")
        if not issued.isdigit():
            return None
        if not hmac.compare_digest(mac, _mac(self._key, "session", session_id, issued)):
            return None
        age = (now if now is not None else time.time()) - int(issued)
        return session_id if 0 <= age <= SESSION_MAX_AGE_S else None

    def csrf_token(self, session_id: str) -> str:
        assert self._key is not None
        return _mac(self._key, "csrf", session_id)

    def csrf_matches(self, session_id: str, given: str) -> bool:
        return bool(given) and hmac.compare_digest(given, self.csrf_token(session_id))

    def bearer_matches(self, request: Request) -> bool:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(given.strip())


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site (Origin header)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not a browser, or an old one; the CSRF token still has to match
    expected = f"{request.url.scheme}://{request.url.netloc}"
    return origin == expected
