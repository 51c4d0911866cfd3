"""Keeping templates current with the provider: Meta's ``message_templates`` (paged), on demand and
periodically. Vonage's Messages API has no template listing (templates are added by hand); the sandbox
plays the provider's review and approves what is pending."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import select, update

from tidings.accounts.models import Integration
from tidings.db import Database
from tidings.errors import Conflict, Invalid
from tidings.providers.meta import fetch_templates
from tidings.secrets import SecretBox
from tidings.templates.models import Template
from tidings.templates.rules import body_variables
from tidings.templates.service import upsert_synced


async def sync_templates(db: Database, box: SecretBox, account_id: str) -> dict[str, int]:
    """Bring the account's templates in line with its provider; returns counts of what happened."""
    with db.session() as session:
        integration = session.get(Integration, account_id)
        assert integration is not None
        kind, settings, secrets = integration.kind, dict(integration.settings), box.open(integration.secrets)
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
    remote = await fetch_templates(
        waba_id=waba_id,
        access_token=secrets["access_token"],
        base_url=settings["base_url"],
        api_version=settings["api_version"],
    )
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
