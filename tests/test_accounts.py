from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import basic, clevertap
from tidings.accounts.service import NewAccount, authenticate
from tidings.db import Database


def test_authenticate_accepts_only_the_right_passcode(db: Database, account: NewAccount) -> None:
    with db.session() as session:
        assert authenticate(session, account.account_id, account.passcode) is not None
        assert authenticate(session, account.account_id, account.passcode + "x") is None
        assert authenticate(session, "TID-NOT-THERE", account.passcode) is None
        assert authenticate(session, None, None) is None


def test_api_rejects_missing_and_wrong_credentials(client: TestClient, account: NewAccount) -> None:
    assert client.get("/api/v1/templates").status_code == 401
    wrong = NewAccount(account.account_id, "nope")
    r = client.get("/api/v1/templates", headers=basic(wrong))
    assert r.status_code == 401
    assert r.json()["code"] == "unauthorized"
    assert client.get("/api/v1/templates", headers=basic(account)).status_code == 200
    assert client.get("/api/v1/templates", headers=clevertap(account)).status_code == 200
