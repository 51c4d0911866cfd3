"""The consent history: every change of ``MSG-whatsapp`` — by upload, by the consent API or page, by a
STOP/START keyword — is kept with the old and new value, the path, who, and when; opting in and out by
hand; migration 0006 fills the new columns and tables from what is already stored."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import insert, select, text

from tests.conftest import basic, clevertap, new_account
from tests.helpers import phone, refused, running_campaign
from tidings.accounts.service import NewAccount
from tidings.conversations.service import record_inbound
from tidings.db import Database, alembic_config, upgrade, utcnow
from tidings.delivery.models import Message
from tidings.profiles import service
from tidings.profiles.models import CatalogueEntry, ConsentChange, Event, Profile
from tidings.providers.base import InboundReply
from tidings.secrets import SecretBox
from tidings.users.service import create_api_key


def bearer(db: Database, account: NewAccount, name: str, role: str) -> dict[str, str]:
    with db.session() as session:
        secret = create_api_key(session, account.account_id, name=name, role=role).secret
    return {"Authorization": f"Bearer {secret}"}


def upload(client: TestClient, headers: dict[str, str], *records: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/1/upload", json={"d": list(records)}, headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def profile(identity: str, **data: Any) -> dict[str, Any]:
    return {"type": "profile", "identity": identity, "profileData": data}


def history(client: TestClient, account: NewAccount, identity: str, **params: Any) -> list[dict[str, Any]]:
    r = client.get(f"/api/v1/profiles/{identity}/consent", params=params, headers=basic(account))
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def changes(item: dict[str, Any]) -> tuple[Any, ...]:
    return item["old_value"], item["new_value"], item["source"], item["actor"]


def test_uploads_record_each_change_and_only_changes(
    client: TestClient, db: Database, account: NewAccount
) -> None:
    ct = clevertap(account)
    upload(client, ct, profile("a", **{"MSG-whatsapp": True}), profile("b", Name="B"))
    upload(client, ct, profile("a", Name="A"))  # MSG-whatsapp untouched: no change
    upload(client, ct, profile("a", **{"MSG-whatsapp": "true"}))  # the same value: no change
    assert [changes(i) for i in history(client, account, "a")] == [(None, True, "upload", "passcode")]
    assert history(client, account, "b") == []  # created without MSG-whatsapp: nothing said

    key = bearer(db, account, "crm-sync", "marketer")
    # In one batch: a opted out then in again (two records, one net value: no change), b opted in, c new
    # and opted out, d's record refused (bad phone) so its consent is not written either.
    body = upload(
        client,
        key,
        profile("a", **{"MSG-whatsapp": False}),
        profile("a", **{"MSG-whatsapp": True}),
        profile("b", **{"MSG-whatsapp": True}),
        profile("c", **{"MSG-whatsapp": False}),
        profile("d", Phone="12", **{"MSG-whatsapp": True}),
    )
    assert [u["code"] for u in body["unprocessed"]] == [516]
    assert len(history(client, account, "a")) == 1
    assert [changes(i) for i in history(client, account, "b")] == [(False, True, "upload", "crm-sync")]
    assert [changes(i) for i in history(client, account, "c")] == [(None, False, "upload", "crm-sync")]
    refused(client.get("/api/v1/profiles/d/consent", headers=basic(account)), 404, "not_found")

    assert upload(client, ct, profile("b", **{"MSG-whatsapp": "false"}))["unprocessed"] == []
    assert [changes(i) for i in history(client, account, "b")] == [
        (True, False, "upload", "passcode"),
        (False, True, "upload", "crm-sync"),
    ]


def test_opt_in_and_out_by_hand(client: TestClient, db: Database, account: NewAccount) -> None:
    campaign = running_campaign(
        db, account.account_id, [phone(1)]
    )  # profile u0, opted in, one queued message
    auth = basic(account)
    r = client.put("/api/v1/profiles/u0/consent", json={"whatsapp": False}, headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["whatsapp_opt_in"] is False and r.json()["properties"]["MSG-whatsapp"] is False
    with db.read() as session:  # its unsent message is settled in the same transaction
        state = session.execute(
            select(Message.state, Message.reason).where(Message.campaign_id == campaign)
        ).one()
    assert tuple(state) == ("skipped", "not_opted_in")

    again = client.put("/api/v1/profiles/u0/consent", json={"whatsapp": False}, headers=auth)
    assert again.status_code == 200  # already out: nothing changes, nothing is recorded
    key = bearer(db, account, "support desk", "marketer")
    assert client.put("/api/v1/profiles/u0/consent", json={"whatsapp": True}, headers=key).status_code == 200
    with db.session() as session:  # the profile page calls the service with its own source and user
        service.change_consent(
            session, account.account_id, "u0", False, service.ConsentSource.dashboard, "asha@example.com"
        )
    assert [changes(i) for i in history(client, account, "u0")] == [
        (True, False, "dashboard", "asha@example.com"),
        (False, True, "api", "support desk"),
        (True, False, "api", "passcode"),
    ]

    agent = bearer(db, account, "agent", "agent")
    assert len(history(client, account, "u0")) == 3
    assert client.get("/api/v1/profiles/u0/consent", headers=agent).status_code == 200  # agents read
    refused(
        client.put("/api/v1/profiles/u0/consent", json={"whatsapp": True}, headers=agent), 403, "forbidden"
    )
    refused(
        client.put("/api/v1/profiles/nobody/consent", json={"whatsapp": True}, headers=auth), 404, "not_found"
    )
    for bad in ({}, {"whatsapp": "maybe"}, {"whatsapp": True, "sms": True}):
        refused(client.put("/api/v1/profiles/u0/consent", json=bad, headers=auth), 422, "validation_error")
    refused(client.put("/api/v1/profiles/u0/consent", json={"whatsapp": True}), 401, "unauthorized")


def test_keywords_are_recorded_as_the_numbers_word(
    client: TestClient, db: Database, account: NewAccount
) -> None:
    upload(
        client,
        clevertap(account),
        *(profile(i, Phone=phone(1), **{"MSG-whatsapp": True}) for i in ("app", "crm")),
        profile("other", Phone=phone(2), **{"MSG-whatsapp": True}),
    )
    for word in ("STOP", "stop", "START"):  # the second STOP changes nothing
        reply = InboundReply(
            provider_message_id=f"in-{uuid.uuid4().hex}",
            from_phone=phone(1).lstrip("+"),
            timestamp=datetime.now(UTC),
            text=word,
        )
        with db.session() as session:
            assert record_inbound(session, account.account_id, "sandbox", reply)
    for identity in ("app", "crm"):
        assert [changes(i) for i in history(client, account, identity)] == [
            (False, True, "keyword", phone(1).lstrip("+")),
            (True, False, "keyword", phone(1).lstrip("+")),
            (None, True, "upload", "passcode"),
        ]
    assert len(history(client, account, "other")) == 1


def test_history_is_paged_newest_first_and_kept_per_account(
    client: TestClient, db: Database, box: SecretBox, account: NewAccount
) -> None:
    other = new_account(db, box, "Other")
    for value in (True, False, True, False, True):
        upload(client, clevertap(account), profile("u", **{"MSG-whatsapp": value}))
    upload(client, clevertap(other), profile("u", **{"MSG-whatsapp": False}))
    everything = client.get("/api/v1/profiles/u/consent", headers=basic(account)).json()
    assert everything["total"] == 5 and everything["identity"] == "u"
    assert [i["new_value"] for i in everything["items"]] == [True, False, True, False, True]
    times = [i["changed_at"] for i in everything["items"]]
    assert times == sorted(times, reverse=True)
    page = client.get("/api/v1/profiles/u/consent?limit=2&offset=2", headers=basic(account)).json()
    assert page["items"] == everything["items"][2:4] and page["total"] == 5
    assert [changes(i) for i in history(client, other, "u")] == [(None, False, "upload", "passcode")]


def test_migration_0006_fills_name_keys_and_the_catalogue(db: Database, account: NewAccount) -> None:
    """Downgrade the test database to 0005, store profiles and events as 0005 did, upgrade again."""
    now = utcnow().replace(microsecond=0)
    command.downgrade(alembic_config(db.engine), "0005")
    try:
        with db.engine.begin() as conn:
            assert "consent_changes" not in db.engine.dialect.get_table_names(conn)
            conn.execute(
                insert(Profile.__table__),
                [
                    {
                        "account_id": account.account_id,
                        "identity": identity,
                        "whatsapp_opt_in": False,
                        "properties": properties,
                        "seed": 1,
                        "created_at": now - timedelta(days=1),
                        "updated_at": now - timedelta(days=1),
                    }
                    for identity, properties in (
                        ("a", {"Name": "Asha Rao", "City": "Pune"}),
                        ("b", {"Name": 7}),
                    )
                ],
            )
            profile_id = conn.scalar(select(Profile.id).where(Profile.identity == "a"))
            conn.execute(
                insert(Event.__table__),
                [
                    {
                        "account_id": account.account_id,
                        "profile_id": profile_id,
                        "name": "Charged",
                        "properties": {"Amount": n},
                        "ts": now,
                        "created_at": now - timedelta(hours=n),
                    }
                    for n in (1, 2)
                ],
            )
    finally:
        upgrade(db.engine)
    with db.read() as session:
        keys = {
            row.identity: row.name_key for row in session.execute(select(Profile.identity, Profile.name_key))
        }
        catalogue = service.property_catalogue(session, account.account_id)
        assert session.scalar(select(text("count(*)")).select_from(ConsentChange)) == 0
        assert session.scalar(select(text("count(*)")).select_from(CatalogueEntry)) == 4
    assert keys == {"a": "asha rao", "b": None}
    assert catalogue.profile == {"Name": now - timedelta(days=1), "City": now - timedelta(days=1)}
    assert catalogue.events == {"Charged": (now - timedelta(hours=1), {"Amount": now - timedelta(hours=1)})}
