"""A sandbox user writes to the business (``sandbox.user_says``): a Vonage-shaped inbound webhook, valid per
Vonage's spec, signed with the account's sandbox secret and POSTed to the real server's inbound URL; and the
sandbox's own media (``fetch_media``), read receipts and media sends."""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import select

from tests.standins.openapi import vonage_inbound_validator
from tidings.accounts.models import Integration
from tidings.accounts.service import NewAccount
from tidings.config import SandboxSettings
from tidings.conversations.models import InboundMessage
from tidings.db import Database
from tidings.providers.base import (
    InboundReply,
    MediaRef,
    OutboundMedia,
    OutboundMessage,
    Outcome,
    ProviderApiError,
)
from tidings.providers.sandbox import (
    USER_KINDS,
    SandboxProvider,
    SandboxUserError,
    media_url,
    sample_media,
    user_message,
    user_says,
    user_says_blocking,
    webhook_base_url,
)
from tidings.secrets import SecretBox

pytestmark = pytest.mark.anyio
USER = "+14155550123"
SANDBOX = SandboxSettings(min_latency=0.0, max_latency=0.01, seed="tests")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _secret(db: Database, box: SecretBox, account: NewAccount) -> str:
    with db.session() as session:
        integration = session.get(Integration, account.account_id)
        assert integration is not None and integration.kind == "sandbox"
        return str(box.open(integration.secrets)["signature_secret"])


@pytest.fixture
def heard(live: tuple[str, FastAPI], monkeypatch: pytest.MonkeyPatch) -> Iterator[list[InboundReply]]:
    """The inbound messages the live server's webhook route parsed (still applied as usual)."""
    seen: list[InboundReply] = []
    batcher = live[1].state.webhooks
    apply = batcher.apply

    async def recording(account_id: str, provider: str, events: Any) -> dict[str, int]:
        seen.extend(e for e in events if isinstance(e, InboundReply))
        return await apply(account_id, provider, events)

    monkeypatch.setattr(batcher, "apply", recording)
    yield seen


def test_every_user_message_is_a_valid_vonage_inbound_webhook() -> None:
    answered = str(uuid.uuid4())
    for kind in USER_KINDS:
        message = user_message(USER, "\U0001f44d" if kind == "reaction" else "Hi", kind, context=answered)
        assert vonage_inbound_validator().errors(message) == [], kind
        assert message["from"] == "14155550123" and message["context"]["message_uuid"] == answered
    with pytest.raises(ValueError, match="cannot send"):
        user_message(USER, kind="hologram")
    with pytest.raises(ValueError, match="needs the message it reacts to"):
        user_message(USER, "\U0001f44d", "reaction")


async def test_a_sandbox_user_writes_every_kind_to_the_account(
    live: tuple[str, FastAPI],
    db: Database,
    box: SecretBox,
    account: NewAccount,
    heard: list[InboundReply],
) -> None:
    url, _ = live
    base, secret = webhook_base_url(url, account.account_id), _secret(db, box, account)
    said = await user_says(base, secret, USER, "Hello there")
    tapped = await user_says(base, secret, USER, "Stop promotions", "button", payload="STOP_PROMOS")
    photo = await user_says(base, secret, USER, "the dent", media_kind="image")
    pdf = await user_says(base, secret, USER, "", "document", filename="invoice.pdf")
    pin = await user_says(base, secret, USER, "Office", "location", latitude=52.37, longitude=4.89)
    liked = await user_says(base, secret, USER, "\U0001f44d", "reaction", context=said)
    assert len({said, tapped, photo, pdf, pin, liked}) == 6

    by_id = {reply.provider_message_id: reply for reply in heard}
    assert (by_id[said].kind, by_id[said].text, by_id[said].from_phone) == ("text", "Hello there", USER)
    assert by_id[said].profile_name == "Sandbox user"
    assert (by_id[tapped].kind, by_id[tapped].text, by_id[tapped].payload) == (
        "button",
        "Stop promotions",
        "STOP_PROMOS",
    )
    image = by_id[photo]
    assert (image.kind, image.text) == ("image", "the dent") and image.media is not None
    assert image.media.ref.startswith("sandbox:media/image/")
    document = by_id[pdf]
    assert document.kind == "document" and document.media is not None
    assert document.media.filename == "invoice.pdf" and document.media.ref.endswith("/invoice.pdf")
    assert by_id[pin].kind == "location"
    assert by_id[pin].data == {"latitude": 52.37, "longitude": 4.89, "name": "Office", "address": None}
    assert by_id[pin].text == "\U0001f4cd Office"
    assert (by_id[liked].kind, by_id[liked].text, by_id[liked].context_message_id) == (
        "reaction",
        "\U0001f44d",
        said,
    )
    assert by_id[liked].data == {"emoji": "\U0001f44d", "message_id": said}

    with db.session() as session:
        kept = dict(
            session.execute(
                select(InboundMessage.provider_message_id, InboundMessage.kind).where(
                    InboundMessage.account_id == account.account_id, InboundMessage.provider == "sandbox"
                )
            ).all()
        )
    assert kept == {
        said: "text",
        tapped: "button",
        photo: "image",
        pdf: "document",
        pin: "location",
        liked: "reaction",
    }

    # The inbox fetches the photo through the account's provider: the sandbox's own bytes.
    provider = SandboxProvider(webhook_base=base, signature_secret=secret, settings=SANDBOX)
    content, mime = await provider.fetch_media(image.media)
    assert mime == "image/png" and _png_size(content) == (64, 64)
    await provider.aclose()


async def test_a_wrong_secret_is_refused(live: tuple[str, FastAPI], account: NewAccount) -> None:
    base = webhook_base_url(live[0], account.account_id)
    with pytest.raises(SandboxUserError) as refused:
        await user_says(base, "not-the-secret", USER, "Hello")
    assert refused.value.status == 401


def test_user_says_from_code_without_a_loop(
    live: tuple[str, FastAPI], db: Database, box: SecretBox, account: NewAccount, heard: list[InboundReply]
) -> None:
    base = webhook_base_url(live[0], account.account_id)
    message_id = user_says_blocking(base, _secret(db, box, account), USER, "From the CLI")
    assert [(r.provider_message_id, r.text) for r in heard] == [(message_id, "From the CLI")]


def _png_size(content: bytes) -> tuple[int, int]:
    """The size of a PNG whose chunks' CRCs and image data check out (AssertionError otherwise)."""
    assert content[:8] == b"\x89PNG\r\n\x1a\n"
    at, size, data = 8, (0, 0), b""
    while at < len(content):
        (length,) = struct.unpack(">I", content[at : at + 4])
        tag, body = content[at + 4 : at + 8], content[at + 8 : at + 8 + length]
        assert struct.unpack(">I", content[at + 8 + length : at + 12 + length])[0] == zlib.crc32(tag + body)
        if tag == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif tag == b"IDAT":
            data += body
        at += 12 + length
    width, height = size
    assert len(zlib.decompress(data)) == height * (1 + 3 * width)
    return size


async def test_sample_media_is_small_valid_and_the_same_each_time() -> None:
    provider = SandboxProvider(webhook_base="http://127.0.0.1:9", signature_secret="s", settings=SANDBOX)
    ref = media_url("image", "receipt")
    assert ref == "sandbox:media/image/receipt.png"
    first = await provider.fetch_media(MediaRef(ref=ref))
    assert first == await provider.fetch_media(MediaRef(ref=ref)) and _png_size(first[0]) == (64, 64)
    assert (await provider.fetch_media(MediaRef(ref=media_url("sticker"))))[1] == "image/png"
    pdf, mime = await provider.fetch_media(MediaRef(ref=media_url("document", "invoice.pdf")))
    assert mime == "application/pdf" and pdf.startswith(b"%PDF-1.4") and pdf.rstrip().endswith(b"%%EOF")
    wav, mime = await provider.fetch_media(MediaRef(ref=media_url("audio")))
    assert mime == "audio/wav" and wav[:4] == b"RIFF" and wav[8:12] == b"WAVE"
    assert sample_media("https://example.com/x.png") is None
    for missing in (
        "sandbox:media/hologram/x.bin",
        "sandbox:media/image/",
        "https://api.nexmo.com/v3/media/x",
    ):
        with pytest.raises(ProviderApiError) as gone:
            await provider.fetch_media(MediaRef(ref=missing))
        assert gone.value.status == 404
    assert await provider.mark_read("in-1") is True and await provider.mark_read("in-2") is True
    assert provider.marked_read == ["in-1", "in-2"]
    await provider.aclose()


async def test_the_sandbox_takes_a_media_send(
    live: tuple[str, FastAPI], db: Database, box: SecretBox, account: NewAccount
) -> None:
    base = webhook_base_url(live[0], account.account_id)
    provider = SandboxProvider(
        webhook_base=base, signature_secret=_secret(db, box, account), settings=SANDBOX
    )
    media = OutboundMedia("image", "https://tidings.example.com/media/1/ticket.png")
    result = await provider.send(OutboundMessage(client_ref="c1", to=USER, media=media))
    assert result.outcome is Outcome.ACCEPTED and result.provider_message_id
    empty = await provider.send(OutboundMessage(client_ref="c2", to=USER))
    assert (empty.outcome, empty.error_code) == (Outcome.FAILED, "1440")
    await provider.aclose()
