"""Status and inbound webhooks through the real HTTP endpoint: forward-only states, repeats, shuffles,
signatures, replies, and statuses that arrive before the send is recorded."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from tests.helpers import insert_profiles, phone
from tidings.accounts.models import Integration
from tidings.accounts.service import NewAccount
from tidings.campaigns.schemas import CampaignCreate
from tidings.campaigns.service import create_campaign, start_campaign
from tidings.config import Settings
from tidings.db import Database, utcnow
from tidings.delivery.claims import Claimed, claim_batch
from tidings.delivery.models import Message, PendingStatus
from tidings.delivery.outcomes import Attempt, record_attempts
from tidings.profiles.models import Profile
from tidings.providers.base import SendResult
from tidings.providers.vonage import sign_webhook
from tidings.secrets import SecretBox
from tidings.stats.service import campaign_stats
from tidings.templates.service import create_template

RANK = {"sending": 1, "sent": 2, "delivered": 3, "read": 4}
VONAGE_TO_STATE = {"submitted": "sent", "delivered": "delivered", "read": "read", "rejected": "failed"}


def expected_state(events: list[str]) -> str:
    """The ledger's rule, written plainly: forward only; failed is final and only before delivery."""
    state = "sent"
    for event in events:
        target = VONAGE_TO_STATE[event]
        if state == "failed":
            continue
        if target == "failed":
            if state in ("sending", "sent"):
                state = "failed"
        elif RANK[target] > RANK[state]:
            state = target
    return state


def _claimed(db: Database, account: NewAccount, n: int) -> tuple[int, list[Claimed]]:
    """A running campaign with ``n`` messages claimed for sending; returns (campaign id, the claims)."""
    insert_profiles(db, account.account_id, [{"identity": f"u{i}", "phone": phone(i)} for i in range(n)])
    with db.session() as session:
        template = create_template(session, account.account_id, name="a:b", body="Hi", category="UTILITY")
        campaign_id = create_campaign(
            session,
            account.account_id,
            CampaignCreate(name="c", template_id=template.id, variables=[], target={"all": True}),
        ).id
    # Due an hour from now, in the planning transaction: a worker running beside the test (``live``) never
    # takes them; the test claims them as of then.
    later = utcnow() + timedelta(hours=1)
    with db.session() as session:
        start_campaign(session, campaign_id, utcnow())
        planned = update(Message).where(Message.campaign_id == campaign_id)
        session.execute(planned.values(next_attempt_at=later))
    with db.session() as session:
        return campaign_id, claim_batch(session, n, timedelta(seconds=60), later)


def _sent_messages(db: Database, account: NewAccount, n: int) -> tuple[int, list[tuple[int, str]]]:
    """A running campaign with ``n`` messages recorded as sent; returns (campaign id, [(id, uuid)])."""
    campaign_id, claimed = _claimed(db, account, n)
    ids = [(c.id, f"uuid-{c.id}") for c in claimed]
    with db.session() as session:
        record_attempts(
            session,
            [Attempt(c, "sandbox", result=SendResult.accepted(f"uuid-{c.id}")) for c in claimed],
            utcnow(),
            max_attempts=3,
            retry_base=1,
            retry_cap=1,
        )
    return campaign_id, ids


def _secret(db: Database, box: SecretBox, account: NewAccount) -> str:
    with db.session() as session:
        integration = session.get(Integration, account.account_id)
        assert integration is not None
        return str(box.open(integration.secrets)["signature_secret"])


def _post(client: TestClient, account: NewAccount, secret: str, kind: str, payload: dict[str, Any]) -> int:
    body = json.dumps(payload).encode()
    headers = {"Authorization": sign_webhook(body, secret, "sandbox"), "Content-Type": "application/json"}
    return client.post(
        f"/webhooks/sandbox/{account.account_id}/{kind}", content=body, headers=headers
    ).status_code


def _status(uuid: str, status: str, client_ref: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "message_uuid": uuid,
        "to": "919810000000",
        "from": "14157386102",
        "timestamp": "2026-11-25T10:00:00Z",
        "status": status,
        "channel": "whatsapp",
    }
    if client_ref:
        payload["client_ref"] = client_ref
    if status == "rejected":
        payload["error"] = {
            "type": "https://developer.vonage.com/api-errors/messages#1300",
            "title": "1300",
            "detail": "Not part of the provider network",
        }
    return payload


def test_states_only_move_forward_under_shuffled_and_repeated_webhooks(
    client: TestClient, db: Database, box: SecretBox, account: NewAccount
) -> None:
    events = ["submitted", "delivered", "read", "rejected"]
    orders = [list(p) for p in itertools.permutations(events)]
    rng = random.Random(7)
    orders += [[rng.choice(events) for _ in range(rng.randint(1, 7))] for _ in range(40)]  # repeats
    orders += [["read"], ["delivered", "delivered", "submitted"], ["read", "delivered"]]
    campaign_id, messages = _sent_messages(db, account, len(orders))
    secret = _secret(db, box, account)
    for (_, uuid), order in zip(messages, orders, strict=True):
        for event in order:
            assert _post(client, account, secret, "status", _status(uuid, event)) == 200
    with db.session() as session:
        rows = dict(
            session.execute(select(Message.id, Message).where(Message.campaign_id == campaign_id)).all()
        )
    for (message_id, _), order in zip(messages, orders, strict=True):
        row = rows[message_id]
        assert row.state == expected_state(order), order
        if row.state == "read":
            assert row.delivered_at is not None and row.read_at is not None  # read implies delivered
        if row.state == "failed":
            assert row.reason == "sandbox:1300"
    with db.session() as session:
        stats = campaign_stats(session, campaign_id)
    finals = [expected_state(o) for o in orders]
    assert stats["sent"] == sum(s in ("sent", "delivered", "read") for s in finals)
    assert stats["delivered"] == sum(s in ("delivered", "read") for s in finals)
    assert stats["read"] == finals.count("read")
    assert stats["errors"] == finals.count("failed")


def test_bad_signature_gets_401_and_changes_nothing(
    client: TestClient, db: Database, box: SecretBox, account: NewAccount
) -> None:
    _campaign_id, [(message_id, uuid)] = _sent_messages(db, account, 1)
    body = json.dumps(_status(uuid, "read")).encode()
    url = f"/webhooks/sandbox/{account.account_id}/status"
    wrong = {"Authorization": sign_webhook(body, "not-the-secret", "sandbox")}
    tampered = {"Authorization": sign_webhook(body.replace(b"read", b"rea "), _secret(db, box, account), "x")}
    for headers in ({}, wrong, tampered, {"Authorization": "Bearer garbage"}):
        answer = client.post(url, content=body, headers=headers)
        assert answer.status_code == 401, headers
        assert answer.json()["code"] == "bad_signature"
    with db.session() as session:
        assert session.get(Message, message_id).state == "sent"  # type: ignore[union-attr]
        assert session.scalar(select(PendingStatus.id)) is None


def test_webhook_for_another_provider_or_account_is_refused(
    client: TestClient, db: Database, box: SecretBox, account: NewAccount
) -> None:
    body = json.dumps(_status("x", "read")).encode()
    headers = {"Authorization": sign_webhook(body, _secret(db, box, account), "sandbox")}
    assert (
        client.post(
            f"/webhooks/vonage/{account.account_id}/status", content=body, headers=headers
        ).status_code
        == 404
    )
    assert client.post("/webhooks/sandbox/TID-NOPE/status", content=body, headers=headers).status_code == 404


def test_a_status_before_the_send_is_recorded_is_kept_and_applied_later(
    client: TestClient, db: Database, box: SecretBox, account: NewAccount
) -> None:
    [claimed] = _claimed(db, account, 1)[1]
    secret = _secret(db, box, account)
    # No client_ref and an id we have not recorded yet: kept for later.
    assert _post(client, account, secret, "status", _status("early-uuid", "delivered")) == 200
    with db.session() as session:
        assert session.scalar(select(PendingStatus.provider_message_id)) == "early-uuid"
        assert session.get(Message, claimed.id).state == "sending"  # type: ignore[union-attr]
        record_attempts(
            session,
            [Attempt(claimed, "sandbox", result=SendResult.accepted("early-uuid"))],
            utcnow(),
            max_attempts=3,
            retry_base=1,
            retry_cap=1,
        )
    with db.session() as session:
        assert session.get(Message, claimed.id).state == "delivered"  # type: ignore[union-attr]
        assert session.scalar(select(PendingStatus.id)) is None


def test_status_with_client_ref_moves_a_row_still_being_sent(
    client: TestClient, db: Database, box: SecretBox, account: NewAccount
) -> None:
    [claimed] = _claimed(db, account, 1)[1]
    secret = _secret(db, box, account)
    assert _post(client, account, secret, "status", _status("u-1", "read", client_ref=str(claimed.id))) == 200
    with db.session() as session:
        record_attempts(
            session,
            [Attempt(claimed, "sandbox", result=SendResult.accepted("u-1"))],
            utcnow(),
            max_attempts=3,
            retry_base=1,
            retry_cap=1,
        )
    with db.session() as session:
        row = session.get(Message, claimed.id)
        assert row is not None and row.state == "read" and row.provider_message_id == "u-1"


def test_replies_mark_the_answered_message_and_stop_opts_out(
    client: TestClient, db: Database, box: SecretBox, account: NewAccount
) -> None:
    campaign_id, messages = _sent_messages(db, account, 3)
    secret = _secret(db, box, account)

    def inbound(uuid: str, sender: str, text: str, context: str | None) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "channel": "whatsapp",
            "message_uuid": uuid,
            "to": "14157386102",
            "from": sender.lstrip("+"),
            "timestamp": "2026-11-25T10:00:00Z",
            "context_status": "none",
            "message_type": "text",
            "text": text,
        }
        if context:
            payload["context"] = {"message_uuid": context, "message_from": "14157386102"}
        return payload

    with db.session() as session:
        phones = dict(session.execute(select(Message.id, Message.to_phone)).all())
    (m0, u0), (m1, _), (m2, _) = messages
    assert _post(client, account, secret, "inbound", inbound("in-1", phones[m0], "Thanks!", u0)) == 200
    assert (
        _post(client, account, secret, "inbound", inbound("in-1", phones[m0], "Thanks!", u0)) == 200
    )  # repeat
    assert _post(client, account, secret, "inbound", inbound("in-2", phones[m1], "STOP", None)) == 200
    with db.session() as session:
        stats = campaign_stats(session, campaign_id)
        assert stats["replied"] == 2
        assert session.get(Message, m0).state == "read"  # type: ignore[union-attr]
        assert session.get(Message, m2).replied_at is None  # type: ignore[union-attr]
        opted = dict(session.execute(select(Profile.phone, Profile.whatsapp_opt_in)).all())
    assert opted[phones[m1]] is False and opted[phones[m0]] is True


def test_concurrent_webhooks_are_applied_together(
    live: tuple[str, Any], db: Database, box: SecretBox, account: NewAccount
) -> None:
    """Many statuses in flight at once reach the real server: they are committed in shared batches (one
    lookup and one UPDATE per status kind), and every message ends where its statuses lead."""
    url, _app = live
    _campaign_id, sent = _sent_messages(db, account, 120)
    secret = _secret(db, box, account)
    reads = {message_id for message_id, _ in sent[::2]}

    async def post_all() -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:

            async def one(message_id: int, uuid: str, status: str) -> int:
                body = json.dumps(_status(uuid, status, str(message_id))).encode()
                headers = {"Authorization": sign_webhook(body, secret, "sandbox")}
                path = f"/webhooks/sandbox/{account.account_id}/status"
                return (await http.post(path, content=body, headers=headers)).status_code

            jobs = [one(i, u, "delivered") for i, u in sent] + [
                one(i, u, "read") for i, u in sent if i in reads
            ]
            jobs += [one(i, u, "delivered") for i, u in sent[:10]]  # repeats
            random.Random(7).shuffle(jobs)
            return list(await asyncio.gather(*jobs))

    assert set(asyncio.run(post_all())) == {200}
    with db.session() as session:
        states = dict(session.execute(select(Message.id, Message.state)).all())
    assert states == {i: "read" if i in reads else "delivered" for i, _ in sent}


def test_the_webhook_lane_refuses_what_it_cannot_take(client: TestClient, account: NewAccount) -> None:
    too_big = client.post(f"/webhooks/meta/{account.account_id}", content=b"x" * (5 * 1024 * 1024))
    assert too_big.status_code == 413 and too_big.json()["code"] == "payload_too_large"
    # Not a webhook path: FastAPI answers, as for any unknown route.
    assert client.post(f"/webhooks/sandbox/{account.account_id}/bogus", content=b"{}").status_code == 422
    assert client.post("/webhooks/nope", content=b"{}").status_code == 404


def test_serve_with_two_processes_shares_the_port(
    db: Database, box: SecretBox, account: NewAccount, settings: Settings, tmp_path: Path
) -> None:
    """``tidings serve --processes 2``: two web processes on one port, applying what they receive."""
    from tests.cluster import free_port, reaped, start_server, stop, tidings_env

    _campaign_id, sent = _sent_messages(db, account, 40)
    secret = _secret(db, box, account)
    port = free_port()
    assert settings.secret_key
    env = tidings_env(db.url, tmp_path, settings.secret_key)
    server = start_server(env, port, tmp_path / "server.log", processes=2)
    with reaped(server):
        children = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(p) == server.pid]
        assert len(children) >= 2
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            for message_id, uuid in sent:  # a new connection each: the kernel spreads them over both
                body = json.dumps(_status(uuid, "delivered", str(message_id))).encode()
                headers = {"Authorization": sign_webhook(body, secret, "sandbox"), "Connection": "close"}
                answer = http.post(
                    f"/webhooks/sandbox/{account.account_id}/status", content=body, headers=headers
                )
                assert answer.json() == {"status": "ok", "status_applied": 1}
        stop(server)
    with db.session() as session:
        states = session.scalars(select(Message.state)).all()
    assert states == ["delivered"] * 40
    assert server.returncode == 0


def _parent(proc: Path) -> int | None:
    """The parent pid of a /proc/<pid> entry (None when it has gone)."""
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def test_a_webhook_that_cannot_be_applied_gets_a_5xx_so_the_provider_retries(
    client: TestClient, db: Database, box: SecretBox, account: NewAccount, monkeypatch: pytest.MonkeyPatch
) -> None:
    _campaign_id, [(message_id, uuid)] = _sent_messages(db, account, 1)
    secret = _secret(db, box, account)

    def broken(*_args: object, **_kw: object) -> list[str]:
        raise RuntimeError("the database went away")

    monkeypatch.setattr("tidings.webhooks.service.apply_statuses", broken)
    assert _post(client, account, secret, "status", _status(uuid, "read", str(message_id))) == 500
    monkeypatch.undo()
    assert _post(client, account, secret, "status", _status(uuid, "read", str(message_id))) == 200
    with db.session() as session:
        assert session.get(Message, message_id).state == "read"  # type: ignore[union-attr]
