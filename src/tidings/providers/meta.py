"""Meta WhatsApp Cloud API (Graph API v23.0): sending, webhooks and template sync.

Wire formats: ../shared/reference/whatsapp-providers-and-clevertap.md §2 and Meta's official specification
``meta-business-messaging-api_v23.0.yaml`` (request body ``components/schemas/Message``, answer
``MessageResponsePayload``, errors ``GraphAPIError``). Nothing outside this module knows these shapes.

Error classes (Meta says to build logic on ``error.code``, not on titles):

* transient, so ``SendResult.retry``: throughput and rate limits (130429, 131056, 80007, 4, 17, 32, 613),
  the throughput upgrade (131057), Meta-side failures (1, 2, 131000, 131016, 133004), any error Meta marks
  ``is_transient``, any other 5xx and HTTP 429. ``Retry-After`` is honoured.
* 131049 (Meta held back a marketing template to protect the user's experience) and 131048 (the number's
  quality-based spam rate limit): retried, but only after ``PER_USER_MARKETING_RETRY_AFTER`` seconds (one
  hour). Meta says not to resend at once but later, at growing intervals; the dispatcher grows the delay
  with the attempt number.
* everything else is permanent for this send, so ``SendResult.failed``: 131047 (outside the 24-hour
  window: only a template can reach the user), 131026 (undeliverable), 131050 (user stopped marketing),
  131051, 132000-132016 (template problems), 100/131008/131009 (bad request), 0/190 (auth), 10/200-299
  (permission), 133010 (number not registered), 368 (policy block), 131031 (account locked), any other 4xx.
  0/190 and 10/200-299 (the token is refused or lacks a permission) and HTTP 401/403 also carry the fix to
  make (``SendResult.fix``): the campaign pauses at once.
* A 2xx answer without ``messages[0].id`` is accepted without an id rather than resent: Meta has taken the
  message, and its status webhook (with our ``biz_opaque_callback_data``) finds the row.
* no answer: see ``base.transport_failure`` (refused or never connected: retried; a read time-out or a
  connection lost after the request went out: reconciled, never resent blindly).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets as random_tokens
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import Field

from tidings.providers.base import (
    FIX_CREDENTIALS,
    InboundReply,
    MediaRef,
    OutboundMedia,
    OutboundMessage,
    Provider,
    ProviderApiError,
    RemoteTemplate,
    SendResult,
    Status,
    StatusUpdate,
    TemplateStatusUpdate,
    WebhookError,
    WebhookEvent,
    json_object,
    transport_failure,
)
from tidings.providers.inbound import (
    MEDIA_KINDS,
    contacts_text,
    location_data,
    location_text,
    text_of,
)
from tidings.providers.media import download, mime_of, trusted_media_url
from tidings.providers.plugin import (
    Capabilities,
    Deployment,
    NotConfigured,
    ProviderSecrets,
    ProviderType,
    SenderSettings,
    TemplateListing,
    shaped,
)
from tidings.providers.trust import summary

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://graph.facebook.com"
DEFAULT_API_VERSION = "v23.0"
SIGNATURE_HEADER = "X-Hub-Signature-256"

# Seconds to wait before retrying a message Meta held back under the per-user marketing limit (131049).
PER_USER_MARKETING_RETRY_AFTER = 3600.0

# Meta error codes that say "try again later".
TRANSIENT_CODES = frozenset(
    {
        1,  # API unknown
        2,  # API service (temporary downtime)
        4,  # application request limit reached
        17,  # user request limit reached
        32,  # page request limit reached
        613,  # calls to this API exceed the rate limit
        80007,  # WhatsApp Business Account rate limit
        130429,  # Cloud API throughput reached
        131000,  # something went wrong
        131016,  # service unavailable
        131056,  # (business, consumer) pair rate limit
        131057,  # account in maintenance mode (throughput upgrade)
        133004,  # server temporarily unavailable
    }
)
# Codes retried only after ``PER_USER_MARKETING_RETRY_AFTER``: the per-user marketing limit (131049) and the
# quality-based spam rate limit of the sender number (131048), which an immediate retry only makes worse.
LONG_RETRY_CODES = frozenset({131048, 131049})
# Codes that are permanent even though Meta's table gives some of them 5xx-like wording.
PERMANENT_CODES = frozenset(
    {
        0,  # AuthException
        10,  # permission denied
        100,  # invalid parameter
        190,  # access token expired or invalid
        368,  # temporarily blocked for policy violations
        130472,  # user's number is part of an experiment
        131008,  # required parameter missing
        131009,  # parameter value invalid
        131021,  # recipient cannot be the sender
        131026,  # message undeliverable
        131031,  # account locked
        131042,  # business eligibility payment issue
        131047,  # re-engagement message: more than 24 hours since the user's last reply
        131050,  # user stopped marketing messages
        131051,  # unsupported message type
        131052,  # media download error
        131053,  # media upload error
        133010,  # phone number not registered
    }
)


# Codes that say the access token itself is refused (0 AuthException, 190 expired or invalid token) or lacks a
# permission (10, 200-299): every send fails until the integration is changed, so the campaign pauses.
CREDENTIAL_CODES = frozenset({0, 10, 190})


def is_credentials_code(code: int) -> bool:
    return code in CREDENTIAL_CODES or 200 <= code <= 299


def _is_permanent(code: int) -> bool:
    return code in PERMANENT_CODES or 200 <= code <= 299 or 132000 <= code <= 132999


# --- sending ----------------------------------------------------------------------------------------


def _digits(phone: str) -> str:
    return re.sub(r"\D", "", phone)


def template_name(name: str) -> str:
    """Meta's template name for our ``"<namespace>:<name>"``: Meta names carry no namespace."""
    return name.split(":", 1)[1] if ":" in name else name


def _header_components(header_params: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The header component: ``header_params`` are its parameters (``{"type": "image", "image": {...}}``,
    ``{"type": "text", "text": ...}``), or already a whole ``{"type": "header", "parameters": [...]}``."""
    if all(p.get("type") == "header" for p in header_params):
        return [dict(p) for p in header_params]
    return [{"type": "header", "parameters": [dict(p) for p in header_params]}]


def _button_components(button_params: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Button components from ``OutboundMessage.button_params``.

    Each item is either a whole button component in Meta's shape
    (``{"type": "button", "sub_type": "url", "index": "0", "parameters": [...]}``; ``type`` may be left out)
    or one bare button parameter (``{"type": "payload", ...}`` for a quick reply, ``{"type": "text", ...}``
    for a URL suffix), which becomes the component of the button at its position in the list.
    """
    components: list[dict[str, Any]] = []
    for index, item in enumerate(button_params):
        if item.get("type") == "button" or "sub_type" in item or "parameters" in item:
            component = {"type": "button", **item}
            component["index"] = str(component.get("index", index))
            components.append(component)
        else:
            sub_type = "quick_reply" if item.get("type") == "payload" else "url"
            components.append(
                {"type": "button", "sub_type": sub_type, "index": str(index), "parameters": [dict(item)]}
            )
    return components


# What an agent can send by link, and which of them take a caption (Meta: not audio, not a sticker).
OUTBOUND_MEDIA_KINDS = frozenset({"image", "video", "audio", "document", "sticker"})
_CAPTIONED = frozenset({"image", "video", "document"})


def media_object(media: OutboundMedia, caption: str | None) -> dict[str, Any]:
    """Meta's media object for a file sent by link (spec ``MediaObject``): ``{"link", "caption"?,
    "filename"?}``; ``ValueError`` for a kind Meta cannot send."""
    if media.kind not in OUTBOUND_MEDIA_KINDS:
        raise ValueError(
            f"cannot send a {media.kind!r} file (one of {', '.join(sorted(OUTBOUND_MEDIA_KINDS))})"
        )
    obj: dict[str, Any] = {"link": media.url}
    if caption and media.kind in _CAPTIONED:
        obj["caption"] = caption
    if media.filename and media.kind == "document":
        obj["filename"] = media.filename
    return obj


def build_message_body(message: OutboundMessage) -> dict[str, Any]:
    """The JSON body of ``POST /{Version}/{Phone-Number-ID}/messages`` for ``message``.

    A template wins when both ``template_name`` and ``text`` are set: it is the one that can be delivered
    outside the 24-hour window. A file (``media``) is sent by link with ``text`` as its caption.
    ``biz_opaque_callback_data`` carries our ``client_ref`` on every message; Meta echoes it in the status
    webhooks, which is how an unknown outcome is reconciled.
    """
    body: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": _digits(message.to),
    }
    if message.template_name:
        components: list[dict[str, Any]] = []
        if message.header_params:
            components.extend(_header_components(message.header_params))
        if message.params:
            components.append(
                {"type": "body", "parameters": [{"type": "text", "text": str(p)} for p in message.params]}
            )
        components.extend(_button_components(message.button_params))
        template: dict[str, Any] = {
            "name": template_name(message.template_name),
            "language": {"policy": "deterministic", "code": message.language},
        }
        if components:
            template["components"] = components
        body["type"] = "template"
        body["template"] = template
    elif message.media is not None:
        body["type"] = message.media.kind
        body[message.media.kind] = media_object(message.media, message.text)
    elif message.text is not None:
        body["type"] = "text"
        body["text"] = {"body": message.text, "preview_url": False}
    else:
        raise ValueError("a message needs a template_name, a text or a media file")
    body["biz_opaque_callback_data"] = message.client_ref
    return body


def _retry_after(raw: str | None) -> float | None:
    """``Retry-After`` in seconds: either delta-seconds or an HTTP date."""
    if not raw:
        return None
    raw = raw.strip()
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _graph_error(response: httpx.Response) -> Mapping[str, Any] | None:
    try:
        payload = response.json()
    except ValueError:
        return None
    if isinstance(payload, Mapping) and isinstance(payload.get("error"), Mapping):
        return payload["error"]
    return None


def _error_detail(error: Mapping[str, Any]) -> str:
    """Meta's message (and ``error_data.details``) as one short line."""
    detail = str(error.get("message") or error.get("title") or "")[:200]
    data = error.get("error_data")
    if isinstance(data, Mapping) and data.get("details"):
        extra = str(data["details"])[:200]
        detail = f"{detail}: {extra}" if detail and extra != detail else extra
    return summary("", detail, 300)


def _no_error_body(response: httpx.Response) -> str:
    """What to say of an error answer that is not a Graph error: its status, never its body."""
    return f"HTTP {response.status_code} {response.reason_phrase}".strip()


def _error_code(error: Mapping[str, Any] | None) -> int | None:
    raw = error.get("code") if error is not None else None
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and raw.strip().isdigit():
        return int(raw)
    return None


def classify_response(response: httpx.Response) -> SendResult:
    """Map a non-2xx Graph API answer to ``retry`` or ``failed`` (see the module docstring)."""
    retry_after = _retry_after(response.headers.get("retry-after"))
    error = _graph_error(response)
    code = _error_code(error)
    if error is None or code is None:
        text = _no_error_body(response)
        code_str = f"http_{response.status_code}"
        if response.status_code in (401, 403):
            return SendResult.misconfigured(code_str, text, FIX_CREDENTIALS)
        if response.status_code == 429 or response.status_code >= 500:
            return SendResult.retry(code_str, text, retry_after)
        return SendResult.failed(code_str, text)
    detail = _error_detail(error)
    if is_credentials_code(code):
        return SendResult.misconfigured(str(code), detail, FIX_CREDENTIALS)
    if code in LONG_RETRY_CODES:
        return SendResult.retry(str(code), detail, max(PER_USER_MARKETING_RETRY_AFTER, retry_after or 0.0))
    if _is_permanent(code):
        return SendResult.failed(str(code), detail)
    if (
        code in TRANSIENT_CODES
        or error.get("is_transient") is True
        or response.status_code == 429
        or response.status_code >= 500
    ):
        return SendResult.retry(str(code), detail, retry_after)
    return SendResult.failed(str(code), detail)


# A media id as Meta gives it (digits): nothing else may be spliced into the request path.
_MEDIA_ID = re.compile(r"[0-9A-Za-z_-]{1,100}")
# Where Meta serves media files (lookaside.fbsbx.com today): the token is sent to these hosts only.
MEDIA_HOSTS = ("fbsbx.com", "facebook.com", "fbcdn.net", "whatsapp.net")


class MetaProvider(Provider):
    """Sends through the Cloud API from one business phone number."""

    kind = "meta"

    def __init__(
        self,
        *,
        phone_number_id: str,
        access_token: str,
        base_url: str = DEFAULT_BASE_URL,
        api_version: str = DEFAULT_API_VERSION,
        timeout: float = 15.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.phone_number_id = phone_number_id
        self._access_token = access_token
        self.base_url = base_url.rstrip("/")
        self.api_version = api_version
        self.timeout = timeout
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(timeout=timeout)

    def __repr__(self) -> str:  # never show the token
        return f"MetaProvider(phone_number_id={self.phone_number_id!r}, base_url={self.base_url!r})"

    @property
    def messages_url(self) -> str:
        return f"{self.base_url}/{self.api_version}/{self.phone_number_id}/messages"

    async def send(self, message: OutboundMessage) -> SendResult:
        try:
            body = build_message_body(message)
        except ValueError as exc:
            return SendResult.failed("invalid_message", str(exc))
        headers = {"Authorization": f"Bearer {self._access_token}", "Content-Type": "application/json"}
        try:
            response = await self._http.post(
                self.messages_url, json=body, headers=headers, timeout=self.timeout
            )
        except httpx.HTTPError as exc:
            # Never left (refused, DNS, connect time-out): retried; may have gone out (read time-out,
            # connection lost): reconciled from the status webhooks. See ``transport_failure``.
            return transport_failure(exc)
        if response.is_success:
            return self._accepted(response)
        result = classify_response(response)
        log.info("meta send to …%s: %s %s", body["to"][-4:], result.outcome, result.error_code)
        return result

    @staticmethod
    def _accepted(response: httpx.Response) -> SendResult:
        try:
            payload = response.json()
            wamid = payload["messages"][0]["id"]
        except (ValueError, KeyError, IndexError, TypeError):
            wamid = None
        # Meta answered 2xx: the message is on its way even without an id, so it is Sent and never resent;
        # its status webhooks carry our biz_opaque_callback_data, which finds the row and gives it its id.
        return SendResult.accepted(wamid if isinstance(wamid, str) and wamid else None)

    async def fetch_media(self, media: MediaRef) -> tuple[bytes, str]:
        """A file a user sent: ``GET /{Version}/{Media-ID}`` gives its URL (valid five minutes), which is then
        downloaded with the same token (spec ``retrieveMediaUrl`` and ``downloadMedia``). The token goes only
        to Meta's media hosts (or this integration's own base URL); the body is bounded
        (``media.MAX_MEDIA_BYTES``). Raises ``MetaApiError`` / ``ProviderApiError``."""
        if not _MEDIA_ID.fullmatch(media.ref):
            raise MetaApiError(None, None, "not a Meta media id")
        headers = {"Authorization": f"Bearer {self._access_token}"}
        try:
            response = await self._http.get(
                f"{self.base_url}/{self.api_version}/{media.ref}",
                params={"phone_number_id": self.phone_number_id},
                headers=headers,
                timeout=self.timeout,
            )
        except httpx.HTTPError as exc:
            raise MetaApiError(None, None, summary(type(exc).__name__, str(exc))) from exc
        if not response.is_success:
            error = _graph_error(response) or {}
            detail = _error_detail(error) if error else _no_error_body(response)
            raise MetaApiError(response.status_code, _error_code(error), detail)
        try:
            info = response.json()
        except ValueError as exc:
            raise MetaApiError(response.status_code, None, "the media answer is not JSON") from exc
        url = info.get("url") if isinstance(info, Mapping) else None
        if not isinstance(url, str) or not url:
            raise MetaApiError(response.status_code, None, "the media answer has no url")
        if not trusted_media_url(url, self.base_url, MEDIA_HOSTS):
            raise MetaApiError(None, None, f"the media URL is not on Meta's hosts: {urlsplit(url).hostname}")
        content, content_type = await download(self._http, url, headers)
        stated = info.get("mime_type") if isinstance(info.get("mime_type"), str) else None
        return content, mime_of(content_type, stated or media.mime_type)

    async def mark_read(self, provider_message_id: str) -> bool:
        """``POST /{Version}/{Phone-Number-ID}/messages`` with ``{"messaging_product": "whatsapp",
        "status": "read", "message_id": …}`` (the spec's "Send typing indicator and read receipt" without
        the indicator): the user sees blue ticks. False, logged, when Meta refuses it or cannot be reached."""
        body = {"messaging_product": "whatsapp", "status": "read", "message_id": provider_message_id}
        headers = {"Authorization": f"Bearer {self._access_token}", "Content-Type": "application/json"}
        try:
            response = await self._http.post(
                self.messages_url, json=body, headers=headers, timeout=self.timeout
            )
        except httpx.HTTPError as exc:
            log.warning("meta mark_read %s: %s", provider_message_id[-12:], type(exc).__name__)
            return False
        if not response.is_success:
            error = _graph_error(response)
            log.warning(
                "meta mark_read %s: HTTP %s %s",
                provider_message_id[-12:],
                response.status_code,
                _error_code(error),
            )
            return False
        return True

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()


# --- webhooks ---------------------------------------------------------------------------------------


def sign_webhook(body: bytes, app_secret: str) -> str:
    """The ``X-Hub-Signature-256`` value Meta puts on a webhook carrying ``body``."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for key, candidate in headers.items():
            if key.lower() == lowered:
                return candidate
    return value


def verify_signature(headers: Mapping[str, str], body: bytes, app_secret: str) -> None:
    """Check ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256(raw body, app secret)>`` in constant time."""
    if not app_secret:
        raise WebhookError(401, "no app secret configured: cannot verify the webhook")
    signature = _header(headers, SIGNATURE_HEADER)
    if not signature:
        raise WebhookError(401, f"missing {SIGNATURE_HEADER} header")
    algorithm, _, digest = signature.strip().partition("=")
    if algorithm.lower() != "sha256" or not digest:
        raise WebhookError(401, f"{SIGNATURE_HEADER} is not of the form sha256=<hex>")
    expected = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(digest.lower().encode(), expected.encode()):
        raise WebhookError(401, "webhook signature does not match the body")


def verify_handshake(params: Mapping[str, str], verify_token: str) -> str:
    """Answer Meta's subscription ``GET``: the ``hub.challenge`` to echo, or ``WebhookError(403)``."""
    token = params.get("hub.verify_token") or ""
    if (
        params.get("hub.mode") != "subscribe"
        or not verify_token
        or not hmac.compare_digest(token.encode(), verify_token.encode())
    ):
        raise WebhookError(403, "webhook verification failed: wrong hub.mode or hub.verify_token")
    challenge = params.get("hub.challenge")
    if challenge is None:
        raise WebhookError(400, "hub.challenge is missing")
    return challenge


_STATUSES = {
    "sent": Status.SENT,
    "delivered": Status.DELIVERED,
    "read": Status.READ,
    "failed": Status.FAILED,
}


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _timestamp(raw: Any) -> datetime:
    try:
        return datetime.fromtimestamp(int(str(raw)), tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return datetime.now(UTC)


def _e164(number: Any) -> str:
    text = str(number or "")
    return "+" + text if text.isdigit() else text


def _parse_status(item: Mapping[str, Any]) -> StatusUpdate | None:
    status = _STATUSES.get(str(item.get("status", "")))
    if status is None or not item.get("id"):
        return None  # e.g. "played" (voice) or "deleted": nothing for the ledger
    code = detail = None
    errors = item.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], Mapping):
        error = errors[0]
        code = str(error["code"]) if error.get("code") is not None else None
        title, message = error.get("title"), error.get("message")
        parts = [str(p) for p in (title, message) if p]
        if len(parts) == 2 and parts[0] == parts[1]:
            parts = parts[:1]
        data = error.get("error_data")
        if isinstance(data, Mapping) and data.get("details") and str(data["details"]) not in parts:
            parts.append(str(data["details"]))
        detail = ": ".join(parts) or None
    if status is Status.FAILED and code is None:
        code, detail = "failed", detail or "message failed"
    ref = item.get("biz_opaque_callback_data")
    return StatusUpdate(
        status=status,
        timestamp=_timestamp(item.get("timestamp")),
        provider_message_id=str(item["id"]),
        client_ref=str(ref) if ref not in (None, "") else None,
        error_code=code,
        error_detail=detail,
    )


def _scalar_text(value: Any) -> str | None:
    """A payload or id as text (a Flow's payload is an object: not kept)."""
    scalar = isinstance(value, str | int) and not isinstance(value, bool)
    return str(value) if scalar and value != "" else None


def _media(content: Mapping[str, Any]) -> MediaRef | None:
    media_id = _scalar_text(content.get("id"))
    if media_id is None:
        return None
    return MediaRef(
        ref=media_id,
        mime_type=text_of(content.get("mime_type")) or None,
        filename=text_of(content.get("filename")) or None,
        sha256=text_of(content.get("sha256")) or None,
    )


def _inbound_content(
    item: Mapping[str, Any],
) -> tuple[str, str, str | None, MediaRef | None, dict[str, Any] | None]:
    """``(kind, text, payload, media, data)`` of an inbound message, for every type Meta documents
    (``messages[]`` of the webhook): a tapped button carries its payload (a quick-reply template button's
    ``button: {payload, text}``, an interactive reply's ``interactive: {button_reply | list_reply: {id,
    title}}``); media carry a ``MediaRef`` (the media id, downloaded with ``fetch_media``) and their caption
    as the text; a reaction, a location and shared contacts carry ``data``. Any other type (``unsupported``,
    ``unknown``, ``order``, a type Meta adds later) is kept as ``unsupported`` with no text: the user's
    message is still recorded, never refused."""
    kind = str(item.get("type") or "")
    content = _mapping(item.get(kind))
    if kind == "text":
        return kind, text_of(content.get("body")), None, None, None
    if kind == "button" and content:
        payload = _scalar_text(content.get("payload"))
        return kind, str(content.get("text") or payload or ""), payload, None, None
    if kind == "interactive":
        for reply_kind in ("button_reply", "list_reply"):
            reply = content.get(reply_kind)
            if isinstance(reply, Mapping):
                reply_id = _scalar_text(reply.get("id"))
                return kind, str(reply.get("title") or reply_id or ""), reply_id, None, None
    if kind in MEDIA_KINDS:
        media = _media(content)
        if media is not None:
            return kind, text_of(content.get("caption")), None, media, None
    if kind == "reaction" and content:
        emoji = text_of(content.get("emoji"))  # empty when the user removed their reaction
        data: dict[str, Any] = {"emoji": emoji, "message_id": _scalar_text(content.get("message_id"))}
        return kind, emoji, None, None, data
    if kind == "location" and content:
        data = location_data(
            content.get("latitude"),
            content.get("longitude"),
            content.get("name"),
            content.get("address"),
            content.get("url"),
        )
        return kind, location_text(data), None, None, data
    if kind == "contacts" and isinstance(item.get("contacts"), list):
        contacts = [dict(c) for c in item["contacts"] if isinstance(c, Mapping)]
        return kind, contacts_text(contacts), None, None, {"contacts": contacts}
    return "unsupported", "", None, None, {"type": kind} if kind else None


def _parse_message(item: Mapping[str, Any], names: Mapping[str, str]) -> InboundReply | None:
    if not item.get("id") or not item.get("from") or item.get("type") == "system":
        return None  # "system" (the user changed number) is not a reply
    sender = str(item["from"])
    context_id = _mapping(item.get("context")).get("id")
    kind, text, payload, media, data = _inbound_content(item)
    if context_id is None and kind == "reaction" and data:
        context_id = data.get("message_id")  # a reaction answers the message it reacts to
    name = names.get(sender)
    if name is None and len(names) == 1:
        name = next(iter(names.values()))
    return InboundReply(
        provider_message_id=str(item["id"]),
        from_phone=_e164(sender),
        timestamp=_timestamp(item.get("timestamp")),
        text=text,
        kind=kind,
        context_message_id=str(context_id) if context_id else None,
        profile_name=name,
        payload=payload,
        media=media,
        data=data,
    )


def _contact_names(value: Mapping[str, Any]) -> dict[str, str]:
    names: dict[str, str] = {}
    contacts = value.get("contacts")
    for contact in contacts if isinstance(contacts, list) else []:
        if not isinstance(contact, Mapping):
            continue
        profile = contact.get("profile")
        if isinstance(profile, Mapping) and profile.get("name"):
            names[str(contact.get("wa_id", ""))] = str(profile["name"])
    return names


def _parse_template_status(value: Mapping[str, Any]) -> TemplateStatusUpdate | None:
    name, event = value.get("message_template_name"), value.get("event")
    if not name or not event:
        return None
    reason = value.get("reason")
    if not reason or str(reason).upper() == "NONE":
        # PAUSED and FLAGGED say why in other_info {title, description}.
        info = _mapping(value.get("other_info"))
        parts = [str(info[k]) for k in ("title", "description") if info.get(k)]
        reason = ": ".join(parts) or None
    template_id = value.get("message_template_id")
    return TemplateStatusUpdate(
        name=str(name),
        language=str(value["message_template_language"]) if value.get("message_template_language") else None,
        status=str(event).upper(),
        reason=str(reason) if reason else None,
        provider_template_id=str(template_id) if template_id is not None else None,
    )


def _items(value: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    raw = value.get(key)
    return [item for item in raw if isinstance(item, Mapping)] if isinstance(raw, list) else []


def parse_webhook(payload: Any) -> list[WebhookEvent]:
    """Every status, inbound message and template status change in one webhook POST, in order.

    Raises ``WebhookError(400)`` when the body is not Meta's ``whatsapp_business_account`` envelope. Unknown
    fields, unknown statuses and items missing their ids are skipped (and logged) so that one odd item
    never costs the others: Meta would redeliver the whole POST for days if it were refused.
    """
    if not isinstance(payload, Mapping) or payload.get("object") != "whatsapp_business_account":
        raise WebhookError(
            400, "not a WhatsApp Business Account webhook (object != whatsapp_business_account)"
        )
    entries = payload.get("entry")
    if not isinstance(entries, list):
        raise WebhookError(400, "webhook without an entry list")
    events: list[WebhookEvent] = []
    for entry in entries:
        changes = entry.get("changes") if isinstance(entry, Mapping) else None
        if not isinstance(changes, list):
            raise WebhookError(400, "webhook entry without a changes list")
        for change in changes:
            if not isinstance(change, Mapping) or not isinstance(change.get("value"), Mapping):
                raise WebhookError(400, "webhook change without a value object")
            field_name, value = change.get("field"), change["value"]
            if field_name == "messages":
                for item in _items(value, "statuses"):
                    status = _parse_status(item)
                    if status is None:
                        log.info("meta webhook: skipped status %r", item.get("status"))
                    else:
                        events.append(status)
                names = _contact_names(value)
                for item in _items(value, "messages"):
                    reply = _parse_message(item, names)
                    if reply is None:
                        log.info("meta webhook: skipped message of type %r", item.get("type"))
                    else:
                        events.append(reply)
                for error in _items(value, "errors"):
                    log.warning("meta webhook error %s: %s", error.get("code"), _error_detail(error))
            elif field_name == "message_template_status_update":
                template = _parse_template_status(value)
                if template is None:
                    log.warning("meta webhook: template status update without name or event")
                else:
                    events.append(template)
    return events


# --- template sync ----------------------------------------------------------------------------------


class MetaApiError(ProviderApiError):
    """A Graph API call failed: ``status`` is the HTTP status (None for a network error)."""

    def __init__(self, status: int | None, code: int | None, message: str) -> None:
        super().__init__(
            status, code, message, refused_credentials=code is not None and is_credentials_code(code)
        )


def _remote_template(item: Mapping[str, Any]) -> RemoteTemplate:
    components = [dict(c) for c in item.get("components") or [] if isinstance(c, Mapping)]
    body = next(
        (str(c.get("text") or "") for c in components if str(c.get("type", "")).upper() == "BODY"), ""
    )
    return RemoteTemplate(
        id=str(item.get("id", "")),
        name=str(item.get("name", "")),
        language=str(item.get("language", "")),
        status=str(item.get("status", "")),
        category=str(item.get("category", "")),
        body=body,
        components=components,
    )


def _same_origin(url: str, base_url: str) -> bool:
    a, b = urlsplit(url), urlsplit(base_url)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


MAX_TEMPLATE_PAGES = 1000


async def fetch_templates(
    *,
    waba_id: str,
    access_token: str,
    base_url: str = DEFAULT_BASE_URL,
    api_version: str = DEFAULT_API_VERSION,
    http: httpx.AsyncClient | None = None,
    timeout: float = 15.0,
) -> list[RemoteTemplate]:
    """Every message template of a WhatsApp Business Account, following the pages to the end.

    The next page is ``paging.next`` when Meta gives it (only on our own Graph host: the request carries our
    token), and its absence ends the list. An answer that only ever gives ``paging.cursors.after`` is
    followed by cursor until a page comes back empty or repeats a cursor.
    Raises ``MetaApiError`` on any HTTP or network error.
    """
    base = base_url.rstrip("/")
    url: str | None = f"{base}/{api_version}/{waba_id}/message_templates"
    params: dict[str, str] | None = {"fields": "name,status,language,category,components", "limit": "100"}
    headers = {"Authorization": f"Bearer {access_token}"}
    client = http or httpx.AsyncClient(timeout=timeout)
    templates: list[RemoteTemplate] = []
    seen_cursors: set[str] = set()
    follows_next = False
    try:
        for _ in range(MAX_TEMPLATE_PAGES):
            assert url is not None
            try:
                response = await client.get(url, params=params, headers=headers, timeout=timeout)
            except httpx.HTTPError as exc:
                raise MetaApiError(None, None, summary(type(exc).__name__, str(exc))) from exc
            if not response.is_success:
                error = _graph_error(response) or {}
                raise MetaApiError(
                    response.status_code,
                    _error_code(error),
                    _error_detail(error) if error else _no_error_body(response),
                )
            try:
                payload = response.json()
            except ValueError as exc:
                raise MetaApiError(
                    response.status_code, None, "message_templates answer is not JSON"
                ) from exc
            data = payload.get("data") if isinstance(payload, Mapping) else None
            if not isinstance(data, list):
                raise MetaApiError(response.status_code, None, "message_templates answer without a data list")
            templates.extend(_remote_template(item) for item in data if isinstance(item, Mapping))
            paging = _mapping(payload.get("paging"))
            next_url = paging.get("next")
            after = _mapping(paging.get("cursors")).get("after")
            if isinstance(next_url, str) and next_url and _same_origin(next_url, base):
                url, params = next_url, None  # the next URL carries every query parameter
                follows_next = True
            elif follows_next:
                return templates  # Graph paging: no ``next`` on the last page
            elif data and isinstance(after, str) and after and after not in seen_cursors:
                seen_cursors.add(after)
                url = f"{base}/{api_version}/{waba_id}/message_templates"
                params = {
                    "fields": "name,status,language,category,components",
                    "limit": "100",
                    "after": after,
                }
            else:
                return templates
        raise MetaApiError(None, None, f"more than {MAX_TEMPLATE_PAGES} pages of templates")
    finally:
        if http is None:
            await client.aclose()


# --- the plug-in ------------------------------------------------------------------------------------

_DIGITS = r"\d{1,30}"


class MetaSettings(SenderSettings):
    phone_number_id: str = shaped(
        _DIGITS,
        "the phone number id Meta shows (digits)",
        title="Phone number ID",
        description="The id of the business phone number messages are sent from (WhatsApp Manager).",
    )
    waba_id: str = shaped(
        _DIGITS,
        "the WhatsApp Business Account id (digits)",
        default="",
        title="WhatsApp Business Account ID",
        description="The WhatsApp Business Account's id: needed to sync templates (their namespace).",
    )
    base_url: str = Field(
        DEFAULT_BASE_URL,
        title="Base URL",
        description="The Graph API host: graph.facebook.com or a host in TIDINGS_EXTRA_PROVIDER_HOSTS.",
    )
    api_version: str = shaped(
        r"v\d{1,3}\.\d{1,3}",
        "a Graph API version such as v23.0",
        default=DEFAULT_API_VERSION,
        title="Graph API version",
    )
    verify_token: str = Field(
        "", description="The token Meta's webhook handshake must present; made up when left empty."
    )


class MetaSecrets(ProviderSecrets):
    access_token: str = Field(
        "", description="A system user's access token with whatsapp_business_messaging."
    )
    app_secret: str = Field(
        "", description="The Meta app's secret: it signs the webhooks (X-Hub-Signature-256)."
    )


class Meta(ProviderType[MetaSettings, MetaSecrets]):
    """Meta WhatsApp Cloud API: one webhook URL (with a GET handshake), templates listed and synced."""

    kind = "meta"
    title = "Meta"
    settings_model = MetaSettings
    secrets_model = MetaSecrets
    default_rate = 80.0
    capabilities = Capabilities(list_templates=True, read_receipts=True)
    hosts = frozenset({"graph.facebook.com"})  # reference §2
    handshake = True
    sender_field = "phone_number_id"

    def complete(
        self, settings: MetaSettings, secrets: dict[str, str], saved: Mapping[str, str]
    ) -> tuple[MetaSettings, dict[str, str]]:
        if not settings.verify_token:
            settings = settings.model_copy(update={"verify_token": random_tokens.token_urlsafe(24)})
        return settings, secrets

    def check(self, settings: MetaSettings, secrets: MetaSecrets) -> None:
        for name in ("access_token", "app_secret"):
            if not getattr(secrets, name):
                raise ValueError(f"meta: secrets.{name} is required")

    def build(self, settings: MetaSettings, secrets: MetaSecrets, deployment: Deployment) -> Provider:
        return MetaProvider(
            phone_number_id=settings.phone_number_id,
            access_token=secrets.access_token,
            base_url=settings.base_url,
            api_version=settings.api_version,
            http=deployment.http,
        )

    def read_webhook(
        self,
        route: str,
        headers: Mapping[str, str],
        body: bytes,
        settings: MetaSettings,
        secrets: MetaSecrets,
    ) -> list[WebhookEvent]:
        verify_signature(headers, body, secrets.app_secret)
        return parse_webhook(json_object(body))

    def answer_handshake(self, params: Mapping[str, str], settings: MetaSettings) -> str:
        return verify_handshake(params, settings.verify_token)

    async def list_templates(
        self, settings: MetaSettings, secrets: MetaSecrets, deployment: Deployment
    ) -> TemplateListing:
        if not settings.waba_id:
            raise NotConfigured("meta: settings.waba_id is needed to sync templates")
        remote = await fetch_templates(
            waba_id=settings.waba_id,
            access_token=secrets.access_token,
            base_url=settings.base_url,
            api_version=settings.api_version,
            http=deployment.http,
        )
        return TemplateListing(namespace=settings.waba_id, templates=remote)  # Meta names have no namespace
