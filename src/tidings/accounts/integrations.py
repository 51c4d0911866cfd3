"""WhatsApp integration settings per account: provider kind, public settings, encrypted secrets, rate.

What each provider's settings and secrets are, which it needs and how they are checked is its plug-in's
(``tidings.providers``); this module saves and shows them. Secrets are sealed with Fernet
(``TIDINGS_SECRET_KEY``) before they reach the database and are never returned after they are saved:
reading the settings shows a masked hint of each.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from tidings.accounts.models import Integration
from tidings.accounts.service import get_integration
from tidings.config import extra_provider_hosts
from tidings.errors import Invalid
from tidings.providers import registry
from tidings.providers.plugin import CredentialsError
from tidings.providers.trust import UntrustedUrl
from tidings.secrets import SecretBox, mask


def _refusal(kind: str, part: str, exc: ValidationError) -> Invalid:
    """A settings or secrets object the provider's model refuses, naming the first field."""
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        return Invalid(f"{kind}: unknown {part} {where}", code="invalid_integration")
    if error["type"] == "missing":
        return Invalid(f"{kind}: {part}.{where} is required", code="invalid_integration")
    return Invalid(f"{kind}: {part}.{where}: {error['msg']}", code="invalid_integration")


def configure(
    session: Session,
    box: SecretBox,
    account_id: str,
    *,
    kind: str,
    settings: dict[str, Any],
    secrets: dict[str, str],
    rate_limit: float | None = None,
    extra_hosts: Iterable[str] | None = None,
) -> Integration:
    """Save the account's WhatsApp provider. With the same kind, secrets left out keep their saved
    values (so the sender can change without typing the key again). ``extra_hosts``: the hosts a base URL
    may name besides the provider's own (``Settings.extra_provider_hosts``; by default this process's
    ``TIDINGS_EXTRA_PROVIDER_HOSTS``)."""
    plugin = registry.find(kind)
    if plugin is None:
        known = ", ".join(p.kind for p in registry.plugins())
        raise Invalid(f"kind must be one of {known}", code="invalid_integration")
    try:
        typed = plugin.settings(settings)
    except ValidationError as exc:
        raise _refusal(kind, "settings", exc) from None
    try:
        given = plugin.secrets(secrets).model_dump(exclude_unset=True)
    except ValidationError as exc:
        raise _refusal(kind, "secrets", exc) from None
    if rate_limit is not None and rate_limit <= 0:
        raise Invalid("rate_limit must be a positive number of messages a second", code="invalid_integration")
    integration = get_integration(session, account_id)
    try:
        saved = box.open(integration.secrets) if integration.kind == kind else {}
    except ValueError:  # sealed with another key: they cannot be kept, so they must all be given again
        saved = {}
    typed, given = plugin.complete(typed, given, saved)
    try:
        typed = plugin.usable(typed, extra_provider_hosts() if extra_hosts is None else extra_hosts)
    except UntrustedUrl as exc:
        raise Invalid(str(exc), code="untrusted_base_url") from None
    except ValueError as exc:
        raise Invalid(str(exc), code="invalid_integration") from None
    sealed = {k: v for k, v in {**saved, **given}.items() if k in plugin.secrets_model.model_fields and v}
    try:
        plugin.check(typed, plugin.secrets(sealed))
    except CredentialsError as exc:
        raise Invalid(str(exc), code="invalid_credentials") from None
    except ValueError as exc:
        raise Invalid(str(exc), code="invalid_integration") from None
    integration.kind = kind
    integration.settings = typed.model_dump(mode="json")
    integration.secrets = box.seal(sealed)
    integration.rate_limit = rate_limit if rate_limit is not None else plugin.default_rate
    session.flush()
    return integration


def webhook_urls(public_url: str, account_id: str, kind: str) -> dict[str, str]:
    """What to give the provider."""
    return registry.plugin(kind).webhook_urls(f"{public_url}/webhooks/{kind}/{account_id}")


def describe(integration: Integration, box: SecretBox, public_url: str) -> dict[str, Any]:
    """The settings as the API shows them: secrets only as masked hints."""
    try:
        shown = {name: mask(value) for name, value in sorted(box.open(integration.secrets).items())}
    except ValueError:
        shown = {"unreadable": "sealed with another TIDINGS_SECRET_KEY: save the secrets again"}
    return {
        "kind": integration.kind,
        "settings": dict(integration.settings),
        "secrets": shown,
        "rate_limit": integration.rate_limit,
        "webhook_urls": webhook_urls(public_url, integration.account_id, integration.kind),
        "updated_at": integration.updated_at,
    }
