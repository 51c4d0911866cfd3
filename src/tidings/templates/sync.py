"""Keeping templates current with the provider, on demand and periodically, with what its plug-in can do:
templates made here are submitted to its review (``submit_templates``: the sandbox approves them), and its
own list is fetched, every page, and created or updated here (``list_templates``: Meta). A provider that
can do neither (Vonage's Messages API) answers 409: its templates are added by hand."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from sqlalchemy import select

from tidings.accounts.models import Integration
from tidings.config import Settings
from tidings.db import Database
from tidings.errors import ApiError, Conflict, Invalid
from tidings.providers import registry
from tidings.providers.base import ProviderApiError
from tidings.providers.plugin import (
    AnyProviderType,
    Deployment,
    NotConfigured,
    TemplateDraft,
    TemplateListing,
)
from tidings.providers.pool import FIX_SECRET_KEY
from tidings.providers.trust import UntrustedUrl, summary
from tidings.secrets import SecretBox
from tidings.templates.models import Template
from tidings.templates.rules import body_variables
from tidings.templates.service import upsert_synced


def _provider_error(plugin: AnyProviderType, exc: ProviderApiError) -> ApiError:
    """The provider's refusal as a JSON error: its code and a one-line summary, never its whole body. A
    refused credential is 409 (``provider_unauthorized``: fix the integration); anything else is 502."""
    said = summary(f"{plugin.title} error {exc.code}" if exc.code is not None else plugin.title, exc.message)
    if exc.refused_credentials:
        return Conflict(
            f"{plugin.title} refused the credentials ({said}): save working ones with "
            "PUT /api/v1/integrations/whatsapp",
            code="provider_unauthorized",
        )
    where = f"HTTP {exc.status}" if exc.status is not None else "no answer"
    return ApiError(502, "provider_error", f"template sync failed at {plugin.title} ({where}): {said}")


def _submit_drafts(db: Database, account_id: str) -> list[tuple[int, TemplateDraft]]:
    with db.session() as session:
        pending = session.scalars(
            select(Template).where(Template.account_id == account_id, Template.status == "PENDING")
        )
        return [(t.id, TemplateDraft(t.name, t.language, t.category, t.body)) for t in pending]


def _set_statuses(db: Database, account_id: str, statuses: Iterable[tuple[int, str]]) -> Counter[str]:
    outcome: Counter[str] = Counter()
    with db.session() as session:
        for template_id, status in statuses:
            template = session.get(Template, template_id)
            if template is None or template.account_id != account_id or template.status != "PENDING":
                continue  # deleted or reviewed meanwhile
            template.status = status
            if status != "PENDING":
                outcome[status.lower()] += 1
    return outcome


def _upsert(db: Database, account_id: str, listing: TemplateListing) -> Counter[str]:
    outcome: Counter[str] = Counter()
    with db.session() as session:
        known = {
            (t.name, t.language)
            for t in session.scalars(select(Template).where(Template.account_id == account_id))
        }
        for item in listing.templates:
            name = f"{listing.namespace}:{item.name}"
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
    return outcome


def can_sync(plugin: AnyProviderType) -> bool:
    """Whether a sync does anything with this provider: it lists its templates or reviews ours."""
    return plugin.capabilities.list_templates or plugin.capabilities.submit_templates


async def sync_templates(db: Database, box: SecretBox, app: Settings, account_id: str) -> dict[str, int]:
    """Bring the account's templates in line with its provider; returns counts of what happened."""
    with db.session() as session:
        integration = session.get(Integration, account_id)
        assert integration is not None
        kind, raw, sealed = integration.kind, dict(integration.settings), integration.secrets
    plugin = registry.plugin(kind)
    capabilities = plugin.capabilities
    if not can_sync(plugin):
        raise Conflict(
            f"{plugin.title} has no template listing: add approved templates by hand",
            code="sync_not_supported",
        )
    try:
        secrets = plugin.secrets(box.open(sealed))
    except ValueError as exc:
        raise Conflict(f"{exc}: {FIX_SECRET_KEY}", code="credentials_unreadable") from exc
    try:  # checked again here, where the token is sent: only to the provider's host (or an extra host)
        settings = plugin.usable(plugin.settings(raw), app.extra_provider_hosts)
    except UntrustedUrl as exc:
        raise Conflict(str(exc), code="untrusted_base_url") from exc
    except ValueError as exc:
        raise Conflict(f"the {kind} integration cannot be used: {exc}", code="integration_invalid") from exc
    deployment = Deployment(account_id=account_id, app=app)
    outcome: Counter[str] = Counter()
    try:
        if capabilities.submit_templates:
            drafts = _submit_drafts(db, account_id)
            statuses = await plugin.submit_templates(settings, secrets, deployment, [d for _, d in drafts])
            outcome += _set_statuses(db, account_id, zip((i for i, _ in drafts), statuses, strict=True))
        if capabilities.list_templates:
            outcome += _upsert(db, account_id, await plugin.list_templates(settings, secrets, deployment))
    except NotConfigured as exc:
        raise Conflict(str(exc), code="sync_not_configured") from exc
    except ProviderApiError as exc:
        raise _provider_error(plugin, exc) from exc
    return dict(outcome)
