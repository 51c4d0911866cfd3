"""Every kind of inbound message Meta and Vonage document, through the real webhook route.

Each payload is the official specification's own example where it has one, else built to its schema, and is
checked against that schema (``meta_inbound_validator``, ``vonage_inbound_validator``) before it is signed as
the provider signs it and POSTed to ``/webhooks/<kind>/<account>``. The events the route parsed are taken
where it hands them to the ledger (``WebhookBatcher.apply``, which still applies them) and compared whole.
A kind Tidings does not know is kept as ``unsupported``, never refused.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.conftest import LOOPBACK_PROVIDER_HOSTS
from tests.standins.meta import INBOUND_SCHEMAS, envelope, inbound_example, meta_inbound_validator, signed
from tests.standins.openapi import vonage_inbound_validator
from tidings.accounts.integrations import configure
from tidings.accounts.service import NewAccount
from tidings.app import asgi_app
from tidings.db import Database
from tidings.providers.base import InboundReply, MediaRef, WebhookEvent
from tidings.providers.vonage import sign_webhook
from tidings.secrets import SecretBox

APP_SECRET = "meta-app-secret"
SIGNATURE_SECRET = "vonage-signature-secret"
API_KEY = "abcd1234"
PHONE_NUMBER_ID = "106540352242922"
CONTACTS = [{"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234"}]
OURS = "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJFNjk2OTMwNEZCQjhGMzUyQUYA"  # a message the business sent


@pytest.fixture
def events(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> list[WebhookEvent]:
    """The events of every webhook the route accepts, as it hands them on (they are still applied)."""
    seen: list[WebhookEvent] = []
    batcher = app.state.webhooks
    apply = batcher.apply

    async def recording(account_id: str, provider: str, parsed: Any) -> dict[str, int]:
        seen.extend(parsed)
        return await apply(account_id, provider, parsed)

    monkeypatch.setattr(batcher, "apply", recording)
    return seen


@pytest.fixture
def http(app: FastAPI, events: list[WebhookEvent]) -> Iterator[TestClient]:
    with TestClient(asgi_app(app)) as client:
        yield client


def _configure(db: Database, box: SecretBox, account: NewAccount, kind: str) -> None:
    settings: dict[str, Any]
    if kind == "meta":
        settings, secrets = (
            {"phone_number_id": PHONE_NUMBER_ID},
            {"access_token": "token", "app_secret": APP_SECRET},
        )
    else:
        settings = {"sender": "447700900000"}
        secrets = {"api_key": API_KEY, "api_secret": "secret", "signature_secret": SIGNATURE_SECRET}
    with db.session() as session:
        configure(
            session,
            box,
            account.account_id,
            kind=kind,
            settings=settings,
            secrets=secrets,
            extra_hosts=LOOPBACK_PROVIDER_HOSTS,
        )


# --- Meta ---------------------------------------------------------------------------------------------


def _meta_item(message_type: str, **content: Any) -> dict[str, Any]:
    """The spec's example of ``message_type`` (or a bare item) with ``content`` merged in."""
    item = inbound_example(message_type) or {
        "from": "16505551234",
        "id": f"wamid.{uuid.uuid4().hex}",
        "timestamp": "1744344496",
    }
    item["type"] = message_type
    item.update(content)
    return item


META_MEDIA = {
    "mime_type": "image/jpeg",
    "sha256": "SfInY0gGKTsJlUWbwxC1k+FAD0FZHvzwfpvO0zX0GUI=",
    "id": "1003383421387256",
}

META_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("text", _meta_item("text"), {"kind": "text", "text": "Does it come in another color?"}),
    (
        "button",
        _meta_item("button"),
        {"kind": "button", "text": "Unsubscribe", "payload": "Unsubscribe", "context_message_id": OURS},
    ),
    (
        "list_reply",
        _meta_item("interactive"),
        {
            "kind": "interactive",
            "text": "Priority Mail Express",
            "payload": "priority_express",
            "context_message_id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJGMzEyNzhENTZDMzNGODlDRDgA",
        },
    ),
    (
        "button_reply",
        _meta_item(
            "interactive",
            interactive={"type": "button_reply", "button_reply": {"id": "cancel-button", "title": "Cancel"}},
        ),
        {"kind": "interactive", "text": "Cancel", "payload": "cancel-button"},
    ),
    (
        "image",
        _meta_item("image"),
        {
            "kind": "image",
            "text": "Taj Mahal",
            "media": MediaRef(
                ref="1003383421387256",
                mime_type="image/jpeg",
                sha256="SfInY0gGKTsJlUWbwxC1k+FAD0FZHvzwfpvO0zX0GUI=",
            ),
        },
    ),
    (
        "video",
        _meta_item("video", video={**META_MEDIA, "mime_type": "video/mp4", "caption": "My vacation video"}),
        {"kind": "video", "text": "My vacation video"},
    ),
    (
        "audio",
        _meta_item("audio", audio={**META_MEDIA, "mime_type": "audio/ogg; codecs=opus", "voice": True}),
        {"kind": "audio", "text": ""},
    ),
    (
        "document",
        _meta_item(
            "document", document={**META_MEDIA, "mime_type": "application/pdf", "filename": "receipt.pdf"}
        ),
        {"kind": "document", "text": ""},
    ),
    (
        "sticker",
        _meta_item("sticker", sticker={**META_MEDIA, "mime_type": "image/webp", "animated": False}),
        {"kind": "sticker", "text": ""},
    ),
    (
        "reaction",
        _meta_item("reaction"),
        {
            "kind": "reaction",
            "text": "\U0001f44d",
            "data": {
                "emoji": "\U0001f44d",
                "message_id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI0RTJEOTc2ODVERUY5RDlGNkYA",
            },
            "context_message_id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI0RTJEOTc2ODVERUY5RDlGNkYA",
        },
    ),
    (
        "reaction_removed",
        _meta_item("reaction", reaction={"message_id": OURS, "emoji": ""}),
        {
            "kind": "reaction",
            "text": "",
            "data": {"emoji": "", "message_id": OURS},
            "context_message_id": OURS,
        },
    ),
    (
        "location",
        _meta_item("location"),
        {
            "kind": "location",
            "text": "\U0001f4cd Philz Coffee, 101 Forest Ave, Palo Alto, CA 94301",
            "data": {
                "latitude": 37.44221496582,
                "longitude": -122.16165924072,
                "name": "Philz Coffee",
                "address": "101 Forest Ave, Palo Alto, CA 94301",
                "url": "https://philzcoffee.com/",
            },
        },
    ),
    (
        "contacts",
        _meta_item("contacts"),
        {
            "kind": "contacts",
            "text": "Lucía Gómez +1 (983) 555-2319",
            "data": {"contacts": inbound_example("contacts")["contacts"]},  # type: ignore[index]
        },
    ),
    (
        "unsupported",
        _meta_item("unsupported"),
        {"kind": "unsupported", "text": "", "data": {"type": "unsupported"}},
    ),
    (
        "order",  # a type Tidings does not read: kept, as unsupported
        _meta_item("order", order={"catalog_id": "1", "product_items": []}),
        {"kind": "unsupported", "text": "", "data": {"type": "order"}},
    ),
]


def _expected_media(item: dict[str, Any]) -> MediaRef | None:
    """A media item's ``MediaRef``: its id, MIME type, hash (and a document's filename)."""
    content = item.get(item["type"])
    if item["type"] not in ("image", "video", "audio", "document", "sticker"):
        return None
    assert isinstance(content, dict)
    return MediaRef(
        ref=content["id"],
        mime_type=content["mime_type"],
        filename=content.get("filename"),
        sha256=content["sha256"],
    )


@pytest.mark.parametrize(("case", "item", "expected"), META_CASES, ids=[c[0] for c in META_CASES])
def test_meta_inbound_kinds(
    db: Database,
    box: SecretBox,
    account: NewAccount,
    http: TestClient,
    events: list[WebhookEvent],
    case: str,
    item: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    # Unsupported types are not validated: the spec's UnsupportedMessage example fails its own ErrorObject
    # (no "type"), and "order" is one Tidings does not read.
    if item["type"] in INBOUND_SCHEMAS:
        assert meta_inbound_validator(item["type"]).errors(item) == []
    _configure(db, box, account, "meta")
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID},
        "contacts": CONTACTS,
        "messages": [item],
    }
    body, headers = signed(envelope({"field": "messages", "value": value}), APP_SECRET)
    answer = http.post(f"/webhooks/meta/{account.account_id}", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["inbound_new"] == 1
    reply: dict[str, Any] = {
        "provider_message_id": item["id"],
        "from_phone": "+16505551234",
        "timestamp": datetime.fromtimestamp(int(item["timestamp"]), tz=UTC),
        "profile_name": "Sheena Nelson",
        "context_message_id": item.get("context", {}).get("id"),
        "media": _expected_media(item),
    }
    assert events == [InboundReply(**(reply | expected))]


# --- Vonage -------------------------------------------------------------------------------------------

MEDIA_URL = "https://api-us.nexmo.com/v3/media/1b456509-974c-458b-aafa-45fc48a4d976"
ANSWERED = "aaaaaaaa-bbbb-4ccc-8ddd-0123456789ab"
VONAGE_CONTACT = {
    "name": {"formatted_name": "Bob Smith", "first_name": "Bob", "last_name": "Smith"},
    "phones": [{"phone": "1234567890", "type": "work"}],
    "emails": [{"email": "bob@example.com", "type": "work"}],
}

VONAGE_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("text", {"message_type": "text", "text": "Hello"}, {"kind": "text", "text": "Hello"}),
    (
        "button",
        {
            "message_type": "button",
            "button": {"payload": "STOP_PROMOS", "text": "Stop promotions", "subtype": "quick_reply"},
        },
        {"kind": "button", "text": "Stop promotions", "payload": "STOP_PROMOS"},
    ),
    (
        "reply",
        {"message_type": "reply", "reply": {"id": "row-1", "title": "9am", "description": "Select 9am"}},
        {"kind": "reply", "text": "9am", "payload": "row-1"},
    ),
    (
        "image",
        {"message_type": "image", "image": {"url": MEDIA_URL, "name": "image.jpg", "caption": "the dent"}},
        {"kind": "image", "text": "the dent", "media": MediaRef(ref=MEDIA_URL, filename="image.jpg")},
    ),
    (
        "video",
        {"message_type": "video", "video": {"url": MEDIA_URL, "name": "video.mp4"}},
        {"kind": "video", "text": "", "media": MediaRef(ref=MEDIA_URL, filename="video.mp4")},
    ),
    (
        "audio",
        {"message_type": "audio", "audio": {"url": MEDIA_URL}},
        {"kind": "audio", "text": "", "media": MediaRef(ref=MEDIA_URL)},
    ),
    (
        "file",
        {"message_type": "file", "file": {"url": MEDIA_URL, "name": "file.pdf"}},
        {"kind": "document", "text": "", "media": MediaRef(ref=MEDIA_URL, filename="file.pdf")},
    ),
    (
        "sticker",
        {"message_type": "sticker", "sticker": {"url": MEDIA_URL}},
        {"kind": "sticker", "text": "", "media": MediaRef(ref=MEDIA_URL)},
    ),
    (
        "location",
        {
            "message_type": "location",
            "location": {
                "lat": 40.34772,
                "long": -74.18847,
                "name": "Vonage",
                "address": "23 Main St, Holmdel, NJ 07733, USA",
                "url": "https://www.vonage.com/",
            },
        },
        {
            "kind": "location",
            "text": "\U0001f4cd Vonage, 23 Main St, Holmdel, NJ 07733, USA",
            "data": {
                "latitude": 40.34772,
                "longitude": -74.18847,
                "name": "Vonage",
                "address": "23 Main St, Holmdel, NJ 07733, USA",
                "url": "https://www.vonage.com/",
            },
        },
    ),
    (
        "location_bare",
        {"message_type": "location", "location": {"lat": 40.34772, "long": -74.18847}},
        {
            "kind": "location",
            "text": "\U0001f4cd 40.34772, -74.18847",
            "data": {"latitude": 40.34772, "longitude": -74.18847, "name": None, "address": None},
        },
    ),
    (
        "contacts",
        {"message_type": "contacts", "contacts": [VONAGE_CONTACT]},
        {"kind": "contacts", "text": "Bob Smith 1234567890", "data": {"contacts": [VONAGE_CONTACT]}},
    ),
    (
        "reaction",
        {
            "message_type": "reaction",
            "reaction": {"action": "react", "emoji": "\U0001f600"},
            "context_status": "available",
            "context": {"message_uuid": ANSWERED, "message_from": "447700900000"},
        },
        {"kind": "reaction", "text": "\U0001f600", "data": {"emoji": "\U0001f600", "message_id": ANSWERED}},
    ),
    (
        "unreact",
        {
            "message_type": "reaction",
            "reaction": {"action": "unreact"},
            "context_status": "available",
            "context": {"message_uuid": ANSWERED, "message_from": "447700900000"},
        },
        {"kind": "reaction", "text": "", "data": {"emoji": "", "message_id": ANSWERED}},
    ),
    (
        "unsupported",
        {"message_type": "unsupported"},
        {"kind": "unsupported", "text": "", "data": {"type": "unsupported"}},
    ),
    (
        "order",
        {
            "message_type": "order",
            "order": {
                "catalog_id": "2806150799683508",
                "product_items": [{"product_retailer_id": "pk1v7rudbg"}],
            },
        },
        {"kind": "unsupported", "text": "", "data": {"type": "order"}},
    ),
]


@pytest.mark.parametrize(("case", "fields", "expected"), VONAGE_CASES, ids=[c[0] for c in VONAGE_CASES])
def test_vonage_inbound_kinds(
    db: Database,
    box: SecretBox,
    account: NewAccount,
    http: TestClient,
    events: list[WebhookEvent],
    case: str,
    fields: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    payload: dict[str, Any] = {
        "channel": "whatsapp",
        "message_uuid": str(uuid.uuid4()),
        "to": "447700900000",
        "from": "447700900001",
        "timestamp": "2025-02-03T12:14:25Z",
        "profile": {"name": "Jane Smith"},
        "context_status": "none",
        "_self": {"href": "https://api-eu.vonage.com/v1/messages/aaaaaaaa-bbbb-4ccc-8ddd-0123456789ab"},
        **fields,
    }
    assert vonage_inbound_validator().errors(payload) == []
    _configure(db, box, account, "vonage")
    body = json.dumps(payload).encode()
    headers = {
        "Authorization": sign_webhook(body, SIGNATURE_SECRET, API_KEY),
        "Content-Type": "application/json",
    }
    answer = http.post(f"/webhooks/vonage/{account.account_id}/inbound", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["inbound_new"] == 1
    reply: dict[str, Any] = {
        "provider_message_id": payload["message_uuid"],
        "from_phone": "+447700900001",
        "timestamp": datetime(2025, 2, 3, 12, 14, 25, tzinfo=UTC),
        "profile_name": "Jane Smith",
        "context_message_id": payload.get("context", {}).get("message_uuid"),
    }
    assert events == [InboundReply(**(reply | expected))]


def test_the_schemas_bite() -> None:
    """The validators refuse what the specs refuse (so that the payloads above are checked, not waved on)."""
    image = inbound_example("image")
    assert image is not None
    del image["image"]["sha256"]
    assert meta_inbound_validator("image").errors(image) != []
    bad_location = {
        "channel": "whatsapp",
        "message_uuid": str(uuid.uuid4()),
        "to": "447700900000",
        "from": "447700900001",
        "timestamp": "2025-02-03T12:14:25Z",
        "context_status": "none",
        "message_type": "location",
        "location": {"lat": "north"},
    }
    assert vonage_inbound_validator().errors(bad_location) != []
