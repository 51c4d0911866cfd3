"""WhatsApp integration settings per account: provider kind, public settings, encrypted secrets, rate.

Secrets are sealed with Fernet (``TIDINGS_SECRET_KEY``) before they reach the database and are never
returned after they are saved: reading the settings shows a masked hint of each.
"""

from __future__ import annotations

import secrets as random_tokens
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt
from sqlalchemy.orm import Session

from tidings.accounts.models import Integration
from tidings.accounts.service import get_integration
from tidings.config import extra_provider_hosts
from tidings.errors import Invalid
from tidings.providers.trust import UntrustedUrl, check_base_url, check_ids
from tidings.providers.vonage import load_private_key
from tidings.secrets import SecretBox, mask


@dataclass(frozen=True)
class Kind:
    settings: dict[str, Any]  # allowed public settings and their defaults (None: required)
    secrets: tuple[str, ...]  # allowed secrets
    rate_limit: float | None  # default messages a second (None: unlimited)


KINDS: dict[str, Kind] = {
    "sandbox": Kind(settings={}, secrets=("signature_secret",), rate_limit=None),
    "vonage": Kind(
        settings={
            "sender": None,
            "base_url": "https://api.nexmo.com",
            "application_id": "",
            "legacy_template_names": False,
            "messaging_limit": "unlimited",
        },
        secrets=("private_key", "api_key", "api_secret", "signature_secret"),
        rate_limit=30.0,
    ),
    "meta": Kind(
        settings={
            "phone_number_id": None,
            "waba_id": "",
            "base_url": "https://graph.facebook.com",
            "api_version": "v23.0",
            "verify_token": "",
            "messaging_limit": "unlimited",
        },
        secrets=("access_token", "app_secret"),
        rate_limit=80.0,
    ),
}


def _check_trust(kind: str, settings: dict[str, Any], extra_hosts: Iterable[str]) -> None:
    """The base URL names the provider's own host (or an operator's extra host), ids have its shape."""
    if kind not in ("vonage", "meta"):
        return
    try:
        settings["base_url"] = check_base_url(kind, settings.get("base_url"), extra_hosts)
    except UntrustedUrl as exc:
        raise Invalid(str(exc), code="untrusted_base_url") from None
    try:
        check_ids(kind, settings)
    except ValueError as exc:
        raise Invalid(str(exc), code="invalid_integration") from None


def _check_keys(kind: str, settings: dict[str, Any], sealed: dict[str, str]) -> None:
    """Secrets that can be checked offline: a Vonage private key must be a PEM RSA private key that signs
    an application JWT."""
    if kind != "vonage" or not sealed.get("private_key"):
        return
    try:
        key = load_private_key(sealed["private_key"])
        jwt.encode({"application_id": settings.get("application_id"), "iat": 0}, key, algorithm="RS256")
    except (ValueError, TypeError, jwt.PyJWTError) as exc:
        raise Invalid(
            f"vonage: secrets.{exc}"
            if str(exc).startswith("private_key")
            else f"vonage: secrets.private_key cannot sign a JWT: {exc}",
            code="invalid_credentials",
        ) from None


def _check(kind: str, settings: dict[str, Any], sealed: dict[str, str]) -> None:
    """Refuse settings a provider cannot work with, naming what is missing."""
    limit = settings.get("messaging_limit", "unlimited")
    if limit != "unlimited" and not (str(limit).isdigit() and int(limit) > 0):
        raise Invalid(
            "settings.messaging_limit is the WhatsApp messaging-limit tier: unique users a day (250, 2000, "
            '10000, 100000) or "unlimited"',
            code="invalid_integration",
        )
    if kind == "vonage":
        jwt_auth = bool(settings.get("application_id")) and bool(sealed.get("private_key"))
        basic = bool(sealed.get("api_key")) and bool(sealed.get("api_secret"))
        if not (jwt_auth or basic):
            raise Invalid(
                "vonage needs settings.application_id with secrets.private_key (JWT), "
                "or secrets.api_key with secrets.api_secret (Basic)",
                code="invalid_integration",
            )
        if settings.get("application_id") and not sealed.get("private_key"):
            raise Invalid(
                "vonage: secrets.private_key is required with application_id", code="invalid_integration"
            )
        if not sealed.get("signature_secret"):
            raise Invalid(
                "vonage: secrets.signature_secret is required to verify webhooks", code="invalid_integration"
            )
    if kind == "meta":
        for name in ("access_token", "app_secret"):
            if not sealed.get(name):
                raise Invalid(f"meta: secrets.{name} is required", code="invalid_integration")


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
    spec = KINDS.get(kind)
    if spec is None:
        raise Invalid(f"kind must be one of {', '.join(KINDS)}", code="invalid_integration")
    unknown = sorted(set(settings) - set(spec.settings))
    if unknown:
        raise Invalid(f"{kind}: unknown setting(s) {', '.join(unknown)}", code="invalid_integration")
    unknown = sorted(set(secrets) - set(spec.secrets))
    if unknown:
        raise Invalid(f"{kind}: unknown secret(s) {', '.join(unknown)}", code="invalid_integration")
    merged: dict[str, Any] = {}
    for name, default in spec.settings.items():
        value = settings.get(name, default)
        if value is None or (value == "" and default is None):
            raise Invalid(f"{kind}: settings.{name} is required", code="invalid_integration")
        merged[name] = value
    if kind == "meta" and not merged["verify_token"]:
        merged["verify_token"] = random_tokens.token_urlsafe(24)
    if rate_limit is not None and rate_limit <= 0:
        raise Invalid("rate_limit must be a positive number of messages a second", code="invalid_integration")
    _check_trust(kind, merged, extra_provider_hosts() if extra_hosts is None else extra_hosts)
    integration = get_integration(session, account_id)
    try:
        saved = box.open(integration.secrets)
    except ValueError:  # sealed with another key: they cannot be kept, so they must all be given again
        saved = {}
    sealed = {**saved, **secrets} if integration.kind == kind else dict(secrets)
    if kind == "sandbox":  # the sandbox signs its webhooks with a secret of our own
        sealed["signature_secret"] = saved.get("signature_secret") or random_tokens.token_urlsafe(32)
    sealed = {k: v for k, v in sealed.items() if k in spec.secrets and v}
    _check(kind, merged, sealed)
    _check_keys(kind, merged, sealed)
    integration.kind = kind
    integration.settings = merged
    integration.secrets = box.seal(sealed)
    integration.rate_limit = rate_limit if rate_limit is not None else spec.rate_limit
    session.flush()
    return integration


def webhook_urls(public_url: str, account_id: str, kind: str) -> dict[str, str]:
    """What to give the provider."""
    base = f"{public_url}/webhooks/{kind}/{account_id}"
    if kind == "meta":
        return {"callback": base}
    return {"status": f"{base}/status", "inbound": f"{base}/inbound"}


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
