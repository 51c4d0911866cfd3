"""Finding a profile (by identity, phone or name, paged by cursor, each through its index), a profile's
WhatsApp messages, and the account's property catalogue for the pickers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import event, select

from tests.conftest import basic, clevertap, new_account
from tests.helpers import phone, refused, running_campaign
from tidings.accounts.service import NewAccount
from tidings.db import Database
from tidings.delivery.models import Message
from tidings.profiles import service
from tidings.profiles.models import CatalogueEntry, Profile
from tidings.secrets import SecretBox


def upload(client: TestClient, account: NewAccount, *records: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/1/upload", json={"d": list(records)}, headers=clevertap(account))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def person(identity: str, **data: Any) -> dict[str, Any]:
    return {"type": "profile", "identity": identity, "profileData": data}


def find(client: TestClient, account: NewAccount, q: str, limit: int = 50) -> list[str]:
    """Every identity the search finds, following the cursor page by page."""
    found: list[str] = []
    params: dict[str, Any] = {"q": q, "limit": limit}
    while True:
        r = client.get("/api/v1/profiles", params=params, headers=basic(account))
        assert r.status_code == 200, r.text
        page = r.json()
        assert page["total"] is None and len(page["items"]) <= limit
        found += [item["identity"] for item in page["items"]]
        if page["next_cursor"] is None:
            return found
        assert len(page["items"]) == limit
        params["cursor"] = page["next_cursor"]


PEOPLE = [
    person("1189549", Name="Jack Montana", Phone="+14155552671"),
    person("1189550", Name="asha Rao", Phone="+14155552672"),
    person("jack@example.com", Name="Jacqueline"),
    person("ravi", Name="Ravi", Phone="+919812345678"),
    person("ünal", Name="Ünal Öz"),
    person("u-41", Name="Ärzte", Phone="+4930123456"),
]


def test_find_by_identity_phone_or_name(
    client: TestClient, db: Database, box: SecretBox, account: NewAccount
) -> None:
    upload(client, account, *PEOPLE)
    other = new_account(db, box, "Other")
    upload(client, other, person("1189551", Name="Jack", Phone="+14155552673"))

    assert find(client, account, "11895") == ["1189549", "1189550"]  # identity prefix
    # An identity match first, then name matches (case-insensitive, in their order), each once.
    assert find(client, account, "jack") == ["jack@example.com", "1189549"]
    assert find(client, account, "JAC") == ["1189549", "jack@example.com"]  # identities keep their case
    assert find(client, account, "+1 (415) 555-2671") == ["1189549"]  # a phone in any format
    assert find(client, account, "14155552672") == ["1189550"]  # digits only
    assert find(client, account, "+1 415 555") == ["1189549", "1189550"]  # a phone's beginning
    assert find(client, account, "+91 98123") == ["ravi"]
    assert find(client, account, "ASHA r") == ["1189550"]  # a name's beginning, whatever the case
    assert find(client, account, "ünal") == ["ünal"]  # identity, and its name: found once
    assert find(client, account, "ÄRZ") == ["u-41"]  # case-folded beyond ASCII, on every database
    assert find(client, account, "nobody") == []
    plain = client.get("/api/v1/profiles?q=%20", headers=basic(account)).json()  # blank: the plain list
    assert plain["total"] == len(PEOPLE) and plain["next_cursor"] is None

    # A profile whose name changes is found by its new name only; one whose name goes is not found.
    upload(client, account, person("ravi", Name="Ravindra"), person("1189550", Name=None))
    assert find(client, account, "ravind") == ["ravi"]
    assert find(client, account, "asha") == []


def test_search_pages_follow_the_cursor_across_identity_phone_and_name(
    client: TestClient, account: NewAccount
) -> None:
    # "9" is the beginning of identities, of phone numbers (+9…) and of names: 5 + 4 + 3 profiles.
    records = [person(f"9-{n}") for n in range(5)]
    records += [person(f"p{n}", Phone=phone(n)) for n in range(4)]
    records += [person(f"n{n}", Name=f"9 Lives {n}") for n in range(3)]
    records += [person("x", Name="Nine", Phone="+14155552671")]
    assert upload(client, account, *records)["unprocessed"] == []
    everything = find(client, account, "9")
    assert everything == [f"9-{n}" for n in range(5)] + [f"p{n}" for n in range(4)] + [
        f"n{n}" for n in range(3)
    ]
    for limit in (1, 2, 3, 5, 12):
        assert find(client, account, "9", limit=limit) == everything

    auth = basic(account)
    refused(client.get("/api/v1/profiles?q=9&cursor=nonsense", headers=auth), 422, "invalid_cursor")
    no_kind = "WzksICIiLCAxXQ"  # [9, "", 1]: no search has a 10th kind
    refused(client.get(f"/api/v1/profiles?q=9&cursor={no_kind}", headers=auth), 422, "invalid_cursor")
    refused(client.get("/api/v1/profiles?cursor=WzAsICIiLCAxXQ", headers=auth), 422, "invalid_cursor")  # no q
    refused(client.get("/api/v1/profiles?q=9&offset=1", headers=auth), 422, "invalid_offset")
    assert client.get("/api/v1/profiles?q=9", headers=clevertap(account)).status_code == 200
    refused(client.get("/api/v1/profiles?q=9"), 401, "unauthorized")


def _plans(db: Database, account: NewAccount, q: str) -> list[str]:
    """The query plans of the statements a search runs (the planner told not to scan whole tables)."""
    statements: list[tuple[str, Any]] = []

    def keep(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "profiles" in statement:
            statements.append((statement, parameters))

    with db.read() as session:
        event.listen(session.connection(), "before_cursor_execute", keep)
        service.find_profiles(session, account.account_id, q, 10)
        event.remove(session.connection(), "before_cursor_execute", keep)
    plans = []
    with db.engine.connect() as conn:
        postgres = db.engine.dialect.name == "postgresql"
        if postgres:
            conn.exec_driver_sql("SET enable_seqscan = off")
        for statement, parameters in statements:
            explain = "EXPLAIN " if postgres else "EXPLAIN QUERY PLAN "
            rows = conn.exec_driver_sql(explain + statement, parameters).all()
            plans.append("\n".join(str(row[-1]) for row in rows))
        conn.rollback()
    return plans


def test_each_search_is_a_range_of_its_index(client: TestClient, db: Database, account: NewAccount) -> None:
    upload(client, account, *PEOPLE)
    identity, by_phone, name = _plans(db, account, "14")  # an identity, a phone and a name prefix
    unique = (
        "uq_profiles_account_id" if db.engine.dialect.name == "postgresql" else "sqlite_autoindex_profiles_1"
    )
    assert unique in identity  # the (account_id, identity) unique constraint's index
    assert "ix_profiles_account_phone" in by_phone
    assert "ix_profiles_account_name_key" in name
    for plan in (identity, name):  # read in the index's order: nothing sorted
        assert "TEMP B-TREE" not in plan and "Sort" not in plan, plan
    plans = _plans(db, account, "jack")  # not a phone: identities, then names
    assert len(plans) == 2 and "ix_profiles_account_name_key" in plans[1]


def test_a_profiles_messages_newest_first(client: TestClient, db: Database, account: NewAccount) -> None:
    campaign = running_campaign(db, account.account_id, [phone(1), phone(2)])  # profiles u0 and u1
    with db.session() as session:
        u0 = session.scalars(select(Profile).where(Profile.identity == "u0")).one()
        queued = session.scalars(select(Message).where(Message.profile_id == u0.id)).one()
        earlier = queued.created_at - timedelta(days=1)
        session.add(  # an agent's reply, a day before
            Message(
                account_id=account.account_id,
                profile_id=u0.id,
                occurrence="agent-1",
                state="read",
                to_phone=phone(1),
                text="Your ticket is on its way",
                created_at=earlier,
                sent_at=earlier,
                read_at=earlier + timedelta(minutes=3),
            )
        )
    r = client.get("/api/v1/profiles/u0/messages", headers=basic(account))
    assert r.status_code == 200, r.text
    page = r.json()
    assert page["identity"] == "u0" and page["total"] == 2
    first, second = page["items"]
    assert (first["campaign_id"], first["campaign_name"], first["state"]) == (campaign, "c", "queued")
    assert first["to_phone"] == phone(1) and first["variant"] is None
    assert (second["campaign_id"], second["campaign_name"], second["state"]) == (None, None, "read")
    assert second["text"] == "Your ticket is on its way" and second["read_at"] is not None

    # Opting out settles the queued one, and the list says why.
    assert (
        client.put(
            "/api/v1/profiles/u0/consent", json={"whatsapp": False}, headers=basic(account)
        ).status_code
        == 200
    )
    page = client.get("/api/v1/profiles/u0/messages?limit=1", headers=basic(account)).json()
    assert page["total"] == 2 and len(page["items"]) == 1
    assert (page["items"][0]["state"], page["items"][0]["reason"]) == ("skipped", "not_opted_in")
    assert client.get("/api/v1/profiles/u0/messages?offset=1", headers=basic(account)).json()["items"] == [
        second
    ]
    refused(client.get("/api/v1/profiles/nobody/messages", headers=basic(account)), 404, "not_found")


def test_the_property_catalogue(
    client: TestClient, db: Database, box: SecretBox, account: NewAccount
) -> None:
    result = upload(
        client,
        account,
        person("a", Name="A", City="Pune", **{"MSG-whatsapp": True}),
        person("b", Phone="12", Secret="refused with its record"),
        person("a", City=None),  # removing a property keeps its name in the catalogue
        {
            "type": "event",
            "identity": "a",
            "evtName": "Charged",
            "evtData": {"Amount": 300, "Currency": "USD"},
        },
        {"type": "event", "identity": "a", "evtName": "App Launched"},
        {"type": "event", "identity": "a", "evtName": "Charged", "evtData": {"Coupon": "X"}},
        {"type": "event", "identity": "a", "evtName": "Refused", "evtData": [1]},
    )
    assert [u["code"] for u in result["unprocessed"]] == [516, 512]
    other = new_account(db, box, "Other")
    upload(client, other, person("z", Other=1))

    r = client.get("/api/v1/properties", headers=basic(account))
    assert r.status_code == 200, r.text
    body = r.json()
    assert sorted(body["profile"]) == ["City", "MSG-whatsapp", "Name"]
    assert [(e["name"], sorted(e["properties"])) for e in body["events"]] == [
        ("App Launched", []),
        ("Charged", ["Amount", "Coupon", "Currency"]),
    ]
    assert sorted(client.get("/api/v1/properties", headers=basic(other)).json()["profile"]) == ["Other"]
    refused(client.get("/api/v1/properties"), 401, "unauthorized")


def test_the_catalogue_is_written_at_most_hourly_per_name(db: Database, account: NewAccount) -> None:
    t0 = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)
    charged = {"type": "event", "identity": "a", "evtName": "Charged", "evtData": {"Amount": 1}}

    def seen() -> dict[tuple[str, str], datetime]:
        with db.read() as session:
            rows = session.execute(
                select(CatalogueEntry.event_name, CatalogueEntry.property, CatalogueEntry.last_seen_at)
            )
            return {(event_name, key): at for event_name, key, at in rows}

    for minutes in (0, 30, 59):
        with db.session() as session:
            service.ingest(
                session, account.account_id, [person("a", Name="A"), charged], t0 + timedelta(minutes=minutes)
            )
    assert seen() == {("", "Name"): t0, ("Charged", ""): t0, ("Charged", "Amount"): t0}
    later = t0 + timedelta(minutes=61)
    with db.session() as session:
        service.ingest(session, account.account_id, [charged, {**charged, "evtData": {"Items": 2}}], later)
    assert seen() == {
        ("", "Name"): t0,
        ("Charged", ""): later,
        ("Charged", "Amount"): later,
        ("Charged", "Items"): later,
    }
