"""Vonage Messages API v1 (WhatsApp): webhooks (signed HS256 JWT + payload hash) and sending.

Wire formats: ../shared/reference/whatsapp-providers-and-clevertap.md §1 and the official
specification ``vonage-messages-openapi.yml``. The sandbox speaks this webhook format too.
"""

from __future__ import annotations

import base64
import email.utils
import functools
import hashlib
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from jwt.algorithms import HMACAlgorithm
from pydantic import Field

from tidings.providers.base import (
    FIX_CREDENTIALS,
    InboundReply,
    MediaRef,
    OutboundMedia,
    OutboundMessage,
    Provider,
    ProviderApiError,
    SendResult,
    Status,
    StatusUpdate,
    WebhookError,
    WebhookEvent,
    json_object,
    transport_failure,
)
from tidings.providers.inbound import contacts_text, location_data, location_text, text_of
from tidings.providers.media import download, mime_of, trusted_media_url
from tidings.providers.plugin import (
    Capabilities,
    CredentialsError,
    Deployment,
    ProviderSecrets,
    ProviderType,
    SenderSettings,
    shaped,
)
from tidings.providers.trust import summary

log = logging.getLogger(__name__)

_STATUSES = {
    "submitted": Status.SENT,
    "delivered": Status.DELIVERED,
    "read": Status.READ,
    "rejected": Status.FAILED,
    "undeliverable": Status.FAILED,
}


# --- webhooks ---------------------------------------------------------------------------------------


def sign_webhook(body: bytes, signature_secret: str, api_key: str) -> str:
    """The ``Authorization`` header value Vonage puts on a webhook carrying ``body``."""
    claims = {
        "iat": int(time.time()),
        "jti": str(uuid.uuid4()),
        "iss": "Vonage",
        "payload_hash": hashlib.sha256(body).hexdigest(),
        "api_key": api_key,
    }
    payload = json.dumps(claims, separators=(",", ":")).encode()
    return "Bearer " + _WEBHOOK_JWS.encode(payload, signature_secret, algorithm="HS256")


class _HS256(HMACAlgorithm):
    """HS256 that checks each secret once. Before every signature PyJWT makes sure that an HMAC secret is
    not a PEM, SSH, DER or JWK key (parsing it each time): the largest CPU cost of a status webhook. The
    checks' answer for a given secret never changes, so it is kept."""

    def __init__(self) -> None:
        super().__init__(HMACAlgorithm.SHA256)

    @functools.lru_cache(maxsize=256)  # noqa: B019 - one instance for the life of the process
    def prepare_key(self, key: str | bytes) -> bytes:
        return super().prepare_key(key)

    def check_key_length(self, key: bytes) -> str | None:
        """No warning for a short secret: the signature secret is the one Vonage's dashboard gives the
        account, not ours to lengthen, and PyJWT would warn about it at every webhook."""
        return None


# Webhook tokens are signed and verified with this module's own JWS, which knows HS256 only (and checks
# each secret once); PyJWT's global algorithms stay as they are for everyone else.
_WEBHOOK_JWS = jwt.PyJWS(algorithms=[])
_WEBHOOK_JWS.register_algorithm("HS256", _HS256())


def _claims(token: str, signature_secret: str) -> dict[str, Any]:
    """The claims of a webhook token whose HS256 signature ``_WEBHOOK_JWS`` has verified, checked as
    ``jwt.decode`` checks them: ``iat`` required and a number; ``iat`` and ``nbf`` not in the future,
    ``exp`` not past. (Checked here rather than by decoding the token a second time with ``jwt.decode``,
    which costs more than the rest of the verification.)"""
    payload = _WEBHOOK_JWS.decode_complete(token, signature_secret, algorithms=["HS256"])["payload"]
    try:
        claims = json.loads(payload)
    except (ValueError, RecursionError):
        raise jwt.DecodeError("the token's payload is not JSON") from None
    if not isinstance(claims, dict):
        raise jwt.DecodeError("the token's payload is not a JSON object")
    if "iat" not in claims:
        raise jwt.MissingRequiredClaimError("iat")
    now = time.time()
    for name in ("iat", "nbf", "exp"):
        value = claims.get(name)
        if value is None and name != "iat":
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise jwt.DecodeError(f"{name} is not a number")
        if name == "exp" and value <= now:
            raise jwt.ExpiredSignatureError("Signature has expired")
        if name != "exp" and value > now:
            raise jwt.ImmatureSignatureError(f"The token is not yet valid ({name})")
    return claims


# How old a webhook's token (its ``iat``) may be. Vonage signs each callback once and its documentation does
# not say that a retried callback is signed again, so a retry may carry the token of the first try. It
# retries a callback answered with 429 or 5xx for up to 24 hours (backoff doubling from 5 s to a 15-minute
# cap; reference §1.8; the Messages API Sandbox: every 900 s for 24 h). 36 hours cover the whole retry
# window, its last backoff and hours of clock skew, and still refuse a token captured days ago.
WEBHOOK_MAX_AGE = 36 * 3600  # seconds


def verify_webhook(
    headers: Mapping[str, str], body: bytes, signature_secret: str, *, now: float | None = None
) -> None:
    """Check the HS256 JWT in ``Authorization`` (its ``iat`` no older than ``WEBHOOK_MAX_AGE``) and the
    body's SHA-256 against ``payload_hash``."""
    auth = headers.get("authorization", "")
    if not auth.lower().startswith("bearer "):
        raise WebhookError(401, "missing signed Authorization header")
    try:
        claims = _claims(auth[7:].strip(), signature_secret)
    except jwt.PyJWTError as exc:
        raise WebhookError(401, f"bad webhook signature: {exc}") from exc
    age = (time.time() if now is None else now) - claims["iat"]
    if age > WEBHOOK_MAX_AGE:
        raise WebhookError(
            401,
            f"webhook token issued {age / 3600:.0f} h ago, more than the {WEBHOOK_MAX_AGE // 3600} h "
            "that Vonage's retries can explain",
        )
    expected = claims.get("payload_hash")
    if not isinstance(expected, str) or not hmac.compare_digest(
        expected.lower(), hashlib.sha256(body).hexdigest()
    ):
        raise WebhookError(401, "payload_hash does not match the body")


def _timestamp(raw: Any) -> datetime:
    if isinstance(raw, str):
        try:
            ts = datetime.fromisoformat(raw)
            return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
        except ValueError:
            pass
    return datetime.now(UTC)


def _e164(number: Any) -> str:
    digits = str(number or "")
    return digits if digits.startswith("+") or not digits.isdigit() else "+" + digits


def parse_status(payload: Mapping[str, Any]) -> StatusUpdate:
    """A status webhook (v1 or v0.1 error shape) as a ``StatusUpdate``."""
    status = _STATUSES.get(str(payload.get("status", "")))
    if status is None or not payload.get("message_uuid"):
        raise WebhookError(400, f"not a Vonage status webhook (status={payload.get('status')!r})")
    code = detail = None
    error = payload.get("error")
    if isinstance(error, Mapping):
        if "title" in error:  # v1: {"type", "title": "<code>", "detail", "instance"}
            code, detail = str(error.get("title")), error.get("detail")
        else:  # v0.1: {"code", "reason"}
            code, detail = str(error.get("code")), error.get("reason")
    if status is Status.FAILED and code is None:
        code, detail = str(payload.get("status")), f"message {payload.get('status')}"
    client_ref = payload.get("client_ref")
    return StatusUpdate(
        status=status,
        timestamp=_timestamp(payload.get("timestamp")),
        provider_message_id=str(payload["message_uuid"]),
        client_ref=str(client_ref) if client_ref is not None else None,
        error_code=code,
        error_detail=str(detail) if detail is not None else None,
    )


def _scalar_text(value: Any) -> str | None:
    """A payload or id as text (a Flow's payload is an object: not kept)."""
    scalar = isinstance(value, str | int) and not isinstance(value, bool)
    return str(value) if scalar and value != "" else None


# Vonage's message types for a file, and the kind Tidings calls each (``file`` is WhatsApp's document).
_MEDIA_TYPES = {
    "image": "image",
    "video": "video",
    "audio": "audio",
    "file": "document",
    "sticker": "sticker",
}


def _media(content: Mapping[str, Any]) -> MediaRef | None:
    url = content.get("url")
    if not isinstance(url, str) or not url:
        return None
    return MediaRef(
        ref=url,
        mime_type=text_of(content.get("mime_type")) or None,
        filename=text_of(content.get("name")) or None,
    )


def _inbound_content(
    payload: Mapping[str, Any], context_id: str | None
) -> tuple[str, str, str | None, MediaRef | None, dict[str, Any] | None]:
    """``(kind, text, payload, media, data)`` of an inbound message, for every ``message_type`` the spec
    lists for WhatsApp: a tapped button carries its payload (``button: {payload, text}``, a template quick
    reply; a Flow's payload is an object, not kept; ``reply: {id, title}``, an interactive reply, kept as kind
    ``reply``); a file carries a ``MediaRef`` (its URL on Vonage's media servers, valid 48 hours) and its
    caption as the text (``file`` becomes kind ``document``); a reaction (``{action, emoji}``: the message it
    reacts to is the ``context``), a location and shared contacts carry ``data``. Anything else
    (``unsupported``, ``order``, a type added later) is kept as ``unsupported`` with no text."""
    kind = str(payload.get("message_type") or "text")
    raw = payload.get(kind)
    content: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    if kind == "text":
        return kind, text_of(payload.get("text")), None, None, None
    if kind == "button" and content:
        carried = _scalar_text(content.get("payload"))
        return kind, str(content.get("text") or carried or ""), carried, None, None
    if kind == "reply" and content:
        reply_id = _scalar_text(content.get("id"))
        return kind, str(content.get("title") or reply_id or ""), reply_id, None, None
    if kind in _MEDIA_TYPES:
        media = _media(content)
        if media is not None:
            return _MEDIA_TYPES[kind], text_of(content.get("caption")), None, media, None
    if kind == "reaction" and content:
        emoji = text_of(content.get("emoji")) if content.get("action") != "unreact" else ""
        return kind, emoji, None, None, {"emoji": emoji, "message_id": context_id}
    if kind == "location" and content:
        data = location_data(
            content.get("lat"),
            content.get("long"),
            content.get("name"),
            content.get("address"),
            content.get("url"),
        )
        return kind, location_text(data), None, None, data
    if kind == "contacts" and isinstance(payload.get("contacts"), list):
        contacts = [dict(c) for c in payload["contacts"] if isinstance(c, Mapping)]
        return kind, contacts_text(contacts), None, None, {"contacts": contacts}
    return "unsupported", "", None, None, {"type": kind}


def parse_inbound(payload: Mapping[str, Any]) -> InboundReply:
    """An inbound WhatsApp message as an ``InboundReply``."""
    if not payload.get("message_uuid") or not payload.get("from"):
        raise WebhookError(400, "not a Vonage inbound webhook (message_uuid and from are required)")
    raw_context, raw_profile = payload.get("context"), payload.get("profile")
    context: Mapping[str, Any] = raw_context if isinstance(raw_context, Mapping) else {}
    profile: Mapping[str, Any] = raw_profile if isinstance(raw_profile, Mapping) else {}
    context_id = _scalar_text(context.get("message_uuid"))
    kind, text, carried, media, data = _inbound_content(payload, context_id)
    return InboundReply(
        provider_message_id=str(payload["message_uuid"]),
        from_phone=_e164(payload["from"]),
        timestamp=_timestamp(payload.get("timestamp")),
        text=text,
        kind=kind,
        context_message_id=context_id,
        profile_name=text_of(profile.get("name")) or None,
        payload=carried,
        media=media,
        data=data,
    )


# --- sending ----------------------------------------------------------------------------------------

DEFAULT_BASE_URL = "https://api.nexmo.com"
JWT_LIFETIME = 15 * 60  # seconds: the official SDK's default ``exp = iat + 15 min`` (reference §1.2)
JWT_RENEW_MARGIN = 5 * 60  # a cached token is replaced this long before it expires
MAX_CLIENT_REF = 100  # characters (reference §1.3; it was 40 in v0.1)

# Problem codes that say "try again later" even on a 4xx answer: 1000 throttled, 1030 internal error,
# 1331 provider error, retry in a few minutes (reference §1.5, spec ``x-errors``).
RETRY_CODES = frozenset({"1000", "1030", "1331"})
_RETRY_STATUSES = frozenset({408, 425, 429})
_BSUID = re.compile(r"^[A-Z]{2}\.\d{1,40}$")  # WhatsApp business-scoped user id, e.g. US.13491208655302741918


def vonage_template_name(name: str, *, legacy: bool = False) -> str:
    """The template name to put in ``template.name`` for a Tidings template named ``<namespace>:<name>``.

    Vonage Messages API v1 takes the plain WhatsApp template name: the official spec's ``Template.name``
    example is ``verify`` and the current v1 snippet (``send-mtm.sh``) passes only the name. The
    ``namespace:name`` form belongs to the legacy v0.1 API (its spec's example is
    ``example_namespace:verify``; the SDK docstring still repeats it). See
    ../shared/reference/whatsapp-providers-and-clevertap.md §1.3. So the part after the last ``:`` is sent,
    unless ``legacy`` asks for the full ``namespace:name``.
    """
    return name if legacy else name.rpartition(":")[2]


def _digits(number: str, what: str) -> str:
    value = number.strip().removeprefix("+")
    if not value.isdigit():
        raise ValueError(f"{what} must be an E.164 number, got {number!r}")
    return value


def _recipient(to: str) -> str:
    """``to`` for Vonage: E.164 digits without the '+' (7 to 15 digits), or a WhatsApp BSUID as it is."""
    value = to.strip()
    if _BSUID.match(value):
        return value
    digits = value.removeprefix("+")
    if not digits.isdigit() or not 7 <= len(digits) <= 15:
        raise ValueError(f"recipient {to!r} is not an E.164 number")
    return digits


def load_private_key(pem: str) -> RSAPrivateKey:
    text = pem.strip()
    if "\n" not in text and "\\n" in text:  # a PEM pasted into one environment variable line
        text = text.replace("\\n", "\n")
    try:
        key = serialization.load_pem_private_key(text.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"private_key is not a PEM private key: {exc}") from None
    if not isinstance(key, RSAPrivateKey):
        raise ValueError("private_key must be an RSA key (Vonage application JWTs are RS256)")
    return key


def _messages_url(base_url: str) -> str:
    base = base_url.rstrip("/")
    return f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages"


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def problem_code(problem: Mapping[str, Any]) -> str | None:
    """The Vonage code of an RFC 7807 problem: the number after '#' in ``type`` (…/messages#1022), or a
    numeric ``title`` (the v1 status-webhook shape); ``None`` when there is none (…/api-errors#unauthorized).
    """
    fragment = str(problem.get("type") or "").rpartition("#")[2].strip()
    if fragment.isdigit():
        return fragment
    title = str(problem.get("title") or "").strip()
    return title if title.isdigit() else None


def _problem_detail(problem: Mapping[str, Any], response: httpx.Response) -> str:
    """The problem's title and detail (and what its ``invalid_parameters`` say), one short line; never the
    body itself when it is not a problem."""
    parts = [str(problem[k]).strip()[:200] for k in ("title", "detail") if problem.get(k)]
    text = ": ".join(p for p in parts if p)
    invalid = problem.get("invalid_parameters")
    if isinstance(invalid, list):
        reasons = [
            f"{str(item.get('name'))[:60]}: {str(item.get('reason'))[:100]}"
            for item in invalid[:5]
            if isinstance(item, Mapping)
        ]
        if reasons:
            text = f"{text} ({'; '.join(reasons)})" if text else "; ".join(reasons)
    if not text:
        text = f"HTTP {response.status_code} {response.reason_phrase}".strip()
    return summary("", text, 300)


def _retry_after(headers: httpx.Headers) -> float | None:
    """``Retry-After`` in seconds: a number (what Vonage sends) or an HTTP date (RFC 9110)."""
    raw = headers.get("retry-after")
    if not raw:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if seconds == seconds else None  # NaN is not a delay


def classify_response(response: httpx.Response) -> SendResult:
    """A ``SendResult`` for Vonage's answer to ``POST /v1/messages``.

    202: accepted (without an id when ``message_uuid`` is missing). Errors are RFC 7807 problems: 429 (with
    ``Retry-After``), 5xx, 408 and the codes in ``RETRY_CODES`` are worth retrying; 401 and 403 fail as
    ``unauthorized`` / ``forbidden`` with the fix to make (the campaign pauses); everything else (402, 404,
    422 with 1022 invalid template, 1120 invalid sender, 1150 invalid params, 1300 not on WhatsApp, 1340
    outside the 24-hour window, …) fails this send. ``error_code`` is Vonage's code, else
    ``http_<status>``; ``error_detail`` is the problem's title and detail, never the whole body.
    """
    status = response.status_code
    problem = _problem(response)
    if 200 <= status < 300:
        message_uuid = problem.get("message_uuid")
        # Without a message_uuid Vonage has still taken it: Sent, never resent (DESIGN invariant 3); its
        # status webhooks carry our client_ref, which finds the row and gives it its id.
        return SendResult.accepted(message_uuid if isinstance(message_uuid, str) and message_uuid else None)
    detail = _problem_detail(problem, response)
    if status in (401, 403):  # the credentials: every send will be refused until they are changed
        code = "unauthorized" if status == 401 else "forbidden"
        return SendResult.misconfigured(code, detail, FIX_CREDENTIALS)
    code = problem_code(problem) or f"http_{status}"
    if status >= 500 or status in _RETRY_STATUSES or code in RETRY_CODES:
        return SendResult.retry(code, detail, _retry_after(response.headers))
    return SendResult.failed(code, detail)


# Tidings' kind of an outbound file, and Vonage's message type for it (spec ``OutboundWhatsApp*``).
_OUTBOUND_MEDIA = {
    "image": "image",
    "video": "video",
    "audio": "audio",
    "document": "file",
    "sticker": "sticker",
}
_CAPTIONED = frozenset({"image", "video", "file"})
MAX_CAPTION = 3000  # the spec's ``caption.maxLength`` for an image


def _media_object(kind: str, media: OutboundMedia, caption: str | None) -> dict[str, Any]:
    """``{"url", "caption"?, "name"?}``: a caption on an image, video or file (never on audio or a
    sticker), a file's name on a file."""
    obj: dict[str, Any] = {"url": media.url}
    if caption and kind in _CAPTIONED:
        obj["caption"] = caption[:MAX_CAPTION]
    if media.filename and kind == "file":
        obj["name"] = media.filename
    return obj


# Where Vonage serves inbound media (``https://api-us.nexmo.com/v3/media/<id>``): credentials go only there.
MEDIA_HOSTS = ("nexmo.com", "vonage.com")
_MESSAGE_UUID = re.compile(r"[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}")


class VonageProvider(Provider):
    """WhatsApp through the Vonage Messages API v1: ``POST {base_url}/v1/messages`` in the flat v1 format.

    Authentication (reference §1.2): with ``application_id`` and the application's PEM ``private_key``, a
    JWT signed RS256 with claims ``application_id``, ``iat``, ``jti`` (uuid4) and ``exp`` (``iat`` + 15 min),
    as the official SDK makes it, cached and renewed 5 minutes before it expires; otherwise Basic with
    ``api_key``:``api_secret``. JWT wins when both are given, as in the SDK.

    Bodies (reference §1.3, spec ``OutboundWhatsAppText`` / ``OutboundWhatsAppTemplate``):

    - ``message.text`` set: ``message_type: "text"``.
    - a template: ``message_type: "template"``, ``whatsapp: {policy: "deterministic", locale}``,
      ``template: {name, parameters}`` (strings for ``{{1}}``, ``{{2}}``, …; omitted when there are none).
      The name sent is the plain template name (the part after ``namespace:``), which is what v1 takes;
      ``legacy_template_names=True`` sends the full ``namespace:name`` of the v0.1 API. See
      ``vonage_template_name``.
    - a template with ``header_params`` or ``button_params``: the ``template`` type cannot carry them, so it
      goes as ``message_type: "custom"``, Meta's template object passed through (reference §1.3,
      ``send-media-mtm.sh``): ``header_params`` are the header component's parameters
      (``[{"type": "image", "image": {"link": …}}]``), each of ``button_params`` is one button component
      (``{"sub_type": "url", "index": "0", "parameters": [...]}``), and the language code is written with
      an underscore (``en_GB``).

    ``send`` never raises for HTTP or network errors; see ``classify_response``. A connection that could
    not be made (``connect_error``, ``connect_timeout``) is retried with backoff; a ``timeout`` or
    ``network_error`` after the request may have gone out is reconciled from the status webhooks
    (``base.transport_failure``).
    """

    kind = "vonage"

    def __init__(
        self,
        *,
        sender: str,
        base_url: str = DEFAULT_BASE_URL,
        application_id: str | None = None,
        private_key: str | None = None,
        api_key: str | None = None,
        api_secret: str | None = None,
        timeout: float = 15.0,
        http: httpx.AsyncClient | None = None,
        legacy_template_names: bool = False,
    ) -> None:
        self.sender = _digits(sender, "sender")
        self.base_url = base_url.rstrip("/")
        self.url = _messages_url(base_url)
        self.legacy_template_names = legacy_template_names
        self._timeout = timeout
        self._application_id: str | None = None
        self._private_key: RSAPrivateKey | None = None
        self._basic: str | None = None
        if application_id or private_key:
            if not (application_id and private_key):
                raise ValueError("Vonage JWT authentication needs both application_id and private_key")
            self._application_id = application_id
            self._private_key = load_private_key(private_key)
        elif api_key or api_secret:
            if not (api_key and api_secret):
                raise ValueError("Vonage Basic authentication needs both api_key and api_secret")
            self._basic = "Basic " + base64.b64encode(f"{api_key}:{api_secret}".encode()).decode()
        else:
            raise ValueError(
                "Vonage needs credentials: application_id + private_key (JWT) or api_key + api_secret (Basic)"
            )
        self._token: str | None = None
        self._token_renew_at = 0.0
        self._clock = time.time  # tests move it to check renewal
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=100, keepalive_expiry=30.0),
            headers={"Accept": "application/json", "User-Agent": "tidings"},
        )

    @property
    def auth_scheme(self) -> str:
        """``"jwt"`` or ``"basic"``."""
        return "jwt" if self._private_key is not None else "basic"

    def authorization(self) -> str:
        """The ``Authorization`` header for the next request (a cached JWT, renewed before it expires)."""
        if self._private_key is None:
            assert self._basic is not None
            return self._basic
        now = self._clock()
        if self._token is None or now >= self._token_renew_at:
            iat = int(now)
            claims = {
                "application_id": self._application_id,
                "iat": iat,
                "jti": str(uuid.uuid4()),
                "exp": iat + JWT_LIFETIME,
            }
            self._token = jwt.encode(claims, self._private_key, algorithm="RS256")
            self._token_renew_at = iat + JWT_LIFETIME - JWT_RENEW_MARGIN
        return "Bearer " + self._token

    def request_body(self, message: OutboundMessage) -> dict[str, Any]:
        """The JSON body for ``message``; ``ValueError`` when it cannot be sent as it is."""
        if len(message.client_ref) > MAX_CLIENT_REF:
            raise ValueError(f"client_ref is longer than {MAX_CLIENT_REF} characters")
        body: dict[str, Any] = {
            "channel": "whatsapp",
            "to": _recipient(message.to),
            "from": self.sender,
            "client_ref": message.client_ref,
        }
        if message.media is not None and not message.template_name:
            kind = _OUTBOUND_MEDIA.get(message.media.kind)
            if kind is None:
                raise ValueError(f"cannot send a {message.media.kind!r} file")
            body.update(message_type=kind, **{kind: _media_object(kind, message.media, message.text)})
            return body
        if message.text is not None:
            if not message.text:
                raise ValueError("empty text")
            body.update(message_type="text", text=message.text)
            return body
        if not message.template_name:
            raise ValueError("a message needs a template_name, a text or a media file")
        name = vonage_template_name(message.template_name, legacy=self.legacy_template_names)
        if message.header_params or message.button_params:
            body.update(message_type="custom", custom=self._custom_template(message, name))
            return body
        template: dict[str, Any] = {"name": name}
        if message.params:
            template["parameters"] = [str(p) for p in message.params]
        body.update(
            message_type="template",
            whatsapp={"policy": "deterministic", "locale": message.language},
            template=template,
        )
        return body

    @staticmethod
    def _custom_template(message: OutboundMessage, name: str) -> dict[str, Any]:
        components: list[dict[str, Any]] = []
        if message.header_params:
            components.append({"type": "header", "parameters": [dict(p) for p in message.header_params]})
        if message.params:
            components.append(
                {"type": "body", "parameters": [{"type": "text", "text": str(p)} for p in message.params]}
            )
        components.extend({"type": "button", **button} for button in message.button_params)
        return {
            "type": "template",
            "template": {
                "name": name,
                "language": {"policy": "deterministic", "code": message.language.replace("-", "_")},
                "components": components,
            },
        }

    async def send(self, message: OutboundMessage) -> SendResult:
        try:
            body = self.request_body(message)
        except ValueError as exc:
            return SendResult.failed("invalid_message", str(exc))
        try:
            response = await self._http.post(
                self.url,
                json=body,
                headers={"Authorization": self.authorization()},
                timeout=self._timeout,
            )
        except httpx.HTTPError as exc:  # no answer: see ``transport_failure``
            return transport_failure(exc)
        return classify_response(response)

    async def fetch_media(self, media: MediaRef) -> tuple[bytes, str]:
        """A file a user sent: ``GET`` its URL on Vonage's media servers with this integration's
        ``Authorization`` (the application JWT is what "Secure Inbound Media" requires; without it the URL
        needs none and the header is ignored). The URL must be on Vonage's hosts (or this integration's own
        base URL): a webhook cannot send the credentials elsewhere. Bounded by ``media.MAX_MEDIA_BYTES``;
        raises ``ProviderApiError`` (404 once Vonage's 48 hours are over)."""
        if not trusted_media_url(media.ref, self.base_url, MEDIA_HOSTS):
            host = urlsplit(media.ref).hostname if media.ref else None
            raise ProviderApiError(None, None, f"the media URL is not on Vonage's hosts: {host}")
        content, content_type = await download(self._http, media.ref, {"Authorization": self.authorization()})
        return content, mime_of(content_type, media.mime_type)

    async def mark_read(self, provider_message_id: str) -> bool:
        """``PATCH /v1/messages/{message_uuid}`` ``{"status": "read"}`` (spec ``UpdateMessage``): the user
        sees blue ticks. Vonage answers 202. The call must reach the regional host where the number lives
        (``api-eu.vonage.com``, …: the integration's ``base_url``), and the spec lists only JWT for it. False,
        logged, when it is refused or Vonage cannot be reached."""
        if not _MESSAGE_UUID.fullmatch(provider_message_id):
            return False
        try:
            response = await self._http.patch(
                f"{self.url}/{provider_message_id}",
                json={"status": "read"},
                headers={"Authorization": self.authorization()},
                timeout=self._timeout,
            )
        except httpx.HTTPError as exc:
            log.warning("vonage mark_read %s: %s", provider_message_id, type(exc).__name__)
            return False
        if not response.is_success:
            problem = _problem(response)
            log.warning(
                "vonage mark_read %s: HTTP %s %s",
                provider_message_id,
                response.status_code,
                problem_code(problem),
            )
            return False
        return True

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()


# --- the plug-in ------------------------------------------------------------------------------------


class VonageSettings(SenderSettings):
    sender: str = shaped(
        r"\s*\+?\d{6,15}\s*",
        "the WhatsApp number in E.164 digits, e.g. 447700900000",
        description="The WhatsApp business number messages are sent from, in E.164 digits.",
    )
    base_url: str = Field(
        DEFAULT_BASE_URL,
        title="Base URL",
        description="The Messages API host: one of Vonage's (api.nexmo.com, api-eu.vonage.com, …, "
        "messages-sandbox.nexmo.com) or a host in TIDINGS_EXTRA_PROVIDER_HOSTS.",
    )
    application_id: str = shaped(
        r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}",
        "the Vonage application's id (a UUID)",
        default="",
        title="Application ID",
        description="The Vonage application's id, for JWT authentication (with secrets.private_key).",
    )
    legacy_template_names: bool = Field(
        False, description="Send templates as `namespace:name` (the v0.1 API) instead of the plain name."
    )


class VonageSecrets(ProviderSecrets):
    private_key: str = Field("", description="The application's PEM RSA private key (JWT authentication).")
    api_key: str = Field(
        "", title="API key", description="The account's API key (Basic authentication, with api_secret)."
    )
    api_secret: str = Field(
        "", title="API secret", description="The account's API secret (Basic authentication)."
    )
    signature_secret: str = Field(
        "", description="The account's signature secret: Vonage signs its webhooks with it (required)."
    )


def _on_its_route(route: str, payload: Mapping[str, Any]) -> None:
    """A status callback only on the status URL and an inbound message only on the inbound URL: a status
    read as an inbound message would record a reply nobody wrote. (Status callbacks carry ``status``;
    inbound messages never do, and carry ``message_type`` instead.)"""
    is_status = "status" in payload
    if route == "inbound" and is_status:
        raise WebhookError(
            400,
            "a status callback was posted to the inbound URL: give Vonage the status URL for statuses",
            code="wrong_webhook_route",
        )
    if route == "status" and not is_status and "message_type" in payload:
        raise WebhookError(
            400,
            "an inbound message was posted to the status URL: give Vonage the inbound URL for messages",
            code="wrong_webhook_route",
        )


def read_signed_webhook(
    route: str, headers: Mapping[str, str], body: bytes, signature_secret: str
) -> list[WebhookEvent]:
    """A Vonage webhook POST on its ``status`` or ``inbound`` route, verified, as its one event."""
    verify_webhook(headers, body, signature_secret)
    payload = json_object(body)
    _on_its_route(route, payload)
    return [parse_status(payload) if route == "status" else parse_inbound(payload)]


class Vonage(ProviderType[VonageSettings, VonageSecrets]):
    """Vonage Messages API v1: a status and an inbound webhook URL, no template listing."""

    kind = "vonage"
    title = "Vonage"
    settings_model = VonageSettings
    secrets_model = VonageSecrets
    default_rate = 30.0
    capabilities = Capabilities(read_receipts=True)
    # Reference §1.1 and §1.9.
    hosts = frozenset(
        {
            "api.nexmo.com",
            "api-eu.nexmo.com",
            "api-us.nexmo.com",
            "api-ap.nexmo.com",
            "api.vonage.com",
            "api-eu.vonage.com",
            "api-us.vonage.com",
            "api-ap.vonage.com",
            "messages-sandbox.nexmo.com",
        }
    )
    base_paths = ("", "/", "/v1", "/v1/")
    webhook_routes = ("status", "inbound")
    sender_field = "sender"

    def check(self, settings: VonageSettings, secrets: VonageSecrets) -> None:
        jwt_auth = bool(settings.application_id) and bool(secrets.private_key)
        basic = bool(secrets.api_key) and bool(secrets.api_secret)
        if not (jwt_auth or basic):
            raise ValueError(
                "vonage needs settings.application_id with secrets.private_key (JWT), "
                "or secrets.api_key with secrets.api_secret (Basic)"
            )
        if settings.application_id and not secrets.private_key:
            raise ValueError("vonage: secrets.private_key is required with application_id")
        if not secrets.signature_secret:
            raise ValueError("vonage: secrets.signature_secret is required to verify webhooks")
        if secrets.private_key:  # it must be a PEM RSA private key that signs an application JWT
            try:
                key = load_private_key(secrets.private_key)
                jwt.encode({"application_id": settings.application_id, "iat": 0}, key, algorithm="RS256")
            except (ValueError, TypeError, jwt.PyJWTError) as exc:
                raise CredentialsError(
                    f"vonage: secrets.{exc}"
                    if str(exc).startswith("private_key")
                    else f"vonage: secrets.private_key cannot sign a JWT: {exc}"
                ) from None

    def build(self, settings: VonageSettings, secrets: VonageSecrets, deployment: Deployment) -> Provider:
        return VonageProvider(
            sender=settings.sender,
            base_url=settings.base_url,
            application_id=settings.application_id or None,
            private_key=secrets.private_key or None,
            api_key=secrets.api_key or None,
            api_secret=secrets.api_secret or None,
            legacy_template_names=settings.legacy_template_names,
            http=deployment.http,
        )

    def read_webhook(
        self,
        route: str,
        headers: Mapping[str, str],
        body: bytes,
        settings: VonageSettings,
        secrets: VonageSecrets,
    ) -> list[WebhookEvent]:
        return read_signed_webhook(route, headers, body, secrets.signature_secret)
