"""Who looks at a page: the signed-in user from the session cookie, the role each page needs, and CSRF.

The session cookie (``tidings_session``) holds a random token whose SHA-256 only is kept
(``users.service``); it is HTTP-only, SameSite=Lax, and Secure wherever the browser can keep a Secure
cookie (HTTPS, and plain HTTP to this machine's loopback). Every form and htmx request that changes
something carries a CSRF token: for a signed-in user an HMAC of the session token (nothing to store;
another site can neither read the cookie nor compute it), on the sign-in form a random cookie of its
own that the form echoes (double submit)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request, Response

from tidings.accounts.models import Account
from tidings.db import Database
from tidings.deps import get_db
from tidings.users import service as users
from tidings.users.models import Role, User

SESSION_COOKIE = "tidings_session"
SIGNIN_CSRF_COOKIE = "tidings_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = ("GET", "HEAD")
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass(frozen=True)
class Viewer:
    """The signed-in user of a page request, with the account and the CSRF token its forms carry."""

    user: User
    account: Account
    role: Role
    csrf: str

    def may(self, needed: Role) -> bool:
        return self.role.allows(needed)


class SignInNeeded(Exception):
    """No valid session: the page answers with a redirect to the sign-in page."""


class PageForbidden(Exception):
    def __init__(self, viewer: Viewer, needed: Role) -> None:
        self.viewer = viewer
        self.needed = needed


class BadCsrf(Exception):
    """A form or htmx request without the right CSRF token: refused (403), nothing changed."""


def csrf_for(token: str) -> str:
    return hmac.new(token.encode(), b"tidings-csrf", hashlib.sha256).hexdigest()


def secure_cookies(request: Request) -> bool:
    """Secure cookies are kept by browsers over HTTPS, and over plain HTTP to loopback only."""
    return request.url.scheme == "https" or request.url.hostname in _LOOPBACK


def set_session_cookie(request: Request, response: Response, token: str, max_age: int) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=max_age,
        httponly=True,
        samesite="lax",
        secure=secure_cookies(request),
        path="/",
    )


def clear_session_cookie(request: Request, response: Response) -> None:
    secure = secure_cookies(request)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=secure)


def signin_csrf(request: Request) -> str:
    """The sign-in form's token: the cookie's when the browser has one, else a new one (set it with
    ``keep_signin_csrf``)."""
    return request.cookies.get(SIGNIN_CSRF_COOKIE) or secrets.token_urlsafe(24)


def keep_signin_csrf(request: Request, response: Response, token: str) -> None:
    response.set_cookie(
        SIGNIN_CSRF_COOKIE, token, httponly=True, samesite="strict", secure=secure_cookies(request), path="/"
    )


async def _sent_csrf(request: Request) -> str:
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()  # Starlette keeps it: the handler's Form(...) fields read it again
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    return sent or ""


async def check_signin_csrf(request: Request) -> None:
    expected = request.cookies.get(SIGNIN_CSRF_COOKIE, "")
    if not expected or not hmac.compare_digest(await _sent_csrf(request), expected):
        raise BadCsrf()


def _viewer(request: Request, db: Database) -> Viewer:
    request.state.page = True  # errors raised from here on are answered as pages (web.errors)
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise SignInNeeded()
    with db.read() as session:
        user = users.session_user(session, token)
        account = session.get(Account, user.account_id) if user is not None else None
    if user is None or account is None:
        raise SignInNeeded()
    return Viewer(user=user, account=account, role=Role(user.role), csrf=csrf_for(token))


class PageAllow:
    """The role a page router's routes need — ``read`` to look (GET), ``write`` to change — and, for every
    change, the CSRF token. Declared once per router: ``APIRouter(dependencies=[MARKETER_PAGES])``."""

    def __init__(self, write: Role, read: Role | None = None) -> None:
        self.write = write
        self.read = read or write

    async def __call__(self, request: Request) -> Viewer:
        viewer = _viewer(request, get_db(request))
        request.state.viewer = viewer
        safe = request.method in SAFE_METHODS
        if not viewer.may(self.read if safe else self.write):
            raise PageForbidden(viewer, self.read if safe else self.write)
        if not safe and not hmac.compare_digest(await _sent_csrf(request), viewer.csrf):
            raise BadCsrf()
        return viewer


def current_viewer(request: Request) -> Viewer:
    """The viewer that the router's ``PageAllow`` found (declare ``PageAllow`` on the router first)."""
    viewer: Viewer = request.state.viewer
    return viewer


CurrentViewer = Annotated[Viewer, Depends(current_viewer)]


def need(role: Role) -> Any:
    """A route's own stricter role, on top of its router's: ``@router.get("/new", dependencies=[need(...)])``
    (a form page that only those who may submit it should see)."""

    def check(viewer: CurrentViewer) -> None:
        if not viewer.may(role):
            raise PageForbidden(viewer, role)

    return Depends(check)

ADMIN_PAGES = Depends(PageAllow(Role.admin))  # settings, users, API keys
# campaigns, segments, profiles, templates: agents may look
MARKETER_PAGES = Depends(PageAllow(Role.marketer, read=Role.agent))
SIGNED_IN_PAGES = Depends(PageAllow(Role.agent))  # anything any signed-in user may do (sign out)


def signin_url(request: Request) -> str:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return f"/signin?next={quote(target, safe='')}"


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site only (never ``//elsewhere`` or a full URL)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    return target

