"""FastAPI dependencies shared by every router: the unit of work and the caller's account."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import Depends, Request

from tidings.accounts.models import Account
from tidings.accounts.service import authenticate
from tidings.config import Settings
from tidings.db import Database
from tidings.errors import ApiError
from tidings.secrets import SecretBox


def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


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


def _current_account(request: Request) -> Account:
    with get_db(request).session() as session:  # its own short transaction, begun and ended in this thread
        account = authenticate(session, *credentials(request))
    if account is None:
        raise ApiError(401, "unauthorized", "missing or wrong account id / passcode")
    return account


CurrentAccount = Annotated[Account, Depends(_current_account)]
