"""Campaigns through the HTTP API: read back by the names they were created with, drafts rewritten and
deleted (and nothing else), templates named by `<namespace>:<name>`, refusals naming the field, and an
OpenAPI document that describes every rule. On SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.helpers import refused

URL = "/api/v1/campaigns"
CART = {
    "event": "Added To Cart",
    "where": {"property": "Amount", "op": "gt", "value": 100},
    "absent_event": "Charged",
    "absent_where": None,
    "within_minutes": 30,
}


def _template(client: TestClient, auth: dict[str, str], name: str = "shop:hello", **fields: Any) -> int:
    body = {"name": name, "category": "MARKETING", "body": "Hi {{1}}", **fields}
    r = client.post("/api/v1/templates", json=body, headers=auth)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def _create(client: TestClient, auth: dict[str, str], **fields: Any) -> dict[str, Any]:
    r = client.post(URL, json={"name": "c", "variables": ["x"], **fields}, headers=auth)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


def test_a_campaign_is_read_back_with_the_names_it_was_created_with(
    client: TestClient, auth: dict[str, str]
) -> None:
    template_id = _template(client, auth)
    sent = {
        "name": "carts",
        "kind": "inaction",
        "template_id": template_id,
        "variables": ['{{ Profile.Name | default: "there" }}'],
        "target": {"property": "City", "op": "equals", "value": "Pune"},
        "trigger": CART,
        "control_group_pct": 10,
        "system_control_group": False,
        "respect_rules": False,
        "frequency": {"rule": "min_gap", "hours": 24.0},
        "conversion": {"event": "Charged", "within_hours": 168},
        "send_at": "2030-01-01T09:00:00Z",
        "ends_at": "2030-02-01T09:00:00Z",
    }
    created = client.post(URL, json={**sent, "draft": True}, headers=auth)
    assert created.status_code == 201, created.text
    read = client.get(f"{URL}/{created.json()['id']}", headers=auth).json()
    assert read == created.json()
    assert read["state"] == "draft"
    for field, value in sent.items():
        if field in ("send_at", "ends_at"):
            assert read[field].startswith(value[:19]), field
        else:
            assert read[field] == value, field
    # Defaults come back by the same names too.
    plain = _create(client, auth, template_id=template_id)
    assert (plain["kind"], plain["trigger"], plain["frequency"], plain["conversion"]) == (
        "one_time",
        None,
        None,
        None,
    )
    assert plain["target"] == {"all": True} and plain["split"] is None


def test_an_on_date_trigger_and_a_split_round_trip(client: TestClient, auth: dict[str, str]) -> None:
    a = _template(client, auth, "shop:a")
    b = _template(client, auth, "shop:b")
    trigger = {
        "property": "Flight",
        "event": None,
        "offset_minutes": -1440,
        "at_time": "09:00",
        "timezone": "user",
    }
    variants = [
        {"template_id": a, "variables": ["x"], "key": "A", "weight": None, "match_value": "hi"},
        {"template_id": b, "variables": ["y"], "key": "B", "weight": None, "match_value": None},
    ]
    created = _create(
        client,
        auth,
        kind="on_date",
        trigger=trigger,
        variables=[],
        variants=variants,
        split={"by": "property", "property": "Language"},
        draft=True,
    )
    assert created["trigger"] == trigger
    assert created["split"] == {"by": "property", "property": "Language"}
    assert [{k: v for k, v in got.items() if k != "id"} for got in created["variants"]] == variants


def test_a_template_may_be_named_instead_of_its_id(client: TestClient, auth: dict[str, str]) -> None:
    hello = _template(client, auth, "shop:hello")
    assert _create(client, auth, template_id="shop:hello")["template_id"] == hello
    assert _create(client, auth, template_id=str(hello))["template_id"] == hello
    bye = _template(client, auth, "shop:bye")
    variants = [
        {"template_id": "shop:hello", "variables": ["x"], "weight": 50},
        {"template_id": bye, "variables": ["y"], "weight": 50},
    ]
    split = _create(client, auth, variables=[], variants=variants, split={"by": "percentage"})
    assert [v["template_id"] for v in split["variants"]] == [hello, bye]
    assert split["template_id"] == hello
    # GET, PATCH and DELETE /templates/{ref} take the name too.
    assert client.get("/api/v1/templates/shop:hello", headers=auth).json()["id"] == hello
    patched = client.patch("/api/v1/templates/shop:bye", json={"provider_template_id": "42"}, headers=auth)
    assert patched.json()["provider_template_id"] == "42"
    refused(client.get("/api/v1/templates/shop:nope", headers=auth), 404, "not_found")
    refused(
        client.post(URL, json={"name": "c", "template_id": "shop:nope", "variables": ["x"]}, headers=auth),
        404,
        "not_found",
    )
    # A name the account has in several languages cannot tell which one is meant.
    _template(client, auth, "shop:hello", language="es")
    message = refused(client.get("/api/v1/templates/shop:hello", headers=auth), 422, "template_ambiguous")
    assert "en, es" in message and "id" in message
    body = {"name": "c", "template_id": "shop:hello", "variables": ["x"]}
    refused(client.post(URL, json=body, headers=auth), 422, "template_ambiguous")
    _template(client, auth, "shop:only")
    assert client.delete("/api/v1/templates/shop:only", headers=auth).status_code == 204


def test_a_draft_is_rewritten_and_deleted_and_nothing_else(client: TestClient, auth: dict[str, str]) -> None:
    template_id = _template(client, auth)
    draft = _create(client, auth, template_id=template_id, draft=True, send_at="2030-01-01T09:00:00Z")
    path = f"{URL}/{draft['id']}"
    rewritten = {
        "name": "carts",
        "kind": "single_action",
        "template_id": template_id,
        "variables": ["y"],
        "trigger": {"event": "Charged", "where": None},
        "send_at": "2030-01-02T09:00:00Z",
        "draft": True,
    }
    r = client.put(path, json=rewritten, headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == draft["id"] and r.json()["state"] == "draft"
    assert (r.json()["name"], r.json()["kind"], r.json()["variables"]) == ("carts", "single_action", ["y"])
    assert r.json()["trigger"] == {"event": "Charged", "where": None}
    assert client.get(path, headers=auth).json() == r.json()
    # A rewrite is checked as at creation.
    bad = client.put(path, json={**rewritten, "variables": []}, headers=auth)
    refused(bad, 422, "variables_mismatch")
    assert client.get(path, headers=auth).json() == r.json()
    # draft: false schedules it; from then on it is neither rewritten nor deleted.
    scheduled = client.put(path, json={**rewritten, "draft": False}, headers=auth)
    assert scheduled.json()["state"] == "scheduled"
    assert "only a draft" in refused(client.put(path, json=rewritten, headers=auth), 409, "conflict")
    message = refused(client.delete(path, headers=auth), 409, "conflict")
    assert "scheduled" in message and "only a draft can be deleted" in message
    # A draft is deleted, with its variants.
    other = _template(client, auth, "shop:other")
    variants = [
        {"template_id": template_id, "variables": ["x"], "weight": 40},
        {"template_id": other, "variables": ["y"], "weight": 60},
    ]
    gone = _create(client, auth, variables=[], variants=variants, split={"by": "percentage"}, draft=True)
    assert client.delete(f"{URL}/{gone['id']}", headers=auth).status_code == 204
    refused(client.get(f"{URL}/{gone['id']}", headers=auth), 404, "not_found")
    refused(client.delete(f"{URL}/{gone['id']}", headers=auth), 404, "not_found")
    refused(client.put(f"{URL}/{gone['id']}", json=rewritten, headers=auth), 404, "not_found")
    # The template of a deleted draft is free again.
    assert client.delete(f"/api/v1/templates/{other}", headers=auth).status_code == 204


def test_refusals_name_the_field(client: TestClient, auth: dict[str, str]) -> None:
    template_id = _template(client, auth)
    base = {"name": "c", "template_id": template_id, "variables": ["x"]}

    def refusal(code: str, **fields: Any) -> str:
        return refused(client.post(URL, json={**base, **fields}, headers=auth), 422, code)

    for kind in ("recurring", "multiple_dates"):
        assert "WhatsApp does not allow" in refusal("not_allowed_on_whatsapp", kind=kind)
    assert "WhatsApp does not allow" in refusal("not_allowed_on_whatsapp", schedule={"every": "week"})
    assert refusal("validation_error", kind="weekly").startswith("kind:")
    inaction = {"event": "A", "absent_event": "B"}
    assert refusal("validation_error", kind="inaction", trigger=inaction) == (
        "trigger: within_minutes: Field required"
    )
    too_long = {**inaction, "within_minutes": 43201}
    assert refusal("validation_error", kind="inaction", trigger=too_long).startswith(
        "trigger: within_minutes:"
    )
    assert "needs a trigger" in refusal("validation_error", kind="single_action")
    assert "has no trigger" in refusal("validation_error", trigger={"event": "A"})
    assert refusal("validation_error", kind="single_action", trigger={"event": "A", "wher": 1}) == (
        "trigger: wher: Extra inputs are not permitted"
    )
    bad_where = {"event": "A", "where": {"property": "Amount", "op": "like"}}
    assert "trigger.where" in refusal("invalid_segment", kind="single_action", trigger=bad_where)
    at = {"property": "Flight", "at_time": "25:00"}
    assert refusal("validation_error", kind="on_date", trigger=at).startswith("trigger: at_time:")
    assert refusal("validation_error", frequency={"rule": "min_gap", "hours": 0}).startswith(
        "frequency.min_gap.hours"
    )
    assert refusal("validation_error", frequency={"rule": "sometimes"}).startswith("frequency:")
    assert refusal("validation_error", conversion={"event": "Charged", "within_hours": 0}).startswith(
        "conversion.within_hours:"
    )
    assert refusal("validation_error", conversion={"event": "Charged"}).startswith("conversion.within_hours:")
    variants = [{"template_id": template_id, "weight": 30}, {"template_id": template_id, "weight": 30}]
    message = refusal("validation_error", variables=[], variants=variants, split={"by": "percentage"})
    assert "add up to 100" in message
    assert "split needs variants" in refusal("validation_error", split={"by": "percentage"})
    assert refusal("validation_error", split={"by": "property"}, variables=[], variants=variants).startswith(
        "split.property.property:"
    )


def test_the_openapi_document_describes_every_rule(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    create = schemas["CampaignCreate"]["properties"]
    triggers = {ref["$ref"].rsplit("/", 1)[1] for ref in create["trigger"]["anyOf"] if "$ref" in ref}
    assert triggers == {"SingleActionTrigger", "InactionTrigger", "OnDateTrigger"}
    assert set(schemas["InactionTrigger"]["required"]) == {"event", "absent_event", "within_minutes"}
    assert schemas["InactionTrigger"]["properties"]["within_minutes"]["maximum"] == 43200
    assert set(schemas["OnDateTrigger"]["properties"]) == {
        "property",
        "event",
        "offset_minutes",
        "at_time",
        "timezone",
    }
    for rule, models in (
        ("split", {"PercentageSplit", "PropertySplit"}),
        ("frequency", {"EveryTime", "Once", "MinGap"}),
    ):
        union = create[rule]["anyOf"][0]
        assert {ref["$ref"].rsplit("/", 1)[1] for ref in union["oneOf"]} == models, rule
    assert set(schemas["ConversionGoal"]["required"]) == {"event", "within_hours"}
    # What a campaign is created with is what it is read back as.
    out = set(schemas["CampaignOut"]["properties"])
    assert set(create) - {"draft", "schedule"} <= out
    assert not {"scheduled_at", "conversion_event", "conversion_window_hours"} & out
    # The account's engagement rules.
    rules = schemas["Rules"]["properties"]
    assert set(rules) == {
        "system_control_group_pct",
        "frequency_cap",
        "dnd",
        "keywords",
        "consent_replies",
        "reply_attribution_hours",
    }
    assert (rules["reply_attribution_hours"]["minimum"], rules["reply_attribution_hours"]["maximum"]) == (
        1,
        720,
    )
    assert schemas["FrequencyCap"]["properties"]["hours"]["maximum"] == 8760
    assert set(schemas["Dnd"]["properties"]["action"]["enum"]) == {"drop", "delay"}
    assert "LanguageKeywords" in schemas
    put = doc["paths"][URL + "/{campaign_id}"]
    assert {"get", "put", "delete"} <= set(put)
    assert {"409", "422"} <= set(put["put"]["responses"]) and "409" in put["delete"]["responses"]


def test_account_settings_are_read_back_as_given(client: TestClient, auth: dict[str, str]) -> None:
    settings = {
        "system_control_group_pct": 3,
        "dnd": {"start": "22:00", "end": "08:30", "action": "drop"},
        "keywords": {"es": {"opt_out": ["BAJA"]}},
    }
    r = client.patch("/api/v1/account", json={"settings": settings}, headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["settings"] == settings
    assert client.get("/api/v1/account", headers=auth).json()["settings"] == settings
    for bad, where in (
        ({"system_control_group_pct": 1}, "settings.system_control_group_pct: must be 0 (none) or 2 to 5"),
        ({"dnd": {"start": "22:00"}}, "settings.dnd.end: Field required"),
        ({"dnd": {"start": "22:00", "end": "08:00", "timezone": "mars"}}, "settings.dnd.timezone:"),
        ({"dnd": {"start": "22:00+01:00", "end": "08:00"}}, "settings.dnd.start: a time of day"),
        ({"quiet": True}, "settings.quiet: Extra inputs are not permitted"),
    ):
        answer = client.patch("/api/v1/account", json={"settings": bad}, headers=auth)
        assert refused(answer, 422, "validation_error").startswith(where), bad
    assert client.get("/api/v1/account", headers=auth).json()["settings"] == settings
