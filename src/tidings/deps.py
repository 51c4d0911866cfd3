"""FastAPI dependencies shared by every router: the unit of work and the caller's account."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from tidings.accounts.models import Account
from tidings.accounts.service import authenticate
from tidings.config import Settings
from tidings.db import Database
from tidings.errors import ApiError
from tidings.guards import SignInLimiter
from tidings.secrets import SecretBox


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


class TooManySignIns(ApiError):
    def __init__(self, wait: int) -> None:
        super().__init__(
            429,
            "too_many_attempts",
            f"too many failed sign-ins; try again in {wait} s",
            headers={"Retry-After": str(wait)},
        )
        self.wait = wait


def sign_in(request: Request, session: Session) -> Account | None:
    """The account the request's credentials open, or None (a failure: counted). Raises ``TooManySignIns``
    when this address, or anyone trying this account from an address it has not signed in from, failed
    too often lately (``guards.SignInLimiter``); it is raised before the passcode is checked."""
    account_id, passcode = credentials(request)
    limiter: SignInLimiter = request.app.state.signins
    address = client_address(request)
    wait = limiter.wait(account_id, address)
    if wait:
        raise TooManySignIns(wait)
    account = authenticate(session, account_id, passcode)
    if account is not None:
        limiter.succeeded(account.id, address)
    elif passcode:  # a guess; a call without credentials is not one
        limiter.failed(account_id, address)
    return account


def _current_account(request: Request) -> Account:
    with get_db(request).read() as session:  # its own short read, begun and ended in this thread
        account = sign_in(request, session)
    if account is None:
        raise ApiError(401, "unauthorized", "missing or wrong account id / passcode")
    return account


CurrentAccount = Annotated[Account, Depends(_current_account)]
