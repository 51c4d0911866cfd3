"""A 1,000-recipient one-time campaign through each real provider's stand-in on loopback, with the
provider's status and inbound webhooks posted back as it would send them: the stats come out exact."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
from fastapi import FastAPI

from tests.conftest import basic
from tests.helpers import insert_profiles, phone
from tests.standins import meta as meta_standin
from tests.standins.meta import MetaStandIn, envelope, meta_template, signed, status_change, text_reply_change
from tests.standins.vonage import VonageStandIn, rsa_key_pair, status_webhook
from tidings.accounts.service import NewAccount
from tidings.db import Database
from tidings.providers.vonage import sign_webhook

N = 1000
APP_ID = "aaaaaaaa-bbbb-4ccc-8ddd-0123456789ab"  # a Vonage application id is a UUID


def _campaign(http: httpx.Client, auth: dict[str, str], template_name: str) -> int:
    template = http.post(
        "/api/v1/templates",
        headers=auth,
        json={"name": template_name, "category": "MARKETING", "body": "Hi {{1}}, your code is {{2}}"},
    )
    assert template.status_code == 201, template.text
    created = http.post(
        "/api/v1/campaigns",
        headers=auth,
        json={
            "name": "launch",
            "template_id": template.json()["id"],
            "control_group_pct": 10,
            "variables": ['{{ Profile.Name | default: "friend" }}', "CODE-{{ Profile.n }}"],
        },
    )
    assert created.status_code == 201, created.text
    campaign_id: int = created.json()["id"]
    deadline = time.monotonic() + 120
    while (campaign := http.get(f"/api/v1/campaigns/{campaign_id}", headers=auth).json())["state"] != (
        "completed"
    ):
        progress = http.get(f"/api/v1/campaigns/{campaign_id}/progress", headers=auth).json()
        assert time.monotonic() < deadline, f"the campaign did not finish: {campaign}, {progress}"
        time.sleep(0.1)
    return campaign_id


def _stats(http: httpx.Client, auth: dict[str, str], campaign_id: int) -> dict[str, Any]:
    stats: dict[str, Any] = http.get(f"/api/v1/campaigns/{campaign_id}/stats", headers=auth).json()
    return stats


def _audience(db: Database, account: NewAccount) -> None:
    rows = [
        {
            "identity": f"u{i}",
            "phone": phone(i),
            "opt_in": i % 20 != 0,
            "properties": {"Name": f"N{i}", "n": i},
        }
        for i in range(N)
    ]
    insert_profiles(db, account.account_id, rows)


def _script(i: int) -> list[str]:
    """What the provider reports for the i-th accepted message (shuffled orders, repeats, failures)."""
    return [
        ["failed"],
        ["sent", "delivered"],
        ["delivered", "sent", "delivered"],
        ["sent", "delivered", "read"],
        ["read", "delivered", "sent"],
        ["read"],  # read without delivered: counts as both
        ["sent"],
        ["sent", "read", "read", "reply"],
        ["delivered", "failed"],  # a failure after delivery changes nothing
        ["sent", "delivered", "read", "reply", "reply"],
    ][i % 10]


def _expected(accepted: int) -> dict[str, int]:
    final = {"failed": 0, "sent": 0, "delivered": 0, "read": 0, "replied": 0}
    for i in range(accepted):
        script = _script(i)
        if script == ["failed"]:
            final["failed"] += 1
            continue
        final["sent"] += 1
        if "delivered" in script or "read" in script or "reply" in script:
            final["delivered"] += 1
        if "read" in script or "reply" in script:
            final["read"] += 1
        if "reply" in script:
            final["replied"] += 1
    return final


def _check(stats: dict[str, Any], accepted: int, provider: str) -> None:
    expected = _expected(accepted)
    opted_out = sum(1 for i in range(N) if i % 20 == 0)
    assert stats["audience"] == N and stats["pending"] == 0
    assert stats["sent"] == expected["sent"]
    assert stats["delivered"] == expected["delivered"]
    assert stats["read"] == expected["read"]
    assert stats["replied"] == expected["replied"]
    assert stats["errors"] == opted_out + expected["failed"]
    assert stats["control_group"] == N - opted_out - accepted
    assert (
        sum(v for k, v in stats["errors_by_reason"].items() if k.startswith(f"{provider}:"))
        == expected["failed"]
    )


def test_a_campaign_through_vonage(live: tuple[str, FastAPI], db: Database, account: NewAccount) -> None:
    url, _ = live
    auth = basic(account)
    private_pem, public_pem = rsa_key_pair()
    standin = VonageStandIn(application_id=APP_ID, public_key=public_pem)
    _audience(db, account)
    with standin.serve() as base_url, httpx.Client(base_url=url, timeout=30) as http:
        configured = http.put(
            "/api/v1/integrations/whatsapp",
            headers=auth,
            json={
                "kind": "vonage",
                "settings": {"sender": "447700900000", "base_url": base_url, "application_id": APP_ID},
                "secrets": {"private_key": private_pem, "signature_secret": "vonage-signature-secret"},
            },
        )
        assert configured.status_code == 200, configured.text
        campaign_id = _campaign(http, auth, "acme:launch")
        accepted = sorted(standin.accepted, key=lambda r: int(r.client_ref or 0))
        assert not standin.invalid, standin.invalid[0].errors
        assert len({r.client_ref for r in accepted}) == len(accepted)  # one request per ledger row
        body = accepted[0].body
        n = int(body["to"][-8:]) - 10_000_000  # tests.helpers.phone(n)
        assert body["template"] == {"name": "launch", "parameters": [f"N{n}", f"CODE-{n}"]}
        assert body["whatsapp"] == {"policy": "deterministic", "locale": "en"}

        def post(kind: str, payload: dict[str, Any]) -> None:
            raw = json.dumps(payload).encode()
            headers = {
                "Authorization": sign_webhook(raw, "vonage-signature-secret", "key"),
                "Content-Type": "application/json",
            }
            answer = http.post(f"/webhooks/vonage/{account.account_id}/{kind}", content=raw, headers=headers)
            assert answer.status_code == 200, answer.text

        names = {"sent": "submitted", "delivered": "delivered", "read": "read", "failed": "rejected"}
        for i, record in enumerate(accepted):
            for event in _script(i):
                if event == "reply":
                    post(
                        "inbound",
                        {
                            "channel": "whatsapp",
                            "message_uuid": f"in-{i}",
                            "to": "447700900000",
                            "from": record.body["to"],
                            "timestamp": "2026-11-25T10:00:00Z",
                            "context_status": "available",
                            "context": {"message_uuid": record.message_uuid, "message_from": "447700900000"},
                            "message_type": "text",
                            "text": "yes please",
                        },
                    )
                else:
                    post("status", status_webhook(record, names[event], error_code=1300))
        bad = json.dumps(status_webhook(accepted[1], "read")).encode()
        forged = {"Authorization": sign_webhook(bad, "wrong-secret", "key")}
        assert (
            http.post(
                f"/webhooks/vonage/{account.account_id}/status", content=bad, headers=forged
            ).status_code
            == 401
        )
        _check(_stats(http, auth, campaign_id), len(accepted), "vonage")


def test_a_campaign_through_meta(live: tuple[str, FastAPI], db: Database, account: NewAccount) -> None:
    url, _ = live
    auth = basic(account)
    standin = MetaStandIn(templates=[meta_template("launch", "Hi {{1}}, your code is {{2}}")])
    _audience(db, account)
    with standin.serve() as base_url, httpx.Client(base_url=url, timeout=30) as http:
        configured = http.put(
            "/api/v1/integrations/whatsapp",
            headers=auth,
            json={
                "kind": "meta",
                "settings": {
                    "phone_number_id": standin.phone_number_id,
                    "waba_id": standin.waba_id,
                    "base_url": base_url,
                    "verify_token": "verify-me",
                },
                "secrets": {"access_token": standin.access_token, "app_secret": "meta-app-secret"},
            },
        )
        assert configured.status_code == 200, configured.text
        challenge = http.get(
            f"/webhooks/meta/{account.account_id}",
            params={"hub.mode": "subscribe", "hub.verify_token": "verify-me", "hub.challenge": "1158201444"},
        )
        assert challenge.status_code == 200 and challenge.text == "1158201444"
        wrong = http.get(
            f"/webhooks/meta/{account.account_id}",
            params={"hub.mode": "subscribe", "hub.verify_token": "nope", "hub.challenge": "1"},
        )
        assert wrong.status_code == 403
        synced = http.post("/api/v1/templates/sync", headers=auth)
        assert synced.status_code == 200 and synced.json() == {"created": 1}, synced.text
        campaign_id = _campaign(http, auth, "shop:launch")
        assert not standin.invalid
        sent = sorted(standin.sent, key=lambda s: int(s.client_ref or 0))
        assert len({s.client_ref for s in sent}) == len(sent)

        def post(payload: dict[str, Any]) -> None:
            body, headers = signed(payload, "meta-app-secret")
            answer = http.post(f"/webhooks/meta/{account.account_id}", content=body, headers=headers)
            assert answer.status_code == 200, answer.text

        for i, message in enumerate(sent):
            for event in _script(i):
                if event == "reply":
                    post(
                        envelope(
                            text_reply_change(
                                message.to, "yes", wamid=f"wamid.in-{i}", context_id=message.wamid
                            )
                        )
                    )
                else:
                    post(
                        envelope(
                            status_change(
                                message.wamid,
                                event,
                                recipient=message.to,
                                client_ref=message.client_ref,
                                error_code=131026,
                            )
                        )
                    )
        forged_body, _ = signed(meta_standin.status_webhook(sent[1], "read"), "meta-app-secret")
        forged = {"X-Hub-Signature-256": "sha256=" + "0" * 64, "Content-Type": "application/json"}
        assert (
            http.post(f"/webhooks/meta/{account.account_id}", content=forged_body, headers=forged).status_code
            == 401
        )
        _check(_stats(http, auth, campaign_id), len(sent), "meta")

        # Meta pauses the template: the status follows, and a new campaign waits for approval.
        post(
            envelope(
                {
                    "field": "message_template_status_update",
                    "value": {
                        "event": "PAUSED",
                        "message_template_id": 1,
                        "message_template_name": "launch",
                        "message_template_language": "en_US",
                        "reason": None,
                    },
                }
            )
        )
        templates = http.get("/api/v1/templates", headers=auth).json()
        assert {t["name"]: t["status"] for t in templates}["shop:launch"] == "APPROVED"  # other language
        assert {t["name"]: t["status"] for t in templates}[f"{standin.waba_id}:launch"] == "PAUSED"


def test_send_test_reports_what_the_provider_answered(live: tuple[str, FastAPI], account: NewAccount) -> None:
    url, _ = live
    auth = basic(account)
    with httpx.Client(base_url=url, timeout=30) as http:
        ok = http.post("/api/v1/integrations/whatsapp/test", headers=auth, json={"to": "+14155550123"})
        assert (
            ok.status_code == 200
            and ok.json()["outcome"] == "accepted"
            and ok.json()["provider"] == "sandbox"
        )
        bad = http.post("/api/v1/integrations/whatsapp/test", headers=auth, json={"to": "12"})
        assert bad.status_code == 422
