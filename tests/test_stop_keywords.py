"""Consent keywords as people write them: STOP (and Meta's "Stop promotions" button, a quick-reply payload)
opts out every profile with that phone number, START opts in again, the account adds its own keywords
per language, and look-alikes change nothing. Through the service, and end to end through the signed
Meta and Vonage webhooks."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from tests.conftest import basic
from tests.helpers import insert_profiles, phone, refused
from tests.standins.meta import envelope, signed
from tidings.accounts.models import Integration
from tidings.accounts.service import NewAccount
from tidings.conversations.keywords import keyword_form
from tidings.conversations.models import InboundMessage
from tidings.conversations.service import record_inbound
from tidings.db import Database
from tidings.profiles.models import Profile
from tidings.providers.base import InboundReply
from tidings.providers.meta import parse_webhook
from tidings.providers.vonage import parse_inbound, sign_webhook
from tidings.secrets import SecretBox

STOPS = [
    "STOP",
    "stop",
    "Stop.",
    "stop please",
    "Please stop",
    "STOP ALL",
    "Stop all.",
    "stopall",
    "STOP!!!",
    "  sToP  ",
    "stop 🛑",
    "\u200bSTOP\u200b",  # zero-width spaces around it
    "\uff33\uff34\uff2f\uff30",  # STOP in full-width letters
    "ok stop thanks",
    "Unsubscribe",
    "unsubscribe me",
    "Opt-out",
    "OPT OUT",
    "Stop promotions",
    "stop sending me messages",
]
LOOK_ALIKES = [
    "don't stop",
    "stopwatch",
    "non-stop deals",
    "Don't stop sending deals!",
    "when does the sale stop?",
    "bus stop",
    "stopping by tomorrow",
    "unstoppable",
    "What time does it start?",
    "Thanks!",
    "please",
    "restart",
]


def _people(db: Database, account: NewAccount, rows: list[tuple[str, str | None, bool]]) -> None:
    insert_profiles(
        db, account.account_id, [{"identity": i, "phone": p, "opt_in": opt_in} for i, p, opt_in in rows]
    )


def _opted(db: Database, account: NewAccount) -> dict[str, bool]:
    with db.session() as session:
        rows = session.execute(
            select(Profile.identity, Profile.whatsapp_opt_in, Profile.properties).where(
                Profile.account_id == account.account_id
            )
        ).all()
    for identity, column, properties in rows:  # the column and MSG-whatsapp always agree
        assert properties["MSG-whatsapp"] is column, identity
    return {identity: column for identity, column, _ in rows}


def _reply(sender: str, text: str, kind: str = "text", payload: str | None = None) -> InboundReply:
    return InboundReply(
        provider_message_id=f"in-{uuid.uuid4().hex}",
        from_phone=sender,
        timestamp=datetime.now(UTC),
        text=text,
        kind=kind,
        payload=payload,
    )


def _inbound(db: Database, account: NewAccount, reply: InboundReply) -> None:
    with db.session() as session:
        assert record_inbound(session, account.account_id, "sandbox", reply)


def test_stop_as_people_write_it_opts_out_every_profile_of_the_number(
    db: Database, account: NewAccount
) -> None:
    rows: list[tuple[str, str | None, bool]] = []
    for n in range(len(STOPS)):
        # Two identities of one person (one phone), and a bystander who stays opted in.
        rows += [
            (f"app-{n}", phone(n), True),
            (f"crm-{n}", phone(n), True),
            (f"other-{n}", phone(500 + n), True),
        ]
    _people(db, account, rows)
    for n, text in enumerate(STOPS):
        _inbound(db, account, _reply(phone(n).lstrip("+"), text))  # as providers send it: no leading +
    opted = _opted(db, account)
    still_in = [text for n, text in enumerate(STOPS) if opted[f"app-{n}"] or opted[f"crm-{n}"]]
    assert still_in == []
    assert all(opted[f"other-{n}"] for n in range(len(STOPS)))
    with db.session() as session:  # every reply is kept, attributed to a profile of the number
        kept = session.scalars(select(InboundMessage.profile_id)).all()
    assert len(kept) == len(STOPS) and None not in kept


def test_look_alikes_do_not_opt_out(db: Database, account: NewAccount) -> None:
    _people(db, account, [(f"u{n}", phone(n), True) for n in range(len(LOOK_ALIKES))])
    for n, text in enumerate(LOOK_ALIKES):
        _inbound(db, account, _reply(phone(n), text))
    # A picture captioned nothing, whatever its placeholder says, is not a keyword either.
    _inbound(db, account, _reply(phone(0), "[image]", kind="image"))
    opted = _opted(db, account)
    assert [text for n, text in enumerate(LOOK_ALIKES) if not opted[f"u{n}"]] == []


@pytest.mark.parametrize("start", ["START", "start please", "Start.", "UNSTOP", "opt in"])
def test_start_opts_in_again_every_profile_of_the_number(
    db: Database, account: NewAccount, start: str
) -> None:
    _people(db, account, [("a", phone(1), True), ("b", phone(1), True), ("c", phone(2), False)])
    _inbound(db, account, _reply(phone(1), "Stop"))
    assert _opted(db, account) == {"a": False, "b": False, "c": False}
    _inbound(db, account, _reply(phone(1), start))
    assert _opted(db, account) == {"a": True, "b": True, "c": False}


def test_the_last_word_holds_when_webhooks_arrive_out_of_order(db: Database, account: NewAccount) -> None:
    _people(db, account, [("a", phone(1), True), ("b", phone(1), True)])
    t = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)

    def said(text: str, minute: int) -> None:
        reply = InboundReply(
            provider_message_id=f"in-{uuid.uuid4().hex}",
            from_phone=phone(1),
            timestamp=t.replace(minute=minute),
            text=text,
        )
        _inbound(db, account, reply)

    said("STOP", 5)  # sent at 10:05, arrives first
    said("START", 1)  # sent at 10:01, arrives late: the later STOP holds
    assert _opted(db, account) == {"a": False, "b": False}
    said("Thanks!", 7)  # not a keyword: it does not hide anything
    said("start", 6)  # at 10:06, after the STOP (a later message that is no keyword does not count)
    assert _opted(db, account) == {"a": True, "b": True}


def test_account_keywords_per_language(client: TestClient, db: Database, account: NewAccount) -> None:
    auth = basic(account)
    keywords = {
        "es": {"opt_out": ["BAJA", "ALTO"], "opt_in": ["ALTA"]},
        "pt_BR": {"opt_out": ["Sair"], "opt_in": ["voltar"]},
    }
    settings = {"frequency_cap": {"max": 3, "hours": 24}, "keywords": keywords}
    answer = client.patch("/api/v1/account", headers=auth, json={"settings": settings})
    assert answer.status_code == 200, answer.text
    assert client.get("/api/v1/account", headers=auth).json()["settings"] == settings
    _people(db, account, [("a", phone(1), True), ("b", phone(1), True), ("c", phone(2), True)])

    _inbound(db, account, _reply(phone(1), "Baja por favor"))
    assert _opted(db, account) == {"a": False, "b": False, "c": True}
    _inbound(db, account, _reply(phone(1), "¡Alta!"))
    assert _opted(db, account) == {"a": True, "b": True, "c": True}
    _inbound(db, account, _reply(phone(1), "ÁLTO."))  # accents and case do not matter
    assert _opted(db, account) == {"a": False, "b": False, "c": True}
    _inbound(db, account, _reply(phone(2), "SAIR"))
    _inbound(db, account, _reply(phone(1), "Voltar"))
    assert _opted(db, account) == {"a": True, "b": True, "c": False}
    _inbound(db, account, _reply(phone(1), "alto el fuego"))  # a keyword inside a sentence: nothing
    assert _opted(db, account)["a"] is True

    # The engagement rules stored beside the keywords still apply (the account's rules parse).
    from tidings.campaigns.triggers import engagement_context

    with db.session() as session:
        assert engagement_context(session, account.account_id).rules.cap_max == 3


@pytest.mark.parametrize(
    ("keywords", "says"),
    [
        ({"es": {"opt_out": ["BAJA"], "opt_in": ["baja."]}}, "cannot both opt out and opt in"),
        ({"es": {"opt_in": ["Stop"]}}, "cannot both opt out and opt in"),
        ({"es": {"opt_out": ["!!!"]}}, "no letters or digits"),
        ({"es": {"opt_out": "BAJA"}}, "settings.keywords.es.opt_out: Input should be a valid list"),
        ({"es": {"stop": ["BAJA"]}}, "settings.keywords.es.stop: Extra inputs are not permitted"),
        ({"Spanish!": {"opt_out": ["BAJA"]}}, "language code"),
        (["BAJA"], "settings.keywords: Input should be a valid dictionary"),
    ],
)
def test_bad_account_keywords_are_refused(
    client: TestClient, account: NewAccount, keywords: Any, says: str
) -> None:
    answer = client.patch(
        "/api/v1/account", headers=basic(account), json={"settings": {"keywords": keywords}}
    )
    assert says in refused(answer, 422, "validation_error")


def test_keyword_form() -> None:
    assert keyword_form("  Stop,   please!! ") == "stop"
    assert keyword_form("STOP_PROMOTIONS") == "stop promotions"
    assert keyword_form("StopPromotions", split_camel=True) == "stop promotions"
    assert keyword_form("sToP") == "stop"
    assert keyword_form("Ｓｔｏｐ") == "stop"  # noqa: RUF001 - full-width on purpose
    assert keyword_form("don't stop") == "don t stop"
    assert keyword_form("please") == "please"  # a polite word alone stays what it is


# --- the providers' button replies ----------------------------------------------------------------------

META_SECRET = "meta-app-secret"


def _meta(db: Database, box: SecretBox, account: NewAccount) -> None:
    """The account's provider is Meta (written directly: receiving webhooks needs only the app secret)."""
    with db.session() as session:
        session.execute(
            update(Integration)
            .where(Integration.account_id == account.account_id)
            .values(
                kind="meta",
                settings={"phone_number_id": "106540352242922", "waba_id": "102290129340398"},
                secrets=box.seal({"access_token": "EAAG-test", "app_secret": META_SECRET}),
            )
        )


def _meta_message(sender: str, kind: str, content: dict[str, Any]) -> dict[str, Any]:
    message = {
        "from": sender.lstrip("+"),
        "id": f"wamid.{uuid.uuid4().hex}",
        "timestamp": str(int(datetime.now(UTC).timestamp())),
        "type": kind,
        "context": {
            "from": "15550783881",
            "id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJFNjk2OTMwNEZCQjhGMzUyQUYA",
        },
        kind: content,
    }
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
        "contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": sender.lstrip("+")}],
        "messages": [message],
    }
    return {"field": "messages", "value": value}


def test_meta_buttons_carry_text_and_payload() -> None:
    button = _meta_message(phone(1), "button", {"payload": "STOP_PROMOTIONS", "text": "Stop promotions"})
    tapped = _meta_message(
        phone(1),
        "interactive",
        {"type": "button_reply", "button_reply": {"id": "opt_out", "title": "No más"}},
    )
    [first, second] = parse_webhook(envelope(button, tapped))
    assert isinstance(first, InboundReply) and isinstance(second, InboundReply)
    assert (first.kind, first.text, first.payload) == ("button", "Stop promotions", "STOP_PROMOTIONS")
    assert (second.kind, second.text, second.payload) == ("interactive", "No más", "opt_out")


def test_meta_stop_buttons_through_the_signed_webhook(
    client: TestClient, db: Database, box: SecretBox, account: NewAccount
) -> None:
    _meta(db, box, account)
    _people(
        db,
        account,
        [
            ("promo-a", phone(1), True),
            ("promo-b", phone(1), True),  # the same person under a second identity
            ("payload", phone(2), True),
            ("interactive", phone(3), True),
            ("shopper", phone(4), True),
        ],
    )
    changes = [
        # Meta's "Stop promotions" quick-reply button of a marketing template: its label and payload.
        _meta_message(phone(1), "button", {"payload": "Stop promotions", "text": "Stop promotions"}),
        # A label in the user's language; the payload says what it means.
        _meta_message(phone(2), "button", {"payload": "STOP_ALL", "text": "Não quero mais"}),
        _meta_message(
            phone(3),
            "interactive",
            {"type": "button_reply", "button_reply": {"id": "unsubscribe", "title": "Plus de messages"}},
        ),
        _meta_message(phone(4), "button", {"payload": "SHOP_NOW", "text": "Shop now"}),
    ]
    for change in changes:
        body, headers = signed(envelope(change), META_SECRET)
        answer = client.post(f"/webhooks/meta/{account.account_id}", content=body, headers=headers)
        assert answer.status_code == 200, answer.text
    assert _opted(db, account) == {
        "promo-a": False,
        "promo-b": False,
        "payload": False,
        "interactive": False,
        "shopper": True,
    }
    with db.session() as session:
        kinds = session.scalars(select(InboundMessage.kind).order_by(InboundMessage.id)).all()
    assert kinds == ["button", "button", "interactive", "button"]


def _vonage_secret(db: Database, box: SecretBox, account: NewAccount) -> str:
    with db.session() as session:
        integration = session.get(Integration, account.account_id)
        assert integration is not None
        return str(box.open(integration.secrets)["signature_secret"])


def _vonage_inbound(sender: str, message_type: str, content: Any) -> dict[str, Any]:
    return {
        "channel": "whatsapp",
        "message_uuid": str(uuid.uuid4()),
        "to": "14157386102",
        "from": sender.lstrip("+"),
        "timestamp": "2026-11-25T10:00:00Z",
        "context_status": "available",
        "context": {"message_uuid": str(uuid.uuid4()), "message_from": "14157386102"},
        "message_type": message_type,
        message_type: content,
    }


def test_vonage_button_and_reply_payloads(
    client: TestClient, db: Database, box: SecretBox, account: NewAccount
) -> None:
    parsed = parse_inbound(_vonage_inbound(phone(1), "button", {"payload": "STOP_ALL", "text": "Basta"}))
    assert (parsed.kind, parsed.text, parsed.payload) == ("button", "Basta", "STOP_ALL")
    flow = parse_inbound(
        _vonage_inbound(
            phone(1), "button", {"payload": {"flow_token": "t"}, "text": "sent", "subtype": "flow"}
        )
    )
    assert (flow.text, flow.payload) == ("sent", None)  # a Flow's payload is an object: not a keyword

    _people(
        db,
        account,
        [("a", phone(1), True), ("b", phone(1), True), ("c", phone(2), True), ("d", phone(3), True)],
    )
    secret = _vonage_secret(db, box, account)
    payloads = [
        _vonage_inbound(phone(1), "button", {"payload": "STOP_PROMOTIONS", "text": "Stop promotions"}),
        _vonage_inbound(phone(2), "reply", {"id": "opt-out", "title": "Não quero mais"}),
        _vonage_inbound(phone(3), "reply", {"id": "stop-watch", "title": "Stopwatch"}),
    ]
    for payload in payloads:
        body = json.dumps(payload).encode()
        headers = {"Authorization": sign_webhook(body, secret, "sandbox"), "Content-Type": "application/json"}
        answer = client.post(f"/webhooks/sandbox/{account.account_id}/inbound", content=body, headers=headers)
        assert answer.status_code == 200, answer.text
    assert _opted(db, account) == {"a": False, "b": False, "c": False, "d": True}
