"""Write to the business as a sandbox user: the message takes the path a real user's message takes (the
signed inbound webhook), so the inbox, consent keywords and reply attribution can be tried without a
phone. Only for an account whose provider is the sandbox."""

from __future__ import annotations

from typing import Any

import httpx
from starlette.concurrency import run_in_threadpool

from tidings.accounts.service import get_integration
from tidings.db import Database
from tidings.errors import Conflict, Invalid
from tidings.profiles.service import normalize_phone
from tidings.providers.sandbox import Sandbox, SandboxUserError, user_says, webhook_base_url
from tidings.secrets import SecretBox


async def sandbox_user_writes(
    db: Database,
    box: SecretBox,
    public_url: str,
    account_id: str,
    *,
    from_phone: str,
    text: str = "",
    kind: str = "text",
    context: str | None = None,
    http: httpx.AsyncClient | None = None,
    **details: Any,
) -> str:
    """Post the message a sandbox user at ``from_phone`` writes; returns its provider message id.
    ``http`` posts into the app itself (the API's route), else to ``public_url`` (the CLI)."""
    phone = normalize_phone(from_phone)
    if phone is None:
        raise Invalid(f"{from_phone!r} is not a phone number in E.164 form (+ and the country code)")

    def load() -> tuple[str, str]:
        with db.session() as session:
            integration = get_integration(session, account_id)
            return integration.kind, integration.secrets

    kind_of, sealed = await run_in_threadpool(load)
    if kind_of != Sandbox.kind:
        raise Conflict(
            f"this account's provider is {kind_of}: only a sandbox user can be written as", "not_sandbox"
        )
    secret = box.open(sealed).get("signature_secret", "")
    try:
        return await user_says(
            webhook_base_url(public_url, account_id), secret, phone, text, kind, context, http=http, **details
        )
    except ValueError as exc:
        raise Invalid(str(exc), code="invalid_message") from exc
    except SandboxUserError as exc:
        raise Conflict(f"the inbound webhook was not taken: {exc}", "webhook_refused") from exc
