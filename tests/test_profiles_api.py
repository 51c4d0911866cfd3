"""The profiles read API (/api/v1/profiles) and the OpenAPI document of the ingest and profiles routes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from fastapi.testclient import TestClient

from tests.conftest import basic, clevertap, new_account
from tidings.accounts.service import NewAccount
from tidings.db import Database
from tidings.secrets import SecretBox

PHONE = "+14155552671"


def upload(client: TestClient, account: NewAccount, *records: dict[str, Any]) -> None:
    r = client.post("/1/upload", json={"d": list(records)}, headers=clevertap(account))
    assert r.status_code == 200 and r.json()["unprocessed"] == [], r.text


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_list_profiles_newest_first_with_total(client: TestClient, account: NewAccount) -> None:
    for n in range(1, 4):
        upload(client, account, {"type": "profile", "identity": f"u{n}", "profileData": {"n": n}})
    r = client.get("/api/v1/profiles", headers=basic(account))
    assert r.status_code == 200
    page = r.json()
    assert page["total"] == 3 and page["limit"] == 50 and page["offset"] == 0
    assert [item["identity"] for item in page["items"]] == ["u3", "u2", "u1"]

    page = client.get("/api/v1/profiles?limit=1&offset=1", headers=basic(account)).json()
    assert page["total"] == 3 and page["limit"] == 1 and page["offset"] == 1
    assert [item["identity"] for item in page["items"]] == ["u2"]

    assert client.get("/api/v1/profiles?limit=0", headers=basic(account)).status_code == 422
    assert client.get("/api/v1/profiles?offset=-1", headers=basic(account)).status_code == 422


def test_get_one_profile(client: TestClient, account: NewAccount) -> None:
    upload(
        client,
        account,
        {
            "type": "profile",
            "identity": "jack",
            "profileData": {"Name": "Jack", "Phone": "+1 415 555 2671", "MSG-whatsapp": True, "DOB": "$D_0"},
        },
    )
    r = client.get("/api/v1/profiles/jack", headers=clevertap(account))
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"identity", "phone", "whatsapp_opt_in", "properties", "created_at", "updated_at"}
    assert body["identity"] == "jack"
    assert body["phone"] == PHONE
    assert body["whatsapp_opt_in"] is True
    assert body["properties"] == {
        "Name": "Jack",
        "Phone": PHONE,
        "MSG-whatsapp": True,
        "DOB": "1970-01-01T00:00:00Z",
    }
    created, updated = when(body["created_at"]), when(body["updated_at"])
    assert created.tzinfo is not None and created == updated

    upload(client, account, {"type": "profile", "identity": "jack", "profileData": {"MSG-whatsapp": False}})
    body = client.get("/api/v1/profiles/jack", headers=basic(account)).json()
    assert body["whatsapp_opt_in"] is False
    assert when(body["updated_at"]) > created and when(body["created_at"]) == created


def test_identities_with_slashes_and_spaces(client: TestClient, account: NewAccount) -> None:
    for identity in ["a/b", "jack@example.com", "with space", "ünï/x"]:
        upload(
            client,
            account,
            {"type": "profile", "identity": identity, "profileData": {"x": 1}},
            {"type": "event", "identity": identity, "evtName": "Viewed"},
        )
        r = client.get(f"/api/v1/profiles/{quote(identity, safe='')}", headers=basic(account))
        assert r.status_code == 200 and r.json()["identity"] == identity
        r = client.get(f"/api/v1/profiles/{quote(identity, safe='')}/events", headers=basic(account))
        assert r.status_code == 200 and r.json()["identity"] == identity
        assert [ev["name"] for ev in r.json()["items"]] == ["Viewed"]


def test_profile_events_latest_first(client: TestClient, account: NewAccount) -> None:
    upload(
        client,
        account,
        {"type": "event", "identity": "u1", "evtName": "A", "ts": 1_700_000_000, "evtData": {"n": 1}},
        {"type": "event", "identity": "u1", "evtName": "C", "ts": 1_700_000_200},
        {"type": "event", "identity": "u1", "evtName": "B", "ts": 1_700_000_100, "evtData": {"d": "$D_0"}},
        {"type": "event", "identity": "u2", "evtName": "Other"},
    )
    r = client.get("/api/v1/profiles/u1/events", headers=basic(account))
    assert r.status_code == 200
    page = r.json()
    assert page["identity"] == "u1" and page["total"] == 3
    assert [ev["name"] for ev in page["items"]] == ["C", "B", "A"]
    assert page["items"][1]["properties"] == {"d": "1970-01-01T00:00:00Z"}
    assert when(page["items"][0]["ts"]) == datetime.fromtimestamp(1_700_000_200, UTC)
    assert isinstance(page["items"][0]["id"], int)

    page = client.get("/api/v1/profiles/u1/events?limit=1&offset=1", headers=basic(account)).json()
    assert page["total"] == 3 and [ev["name"] for ev in page["items"]] == ["B"]


def test_unknown_profile_is_404(client: TestClient, account: NewAccount) -> None:
    for path in ["/api/v1/profiles/nobody", "/api/v1/profiles/nobody/events"]:
        r = client.get(path, headers=basic(account))
        assert r.status_code == 404
        assert r.json()["code"] == "not_found" and "nobody" in r.json()["message"]


def test_read_api_needs_credentials(client: TestClient, account: NewAccount) -> None:
    upload(client, account, {"type": "profile", "identity": "u1", "profileData": {"x": 1}})
    wrong = NewAccount(account.account_id, account.passcode + "x")
    for path in ["/api/v1/profiles", "/api/v1/profiles/u1", "/api/v1/profiles/u1/events"]:
        assert client.get(path).status_code == 401
        r = client.get(path, headers=basic(wrong))
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"


def test_one_account_never_sees_another(
    client: TestClient, db: Database, box: SecretBox, account: NewAccount
) -> None:
    other = new_account(db, box, "Other")
    upload(
        client,
        account,
        {"type": "profile", "identity": "shared-id", "profileData": {"owner": "acme", "Phone": PHONE}},
        {"type": "event", "identity": "shared-id", "evtName": "AcmeEvent"},
        {"type": "profile", "identity": "acme-only", "profileData": {"owner": "acme"}},
    )
    upload(client, other, {"type": "profile", "identity": "shared-id", "profileData": {"owner": "other"}})

    page = client.get("/api/v1/profiles", headers=basic(other)).json()
    assert page["total"] == 1
    assert [(p["identity"], p["properties"]) for p in page["items"]] == [("shared-id", {"owner": "other"})]
    assert client.get("/api/v1/profiles/acme-only", headers=basic(other)).status_code == 404
    body = client.get("/api/v1/profiles/shared-id", headers=basic(other)).json()
    assert body["properties"] == {"owner": "other"} and body["phone"] is None
    events = client.get("/api/v1/profiles/shared-id/events", headers=basic(other)).json()
    assert events["total"] == 0 and events["items"] == []

    page = client.get("/api/v1/profiles", headers=basic(account)).json()
    assert page["total"] == 2
    events = client.get("/api/v1/profiles/shared-id/events", headers=basic(account)).json()
    assert [ev["name"] for ev in events["items"]] == ["AcmeEvent"]


def test_openapi_describes_ingest_and_profiles(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    upload_op = doc["paths"]["/1/upload"]["post"]
    assert upload_op["tags"] == ["ingest"]
    assert upload_op["requestBody"]["content"]["application/json"]["schema"]["required"] == ["d"]
    assert {"200", "400", "401"} <= set(upload_op["responses"])
    assert upload_op["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/UploadResponse"
    }
    for path in ["/api/v1/profiles", "/api/v1/profiles/{identity}", "/api/v1/profiles/{identity}/events"]:
        assert doc["paths"][path]["get"]["tags"] == ["profiles"], path
    schemas = doc["components"]["schemas"]
    assert {
        "UploadResponse",
        "UploadFailure",
        "UnprocessedRecord",
        "ProfileOut",
        "ProfilePage",
        "EventPage",
    } <= set(schemas)
    assert set(schemas["ProfileOut"]["properties"]) == {
        "identity",
        "phone",
        "whatsapp_opt_in",
        "properties",
        "created_at",
        "updated_at",
    }
    assert client.get("/docs").status_code == 200
