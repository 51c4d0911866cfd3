"""The built-in sandbox: a WhatsApp stand-in for trying Tidings without a provider account.

It accepts a send at once and answers with a message id, then plays what WhatsApp would do —
submitted, delivered, read, some failures, some replies — by calling Tidings' own webhook endpoints
over HTTP, in Vonage's payload shapes and signed as Vonage signs them (HS256 JWT with a payload hash),
so the real webhook path is exercised. Its rates and latency are settings; with a seed, what happens to
a message depends only on the seed, the number and our reference, whatever the order of sending.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import secrets as random_tokens
import struct
import uuid
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import Field

from tidings import config
from tidings.providers.base import (
    MediaRef,
    OutboundMessage,
    Provider,
    ProviderApiError,
    SendResult,
    WebhookEvent,
)
from tidings.providers.plugin import (
    Capabilities,
    Deployment,
    ProviderSecrets,
    ProviderSettings,
    ProviderType,
    TemplateDraft,
)
from tidings.providers.vonage import read_signed_webhook, sign_webhook

log = logging.getLogger(__name__)

SANDBOX_NUMBER = "14157386102"
REPLIES = ("Thanks!", "What time does it start?", "Can I change my seat?", "👍", "See you there")
FAILURES = (("1300", "Not part of the provider network"), ("1330", "Delivery failed"))
WEBHOOK_CONNECTIONS = 16


# --- the sandbox's users ------------------------------------------------------------------------------
#
# What a sandbox user writes reaches the account as Vonage would deliver it: an inbound webhook in Vonage's
# shape (spec ``inboundWhatsAppMessageCommon`` with the message type's object), signed with the sandbox's
# secret and POSTed to the account's own inbound URL. The sandbox's auto-replies and ``user_says`` (the
# dashboard's, the CLI's and the browser tests' way to write as a user) build and post it the same way.

USER_KINDS = (
    "text",
    "button",
    "reply",
    "image",
    "video",
    "audio",
    "document",
    "sticker",
    "location",
    "reaction",
    "contacts",
)
# Tidings' kind of a file, Vonage's message type for it, its file extension and MIME type.
_MEDIA = {
    "image": ("image", "png", "image/png"),
    "sticker": ("sticker", "png", "image/png"),
    "document": ("file", "pdf", "application/pdf"),
    "audio": ("audio", "wav", "audio/wav"),
    "video": ("video", "mp4", "video/mp4"),
}
MEDIA_SCHEME = "sandbox:media/"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def webhook_base_url(public_url: str, account_id: str) -> str:
    """Where the sandbox posts an account's webhooks: ``<base>/status`` and ``<base>/inbound``."""
    return f"{public_url.rstrip('/')}/webhooks/{Sandbox.kind}/{account_id}"


def media_url(kind: str, name: str | None = None) -> str:
    """A sandbox media reference, ``sandbox:media/<kind>/<name>.<ext>``: what a sandbox user's file is
    (``MediaRef.ref``); ``SandboxProvider.fetch_media`` gives its bytes."""
    if kind not in _MEDIA:
        raise ValueError(f"the sandbox has no {kind!r} files (one of {', '.join(_MEDIA)})")
    ext = _MEDIA[kind][1]
    given = (name or uuid.uuid4().hex[:12]).removesuffix(f".{ext}")
    stem = "".join(c for c in given if c.isalnum() or c in "-_")[:60] or "file"
    return f"{MEDIA_SCHEME}{kind}/{stem}.{ext}"


def _png(seed: bytes, size: int = 64) -> bytes:
    """A ``size`` x ``size`` PNG of one colour taken from ``seed``."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    rgb = hashlib.sha256(seed).digest()[:3]
    raw = b"".join(b"\x00" + rgb * size for _ in range(size))
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def _pdf(title: str) -> bytes:
    """A one-page PDF (no text drawn: the smallest a reader opens)."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 100] >>",
        f"<< /Title ({''.join(c for c in title if c.isalnum())[:40]}) >>".encode(),
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + obj + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    size = len(objects) + 1
    out += f"trailer\n<< /Size {size} /Root 1 0 R /Info 4 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def _wav(samples: int = 800, rate: int = 8000) -> bytes:
    """A tenth of a second of silence, 8 kHz mono 8-bit PCM."""
    data = b"\x80" * samples
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate, 1, 8)
    body = (
        b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    )
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _mp4() -> bytes:
    """An MP4 file-type box and an empty movie box: a valid, empty MP4 (no frame to show)."""
    ftyp = b"isom" + struct.pack(">I", 512) + b"isomiso2mp41"
    return struct.pack(">I", 8 + len(ftyp)) + b"ftyp" + ftyp + struct.pack(">I", 8) + b"moov"


def sample_media(ref: str) -> tuple[bytes, str] | None:
    """The bytes and MIME type of a sandbox media reference (``media_url``), None for anything else."""
    if not ref.startswith(MEDIA_SCHEME):
        return None
    kind, _, name = ref[len(MEDIA_SCHEME) :].partition("/")
    if kind not in _MEDIA or not name:
        return None
    mime = _MEDIA[kind][2]
    if kind in ("image", "sticker"):
        return _png(ref.encode()), mime
    if kind == "document":
        return _pdf(name), mime
    if kind == "audio":
        return _wav(), mime
    return _mp4(), mime


def user_message(
    from_phone: str,
    text: str = "",
    kind: str = "text",
    context: str | None = None,
    *,
    payload: str | None = None,
    media: str | None = None,
    filename: str | None = None,
    latitude: float = 52.3731,
    longitude: float = 4.8922,
    contacts: list[dict[str, Any]] | None = None,
    profile_name: str = "Sandbox user",
    message_uuid: str | None = None,
) -> dict[str, Any]:
    """The inbound webhook Vonage would send for a user's message of ``kind`` (one of ``USER_KINDS``):

    - ``text``: ``text``.
    - ``button`` (a template's quick reply): ``text`` is its label, ``payload`` its payload (the label when
      not given); ``reply`` (an interactive reply): ``payload`` is the row's or button's id.
    - a file (``image``, ``video``, ``audio``, ``document``, ``sticker``): ``media`` is its URL (a new
      ``media_url`` when not given), ``text`` its caption, ``filename`` a document's name.
    - ``location``: at ``latitude``, ``longitude``, ``text`` its name.
    - ``reaction``: ``text`` is the emoji ("" removes the reaction), ``context`` the message reacted to.
    - ``contacts``: ``contacts`` as WhatsApp's contact objects (one made from ``text`` when not given).

    ``context`` is the provider id of the message the user answers (a reaction needs one)."""
    if kind not in USER_KINDS:
        raise ValueError(f"a sandbox user cannot send a {kind!r} (one of {', '.join(USER_KINDS)})")
    message: dict[str, Any] = {
        "channel": "whatsapp",
        "message_uuid": message_uuid or str(uuid.uuid4()),
        "to": SANDBOX_NUMBER,
        "from": from_phone.strip().removeprefix("+"),
        "timestamp": _now(),
        "context_status": "available" if context else "none",
        "profile": {"name": profile_name},
    }
    if context:
        message["context"] = {"message_uuid": context, "message_from": SANDBOX_NUMBER}
    if kind == "text":
        message.update(message_type="text", text=text)
    elif kind == "button":
        button = {"payload": payload or text, "text": text or payload or "", "subtype": "quick_reply"}
        message.update(message_type="button", button=button)
    elif kind == "reply":
        message.update(message_type="reply", reply={"id": payload or text, "title": text or payload or ""})
    elif kind in _MEDIA:
        vonage_type = _MEDIA[kind][0]
        content: dict[str, Any] = {"url": media or media_url(kind, filename)}
        if text and kind != "audio" and kind != "sticker":
            content["caption"] = text
        if filename and kind == "document":
            content["name"] = filename
        message.update(message_type=vonage_type, **{vonage_type: content})
    elif kind == "location":
        location: dict[str, Any] = {"lat": latitude, "long": longitude}
        if text:
            location["name"] = text
        message.update(message_type="location", location=location)
    elif kind == "reaction":
        if not context:
            raise ValueError("a reaction needs the message it reacts to (context)")
        reaction = {"action": "react", "emoji": text} if text else {"action": "unreact"}
        message.update(message_type="reaction", reaction=reaction)
    else:  # contacts
        shared = contacts or [
            {
                "name": {"formatted_name": text or "Sandbox friend", "first_name": text or "Sandbox"},
                "phones": [{"phone": "+14155550100", "type": "work"}],
            }
        ]
        message.update(message_type="contacts", contacts=shared)
    return message


async def post_webhook(
    http: httpx.AsyncClient,
    url: str,
    payload: Mapping[str, Any],
    secret: str,
    *,
    attempts: int = 6,
    gate: asyncio.Semaphore | None = None,
) -> int | None:
    """POST one webhook signed as Vonage signs it (``vonage.sign_webhook``); like Vonage, retry on 429 and
    5xx (and on connection errors), ``attempts`` times in all with a doubling pause. The last answer's
    status, or None when no answer came. ``gate`` bounds the requests in flight (not the pauses)."""
    body = json.dumps(payload).encode()
    status: int | None = None
    for attempt in range(attempts):
        headers = {
            "Authorization": sign_webhook(body, secret, api_key="sandbox"),
            "Content-Type": "application/json",
        }
        try:
            if gate is None:
                response = await http.post(url, content=body, headers=headers)
            else:
                async with gate:
                    response = await http.post(url, content=body, headers=headers)
            status = response.status_code
            if status < 300:
                return status
            if status != 429 and status < 500:
                log.warning("sandbox: webhook %s refused with %s", url, status)
                return status
        except httpx.HTTPError as exc:
            log.debug("sandbox: webhook %s failed: %s", url, exc)
        if attempt + 1 < attempts:
            await asyncio.sleep(0.2 * 2**attempt)
    log.warning("sandbox: gave up delivering a webhook to %s", url)
    return status


class SandboxUserError(RuntimeError):
    """What a sandbox user wrote did not reach the account: ``status`` is the webhook's answer (None when
    none came)."""

    def __init__(self, status: int | None, url: str) -> None:
        super().__init__(
            f"the sandbox could not deliver the message to {url}: "
            + (f"HTTP {status}" if status is not None else "no answer")
        )
        self.status = status


async def user_says(
    webhook_base: str,
    signature_secret: str,
    from_phone: str,
    text: str = "",
    kind: str = "text",
    context: str | None = None,
    media_kind: str | None = None,
    *,
    http: httpx.AsyncClient | None = None,
    attempts: int = 3,
    **details: Any,
) -> str:
    """A sandbox user at ``from_phone`` writes to the business: the inbound webhook of ``user_message``
    (``kind``; ``media_kind`` names the file kind instead, e.g. ``kind="media", media_kind="image"``;
    ``details`` are ``user_message``'s keyword arguments: payload, media, filename, latitude, longitude,
    contacts, profile_name), signed with the integration's ``signature_secret`` and POSTed to
    ``<webhook_base>/inbound`` (``webhook_base_url``). Returns the message's provider id (its
    ``message_uuid``); raises ``SandboxUserError`` when the webhook was not taken, ``ValueError`` for a kind
    the sandbox cannot send. ``http``: the client to post with (an ``httpx.ASGITransport`` one in tests),
    else a short-lived one."""
    message = user_message(from_phone, text, media_kind or kind, context, **details)
    url = f"{webhook_base.rstrip('/')}/inbound"
    client = http or httpx.AsyncClient(timeout=15)
    try:
        status = await post_webhook(client, url, message, signature_secret, attempts=attempts)
    finally:
        if http is None:
            await client.aclose()
    if status is None or status >= 300:
        raise SandboxUserError(status, url)
    return str(message["message_uuid"])


def user_says_blocking(*args: Any, **kwargs: Any) -> str:
    """``user_says`` for code without an event loop (the CLI): runs it to the end in a new loop."""
    return asyncio.run(user_says(*args, **kwargs))


class SandboxProvider(Provider):
    kind = "sandbox"

    def __init__(
        self,
        *,
        webhook_base: str,
        signature_secret: str,
        settings: config.SandboxSettings,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.webhook_base = webhook_base.rstrip("/")
        self.secret = signature_secret
        self.settings = settings
        # Its own small pool: a few kept-alive connections carry every webhook (httpx slows down a lot
        # when hundreds of requests queue over hundreds of connections).
        self._http = http or httpx.AsyncClient(
            timeout=15, limits=httpx.Limits(max_connections=WEBHOOK_CONNECTIONS)
        )
        self._own_http = http is None
        self._posting = asyncio.Semaphore(WEBHOOK_CONNECTIONS)
        self._tasks: set[asyncio.Task[None]] = set()
        self.log: Counter[str] = Counter()  # what it reported: submitted, delivered, read, failed, replied
        self.marked_read: list[str] = []  # the inbound message ids mark_read was called with

    @property
    def pending(self) -> int:
        """Messages whose story is still being played."""
        return len(self._tasks)

    def _rng(self, message: OutboundMessage) -> random.Random:
        if self.settings.seed is None:
            return random.Random()
        return random.Random(f"{self.settings.seed}:{message.to}:{message.client_ref}")

    async def send(self, message: OutboundMessage) -> SendResult:
        digits = message.to.removeprefix("+")
        if not (digits.isdigit() and 7 <= len(digits) <= 15):
            return SendResult.failed("1430", f"Invalid recipient {message.to!r}")
        if not message.template_name and not message.text and message.media is None:
            return SendResult.failed("1440", "Invalid message type: neither a template, text nor media")
        message_uuid = str(uuid.uuid4())
        task = asyncio.create_task(self._play(message_uuid, message, self._rng(message)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return SendResult.accepted(message_uuid)

    async def _pause(self, rng: random.Random) -> None:
        await asyncio.sleep(rng.uniform(self.settings.min_latency, self.settings.max_latency))

    async def _play(self, message_uuid: str, message: OutboundMessage, rng: random.Random) -> None:
        s = self.settings
        digits = message.to.removeprefix("+")

        def status(name: str, **extra: Any) -> dict[str, Any]:
            return {
                "message_uuid": message_uuid,
                "to": digits,
                "from": SANDBOX_NUMBER,
                "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "status": name,
                "channel": "whatsapp",
                "client_ref": message.client_ref,
                **extra,
            }

        try:
            await self._pause(rng)
            await self._post("status", status("submitted"), "submitted")
            if rng.random() < s.failure_rate:
                code, detail = rng.choice(FAILURES)
                await self._pause(rng)
                error = {
                    "type": f"https://developer.vonage.com/api-errors/messages#{code}",
                    "title": code,
                    "detail": detail,
                    "instance": str(uuid.uuid4()),
                }
                await self._post("status", status("rejected", error=error), "failed")
                return
            if rng.random() >= s.delivery_rate:
                return
            await self._pause(rng)
            await self._post(
                "status", status("delivered", usage={"currency": "EUR", "price": "0"}), "delivered"
            )
            if rng.random() >= s.read_rate:
                return
            await self._pause(rng)
            await self._post("status", status("read"), "read")
            if rng.random() >= s.reply_rate:
                return
            await self._pause(rng)
            reply = user_message(digits, rng.choice(REPLIES), context=message_uuid)
            await self._post("inbound", reply, "replied")
        except asyncio.CancelledError:
            raise
        except Exception:  # the sandbox must never take the worker down
            log.exception("sandbox: could not play message %s", message_uuid)

    async def _post(self, kind: str, payload: dict[str, Any], counted_as: str) -> None:
        """Deliver one webhook; like Vonage, retry on 429 and 5xx (and on connection errors)."""
        url = f"{self.webhook_base}/{kind}"
        status = await post_webhook(self._http, url, payload, self.secret, gate=self._posting)
        if status is not None and status < 300:
            self.log[counted_as] += 1

    async def fetch_media(self, media: MediaRef) -> tuple[bytes, str]:
        """The file behind a sandbox media reference (``sandbox:media/<kind>/<name>``, see ``media_url``):
        small, valid and always the same for the same reference (a PNG for an image or a sticker, a PDF
        for a document, a WAV for audio), so that the inbox can show it."""
        found = sample_media(media.ref)
        if found is None:
            raise ProviderApiError(404, None, f"the sandbox has no media {media.ref[:100]!r}")
        return found

    async def mark_read(self, provider_message_id: str) -> bool:
        """Recorded in ``marked_read`` (the sandbox has no user to show blue ticks to)."""
        self.marked_read.append(provider_message_id)
        return True

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait until every message's story has been played."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        if self._own_http:
            await self._http.aclose()


# --- the plug-in ------------------------------------------------------------------------------------


class SandboxSettings(ProviderSettings):
    """The sandbox has no settings of its own: how it behaves is the deployment's (``TIDINGS_SANDBOX_*``)."""


class SandboxSecrets(ProviderSecrets):
    signature_secret: str = Field(
        "", description="Made by Tidings: the sandbox signs its webhooks with it. A value given is ignored."
    )


class Sandbox(ProviderType[SandboxSettings, SandboxSecrets]):
    """The built-in stand-in: Vonage's webhook shapes on the same two routes, its own signing secret,
    templates approved at the next sync, no rate limit."""

    kind = "sandbox"
    title = "the sandbox"
    settings_model = SandboxSettings
    secrets_model = SandboxSecrets
    capabilities = Capabilities(submit_templates=True, read_receipts=True)
    webhook_routes = ("status", "inbound")

    def complete(
        self, settings: SandboxSettings, secrets: dict[str, str], saved: Mapping[str, str]
    ) -> tuple[SandboxSettings, dict[str, str]]:
        # The sandbox signs its webhooks with a secret of our own, kept across saves.
        return settings, {
            "signature_secret": saved.get("signature_secret") or random_tokens.token_urlsafe(32)
        }

    def build(self, settings: SandboxSettings, secrets: SandboxSecrets, deployment: Deployment) -> Provider:
        return SandboxProvider(
            webhook_base=webhook_base_url(deployment.app.public_url, deployment.account_id),
            signature_secret=secrets.signature_secret,
            settings=deployment.app.sandbox,
        )

    def read_webhook(
        self,
        route: str,
        headers: Mapping[str, str],
        body: bytes,
        settings: SandboxSettings,
        secrets: SandboxSecrets,
    ) -> list[WebhookEvent]:
        return read_signed_webhook(route, headers, body, secrets.signature_secret)

    async def submit_templates(
        self,
        settings: SandboxSettings,
        secrets: SandboxSecrets,
        deployment: Deployment,
        drafts: Sequence[TemplateDraft],
    ) -> list[str]:
        """The sandbox plays the provider's review: it approves every template at once."""
        return ["APPROVED" for _ in drafts]
