"""FastAPI dependencies shared by every router: the unit of work, the caller (account and role) and the
role each router needs."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from tidings.accounts.models import Account
from tidings.accounts.service import authenticate
from tidings.config import Settings
from tidings.db import Database, utcnow
from tidings.errors import ApiError, Forbidden, TooManySignIns
from tidings.guards import SignInLimiter
from tidings.secrets import SecretBox
from tidings.users import service as users
from tidings.users.models import Role


def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db.for_api()  # every statement of a request has a time-out (503 query_timeout)


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_box(request: Request) -> SecretBox:
    box: SecretBox = request.app.state.box
    return box


# Handlers open their unit of work themselves — ``with db.session() as session:`` — so that a transaction
# begins and commits in one thread. A transaction held across a hop through the thread pool can
# deadlock SQLite under load: it holds the write lock while waiting for a thread, and every thread
# waits for the lock.
Db = Annotated[Database, Depends(get_db)]


def credentials(request: Request) -> tuple[str | None, str | None]:
    """Account id and passcode from the CleverTap headers, or from HTTP Basic (``id:passcode``)."""
    account_id = request.headers.get("x-clevertap-account-id") or request.headers.get("x-tidings-account-id")
    passcode = request.headers.get("x-clevertap-passcode") or request.headers.get("x-tidings-passcode")
    auth = request.headers.get("authorization", "")
    if not account_id and auth.lower().startswith("basic "):
        try:
            account_id, _, passcode = base64.b64decode(auth[6:]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None, None
    return account_id, passcode


def client_address(request: Request) -> str:
    """The caller's address (behind a proxy, uvicorn takes it from ``X-Forwarded-For`` when the proxy is
    trusted: ``--forwarded-allow-ips``, 127.0.0.1 by default)."""
    return request.client.host if request.client else "unknown"


@dataclass(frozen=True)
class Caller:
    """Who makes a request: the account, the role it acts with, and the API key it used (None: the
    account's passcode, which counts as admin); ``actor`` names it in records such as the consent
    history (the API key's name, or "passcode")."""

    account: Account
    role: Role
    api_key_id: int | None = None
    key_use_unrecorded: bool = False  # the key's last_used_at is older than users.LAST_USED_STEP
    actor: str = "passcode"


def record_key_use(session: Session, caller: Caller) -> None:
    """Write the API key's last use (in a unit of work that may write: sign-in itself only reads)."""
    if caller.api_key_id is not None and caller.key_use_unrecorded:
        users.mark_used(session, caller.api_key_id, utcnow())


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


def sign_in(request: Request, session: Session) -> Caller | None:
    """The caller the request's credentials open — an API key (``Authorization: Bearer tid_…``) or the
    account id and passcode — or None (a failure: counted). Raises ``TooManySignIns`` when this address,
    or anyone trying this account from an address it has not signed in from, failed too often lately
    (``guards.SignInLimiter``); it is raised before the credentials are checked."""
    limiter: SignInLimiter = request.app.state.signins
    address = client_address(request)
    secret = _bearer(request)
    if secret is not None:
        wait = limiter.wait(None, address)
        if wait:
            raise TooManySignIns(wait)
        key = users.key_for(session, secret)
        if key is None:
            limiter.failed(None, address)
            return None
        account = session.get_one(Account, key.account_id)
        return Caller(account, Role(key.role), key.id, users.needs_marking(key, utcnow()), key.name)
    account_id, passcode = credentials(request)
    wait = limiter.wait(account_id, address)
    if wait:
        raise TooManySignIns(wait)
    opened = authenticate(session, account_id, passcode)
    if opened is not None:
        limiter.succeeded(opened.id, address)
    elif passcode:  # a guess; a call without credentials is not one
        limiter.failed(account_id, address)
    return Caller(opened, Role.admin) if opened is not None else None


def _current_caller(request: Request) -> Caller:
    db = get_db(request)
    with db.read() as session:  # its own short read, begun and ended in this thread
        caller = sign_in(request, session)
    if caller is None:
        raise ApiError(401, "unauthorized", "missing or wrong account id / passcode, or API key")
    if caller.key_use_unrecorded:  # at most once a minute per key
        with db.session() as session:
            record_key_use(session, caller)
    return caller


CurrentCaller = Annotated[Caller, Depends(_current_caller)]


def _current_account(caller: CurrentCaller) -> Account:
    return caller.account


CurrentAccount = Annotated[Account, Depends(_current_account)]


def require(caller: Caller, needed: Role) -> None:
    """Raises ``Forbidden`` (403) unless the caller's role allows what needs ``needed``."""
    if not caller.role.allows(needed):
        raise Forbidden(needed.value)


class Allow:
    """The role check a router declares for all its routes (``APIRouter(dependencies=[ADMIN])``): ``write``
    is needed to change anything, ``read`` (when given) to GET."""

    def __init__(self, write: Role, read: Role | None = None) -> None:
        self.write = write
        self.read = read or write

    def __call__(self, request: Request, caller: CurrentCaller) -> None:
        require(caller, self.read if request.method in ("GET", "HEAD") else self.write)


ADMIN = Depends(Allow(Role.admin))  # integrations, account settings, users, API keys
MARKETER = Depends(Allow(Role.marketer, read=Role.agent))  # templates, segments, campaigns, profiles
