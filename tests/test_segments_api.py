"""The segments API: CRUD, estimate, account isolation, 422 messages that point at the faulty part."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from openapi_schema_validator import OAS31Validator

from tests.conftest import basic, new_account
from tests.helpers import refused
from tests.test_segments_property import Person, store
from tidings.accounts.service import NewAccount
from tidings.db import Database, utcnow
from tidings.secrets import SecretBox

URL = "/api/v1/segments"
PUNE = {"property": "City", "op": "equals", "value": "Pune"}
BUYERS = {"did": {"event": "Charged", "count": {"at_least": 2}, "in_the_last": {"days": 30}}}
LOYAL_IN_PUNE = {"and": [PUNE, BUYERS, {"not": {"did": "Refund"}}]}


def create(client: TestClient, auth: dict[str, str], name: str, definition: Any) -> dict[str, Any]:
    r = client.post(URL, json={"name": name, "definition": definition}, headers=auth)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def count(client: TestClient, auth: dict[str, str], definition: Any) -> int:
    r = client.post(f"{URL}/estimate", json={"definition": definition}, headers=auth)
    assert r.status_code == 200, r.text
    n: int = r.json()["count"]
    return n


def seed(db: Database, account_id: str) -> None:
    now = utcnow()
    twice: list[tuple[str, dict[str, Any], datetime]] = [
        ("Charged", {}, now - timedelta(days=d)) for d in (1, 2)
    ]
    store(
        db,
        account_id,
        [
            Person("loyal", {"City": "Pune"}, list(twice)),
            Person("once", {"City": "Pune"}, [("Charged", {}, now - timedelta(days=3))]),
            Person("refunded", {"City": "Pune"}, [*twice, ("Refund", {}, now - timedelta(days=1))]),
            Person("far", {"City": "Delhi"}, list(twice)),
            Person("old", {"City": "Pune"}, [("Charged", {}, now - timedelta(days=d)) for d in (40, 41)]),
        ],
    )


# ---- create, read, list, update, delete -----------------------------------------------------------------


def test_create_read_list_update_delete(client: TestClient, auth: dict[str, str]) -> None:
    created = create(client, auth, "  Loyal in Pune ", LOYAL_IN_PUNE)
    assert created["name"] == "Loyal in Pune"
    assert created["definition"] == LOYAL_IN_PUNE  # stored as sent
    segment_url = f"{URL}/{created['id']}"

    assert client.get(segment_url, headers=auth).json() == created
    create(client, auth, "All Pune", PUNE)
    assert [s["name"] for s in client.get(URL, headers=auth).json()] == ["All Pune", "Loyal in Pune"]

    renamed = client.patch(segment_url, json={"name": "Loyal"}, headers=auth)
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["name"] == "Loyal" and renamed.json()["definition"] == LOYAL_IN_PUNE

    redefined = client.patch(segment_url, json={"definition": BUYERS}, headers=auth)
    assert redefined.status_code == 200, redefined.text
    assert redefined.json()["name"] == "Loyal" and redefined.json()["definition"] == BUYERS
    assert redefined.json()["updated_at"] >= created["updated_at"]

    assert client.delete(segment_url, headers=auth).status_code == 204
    refused(client.get(segment_url, headers=auth), 404, "not_found")
    refused(client.delete(segment_url, headers=auth), 404, "not_found")
    assert [s["name"] for s in client.get(URL, headers=auth).json()] == ["All Pune"]


def test_names_are_unique_per_account(
    client: TestClient, auth: dict[str, str], db: Database, box: SecretBox
) -> None:
    first = create(client, auth, "Pune", PUNE)
    assert "exists already" in refused(
        client.post(URL, json={"name": "Pune", "definition": BUYERS}, headers=auth), 409, "segment_exists"
    )
    other = create(client, auth, "Buyers", BUYERS)
    refused(client.patch(f"{URL}/{other['id']}", json={"name": "Pune"}, headers=auth), 409, "segment_exists")
    # the same name in another account is fine
    create(client, basic(new_account(db, box, "Other")), "Pune", PUNE)
    assert client.patch(f"{URL}/{first['id']}", json={"name": "Pune"}, headers=auth).status_code == 200


def test_bad_names_and_requests(client: TestClient, auth: dict[str, str]) -> None:
    refused(client.post(URL, json={"name": " ", "definition": PUNE}, headers=auth), 422, "invalid_name")
    refused(client.post(URL, json={"name": "x" * 201, "definition": PUNE}, headers=auth), 422, "invalid_name")
    refused(client.post(URL, json={"definition": PUNE}, headers=auth), 422, "validation_error")
    refused(
        client.post(URL, json={"name": "a", "definition": PUNE, "x": 1}, headers=auth),
        422,
        "validation_error",
    )
    segment = create(client, auth, "a", PUNE)
    refused(
        client.patch(f"{URL}/{segment['id']}", json={"definition": None}, headers=auth),
        422,
        "invalid_definition",
    )
    refused(client.patch(f"{URL}/{segment['id']}", json={"name": None}, headers=auth), 422, "invalid_name")
    refused(client.get(f"{URL}/99999999999", headers=auth), 404, "not_found")
    refused(client.get(f"{URL}/0", headers=auth), 404, "not_found")


def test_invalid_definitions_get_422_pointing_at_the_faulty_part(
    client: TestClient, auth: dict[str, str]
) -> None:
    bad = {"and": [PUNE, {"did": {"event": "Charged", "count": {"at_least": 0}}}]}
    message = refused(
        client.post(URL, json={"name": "x", "definition": bad}, headers=auth), 422, "invalid_segment"
    )
    assert message == "definition.and[1].did.count.at_least must be a positive integer"
    message = refused(
        client.post(
            f"{URL}/estimate",
            json={"definition": {"or": [PUNE, {"property": "A", "op": "like"}]}},
            headers=auth,
        ),
        422,
        "invalid_segment",
    )
    assert message.startswith("definition.or[1].op must be one of: equals, not_equals, in, contains")
    message = refused(
        client.post(URL, json={"name": "x", "definition": "City = Pune"}, headers=auth),
        422,
        "invalid_segment",
    )
    assert message.startswith("definition must be an object")
    refused(client.post(URL, json={"name": "x", "definition": {}}, headers=auth), 422, "invalid_segment")
    segment = create(client, auth, "ok", PUNE)
    message = refused(
        client.patch(
            f"{URL}/{segment['id']}",
            json={"definition": {"not": {"did": {"event": "X", "in_the_last": {"weeks": 1}}}}},
            headers=auth,
        ),
        422,
        "invalid_segment",
    )
    assert message.startswith("definition.not.did.in_the_last must be one of")
    assert client.get(f"{URL}/{segment['id']}", headers=auth).json()["definition"] == PUNE  # unchanged


# ---- estimate --------------------------------------------------------------------------------------------


def test_estimate_counts_the_profiles_a_definition_selects(
    client: TestClient, auth: dict[str, str], db: Database, account: NewAccount
) -> None:
    seed(db, account.account_id)
    assert count(client, auth, {"all": True}) == 5
    assert count(client, auth, PUNE) == 4
    assert count(client, auth, BUYERS) == 3
    assert count(client, auth, LOYAL_IN_PUNE) == 1
    assert count(client, auth, {"did_not": "Charged"}) == 0
    assert (
        count(
            client, auth, {"did": {"event": "Charged", "in_the_last": {"days": 30}, "count": {"at_most": 1}}}
        )
        == 2
    )
    saved = create(client, auth, "Loyal in Pune", LOYAL_IN_PUNE)
    assert count(client, auth, {"segment_id": saved["id"]}) == 1
    assert count(client, auth, {"not": {"segment_id": saved["id"]}}) == 4


def test_estimate_of_another_account_sees_nothing_of_this_one(
    client: TestClient, auth: dict[str, str], db: Database, account: NewAccount, box: SecretBox
) -> None:
    seed(db, account.account_id)
    mine = create(client, auth, "Pune", PUNE)
    theirs = basic(new_account(db, box, "Other"))
    assert count(client, theirs, PUNE) == 0
    assert count(client, theirs, {"all": True}) == 0
    message = refused(
        client.post(
            f"{URL}/estimate", json={"definition": {"and": [{"segment_id": mine["id"]}]}}, headers=theirs
        ),
        422,
        "segment_not_found",
    )
    assert message == f"definition.and[0].segment_id: segment {mine['id']} does not exist in this account"


# ---- isolation and authentication --------------------------------------------------------------------------


def test_accounts_do_not_see_each_others_segments(
    client: TestClient, auth: dict[str, str], db: Database, box: SecretBox
) -> None:
    mine = create(client, auth, "Pune", PUNE)
    theirs = basic(new_account(db, box, "Other"))
    assert client.get(URL, headers=theirs).json() == []
    url = f"{URL}/{mine['id']}"
    refused(client.get(url, headers=theirs), 404, "not_found")
    refused(client.patch(url, json={"name": "mine now"}, headers=theirs), 404, "not_found")
    refused(client.delete(url, headers=theirs), 404, "not_found")
    refused(
        client.post(URL, json={"name": "ref", "definition": {"segment_id": mine["id"]}}, headers=theirs),
        422,
        "segment_not_found",
    )
    assert client.get(url, headers=auth).json()["name"] == "Pune"


def test_every_route_needs_the_account(client: TestClient, auth: dict[str, str]) -> None:
    segment = create(client, auth, "Pune", PUNE)
    url = f"{URL}/{segment['id']}"
    wrong = {"X-CleverTap-Account-Id": "nope", "X-CleverTap-Passcode": "nope"}
    for headers in ({}, wrong):
        refused(client.get(URL, headers=headers), 401, "unauthorized")
        refused(
            client.post(URL, json={"name": "a", "definition": PUNE}, headers=headers), 401, "unauthorized"
        )
        refused(
            client.post(f"{URL}/estimate", json={"definition": PUNE}, headers=headers), 401, "unauthorized"
        )
        refused(client.get(url, headers=headers), 401, "unauthorized")
        refused(client.patch(url, json={"name": "b"}, headers=headers), 401, "unauthorized")
        refused(client.delete(url, headers=headers), 401, "unauthorized")


# ---- references between saved segments ---------------------------------------------------------------------


def test_segments_refer_to_segments_without_cycles(client: TestClient, auth: dict[str, str]) -> None:
    pune = create(client, auth, "Pune", PUNE)
    loyal = create(client, auth, "Loyal", {"and": [{"segment_id": pune["id"]}, BUYERS]})
    message = refused(
        client.patch(
            f"{URL}/{pune['id']}",
            json={"definition": {"or": [PUNE, {"segment_id": loyal["id"]}]}},
            headers=auth,
        ),
        422,
        "segment_cycle",
    )
    p, q = pune["id"], loyal["id"]
    assert message == (
        f"definition.or[1].segment_id({q}).and[0].segment_id: segment {p} refers back to itself "
        f"({p} → {q} → {p})"
    )
    refused(
        client.patch(f"{URL}/{pune['id']}", json={"definition": {"segment_id": pune["id"]}}, headers=auth),
        422,
        "segment_cycle",
    )
    refused(
        client.post(URL, json={"name": "x", "definition": {"segment_id": 999999}}, headers=auth),
        422,
        "segment_not_found",
    )

    message = refused(client.delete(f"{URL}/{pune['id']}", headers=auth), 409, "segment_in_use")
    assert message == "segment 'Pune' is used by segment 'Loyal' and cannot be deleted"
    assert client.delete(f"{URL}/{loyal['id']}", headers=auth).status_code == 204
    assert client.delete(f"{URL}/{pune['id']}", headers=auth).status_code == 204


# ---- OpenAPI ----------------------------------------------------------------------------------------------


def test_the_definition_is_documented_in_the_openapi_schema(app: FastAPI) -> None:
    doc = app.openapi()
    paths = doc["paths"]
    assert set(paths[URL]) == {"get", "post"}
    assert set(paths[f"{URL}/{{segment_id}}"]) == {"get", "patch", "delete"}
    assert set(paths[f"{URL}/estimate"]) == {"post"}
    assert all(
        op["tags"] == ["segments"] for path in paths if path.startswith(URL) for op in paths[path].values()
    )
    schemas = doc["components"]["schemas"]
    definition = schemas["SegmentDefinition"]
    assert {ref["$ref"].rsplit("/", 1)[1] for ref in definition["anyOf"]} == {
        "SegmentAnd",
        "SegmentOr",
        "SegmentNot",
        "SegmentPropertyCondition",
        "SegmentDid",
        "SegmentDidNot",
        "SegmentReference",
        "SegmentEveryone",
        "SegmentConditions",
    }
    ops = schemas["SegmentPropertyCondition"]["properties"]["op"]["enum"]
    assert "within_last_days" in ops and "before" in ops and "contains" in ops
    validator = OAS31Validator(
        {"$ref": "#/components/schemas/SegmentDefinition", "components": doc["components"]}
    )
    for example in definition["examples"]:
        validator.validate(example)
    validator.validate(LOYAL_IN_PUNE)
    assert (
        schemas["SegmentCreate"]["properties"]["definition"]["$ref"]
        == "#/components/schemas/SegmentDefinition"
    )
    assert (
        schemas["SegmentOut"]["properties"]["definition"]["$ref"] == "#/components/schemas/SegmentDefinition"
    )
    assert "422" in paths[URL]["post"]["responses"]
