"""WhatsApp integration settings: validation, secrets encrypted at rest and never shown again."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.conftest import basic, new_account
from tidings.accounts.models import Integration
from tidings.accounts.service import NewAccount
from tidings.db import Database
from tidings.secrets import SecretBox

URL = "/api/v1/integrations/whatsapp"
VONAGE = {
    "kind": "vonage",
    "settings": {"sender": "447700900000", "base_url": "http://127.0.0.1:9"},
    "secrets": {
        "api_key": "key-1234",
        "api_secret": "very-secret-api-secret",
        "signature_secret": "sig-secret-xyz",
    },
}


def test_a_new_account_uses_the_sandbox(
    client: TestClient, auth: dict[str, str], account: NewAccount
) -> None:
    shown = client.get(URL, headers=auth).json()
    assert shown["kind"] == "sandbox" and shown["rate_limit"] is None
    assert shown["webhook_urls"]["status"].endswith(f"/webhooks/sandbox/{account.account_id}/status")
    assert set(shown["secrets"]) == {"signature_secret"}
    assert shown["secrets"]["signature_secret"].startswith("…")


def test_vonage_settings_are_checked_and_secrets_never_come_back(
    client: TestClient, auth: dict[str, str], db: Database, box: SecretBox, account: NewAccount
) -> None:
    missing = client.put(URL, headers=auth, json={**VONAGE, "secrets": {"signature_secret": "s"}})
    assert missing.status_code == 422 and "application_id" in missing.json()["message"]
    no_sender = client.put(URL, headers=auth, json={**VONAGE, "settings": {}})
    assert no_sender.status_code == 422 and "sender" in no_sender.json()["message"]
    unknown = client.put(URL, headers=auth, json={**VONAGE, "secrets": {**VONAGE["secrets"], "pin": "1"}})
    assert unknown.status_code == 422

    saved = client.put(URL, headers=auth, json=VONAGE)
    assert saved.status_code == 200, saved.text
    shown = saved.json()
    assert shown["kind"] == "vonage" and shown["rate_limit"] == 30
    assert shown["webhook_urls"]["inbound"].endswith(f"/webhooks/vonage/{account.account_id}/inbound")
    for secret in VONAGE["secrets"].values():
        assert secret not in saved.text and secret not in client.get(URL, headers=auth).text
    with db.session() as session:
        stored = session.scalar(
            select(Integration.secrets).where(Integration.account_id == account.account_id)
        )
    assert stored and "very-secret-api-secret" not in stored  # encrypted at rest
    assert box.open(stored)["api_secret"] == "very-secret-api-secret"

    # Same kind, secrets left out: they stay; a new rate limit is kept.
    again = client.put(
        URL, headers=auth, json={"kind": "vonage", "settings": {"sender": "447700900001"}, "rate_limit": 12}
    )
    assert again.status_code == 200, again.text
    assert again.json()["settings"]["sender"] == "447700900001" and again.json()["rate_limit"] == 12
    with db.session() as session:
        stored = session.scalar(
            select(Integration.secrets).where(Integration.account_id == account.account_id)
        )
    assert stored is not None and box.open(stored)["api_key"] == "key-1234"


def test_meta_settings_get_a_verify_token_and_default_rate(client: TestClient, auth: dict[str, str]) -> None:
    missing = client.put(URL, headers=auth, json={"kind": "meta", "settings": {"phone_number_id": "1"}})
    assert missing.status_code == 422 and "access_token" in missing.json()["message"]
    saved = client.put(
        URL,
        headers=auth,
        json={
            "kind": "meta",
            "settings": {"phone_number_id": "106540352242922", "waba_id": "4195"},
            "secrets": {"access_token": "EAAG-token-value", "app_secret": "app-secret-value"},
        },
    ).json()
    assert saved["rate_limit"] == 80 and len(saved["settings"]["verify_token"]) >= 20
    assert "EAAG-token-value" not in str(saved) and set(saved["secrets"]) == {"access_token", "app_secret"}


def test_one_account_cannot_see_anothers_integration(
    client: TestClient, auth: dict[str, str], db: Database, box: SecretBox
) -> None:
    assert client.put(URL, headers=auth, json=VONAGE).status_code == 200
    other = basic(new_account(db, box, "Other"))
    assert client.get(URL, headers=other).json()["kind"] == "sandbox"
    assert client.get(URL).status_code == 401
