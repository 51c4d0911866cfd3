"""Agents' replies and STOP confirmations leave through the same ledger, dispatcher, retries and status
webhooks as campaign messages, on SQLite and PostgreSQL: each request reaches a stand-in of Meta or of
Vonage on loopback that validates its body against the provider's official OpenAPI specification (free
text, a template with its values as written, a file by link), a reply is sent once across a provider
error and a worker's crash, its status webhooks move it to delivered, read or failed; and, the chaos way,
users who send STOP while a worker sends a campaign get nothing of it afterwards, and one confirmation."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from tests.cluster import read_log, start_standin
from tests.helpers import insert_profiles, phone
from tests.standins import meta as meta_standin
from tests.standins.meta import MetaStandIn, envelope, server_error, signed, text_reply_change
from tests.standins.vonage import VonageStandIn, rsa_key_pair
from tests.standins.vonage import status_webhook as vonage_status
from tests.test_dispatcher import _dispatch_until, _on_standin
from tests.test_send_time_rules import _campaign, _rows, _users
from tidings.accounts import integrations
from tidings.accounts.service import NewAccount
from tidings.campaigns.progress import open_work
from tidings.config import Settings
from tidings.conversations import service as conversations
from tidings.conversations.service import Agent, Reply
from tidings.db import Database, utcnow
from tidings.delivery.claims import claim_batch
from tidings.delivery.dispatcher import Dispatcher, render
from tidings.delivery.models import SENT_STATES, Message
from tidings.delivery.reconciliation import reconcile
from tidings.delivery.send_rules import mark_dispatched
from tidings.providers.base import InboundReply, Outcome
from tidings.providers.pool import ProviderPool
from tidings.providers.vonage import sign_webhook
from tidings.secrets import SecretBox
from tidings.templates.service import create_template

PUBLIC_URL = "https://tidings.example"
META_SECRET = "meta-app-secret"
VONAGE_APP = "aaaaaaaa-bbbb-4ccc-8ddd-0123456789ab"
VONAGE_SENDER = "447700900000"
VONAGE_SECRET = "vonage-signature-secret"
LIQUID = "{{ Profile.Name }}"  # a value written by an agent: sent as written, never rendered
KINDS = ("text", "template", "media")
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


# --- set-up -----------------------------------------------------------------------------------------------


def _on_meta(db: Database, box: SecretBox, account: NewAccount, standin: MetaStandIn, url: str) -> None:
    with db.session() as session:
        integrations.configure(
            session,
            box,
            account.account_id,
            kind="meta",
            settings={
                "phone_number_id": standin.phone_number_id,
                "waba_id": standin.waba_id,
                "base_url": url,
            },
            secrets={"access_token": standin.access_token, "app_secret": META_SECRET},
        )


def _on_vonage(db: Database, box: SecretBox, account: NewAccount, url: str, private_pem: str) -> None:
    with db.session() as session:
        integrations.configure(
            session,
            box,
            account.account_id,
            kind="vonage",
            settings={"sender": VONAGE_SENDER, "base_url": url, "application_id": VONAGE_APP},
            secrets={"private_key": private_pem, "signature_secret": VONAGE_SECRET},
        )


def _conversation(db: Database, account: NewAccount, number: str, *, name: str = "Kim") -> int:
    """A user opted in to WhatsApp who wrote an hour ago (the window is open): their conversation's id."""
    insert_profiles(
        db, account.account_id, [{"identity": number, "phone": number, "properties": {"Name": name}}]
    )
    with db.session() as session:
        reply = InboundReply(f"in.{number}", number, utcnow() - timedelta(hours=1), text="Hello?")
        conversations.record_inbound(session, account.account_id, "meta", reply)
        found = conversations.conversation_by_phone(session, account.account_id, number)
        assert found is not None
        return found.id


def _replies(db: Database, account: NewAccount) -> dict[str, int]:
    """Three replies of an agent, each to its own user: free text, a template with its values, a file."""
    ids = {kind: _conversation(db, account, phone(n)) for n, kind in enumerate(("text", "template", "media"))}
    with db.session() as session:
        template = create_template(
            session,
            account.account_id,
            name="shop:order_update",
            body="Hi {{1}}, your order {{2}} is on its way",
            category="UTILITY",
        )
        file = conversations.store_media(session, account.account_id, PNG, "image/png", "receipt.png")
    answers = {
        "text": Reply(text=f"Hello {LIQUID}, how can I help?"),
        "template": Reply(template_id=template.id, params=[LIQUID, "A-1"]),
        "media": Reply(media_id=file.id, text="Your receipt"),
    }
    queued = {}
    for kind, answer in answers.items():
        with db.session() as session:
            queued[kind] = conversations.reply(
                session, account.account_id, ids[kind], answer, Agent(None), public_url=PUBLIC_URL
            ).id
    return queued


def _media_link(db: Database, message_id: int) -> str:
    with db.session() as session:
        row = session.get(Message, message_id)
        assert row is not None and row.media is not None
        return str(row.media["url"])


def _unsettled(db: Database) -> int:
    with db.session() as session:
        return int(
            session.scalar(
                select(func.count()).where(
                    Message.conversation_id.is_not(None), Message.state.in_(("queued", "sending"))
                )
            )
            or 0
        )


def _send_all(db: Database, settings: Settings, box: SecretBox) -> None:
    """A real dispatcher, until every message of a conversation has its answer recorded."""
    fast = settings.model_copy(update={"retry_base": 0.05, "retry_cap": 0.1})
    dispatcher = Dispatcher(db, fast, ProviderPool(db, fast, box))
    asyncio.run(_dispatch_until(dispatcher, lambda: _unsettled(db) == 0))


def _row(db: Database, message_id: int) -> Message:
    with db.session() as session:
        row = session.get(Message, message_id)
        assert row is not None
        return row


def _thread_line(db: Database, account: NewAccount, message_id: int) -> conversations.Item:
    row = _row(db, message_id)
    assert row.conversation_id is not None
    with db.session() as session:
        conversation = conversations.get_conversation(session, account.account_id, row.conversation_id)
        [line] = [i for i in conversations.thread(session, conversation) if i.who == "agent"]
    return line


# --- Meta -----------------------------------------------------------------------------------------------


def test_replies_through_meta_match_the_spec_and_are_sent_once_across_a_retry(
    db: Database, box: SecretBox, account: NewAccount, settings: Settings, client: TestClient
) -> None:
    standin = MetaStandIn()
    queued = _replies(db, account)
    standin.answer_next(server_error())  # the first send is answered 500: retried, then taken
    with standin.serve() as url:
        _on_meta(db, box, account, standin, url)
        _send_all(db, settings, box)
    assert standin.invalid == [], [r.errors for r in standin.invalid]
    assert len(standin.sends) == 4 and [r.status for r in standin.sends].count(500) == 1
    sent = {s.client_ref: s for s in standin.sent}
    assert Counter(s.client_ref for s in standin.sent) == {str(queued[k]): 1 for k in KINDS}  # once each
    assert sorted(_row(db, queued[k]).attempts for k in ("text", "template", "media")) == [1, 1, 2]

    text = sent[str(queued["text"])].body
    assert text["type"] == "text" and text["text"]["body"] == f"Hello {LIQUID}, how can I help?"
    assert text["to"] == phone(0).lstrip("+")
    template = sent[str(queued["template"])].body
    assert template["type"] == "template" and template["template"]["name"] == "order_update"
    assert template["template"]["components"] == [
        {"type": "body", "parameters": [{"type": "text", "text": LIQUID}, {"type": "text", "text": "A-1"}]}
    ]
    media = sent[str(queued["media"])].body
    link = _media_link(db, queued["media"])
    assert link.startswith(f"{PUBLIC_URL}/media/")
    assert media["type"] == "image" and media["image"] == {"link": link, "caption": "Your receipt"}
    assert {_row(db, queued[k]).state for k in ("text", "template", "media")} == {"sent"}

    # Meta's status webhooks, through the real route: delivered, read; and a failure with its reason.
    def post(message: meta_standin.SentMessage, status: str, **kw: Any) -> None:
        body, headers = signed(meta_standin.status_webhook(message, status, **kw), META_SECRET)
        answer = client.post(f"/webhooks/meta/{account.account_id}", content=body, headers=headers)
        assert answer.status_code == 200, answer.text

    post(sent[str(queued["text"])], "delivered")
    post(sent[str(queued["media"])], "delivered")
    post(sent[str(queued["media"])], "read")
    post(sent[str(queued["template"])], "failed", error_code=131026)
    assert _row(db, queued["text"]).state == "delivered"
    assert _row(db, queued["media"]).state == "read"
    failed = _row(db, queued["template"])
    assert (failed.state, failed.reason) == ("failed", "meta:131026") and failed.error_detail
    line = _thread_line(db, account, queued["template"])
    assert (line.state, line.error) == ("failed", failed.error_detail)
    assert _thread_line(db, account, queued["media"]).state == "read"


def test_a_reply_is_sent_once_across_a_worker_crash(
    db: Database, box: SecretBox, account: NewAccount, settings: Settings, client: TestClient
) -> None:
    """Two workers die holding replies: one after claiming (never dispatched: queued again and sent by
    another worker), one after the provider took the message but before its answer was recorded (never
    sent again: its status webhook settles it)."""
    standin = MetaStandIn()
    claimed_only = _conversation(db, account, phone(1))
    taken = _conversation(db, account, phone(2))
    ids = {}
    for key, conversation_id in (("claimed_only", claimed_only), ("taken", taken)):
        with db.session() as session:
            ids[key] = conversations.reply(
                session,
                account.account_id,
                conversation_id,
                Reply(text=f"about {key}"),
                Agent(None),
                public_url=PUBLIC_URL,
            ).id
    lease = timedelta(seconds=settings.lease_seconds)
    with standin.serve() as url:
        _on_meta(db, box, account, standin, url)
        with db.session() as session:  # worker 1 claims it and dies: its lease runs out
            [first] = claim_batch(session, 1, lease, utcnow(), token="dead-1")
            assert first.id == ids["claimed_only"]
            session.execute(
                update(Message)
                .where(Message.id == first.id)
                .values(lease_until=utcnow() - timedelta(seconds=1))
            )
        now = utcnow()
        with db.session() as session:  # worker 2 claims, marks, calls the provider, and dies
            [second] = claim_batch(session, 1, lease, now, token="dead-2")
            assert second.id == ids["taken"]
        with db.session() as session:
            assert mark_dispatched(
                session, account.account_id, [(second.id, second.token, second.to)], now, lease=lease
            ).go == [second.id]
        pool = ProviderPool(db, settings, box)
        provider = pool.get(account.account_id)

        async def call() -> None:
            message = render(second).message
            assert message is not None
            assert (await provider.send(message)).outcome == Outcome.ACCEPTED
            await pool.aclose()

        asyncio.run(call())
        assert _row(db, ids["taken"]).state == "sending"  # its answer was never recorded
        with db.session() as session:
            found = reconcile(session, utcnow(), timedelta(seconds=settings.reconcile_seconds))
        assert found["requeued_undispatched"] == 1 and found["requeued_unknown"] == 0
        assert _row(db, ids["claimed_only"]).state == "queued"
        # Meta reports the message worker 2 sent: it is sent, by its reference.
        [taken_send] = standin.sent
        body, headers = signed(meta_standin.status_webhook(taken_send, "sent"), META_SECRET)
        assert (
            client.post(f"/webhooks/meta/{account.account_id}", content=body, headers=headers).status_code
            == 200
        )
        assert _row(db, ids["taken"]).state == "sent"
        _send_all(db, settings, box)  # a live worker sends what was left
        with db.session() as session:  # long after: nothing to resend
            later = reconcile(
                session, utcnow() + timedelta(hours=1), timedelta(seconds=settings.reconcile_seconds)
            )
        assert later == {"requeued_undispatched": 0, "requeued_unknown": 0, "failed_unknown": 0}
        _send_all(db, settings, box)
    refs = Counter(s.client_ref for s in standin.sent)
    assert refs == {str(ids["taken"]): 1, str(ids["claimed_only"]): 1}
    assert standin.invalid == []
    assert {_row(db, i).state for i in ids.values()} == {"sent"}


# --- Vonage ---------------------------------------------------------------------------------------------


def test_replies_through_vonage_match_the_spec(
    db: Database, box: SecretBox, account: NewAccount, settings: Settings, client: TestClient
) -> None:
    private_pem, public_pem = rsa_key_pair()
    standin = VonageStandIn(application_id=VONAGE_APP, public_key=public_pem)
    queued = _replies(db, account)
    with standin.serve() as url:
        _on_vonage(db, box, account, url, private_pem)
        _send_all(db, settings, box)
    assert not standin.invalid, [r.errors for r in standin.invalid]
    accepted = {r.client_ref: r for r in standin.accepted}
    assert Counter(r.client_ref for r in standin.accepted) == {str(queued[k]): 1 for k in KINDS}
    assert len(standin.requests) == 3
    text = accepted[str(queued["text"])].body
    assert (text["message_type"], text["text"]) == ("text", f"Hello {LIQUID}, how can I help?")
    assert (text["to"], text["from"]) == (phone(0).lstrip("+"), VONAGE_SENDER)
    template = accepted[str(queued["template"])].body
    assert template["message_type"] == "template"
    assert template["template"] == {"name": "order_update", "parameters": [LIQUID, "A-1"]}
    media = accepted[str(queued["media"])].body
    assert media["message_type"] == "image"
    assert media["image"] == {"url": _media_link(db, queued["media"]), "caption": "Your receipt"}

    def post(key: str, status: str, **kw: Any) -> None:
        raw = json.dumps(vonage_status(accepted[str(queued[key])], status, **kw)).encode()
        headers = {
            "Authorization": sign_webhook(raw, VONAGE_SECRET, "key"),
            "Content-Type": "application/json",
        }
        answer = client.post(f"/webhooks/vonage/{account.account_id}/status", content=raw, headers=headers)
        assert answer.status_code == 200, answer.text

    post("text", "delivered")
    post("media", "delivered")
    post("media", "read")
    post("template", "rejected", error_code=1300)
    assert _row(db, queued["text"]).state == "delivered"
    assert _row(db, queued["media"]).state == "read"
    failed = _row(db, queued["template"])
    assert (failed.state, failed.reason) == ("failed", "vonage:1300") and failed.error_detail
    assert _thread_line(db, account, queued["template"]).error == failed.error_detail


# --- the chaos way: STOP while a worker sends a campaign ------------------------------------------------


def test_stop_while_a_worker_sends_a_campaign_stops_it_and_confirms_once(
    db: Database,
    box: SecretBox,
    account: NewAccount,
    settings: Settings,
    client: TestClient,
    tmp_path: Path,
) -> None:
    """A real dispatcher sends a 300-user campaign at 50/s to a stand-in on loopback while users send
    STOP — signed Meta webhooks through the real route, ten at a time, mid-way. None of them gets a
    campaign message whose dispatch mark came after their STOP committed; each of their campaign messages
    not sent is skipped ``not_opted_in``; each gets exactly one confirmation (a message of their
    conversation); everyone else gets the campaign message once."""
    n = 300
    phones = _users(db, account, n)
    campaign_id = _campaign(db, account, utcnow())
    standin = start_standin(tmp_path / "standin.log")
    committed: dict[str, datetime] = {}  # phone → when its STOP had committed

    index = {r.id: phones.index(r.to_phone) for r in _rows(db, campaign_id)}

    def frontier() -> int:
        """The furthest user (by index) whose campaign message was marked dispatched."""
        with db.session() as session:
            ids = session.scalars(
                select(Message.id).where(
                    Message.campaign_id == campaign_id, Message.dispatched_at.is_not(None)
                )
            ).all()
        return max((index[i] for i in ids), default=-1)

    def stop(batch: list[int]) -> None:
        payload = envelope(*[text_reply_change(phones[i], "STOP", wamid=f"wamid.stop-{i}") for i in batch])
        body, headers = signed(payload, "s")  # the app secret ``_on_standin`` configures
        answer = client.post(f"/webhooks/meta/{account.account_id}", content=body, headers=headers)
        assert answer.status_code == 200 and answer.json()["inbound_new"] == len(batch), answer.text
        at = utcnow()
        committed.update((phones[i], at) for i in batch)

    def done() -> bool:
        with db.session() as session:
            finished = open_work(session, campaign_id) == 0
        return finished and _unsettled(db) == 0

    async def run() -> None:
        dispatcher = Dispatcher(db, settings, ProviderPool(db, settings, box))
        halt = asyncio.Event()
        task = asyncio.create_task(dispatcher.run(halt))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 90
        try:
            while (ahead := await asyncio.to_thread(frontier)) < 20:
                assert loop.time() < deadline, "the dispatcher did not start"
                await asyncio.sleep(0.01)
            # Batches of ten odd-numbered users a little ahead of the dispatch marks, some of whose
            # messages are still in hand or queued, until the dispatcher is near the end.
            while ahead < n - 60:
                batch = [i for i in range(ahead + 30, n) if i % 2 and phones[i] not in committed][:10]
                if not batch:
                    break
                await asyncio.to_thread(stop, batch)
                ahead = await asyncio.to_thread(frontier)
            while not await asyncio.to_thread(done):
                assert loop.time() < deadline, "the campaign and the confirmations did not finish"
                await asyncio.sleep(0.05)
        finally:
            halt.set()
            await task
            await dispatcher.pool.aclose()

    try:
        _on_standin(db, box, account, standin.url, rate=50)
        asyncio.run(run())
    finally:
        standin.stop()
    log = read_log(tmp_path / "standin.log")
    rows = {r.to_phone: r for r in _rows(db, campaign_id)}
    ours = {str(r.id) for r in rows.values()}
    received = Counter(f"+{r.to.lstrip('+')}" for r in log if r.ref in ours)
    with db.session() as session:
        confirmations = {
            m.to_phone: m
            for m in session.scalars(select(Message).where(Message.conversation_id.is_not(None)))
        }
    confirmed = Counter(
        f"+{r.to.lstrip('+')}" for r in log if r.ref in {str(m.id) for m in confirmations.values()}
    )
    settled = 0
    for i, to in enumerate(phones):
        row = rows[to]
        if to not in committed:
            assert received[to] == 1 and row.state == "sent", (i, row.state, received[to])
            assert to not in confirmations and confirmed[to] == 0
            continue
        assert confirmed[to] == 1 and confirmations[to].state == "sent", (i, confirmed[to])
        if row.dispatched_at is not None:  # decided before the STOP: sent once (and read: STOP answers it)
            assert row.dispatched_at < committed[to], (i, row.dispatched_at, committed[to])
            assert received[to] == 1 and row.state in SENT_STATES, (i, row.state, row.reason)
        else:
            assert received[to] == 0 and (row.state, row.reason) == ("skipped", "not_opted_in"), i
            settled += 1
    assert len(committed) >= 50 and set(confirmations) == set(committed)
    assert settled >= 30  # many users who sent STOP had a message still to come


@pytest.fixture(autouse=True)
def _specs() -> None:
    """The official specifications must be at hand: these tests are about them."""
    meta_standin.meta_send_validator()
