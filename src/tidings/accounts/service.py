"""Accounts and their credentials (CleverTap style: an account id and a passcode)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy.orm import Session

from tidings.accounts.models import Account, Integration
from tidings.secrets import SecretBox

_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def _hash(passcode: str) -> str:
    return hashlib.sha256(passcode.encode()).hexdigest()


def _account_id() -> str:
    body = "".join(secrets.choice(_ALPHABET) for _ in range(9))
    return f"TID-{body[:3]}-{body[3:6]}-{body[6:]}"


@dataclass(frozen=True)
class NewAccount:
    account_id: str
    passcode: str


def create_account(session: Session, box: SecretBox, name: str, timezone: str = "UTC") -> NewAccount:
    """Create an account with the sandbox as its WhatsApp provider. The passcode is shown only now."""
    passcode = secrets.token_urlsafe(24)
    account = Account(id=_account_id(), name=name, passcode_hash=_hash(passcode), timezone=timezone)
    session.add(account)
    session.flush()
    session.add(
        Integration(
            account_id=account.id,
            kind="sandbox",
            settings={},
            secrets=box.seal({"signature_secret": secrets.token_urlsafe(32)}),
            rate_limit=None,
        )
    )
    session.flush()
    return NewAccount(account_id=account.id, passcode=passcode)


def authenticate(session: Session, account_id: str | None, passcode: str | None) -> Account | None:
    """The account these credentials open, or None; compares in constant time."""
    if not account_id or not passcode:
        return None
    account = session.get(Account, account_id)
    if account is None:
        hmac.compare_digest(_hash(passcode), _hash("x"))  # same work either way
        return None
    return account if hmac.compare_digest(account.passcode_hash, _hash(passcode)) else None


def get_integration(session: Session, account_id: str) -> Integration:
    integration = session.get(Integration, account_id)
    if integration is None:  # every account gets one at creation; this is a broken database
        raise LookupError(f"account {account_id} has no WhatsApp integration")
    return integration
