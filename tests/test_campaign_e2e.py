"""The whole loop on the real server: upload, template, campaign, sandbox deliveries over HTTP, stats."""

from __future__ import annotations

import time
from typing import Any

import httpx
from fastapi import FastAPI

from tests.conftest import basic, clevertap
from tidings.accounts.service import NewAccount


def _wait(http: httpx.Client, app: FastAPI, campaign_id: int, auth: dict[str, str]) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = http.get(f"/api/v1/campaigns/{campaign_id}", headers=auth).json()["state"]
        if state == "completed" and app.state.worker.sandbox_pending == 0:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the campaign did not finish")
    stats: dict[str, Any] = http.get(f"/api/v1/campaigns/{campaign_id}/stats", headers=auth).json()
    return stats


def test_one_time_campaign_through_the_sandbox(live: tuple[str, FastAPI], account: NewAccount) -> None:
    url, app = live
    auth = basic(account)
    records = []
    for i in range(300):
        data: dict[str, Any] = {"Name": f"User {i}", "MSG-whatsapp": i % 10 != 0, "ticket_no": f"T{i}"}
        if i % 25 != 0:
            data["Phone"] = f"+9198{10_000_000 + i}"
        records.append({"identity": f"u{i}", "type": "profile", "profileData": data})
    with httpx.Client(base_url=url, timeout=30) as http:
        upload = http.post("/1/upload", json={"d": records}, headers=clevertap(account)).json()
        assert upload["processed"] == 300
        template = http.post(
            "/api/v1/templates",
            headers=auth,
            json={
                "name": "tickets:booking_confirmation",
                "category": "UTILITY",
                "body": "Hello {{1}}, your ticket number is {{2}}.",
            },
        ).json()
        created = http.post(
            "/api/v1/campaigns",
            headers=auth,
            json={
                "name": "confirmations",
                "template_id": template["id"],
                "control_group_pct": 10,
                "variables": ['{{ Profile.Name | default: "there" }}', "{{ Profile.ticket_no }}"],
            },
        )
        assert created.status_code == 201, created.text
        stats = _wait(http, app, created.json()["id"], auth)

    sandbox = app.state.worker.pool.providers()[0]
    assert stats["audience"] == 300
    assert stats["pending"] == 0
    assert stats["sent"] + stats["errors"] + stats["control_group"] == 300
    not_opted = sum(1 for i in range(300) if i % 10 == 0)
    no_phone = sum(1 for i in range(300) if i % 25 == 0 and i % 10 != 0)
    assert stats["errors_by_reason"]["not_opted_in"] == not_opted
    assert stats["errors_by_reason"]["no_valid_phone"] == no_phone
    reachable = 300 - not_opted - no_phone
    assert 0.04 * reachable <= stats["control_group"] <= 0.16 * reachable
    # The stats equal what the sandbox reported over the webhooks, exactly.
    assert stats["sent"] + sandbox.log["failed"] == reachable - stats["control_group"]
    assert stats["delivered"] == sandbox.log["delivered"]
    assert stats["read"] == sandbox.log["read"]
    assert stats["replied"] == sandbox.log["replied"]
    failed = sum(v for k, v in stats["errors_by_reason"].items() if k.startswith("sandbox:"))
    assert failed == sandbox.log["failed"]
    assert sandbox.log["submitted"] == reachable - stats["control_group"]


def test_campaign_api_refusals(live: tuple[str, FastAPI], account: NewAccount) -> None:
    url, _ = live
    auth = basic(account)
    with httpx.Client(base_url=url) as http:
        template = http.post(
            "/api/v1/templates", headers=auth, json={"name": "a:b", "category": "UTILITY", "body": "Hi {{1}}"}
        ).json()
        base = {"name": "x", "template_id": template["id"]}
        too_few = http.post("/api/v1/campaigns", headers=auth, json={**base, "variables": []})
        assert too_few.status_code == 422 and too_few.json()["code"] == "variables_mismatch"
        bad_liquid = http.post(
            "/api/v1/campaigns", headers=auth, json={**base, "variables": ["{{ Profile.Name "]}
        )
        assert bad_liquid.status_code == 422 and bad_liquid.json()["code"] == "invalid_liquid"
        bad_target = http.post(
            "/api/v1/campaigns",
            headers=auth,
            json={**base, "variables": ["x"], "target": {"conditions": [{"property": "A", "op": "like"}]}},
        )
        assert bad_target.status_code == 422 and "conditions[0].op" in bad_target.json()["message"]
        assert http.post("/api/v1/campaigns", json={**base, "variables": ["x"]}).status_code == 401
        missing = http.get("/api/v1/campaigns/999/stats", headers=auth)
        assert missing.status_code == 404
