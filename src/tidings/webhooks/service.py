"""One webhook pipeline for every provider: providers only verify and parse; what a status, a reply or a
template update does is decided here, once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from tidings.accounts.models import Account, Integration
from tidings.conversations.service import known_inbound, profile_ids, record_inbound
from tidings.delivery.statuses import apply_statuses
from tidings.errors import ApiError, Invalid
from tidings.providers import registry
from tidings.providers.base import InboundReply, StatusUpdate, TemplateStatusUpdate, WebhookEvent
from tidings.secrets import SecretBox
from tidings.templates.models import Template
from tidings.templates.service import set_status


def integration_for(session: Session, box: SecretBox, account_id: str, provider: str) -> dict[str, Any]:
    """The settings and secrets of the account's integration for ``provider``, as its plug-in's models;
    404 when that is not its provider."""
    integration = session.get(Integration, account_id)
    if session.get(Account, account_id) is None or integration is None:
        raise ApiError(404, "not_found", "no such account")
    if integration.kind != provider:
        raise ApiError(
            404,
            "provider_not_configured",
            f"this account's WhatsApp provider is {integration.kind}, not {provider}",
        )
    plugin = registry.plugin(provider)
    return {
        "settings": plugin.settings(integration.settings),
        "secrets": plugin.secrets(box.open(integration.secrets)),
    }


def _template_status(session: Session, account_id: str, event: TemplateStatusUpdate) -> str:
    """Meta names templates without our namespace: match ``<any namespace>:<name>`` in the account, the
    name exactly (``_`` and ``%`` are characters of a name, not wildcards)."""
    names = session.scalars(
        select(Template.name).where(
            Template.account_id == account_id,
            or_(Template.name == event.name, Template.name.endswith(f":{event.name}", autoescape=True)),
        )
    ).all()
    changed = 0
    exact = {name for name in names if name == event.name or name.partition(":")[2] == event.name}
    for name in exact:
        try:
            changed += set_status(
                session, account_id, name=name, language=event.language, status=event.status
            )
        except Invalid:
            return "template_unknown_status"
    return "template_updated" if changed else "template_unchanged"


def handle_requests(
    session: Session, requests: Sequence[tuple[str, str, Sequence[WebhookEvent]]]
) -> list[dict[str, int]]:
    """Apply the parsed events of many webhook requests (``(account id, provider, events)`` each) to the
    ledger, the conversations and the templates; what happened to each request's events. The statuses
    of all of them are applied together, set-based (``apply_statuses``)."""
    outcomes: list[Counter[str]] = [Counter() for _ in requests]
    statuses: list[tuple[str, str, StatusUpdate]] = []
    owners: list[int] = []
    for n, (account_id, provider, events) in enumerate(requests):
        for event in events:
            if isinstance(event, StatusUpdate):
                statuses.append((account_id, provider, event))
                owners.append(n)
    for n, outcome in zip(owners, apply_statuses(session, statuses), strict=True):
        outcomes[n][f"status_{outcome}"] += 1
    # Held for the batch: every inbound message reads its account's keywords and rules, and an account
    # nothing holds leaves the session's identity map and is read again (one SELECT a message).
    held = [session.get(Account, account_id) for account_id in {r[0] for r in requests}]
    # What each inbound message would look up, read for the batch at once: whether it is kept already (a
    # message sent twice within the batch is new once) and its sender's profile.
    inbound = [
        (account_id, provider, event)
        for account_id, provider, events in requests
        for event in events
        if isinstance(event, InboundReply)
    ]
    known = known_inbound(session, [(a, p, event.provider_message_id) for a, p, event in inbound])
    profiles = profile_ids(session, [(a, event.from_phone) for a, _, event in inbound])
    for n, (account_id, provider, events) in enumerate(requests):
        for event in events:
            if isinstance(event, InboundReply):
                key = (account_id, provider, event.provider_message_id)
                new = key not in known and record_inbound(
                    session, account_id, provider, event, checked=True, profiles=profiles
                )
                known.add(key)
                outcomes[n]["inbound_new" if new else "inbound_repeat"] += 1
            elif isinstance(event, TemplateStatusUpdate):
                outcomes[n][_template_status(session, account_id, event)] += 1
    del held
    return [dict(outcome) for outcome in outcomes]
