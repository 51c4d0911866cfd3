"""Accounts and their credentials (CleverTap style: an account id and a passcode)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.orm import Session

from tidings.accounts.models import Account, Integration
from tidings.errors import Invalid, NotFound
from tidings.providers import registry
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
    """Create an account with the default provider (the sandbox) as its WhatsApp provider. The passcode
    is shown only now."""
    passcode = secrets.token_urlsafe(24)
    account = Account(id=_account_id(), name=name, passcode_hash=_hash(passcode), timezone=timezone)
    session.add(account)
    session.flush()
    plugin = registry.plugin(registry.DEFAULT_KIND)
    settings, sealed = plugin.complete(plugin.settings({}), {}, {})
    session.add(
        Integration(
            account_id=account.id,
            kind=plugin.kind,
            settings=settings.model_dump(mode="json"),
            secrets=box.seal(sealed),
            rate_limit=plugin.default_rate,
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


def update_account(
    session: Session,
    account_id: str,
    *,
    name: str | None = None,
    timezone: str | None = None,
    settings: dict[str, Any] | None = None,
) -> Account:
    """Change what is given: the name, the time zone (an IANA zone), the engagement rules and keywords
    (``Rules.stored()``: checked by their model)."""
    account = session.get(Account, account_id)
    if account is None:
        raise NotFound("account")
    if name is not None:
        account.name = name
    if timezone is not None:
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise Invalid(f"timezone {timezone!r} is not an IANA time zone", code="invalid_timezone") from exc
        account.timezone = timezone
    if settings is not None:
        account.settings = settings
    session.flush()
    return account
