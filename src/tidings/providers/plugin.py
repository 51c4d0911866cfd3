"""A WhatsApp provider as one plug-in: everything Tidings needs to know about a provider, declared in the
provider's own module and listed once, in ``providers.registry``.

A plug-in says what its integration's settings and secrets are (typed models: the API's OpenAPI document
describes each provider from them), checks them when they are saved, builds the ``Provider`` that sends,
names its webhook routes and turns a webhook into events, and says what else it can do
(``Capabilities``) with the implementations that exist. Nothing outside ``providers/`` chooses by a
provider's kind: it asks the registry for the plug-in and the plug-in for the answer.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator

from tidings.config import Settings as AppSettings
from tidings.providers.base import Provider, RemoteTemplate, WebhookError, WebhookEvent
from tidings.providers.trust import check_base_url


def sentence_case(name: str, _info: Any) -> str:
    """A field's default title: ``phone_number_id`` → "Phone number id"."""
    return name.replace("_", " ").capitalize()


class ProviderSettings(BaseModel):
    """A provider's public settings, shown as they are by ``GET /api/v1/integrations/whatsapp``.

    A field made with ``shaped`` is an id that goes into request paths: its pattern is in the OpenAPI
    document and is checked when the integration is saved and again before every use
    (``ProviderType.usable``), so a row saved before a check existed cannot splice anything into a path.
    A field's title (its label in the dashboard's form) is its name in sentence case unless it has one.
    """

    model_config = ConfigDict(extra="forbid", field_title_generator=sentence_case)


class SenderSettings(ProviderSettings):
    """Settings of a provider that sends from a WhatsApp business number of its own."""

    messaging_limit: Literal["unlimited"] | PositiveInt = Field(
        "unlimited",
        description="The number's WhatsApp messaging-limit tier: unique users a day (250, 2000, 10000, "
        '100000) or "unlimited". Users beyond it in 24 hours are skipped.',
    )

    @field_validator("messaging_limit", mode="before")
    @classmethod
    def _tier(cls, value: Any) -> Any:
        """Say what a tier is rather than which branch of the union each reading failed."""
        if value == "unlimited":
            return value
        digits = isinstance(value, int | str) and not isinstance(value, bool) and str(value).isdigit()
        if digits and int(value) > 0:
            return int(value)
        raise ValueError('unique users a day (250, 2000, 10000, 100000) or "unlimited"')


class ProviderSecrets(BaseModel):
    """A provider's secrets: sealed at rest, never shown again. Every field may be left out of a save
    (with the same kind the saved value stays); ``ProviderType.check`` says which the provider needs."""

    model_config = ConfigDict(extra="forbid", field_title_generator=sentence_case)


def shaped(
    pattern: str, must: str, default: Any = ..., description: str = "", title: str | None = None
) -> Any:
    """A settings field whose value must match ``pattern`` (when it is not empty, for an optional one).
    It is refused with ``invalid_integration`` and ``must`` as the reason, not as a malformed request: the
    same check runs where a request is made, on rows saved long ago."""
    anchored = f"^(?:{pattern})$"  # JSON Schema patterns match anywhere: this one the whole value
    return Field(
        default, title=title, description=description, json_schema_extra={"pattern": anchored, "x-must": must}
    )


def check_shapes(kind: str, settings: ProviderSettings) -> None:
    """``ValueError`` naming the first ``shaped`` field whose value does not have its shape."""
    for name, info in type(settings).model_fields.items():
        extra = info.json_schema_extra
        if not isinstance(extra, dict) or "pattern" not in extra:
            continue
        value = getattr(settings, name)
        if value in (None, "") and not info.is_required():
            continue
        if not re.fullmatch(str(extra["pattern"]), str(value or "")):
            raise ValueError(f"{kind}: settings.{name} must be {extra['x-must']}")


class CredentialsError(ValueError):
    """Saved secrets that cannot work whatever the provider says (a private key that does not parse)."""


class NotConfigured(ValueError):
    """A capability the provider has, but this integration lacks a setting it needs."""


@dataclass(frozen=True)
class Capabilities:
    """What Tidings does with a provider besides sending and reading its webhooks."""

    list_templates: bool = False  # the templates and their statuses are fetched (``list_templates``)
    submit_templates: bool = False  # templates made here go to its review at a sync (``submit_templates``)
    upload_media: bool = False  # media can be uploaded to it (else headers link to public URLs)
    read_receipts: bool = False  # it reports when a message is read


@dataclass(frozen=True)
class Deployment:
    """What a provider is built with besides its integration: whose it is, this deployment's settings
    (public URL, extra provider hosts, the sandbox's behaviour) and a shared kept-alive client."""

    account_id: str
    app: AppSettings
    http: httpx.AsyncClient | None = None


@dataclass(frozen=True)
class TemplateListing:
    """A provider's templates; ``namespace`` is put before each name (``<namespace>:<name>``)."""

    namespace: str
    templates: Sequence[RemoteTemplate]


@dataclass(frozen=True)
class TemplateDraft:
    """A template made in Tidings and still ``PENDING``: what a provider's review reads."""

    name: str
    language: str
    category: str
    body: str


SettingsT = TypeVar("SettingsT", bound=ProviderSettings)
SecretsT = TypeVar("SecretsT", bound=ProviderSecrets)


class ProviderType(abc.ABC, Generic[SettingsT, SecretsT]):
    """One WhatsApp provider. A subclass declares the class attributes and implements ``build`` and
    ``read_webhook``; the rest has defaults that fit a provider without them."""

    kind: ClassVar[str]  # in URLs (``/webhooks/<kind>/…``), the database and the API
    title: ClassVar[str]  # for people
    settings_model: type[SettingsT]
    secrets_model: type[SecretsT]
    default_rate: ClassVar[float | None] = None  # messages a second when the save names none
    capabilities: ClassVar[Capabilities] = Capabilities()
    # The hosts its credentials may be sent to (its settings then have a ``base_url``), and the paths that
    # base URL may have; none: it makes no requests with credentials.
    hosts: ClassVar[frozenset[str]] = frozenset()
    base_paths: ClassVar[tuple[str, ...]] = ("", "/")
    # The last segment of each webhook URL (``/webhooks/<kind>/<account>/<route>``); "" for a URL that
    # ends at the account.
    webhook_routes: ClassVar[tuple[str, ...]] = ("",)
    # Whether it checks a webhook URL with a GET handshake before using it (``answer_handshake``).
    handshake: ClassVar[bool] = False
    # The setting naming the sender (its rate and tier are per sender), if any.
    sender_field: ClassVar[str | None] = None

    # --- settings and secrets ---------------------------------------------------------------------

    def settings(self, raw: Mapping[str, Any]) -> SettingsT:
        return self.settings_model.model_validate(raw)

    def secrets(self, raw: Mapping[str, Any]) -> SecretsT:
        return self.secrets_model.model_validate(raw)

    def complete(
        self, settings: SettingsT, secrets: dict[str, str], saved: Mapping[str, str]
    ) -> tuple[SettingsT, dict[str, str]]:
        """Fill what Tidings makes itself at a save (a verify token, a signing secret); ``saved`` are the
        secrets saved before for the same kind."""
        return settings, secrets

    def usable(self, settings: SettingsT, extra_hosts: Iterable[str]) -> SettingsT:
        """The settings with their base URL checked against ``hosts`` and ``extra_hosts`` (``UntrustedUrl``)
        and their ids against their shapes (``ValueError``). Run at a save and before every build."""
        if self.hosts:
            url = check_base_url(
                self.kind,
                getattr(settings, "base_url", None),
                extra_hosts,
                hosts=self.hosts,
                paths=self.base_paths,
            )
            settings = settings.model_copy(update={"base_url": url})
        check_shapes(self.kind, settings)
        return settings

    def check(self, settings: SettingsT, secrets: SecretsT) -> None:
        """Refuse, at a save, secrets the provider cannot work with: ``ValueError`` naming what is missing,
        ``CredentialsError`` for credentials that cannot work (checked offline)."""

    def webhook_urls(self, base: str) -> dict[str, str]:
        """What to give the provider (``base``: ``<public url>/webhooks/<kind>/<account>``)."""
        return {route or "callback": f"{base}/{route}" if route else base for route in self.webhook_routes}

    def sender(self, settings: Mapping[str, Any]) -> str | None:
        """The sender named by saved settings (the rate-limit key), if the provider has one."""
        value = settings.get(self.sender_field) if self.sender_field else None
        return str(value) if value else None

    # --- sending ----------------------------------------------------------------------------------

    @abc.abstractmethod
    def build(self, settings: SettingsT, secrets: SecretsT, deployment: Deployment) -> Provider:
        """The provider that sends for this integration (``ValueError`` when the settings cannot work)."""

    # --- webhooks ---------------------------------------------------------------------------------

    @abc.abstractmethod
    def read_webhook(
        self, route: str, headers: Mapping[str, str], body: bytes, settings: SettingsT, secrets: SecretsT
    ) -> list[WebhookEvent]:
        """Verify a webhook POST on ``route`` before reading it, then parse it into events;
        ``WebhookError`` when it cannot be accepted. ``headers`` have lower-case names."""

    def answer_handshake(self, params: Mapping[str, str], settings: SettingsT) -> str:
        """The body answering the provider's GET handshake (when ``handshake``), or ``WebhookError``."""
        raise WebhookError(404, f"{self.title} makes no webhook handshake", code="not_found")

    # --- templates --------------------------------------------------------------------------------

    async def list_templates(
        self, settings: SettingsT, secrets: SecretsT, deployment: Deployment
    ) -> TemplateListing:
        """Every template of the integration (when ``capabilities.list_templates``);
        ``ProviderApiError`` when the provider fails, ``NotConfigured`` when a setting is missing."""
        raise NotImplementedError(f"{self.title} has no template listing")

    async def submit_templates(
        self, settings: SettingsT, secrets: SecretsT, deployment: Deployment, drafts: Sequence[TemplateDraft]
    ) -> list[str]:
        """Submit pending templates for review (when ``capabilities.submit_templates``); the status of
        each, in order (``PENDING`` while the review goes on)."""
        raise NotImplementedError(f"{self.title} takes no template submissions")


AnyProviderType = ProviderType[Any, Any]
