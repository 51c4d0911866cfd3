"""Templates through the HTTP API (and the service other domains call), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from openapi_schema_validator import OAS31Validator

from tests.conftest import basic, new_account
from tests.helpers import refused
from tidings.accounts.service import NewAccount
from tidings.campaigns.models import Campaign
from tidings.db import Database
from tidings.errors import Conflict, Invalid, NotFound
from tidings.secrets import SecretBox
from tidings.templates import service

URL = "/api/v1/templates"
BOOKING = {
    "name": "tickets:booking_confirmation",
    "category": "utility",
    "body": "Hi {{1}}, your booking {{ 2 }} is confirmed. See you, {{1}}!",
}
BOOKING_EN = ("tickets:booking_confirmation", "en")
BOOKING_PT = ("tickets:booking_confirmation", "pt_BR")


def create(client: TestClient, auth: dict[str, str], **fields: Any) -> dict[str, Any]:
    r = client.post(URL, json={**BOOKING, **fields}, headers=auth)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


def names(client: TestClient, auth: dict[str, str], **params: str) -> list[tuple[str, str]]:
    r = client.get(URL, params=params, headers=auth)
    assert r.status_code == 200, r.text
    return [(t["name"], t["language"]) for t in r.json()]


# ---- create, read, list, update, delete -----------------------------------------------------------------


def test_create_then_read_back(client: TestClient, auth: dict[str, str]) -> None:
    created = create(client, auth)
    assert created["name"] == "tickets:booking_confirmation"
    assert created["namespace"] == "tickets"
    assert created["template_name"] == "booking_confirmation"
    assert created["language"] == "en"  # default
    assert created["category"] == "UTILITY"  # stored upper case
    assert created["status"] == "APPROVED"  # added by hand: already approved at the provider
    assert created["variable_count"] == 2
    assert created["body"] == BOOKING["body"]
    assert created["provider_template_id"] is None
    assert datetime.fromisoformat(created["created_at"]).utcoffset() is not None

    r = client.get(f"{URL}/{created['id']}", headers=auth)
    assert r.status_code == 200
    assert r.json() == created
    assert client.get(URL, headers=auth).json() == [created]


def test_every_field_can_be_given(client: TestClient, auth: dict[str, str]) -> None:
    created = create(
        client,
        auth,
        language="pt_BR",
        category="Marketing",
        status="pending",
        body="Olá {{1}}",
        provider_template_id="1689556908129832",
    )
    read = client.get(f"{URL}/{created['id']}", headers=auth).json()
    assert (read["language"], read["category"], read["status"]) == ("pt_BR", "MARKETING", "PENDING")
    assert (read["variable_count"], read["provider_template_id"]) == (1, "1689556908129832")


def test_list_is_ordered_and_filtered_by_status_and_name(client: TestClient, auth: dict[str, str]) -> None:
    create(client, auth, name="shop:cart_reminder", category="MARKETING", body="Your cart misses you")
    create(client, auth, language="pt_BR", status="PENDING")
    create(client, auth)
    create(
        client, auth, name="otp:code", category="AUTHENTICATION", body="{{1}} is your code", status="paused"
    )
    assert names(client, auth) == [
        ("otp:code", "en"),
        ("shop:cart_reminder", "en"),
        ("tickets:booking_confirmation", "en"),
        ("tickets:booking_confirmation", "pt_BR"),
    ]
    assert names(client, auth, status="approved") == [("shop:cart_reminder", "en"), BOOKING_EN]
    assert names(client, auth, status="PAUSED") == [("otp:code", "en")]
    assert names(client, auth, status="REJECTED") == []
    assert names(client, auth, name="tickets:booking_confirmation") == [BOOKING_EN, BOOKING_PT]
    assert names(client, auth, name="tickets:booking_confirmation", status="PENDING") == [BOOKING_PT]
    assert names(client, auth, name="tickets") == []  # the full name, exactly
    assert names(client, auth, name="tickets:booking\x00") == []
    message = refused(client.get(URL, params={"status": "ACTIVE"}, headers=auth), 422, "invalid_status")
    assert message.startswith("status must be one of APPROVED, PENDING")


def test_patch_changes_only_what_is_sent_and_rederives_the_variables(
    client: TestClient, auth: dict[str, str]
) -> None:
    created = create(client, auth)
    r = client.patch(f"{URL}/{created['id']}", json={"body": "{{3}} {{2}} {{1}} {{ 4 }}"}, headers=auth)
    assert r.status_code == 200, r.text
    read = client.get(f"{URL}/{created['id']}", headers=auth).json()
    assert read == r.json()
    assert read["variable_count"] == 4
    assert read["body"] == "{{3}} {{2}} {{1}} {{ 4 }}"
    unchanged = ("id", "name", "language", "category", "status", "created_at")
    assert {k: read[k] for k in unchanged} == {k: created[k] for k in unchanged}
    assert read["updated_at"] >= created["updated_at"]

    r = client.patch(
        f"{URL}/{created['id']}",
        json={
            "name": "bookings:confirmed",
            "language": "en-GB",
            "category": "marketing",
            "status": "Rejected",
        },
        headers=auth,
    )
    assert r.status_code == 200, r.text
    read = client.get(f"{URL}/{created['id']}", headers=auth).json()
    assert (read["name"], read["namespace"], read["template_name"]) == (
        "bookings:confirmed",
        "bookings",
        "confirmed",
    )
    assert (read["language"], read["category"], read["status"]) == ("en-GB", "MARKETING", "REJECTED")
    assert read["variable_count"] == 4

    r = client.patch(f"{URL}/{created['id']}", json={"provider_template_id": "42"}, headers=auth)
    assert r.json()["provider_template_id"] == "42"
    r = client.patch(f"{URL}/{created['id']}", json={"provider_template_id": None}, headers=auth)
    assert r.json()["provider_template_id"] is None

    before = client.get(f"{URL}/{created['id']}", headers=auth).json()
    r = client.patch(f"{URL}/{created['id']}", json={}, headers=auth)
    assert r.status_code == 200
    assert client.get(f"{URL}/{created['id']}", headers=auth).json() == before


def test_patch_is_validated_again_and_a_refusal_changes_nothing(
    client: TestClient, auth: dict[str, str]
) -> None:
    created = create(client, auth)
    path = f"{URL}/{created['id']}"
    message = refused(client.patch(path, json={"body": "Hi {{1}} {{3}}"}, headers=auth), 422, "invalid_body")
    assert message == "variables must be numbered {{1}} to {{3}} without gaps: {{2}} is missing"
    refused(client.patch(path, json={"name": "no-colon"}, headers=auth), 422, "invalid_name")
    refused(client.patch(path, json={"category": "PROMO"}, headers=auth), 422, "invalid_category")
    refused(client.patch(path, json={"status": "LIVE"}, headers=auth), 422, "invalid_status")
    refused(client.patch(path, json={"language": "english"}, headers=auth), 422, "invalid_language")
    assert refused(client.patch(path, json={"name": None}, headers=auth), 422, "invalid_name") == (
        "name cannot be null"
    )
    refused(client.patch(path, json={"body": "ok", "category": None}, headers=auth), 422, "invalid_category")
    refused(client.patch(path, json={"variable_count": 9}, headers=auth), 422, "validation_error")
    assert client.get(path, headers=auth).json() == created


def test_delete_then_it_is_gone(client: TestClient, auth: dict[str, str]) -> None:
    created = create(client, auth)
    kept = create(client, auth, language="es")
    r = client.delete(f"{URL}/{created['id']}", headers=auth)
    assert r.status_code == 204
    assert r.content == b""
    refused(client.get(f"{URL}/{created['id']}", headers=auth), 404, "not_found")
    refused(client.delete(f"{URL}/{created['id']}", headers=auth), 404, "not_found")
    assert client.get(URL, headers=auth).json() == [kept]
    create(client, auth)  # the name and language are free again


def test_a_template_used_by_a_campaign_cannot_be_deleted(
    client: TestClient, auth: dict[str, str], account: NewAccount, db: Database
) -> None:
    created = create(client, auth)
    with db.session() as session:
        session.add(Campaign(account_id=account.account_id, name="Bookings", template_id=created["id"]))
    r = client.delete(f"{URL}/{created['id']}", headers=auth)
    message = refused(r, 409, "template_in_use")
    assert "used by a campaign" in message
    assert client.get(f"{URL}/{created['id']}", headers=auth).json() == created
    # It is intact and can still be changed.
    assert client.patch(f"{URL}/{created['id']}", json={"status": "PAUSED"}, headers=auth).status_code == 200


# ---- refusals -------------------------------------------------------------------------------------------

NAME_MESSAGE = "name must be <template_namespace>:<template_name>, e.g. tickets:booking_confirmation"


@pytest.mark.parametrize(
    "name",
    [
        "booking_confirmation",
        ":booking",
        "tickets:",
        ":",
        "a:b:c",
        "tickets: booking",
        "tickets:booking ",
        "x" * 600,
    ],
)
def test_a_name_of_another_form_is_refused_with_the_expected_form(
    client: TestClient, auth: dict[str, str], name: str
) -> None:
    message = refused(client.post(URL, json={**BOOKING, "name": name}, headers=auth), 422, "invalid_name")
    assert message.startswith(NAME_MESSAGE)
    assert client.get(URL, headers=auth).json() == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("Hi {{2}}", "variables must be numbered {{1}} to {{2}} without gaps: {{1}} is missing"),
        ("{{1}} {{2}} {{4}}", "variables must be numbered {{1}} to {{4}} without gaps: {{3}} is missing"),
        ("Hi {{name}}", "{{name}} is not a WhatsApp variable; use {{1}}, {{2}}, …"),
        ("Hi {{0}}", "{{0}} is not a WhatsApp variable: numbering starts at {{1}}"),
        ("Hi {{-1}}", "{{-1}} is not a WhatsApp variable; use {{1}}, {{2}}, …"),
        ("Hi {{1}", "'{{' is not closed by '}}': write variables as {{1}}, {{2}}, …"),
        ("", "body must not be empty"),
        ("   ", "body must not be empty"),
        ("x" * 1025, "body must be at most 1024 characters, got 1025"),
        ("a\x00b", "body must not contain NUL characters"),
    ],
)
def test_a_bad_body_is_refused_with_the_reason(
    client: TestClient, auth: dict[str, str], body: str, message: str
) -> None:
    r = client.post(URL, json={**BOOKING, "body": body}, headers=auth)
    assert refused(r, 422, "invalid_body") == message
    assert client.get(URL, headers=auth).json() == []


def test_the_longest_body_is_accepted(client: TestClient, auth: dict[str, str]) -> None:
    body = "{{1}}" + "x" * 1019
    assert create(client, auth, body=body)["body"] == body


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("language", "english", "invalid_language"),
        ("language", "en US", "invalid_language"),
        ("category", "PROMOTIONAL", "invalid_category"),
        ("status", "LIVE", "invalid_status"),
        ("provider_template_id", "x" * 65, "invalid_provider_template_id"),
    ],
)
def test_other_bad_fields_are_refused(
    client: TestClient, auth: dict[str, str], field: str, value: str, code: str
) -> None:
    message = refused(client.post(URL, json={**BOOKING, field: value}, headers=auth), 422, code)
    assert message.startswith(field)
    assert client.get(URL, headers=auth).json() == []


def test_missing_fields_wrong_types_and_a_client_variable_count_are_refused(
    client: TestClient, auth: dict[str, str]
) -> None:
    r = client.post(URL, json={"name": "a:b", "category": "UTILITY"}, headers=auth)
    assert refused(r, 422, "validation_error").startswith("body:")
    refused(client.post(URL, json={**BOOKING, "body": 12}, headers=auth), 422, "validation_error")
    # The variable count is derived from the body, never taken from the client.
    r = client.post(URL, json={**BOOKING, "variable_count": 7}, headers=auth)
    assert refused(r, 422, "validation_error").startswith("variable_count:")
    assert client.get(URL, headers=auth).json() == []


def test_the_same_name_and_language_twice_is_a_conflict(client: TestClient, auth: dict[str, str]) -> None:
    first = create(client, auth)
    r = client.post(URL, json={**BOOKING, "body": "other"}, headers=auth)
    message = refused(r, 409, "template_exists")
    assert "tickets:booking_confirmation" in message
    other_language = create(client, auth, language="en_US")
    # Renaming into an existing (name, language) is refused too.
    r = client.patch(f"{URL}/{other_language['id']}", json={"language": "en"}, headers=auth)
    refused(r, 409, "template_exists")
    assert client.get(URL, headers=auth).json() == [first, other_language]


# ---- accounts -------------------------------------------------------------------------------------------


def test_an_account_never_sees_or_changes_another_accounts_templates(
    client: TestClient, auth: dict[str, str], db: Database, box: SecretBox
) -> None:
    mine = create(client, auth)
    other = basic(new_account(db, box, "Other"))
    path = f"{URL}/{mine['id']}"
    assert client.get(URL, headers=other).json() == []
    assert client.get(URL, params={"name": mine["name"]}, headers=other).json() == []
    refused(client.get(path, headers=other), 404, "not_found")
    refused(client.patch(path, json={"status": "PAUSED"}, headers=other), 404, "not_found")
    refused(client.delete(path, headers=other), 404, "not_found")
    # The other account may use the same name; each sees only its own.
    theirs = create(client, other)
    assert theirs["id"] != mine["id"]
    assert client.get(URL, headers=other).json() == [theirs]
    assert client.get(URL, headers=auth).json() == [mine]


def test_unauthenticated_calls_are_refused(
    client: TestClient, auth: dict[str, str], account: NewAccount
) -> None:
    created = create(client, auth)
    path = f"{URL}/{created['id']}"
    wrong = basic(NewAccount(account.account_id, "wrong"))
    for headers in ({}, wrong):
        refused(client.post(URL, json=BOOKING, headers=headers), 401, "unauthorized")
        refused(client.get(URL, headers=headers), 401, "unauthorized")
        refused(client.get(path, headers=headers), 401, "unauthorized")
        refused(client.patch(path, json={"status": "PAUSED"}, headers=headers), 401, "unauthorized")
        refused(client.delete(path, headers=headers), 401, "unauthorized")
    assert client.get(URL, headers=auth).json() == [created]


@pytest.mark.parametrize("template_id", ["0", "-1", "999999", str(2**31), str(2**63)])
def test_unknown_ids_are_not_found(client: TestClient, auth: dict[str, str], template_id: str) -> None:
    refused(client.get(f"{URL}/{template_id}", headers=auth), 404, "not_found")
    refused(client.patch(f"{URL}/{template_id}", json={}, headers=auth), 404, "not_found")
    refused(client.delete(f"{URL}/{template_id}", headers=auth), 404, "not_found")


# ---- the OpenAPI document -------------------------------------------------------------------------------


def test_the_openapi_document_describes_the_routes_and_the_answers(
    client: TestClient, app: FastAPI, auth: dict[str, str]
) -> None:
    doc = client.get("/openapi.json").json()
    assert set(doc["paths"][URL]) == {"get", "post"}
    assert set(doc["paths"][URL + "/{ref}"]) == {"get", "patch", "delete"}
    for path in (URL, URL + "/{ref}"):
        for operation in doc["paths"][path].values():
            assert operation["tags"] == ["templates"]
    post = doc["paths"][URL]["post"]
    assert "201" in post["responses"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/TemplateCreate")
    assert "409" in post["responses"]
    assert "204" in doc["paths"][URL + "/{ref}"]["delete"]["responses"]

    schemas = doc["components"]["schemas"]
    out = schemas["TemplateOut"]
    for field in (
        "id",
        "name",
        "namespace",
        "template_name",
        "language",
        "category",
        "status",
        "body",
        "variable_count",
        "created_at",
        "updated_at",
    ):
        assert field in out["required"]
    assert "variable_count" not in schemas["TemplateCreate"]["properties"]
    # What the API answers matches what the document says.
    created = create(client, auth)
    validator = OAS31Validator({**out, "components": doc["components"]})
    validator.validate(created)
    error = client.post(URL, json={**BOOKING, "name": "x"}, headers=auth).json()
    OAS31Validator(schemas["ErrorBody"]).validate(error)


# ---- the service, as other domains call it --------------------------------------------------------------


def test_service_create_find_get_and_render(db: Database, account: NewAccount) -> None:
    aid = account.account_id
    with db.session() as session:
        t = service.create_template(
            session, aid, name="tickets:reminder", body="Hi {{1}}, flight {{2}}", category="utility"
        )
        assert (t.status, t.language, t.category, t.variable_count) == ("APPROVED", "en", "UTILITY", 2)
        pt = service.create_template(
            session, aid, name="tickets:reminder", body="Olá {{1}}", category="UTILITY", language="pt_BR"
        )
        tid = t.id
    with db.session() as session:
        assert service.get_template(session, aid, tid).name == "tickets:reminder"
        found = service.find_template(session, aid, "tickets:reminder", "pt_BR")
        assert found is not None and found.id == pt.id
        oldest = service.find_template(session, aid, "tickets:reminder")
        assert oldest is not None and oldest.id == tid
        assert service.find_template(session, aid, "tickets:reminder", "de") is None
        assert service.find_template(session, aid, "not a name") is None
        assert service.find_template(session, "TID-OTHER", "tickets:reminder") is None
        assert [x.language for x in service.list_templates(session, aid, name="tickets:reminder")] == [
            "en",
            "pt_BR",
        ]
        assert service.render_body(service.get_template(session, aid, tid).body, ["Ann", "LH 400"]) == (
            "Hi Ann, flight LH 400"
        )
        with pytest.raises(NotFound):
            service.get_template(session, "TID-OTHER", tid)
        with pytest.raises(Invalid) as bad:
            service.create_template(session, aid, name="x", body="b", category="UTILITY")
        assert bad.value.code == "invalid_name"
        with pytest.raises(Conflict) as taken:
            service.create_template(session, aid, name="tickets:reminder", body="b", category="UTILITY")
        assert taken.value.code == "template_exists"
        # The refusals left the transaction usable.
        assert len(service.list_templates(session, aid)) == 2


def test_service_update_and_delete(db: Database, account: NewAccount) -> None:
    aid = account.account_id
    with db.session() as session:
        tid = service.create_template(session, aid, name="a:b", body="x", category="UTILITY").id
    with db.session() as session:
        t = service.update_template(session, aid, tid, body="{{1}}{{2}}", status="paused")
        assert (t.variable_count, t.status) == (2, "PAUSED")
        with pytest.raises(Invalid) as bad:
            service.update_template(session, aid, tid, variable_count=5)
        assert bad.value.code == "invalid_field"
    with db.session() as session:
        assert service.get_template(session, aid, tid).variable_count == 2
        service.delete_template(session, aid, tid)
    with db.session() as session, pytest.raises(NotFound):
        service.get_template(session, aid, tid)


def test_service_delete_of_a_template_in_use_leaves_the_transaction_usable(
    db: Database, account: NewAccount
) -> None:
    aid = account.account_id
    with db.session() as session:
        tid = service.create_template(session, aid, name="a:b", body="x", category="UTILITY").id
        session.add(Campaign(account_id=aid, name="Uses a:b", template_id=tid))
    with db.session() as session:
        with pytest.raises(Conflict) as in_use:
            service.delete_template(session, aid, tid)
        assert in_use.value.code == "template_in_use"
        assert service.get_template(session, aid, tid).name == "a:b"
        service.update_template(session, aid, tid, status="PAUSED")
    with db.session() as session:
        assert service.get_template(session, aid, tid).status == "PAUSED"


def test_upsert_synced_creates_then_updates_by_name_and_language(db: Database, account: NewAccount) -> None:
    aid = account.account_id
    sync = {"name": "shop:promo", "category": "MARKETING", "provider_template_id": "111"}
    with db.session() as session:
        created = service.upsert_synced(
            session, aid, language="en_US", status="PENDING", body="Sale {{1}}", **sync
        )
        tid = created.id
    with db.session() as session:
        updated = service.upsert_synced(
            session, aid, language="en_US", status="APPROVED", body="Sale {{1}} ends {{2}}", **sync
        )
        assert updated.id == tid
        other = service.upsert_synced(session, aid, language="de", status="REJECTED", body="Angebot", **sync)
        assert other.id != tid
    with db.session() as session:
        rows = {(t.language, t.status, t.variable_count) for t in service.list_templates(session, aid)}
        assert rows == {("en_US", "APPROVED", 2), ("de", "REJECTED", 0)}
        with pytest.raises(Invalid) as bad:
            service.upsert_synced(session, aid, language="en_US", status="APPROVED", body="{{x}}", **sync)
        assert bad.value.code == "invalid_body"


def test_set_status_counts_the_rows_it_changed(db: Database, account: NewAccount, box: SecretBox) -> None:
    aid = account.account_id
    other = new_account(db, box, "Other").account_id
    with db.session() as session:
        for language in ("en", "pt_BR", "es"):
            service.create_template(
                session, aid, name="shop:promo", body="x", category="MARKETING", language=language
            )
        service.create_template(session, aid, name="shop:other", body="x", category="MARKETING")
        service.create_template(session, other, name="shop:promo", body="x", category="MARKETING")
    with db.session() as session:
        assert service.set_status(session, aid, name="shop:promo", language="pt_BR", status="paused") == 1
        assert service.set_status(session, aid, name="shop:promo", language="pt_BR", status="PAUSED") == 0
        assert service.set_status(session, aid, name="shop:promo", language=None, status="DISABLED") == 3
        assert service.set_status(session, aid, name="shop:nothing", language=None, status="DISABLED") == 0
        assert service.set_status(session, aid, name="bad name", language=None, status="DISABLED") == 0
        with pytest.raises(Invalid):
            service.set_status(session, aid, name="shop:promo", language=None, status="GONE")
    with db.session() as session:
        statuses = {(t.name, t.language): t.status for t in service.list_templates(session, aid)}
        assert statuses == {
            ("shop:other", "en"): "APPROVED",
            ("shop:promo", "en"): "DISABLED",
            ("shop:promo", "es"): "DISABLED",
            ("shop:promo", "pt_BR"): "DISABLED",
        }
        assert [t.status for t in service.list_templates(session, other)] == ["APPROVED"]


def test_losing_a_race_on_name_and_language_answers_409_and_keeps_the_transaction(
    db: Database, account: NewAccount, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two requests both pass the "does it exist?" check: the unique constraint decides, in a savepoint."""
    aid = account.account_id
    with db.session() as session:
        first = service.create_template(session, aid, name="a:b", body="x", category="UTILITY")
    monkeypatch.setattr(service, "_taken", lambda *args, **kwargs: False)  # the check saw nothing yet
    with db.session() as session:
        with pytest.raises(Conflict) as taken:
            service.create_template(session, aid, name="a:b", body="y", category="UTILITY")
        assert taken.value.code == "template_exists"
        second = service.create_template(
            session, aid, name="a:b", body="y", category="UTILITY", language="de"
        )
        with pytest.raises(Conflict):
            service.update_template(session, aid, second.id, language="en")
        assert [t.language for t in service.list_templates(session, aid)] == ["de", "en"]

    # upsert_synced that loses the race updates the row the other sync created.
    real_find = service.find_template
    calls = iter([None])
    monkeypatch.setattr(service, "find_template", lambda *a, **k: next(calls, None) or real_find(*a, **k))
    with db.session() as session:
        synced = service.upsert_synced(
            session,
            aid,
            name="a:b",
            language="en",
            category="UTILITY",
            status="PAUSED",
            body="z",
            provider_template_id="9",
        )
        assert synced.id == first.id
    with db.session() as session:
        row = service.get_template(session, aid, first.id)
        assert (row.status, row.body, row.provider_template_id) == ("PAUSED", "z", "9")
