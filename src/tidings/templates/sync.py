"""Keeping templates current with the provider: Meta's ``message_templates`` (paged), on demand and
periodically. Vonage's Messages API has no template listing (templates are added by hand); the sandbox
plays the provider's review and approves what is pending."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from sqlalchemy import select, update

from tidings.accounts.models import Integration
from tidings.config import extra_provider_hosts
from tidings.db import Database
from tidings.errors import ApiError, Conflict, Invalid
from tidings.providers.meta import MetaApiError, fetch_templates, is_credentials_code
from tidings.providers.pool import FIX_SECRET_KEY
from tidings.providers.trust import UntrustedUrl, check_base_url, summary
from tidings.secrets import SecretBox
from tidings.templates.models import Template
from tidings.templates.rules import body_variables
from tidings.templates.service import upsert_synced


def _provider_error(exc: MetaApiError) -> ApiError:
    """Meta's refusal as a JSON error: its code and a one-line summary, never its whole body. A refused
    token is 409 (``provider_unauthorized``: fix the integration); anything else is 502."""
    said = summary(f"Meta error {exc.code}" if exc.code is not None else "Meta", exc.message)
    if exc.status in (401, 403) or (exc.code is not None and is_credentials_code(exc.code)):
        return Conflict(
            f"Meta refused the access token ({said}): save a working one with "
            "PUT /api/v1/integrations/whatsapp",
            code="provider_unauthorized",
        )
    where = f"HTTP {exc.status}" if exc.status is not None else "no answer"
    return ApiError(502, "provider_error", f"template sync failed at Meta ({where}): {said}")


async def sync_templates(
    db: Database, box: SecretBox, account_id: str, extra_hosts: Iterable[str] | None = None
) -> dict[str, int]:
    """Bring the account's templates in line with its provider; returns counts of what happened.
    ``extra_hosts``: ``Settings.extra_provider_hosts`` (by default this process's environment's)."""
    if extra_hosts is None:
        extra_hosts = extra_provider_hosts()
    with db.session() as session:
        integration = session.get(Integration, account_id)
        assert integration is not None
        kind, settings, sealed = integration.kind, dict(integration.settings), integration.secrets
    if kind == "sandbox":
        with db.session() as session:
            approved = session.execute(
                update(Template)
                .where(Template.account_id == account_id, Template.status == "PENDING")
                .values(status="APPROVED")
                .execution_options(synchronize_session=False)
            )
        return {"approved": int(approved.rowcount or 0)}  # type: ignore[attr-defined]
    if kind == "vonage":
        raise Conflict(
            "Vonage's Messages API has no template listing: add approved templates by hand",
            code="sync_not_supported",
        )
    waba_id = settings.get("waba_id")
    if not waba_id:
        raise Conflict("meta: settings.waba_id is needed to sync templates", code="sync_not_configured")
    try:
        secrets = box.open(sealed)
    except ValueError as exc:
        raise Conflict(f"{exc}: {FIX_SECRET_KEY}", code="credentials_unreadable") from exc
    try:  # checked again here, where the token is sent: only to Meta's host (or an operator's extra host)
        base_url = check_base_url("meta", settings.get("base_url"), extra_hosts)
    except UntrustedUrl as exc:
        raise Conflict(str(exc), code="untrusted_base_url") from exc
    try:
        remote = await fetch_templates(
            waba_id=waba_id,
            access_token=secrets.get("access_token", ""),
            base_url=base_url,
            api_version=settings["api_version"],
        )
    except MetaApiError as exc:
        raise _provider_error(exc) from exc
    outcome: Counter[str] = Counter()
    with db.session() as session:
        known = {
            (t.name, t.language)
            for t in session.scalars(select(Template).where(Template.account_id == account_id))
        }
        for item in remote:
            name = f"{waba_id}:{item.name}"  # Meta names have no namespace: the WABA is ours
            try:
                body_variables(item.body)
                upsert_synced(
                    session,
                    account_id,
                    name=name,
                    language=item.language,
                    category=item.category,
                    status=item.status,
                    body=item.body or item.name,
                    provider_template_id=item.id,
                )
            except (ValueError, Invalid):
                outcome["skipped"] += 1  # e.g. named parameters instead of {{1}}…{{N}}
                continue
            outcome["updated" if (name, item.language) in known else "created"] += 1
    return dict(outcome)
