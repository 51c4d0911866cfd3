"""Users, roles and API keys: every /api/v1 route refuses the roles it must (403 naming the role needed),
API keys open the API with their role until revoked, passwords are argon2 hashes remade when the
parameters change, failed sign-ins are limited per address and per e-mail, and the CLI creates users and
keys."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tests.conftest import basic, new_account
from tests.helpers import refused
from tidings.accounts.service import NewAccount
from tidings.cli import app as cli
from tidings.config import Settings
from tidings.db import Database, utcnow
from tidings.errors import ApiError, TooManySignIns
from tidings.guards import SignInLimiter
from tidings.secrets import SecretBox
from tidings.users import service
from tidings.users.models import Role

PASSWORD = "correct horse battery"
CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)  # other parameters than service.HASHER


def _key(db: Database, account: NewAccount, role: Role) -> dict[str, str]:
    with db.session() as session:
        secret = service.create_api_key(session, account.account_id, name=role.value, role=role.value).secret
    return {"Authorization": f"Bearer {secret}"}


# Every /api/v1 route and /1/upload: (method, path, body, the role it needs). A body of ``{}`` is enough:
# a role refused gets 403 before the body is checked, a role allowed anything but 401 or 403.
ROUTES: list[tuple[str, str, Any, Role]] = [
    ("POST", "/1/upload", {"d": []}, Role.marketer),
    ("GET", "/api/v1/profiles", None, Role.agent),
    ("GET", "/api/v1/profiles/{identity}", None, Role.agent),
    ("GET", "/api/v1/profiles/{identity}/events", None, Role.agent),
    ("GET", "/api/v1/profiles/{identity}/consent", None, Role.agent),
    ("PUT", "/api/v1/profiles/{identity}/consent", {"whatsapp": True}, Role.marketer),
    ("GET", "/api/v1/profiles/{identity}/messages", None, Role.agent),
    ("GET", "/api/v1/profiles/{identity}/inbound", None, Role.agent),
    ("GET", "/api/v1/properties", None, Role.agent),
    ("GET", "/api/v1/templates", None, Role.agent),
    ("POST", "/api/v1/templates", {}, Role.marketer),
    ("GET", "/api/v1/templates/{ref}", None, Role.agent),
    ("PATCH", "/api/v1/templates/{ref}", {}, Role.marketer),
    ("DELETE", "/api/v1/templates/{ref}", None, Role.marketer),
    ("POST", "/api/v1/templates/sync", None, Role.marketer),
    ("GET", "/api/v1/campaigns", None, Role.agent),
    ("POST", "/api/v1/campaigns", {}, Role.marketer),
    ("GET", "/api/v1/campaigns/{campaign_id}", None, Role.agent),
    ("PUT", "/api/v1/campaigns/{campaign_id}", {}, Role.marketer),
    ("DELETE", "/api/v1/campaigns/{campaign_id}", None, Role.marketer),
    ("POST", "/api/v1/campaigns/{campaign_id}/schedule", {}, Role.marketer),
    ("POST", "/api/v1/campaigns/{campaign_id}/stop", None, Role.marketer),
    ("GET", "/api/v1/campaigns/{campaign_id}/stats", None, Role.agent),
    ("GET", "/api/v1/campaigns/{campaign_id}/progress", None, Role.agent),
    ("GET", "/api/v1/campaigns/{campaign_id}/stats/timeline", None, Role.agent),
    ("GET", "/api/v1/campaigns/{campaign_id}/messages", None, Role.agent),
    ("GET", "/api/v1/campaigns/{campaign_id}/messages.csv", None, Role.agent),
    ("POST", "/api/v1/campaigns/{campaign_id}/duplicate", None, Role.marketer),
    ("POST", "/api/v1/campaigns/{campaign_id}/resume", None, Role.marketer),
    ("GET", "/api/v1/segments", None, Role.agent),
    ("POST", "/api/v1/segments", {}, Role.marketer),
    ("POST", "/api/v1/segments/estimate", {}, Role.marketer),
    ("GET", "/api/v1/segments/{segment_id}", None, Role.agent),
    ("PATCH", "/api/v1/segments/{segment_id}", {}, Role.marketer),
    ("DELETE", "/api/v1/segments/{segment_id}", None, Role.marketer),
    ("GET", "/api/v1/conversations", None, Role.agent),
    ("GET", "/api/v1/conversations/counts", None, Role.agent),
    ("GET", "/api/v1/conversations/{conversation_id}", None, Role.agent),
    ("POST", "/api/v1/conversations/{conversation_id}/open", None, Role.agent),
    ("POST", "/api/v1/conversations/{conversation_id}/take", {}, Role.agent),
    ("POST", "/api/v1/conversations/{conversation_id}/assign", {}, Role.agent),
    ("POST", "/api/v1/conversations/{conversation_id}/resolve", {}, Role.agent),
    ("PUT", "/api/v1/conversations/{conversation_id}/labels", {}, Role.agent),
    ("POST", "/api/v1/conversations/{conversation_id}/notes", {}, Role.agent),
    ("POST", "/api/v1/conversations/{conversation_id}/messages", {}, Role.agent),
    ("GET", "/api/v1/saved-replies", None, Role.agent),
    ("POST", "/api/v1/saved-replies", {}, Role.agent),
    ("DELETE", "/api/v1/saved-replies/{saved_reply_id}", None, Role.agent),
    ("POST", "/api/v1/media", None, Role.agent),
    ("GET", "/api/v1/media/{media_id}", None, Role.agent),
    ("GET", "/api/v1/integrations/whatsapp", None, Role.admin),
    ("PUT", "/api/v1/integrations/whatsapp", {}, Role.admin),
    ("POST", "/api/v1/integrations/whatsapp/test", {}, Role.admin),
    ("POST", "/api/v1/integrations/whatsapp/sandbox/messages", {}, Role.admin),
    ("GET", "/api/v1/account", None, Role.admin),
    ("PATCH", "/api/v1/account", {"name": "Acme"}, Role.admin),
    ("GET", "/api/v1/users", None, Role.admin),
    ("POST", "/api/v1/users", {}, Role.admin),
    ("PATCH", "/api/v1/users/{user_id}", {}, Role.admin),
    ("DELETE", "/api/v1/users/{user_id}", None, Role.admin),
    ("GET", "/api/v1/api-keys", None, Role.admin),
    ("POST", "/api/v1/api-keys", {}, Role.admin),
    ("DELETE", "/api/v1/api-keys/{key_id}", None, Role.admin),
]
_PARAMS = {"identity": "nobody", "ref": "shop:nothing", "campaign_id": 999999, "segment_id": 999999,
           "user_id": 999999, "key_id": 999999, "conversation_id": 999999, "saved_reply_id": 999999,
           "media_id": 999999}  # fmt: skip


def test_the_table_names_every_authenticated_route(app: FastAPI) -> None:
    documented = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
        if path.startswith("/api/v1/") or path == "/1/upload"
    }
    assert documented == {(method, path) for method, path, _, _ in ROUTES}


def test_each_role_is_refused_where_it_must_be(client: TestClient, db: Database, account: NewAccount) -> None:
    keys = {role: _key(db, account, role) for role in Role}
    for method, path, body, needed in ROUTES:
        url = path.format(**_PARAMS)
        for role, headers in keys.items():
            answer = client.request(method, url, json=body, headers=headers)
            where = f"{role} {method} {path}"
            if role.allows(needed):
                assert answer.status_code not in (401, 403), (where, answer.text)
            elif path == "/1/upload":  # CleverTap's shape
                assert answer.status_code == 403, where
                assert answer.json() == {
                    "status": "fail",
                    "error": "this needs the marketer role",
                    "code": 403,
                }
            else:
                message = refused(answer, 403, "forbidden")
                assert message == f"this needs the {needed} role", where


def test_the_openapi_document_lists_403_on_every_route_with_a_role(app: FastAPI) -> None:
    paths = app.openapi()["paths"]
    for method, path, _, _ in ROUTES:
        assert "403" in paths[path][method.lower()]["responses"], (method, path)
    assert "403" not in paths["/healthz"]["get"]["responses"]


def test_the_passcode_counts_as_admin(client: TestClient, auth: dict[str, str]) -> None:
    assert client.get("/api/v1/users", headers=auth).json() == []
    assert client.get("/api/v1/integrations/whatsapp", headers=auth).status_code == 200


def test_an_api_key_opens_the_api_until_revoked(client: TestClient, auth: dict[str, str]) -> None:
    created = client.post("/api/v1/api-keys", json={"name": "CRM sync", "role": "marketer"}, headers=auth)
    assert created.status_code == 201, created.text
    new = created.json()
    secret = new["secret"]
    assert secret.startswith("tid_") and len(secret) >= 40
    assert secret.startswith(new["prefix"]) and len(new["prefix"]) < 16
    assert new["last_used_at"] is None and new["revoked_at"] is None
    bearer = {"Authorization": f"Bearer {secret}"}

    assert client.get("/api/v1/templates", headers=bearer).status_code == 200
    listed = client.get("/api/v1/api-keys", headers=auth).json()
    assert [k["name"] for k in listed] == ["CRM sync"]
    assert "secret" not in listed[0] and listed[0]["last_used_at"] is not None

    revoked = client.delete(f"/api/v1/api-keys/{new['id']}", headers=auth)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    refused(client.get("/api/v1/templates", headers=bearer), 401, "unauthorized")
    upload = client.post("/1/upload", json={"d": []}, headers=bearer)
    assert upload.status_code == 401 and upload.json()["status"] == "fail"
    assert client.get("/api/v1/api-keys", headers=auth).json()[0]["revoked_at"] is not None


def test_unknown_keys_are_refused_and_counted_per_address(client: TestClient, app: FastAPI) -> None:
    app.state.signins = SignInLimiter(per_address=3)
    for secret in ("tid_not-a-key", "not even the prefix", "tid_" + "x" * 43):
        refused(
            client.get("/api/v1/campaigns", headers={"Authorization": f"Bearer {secret}"}),
            401,
            "unauthorized",
        )
    answer = client.get("/api/v1/campaigns", headers={"Authorization": "Bearer tid_again"})
    refused(answer, 429, "too_many_attempts")
    assert int(answer.headers["Retry-After"]) > 0


def test_keys_and_users_belong_to_their_account(
    client: TestClient, db: Database, box: SecretBox, account: NewAccount, auth: dict[str, str]
) -> None:
    other = new_account(db, box, "Other")
    with db.session() as session:
        theirs = service.create_user(
            session, other.account_id, email="a@b.co", role="admin", password=PASSWORD
        )
        their_key = service.create_api_key(session, other.account_id, name="k", role="admin").key
    refused(
        client.patch(f"/api/v1/users/{theirs.id}", json={"role": "agent"}, headers=auth), 404, "not_found"
    )
    refused(client.delete(f"/api/v1/users/{theirs.id}", headers=auth), 404, "not_found")
    refused(client.delete(f"/api/v1/api-keys/{their_key.id}", headers=auth), 404, "not_found")
    assert client.get("/api/v1/users", headers=auth).json() == []
    # An admin key of this account sees this account only.
    mine = _key(db, account, Role.admin)
    assert client.get("/api/v1/api-keys", headers=mine).json()[0]["name"] == "admin"
    assert len(client.get("/api/v1/api-keys", headers=mine).json()) == 1


def test_admins_add_change_and_remove_users(client: TestClient, db: Database, auth: dict[str, str]) -> None:
    body = {"email": "  Asha@Shop.example ", "role": "marketer", "password": PASSWORD}
    created = client.post("/api/v1/users", json=body, headers=auth)
    assert created.status_code == 201, created.text
    user = created.json()
    assert user["email"] == "asha@shop.example" and user["role"] == "marketer" and "password" not in user
    again = client.post("/api/v1/users", json={**body, "email": "ASHA@shop.example"}, headers=auth)
    refused(again, 409, "user_exists")
    refused(client.post("/api/v1/users", json={**body, "email": "nope"}, headers=auth), 422, "invalid_email")
    short = {**body, "email": "b@shop.example", "password": "short"}
    refused(client.post("/api/v1/users", json=short, headers=auth), 422, "invalid_password")
    refused(
        client.post("/api/v1/users", json={**body, "role": "owner"}, headers=auth), 422, "validation_error"
    )

    with db.session() as session:
        signed_in = service.start_session(session, session.get_one(service.User, user["id"]))
    changed = client.patch(f"/api/v1/users/{user['id']}", json={"role": "agent"}, headers=auth)
    assert changed.status_code == 200 and changed.json()["role"] == "agent"
    with db.read() as session:
        assert service.session_user(session, signed_in.token) is None  # signed out by the change

    assert client.delete(f"/api/v1/users/{user['id']}", headers=auth).status_code == 204
    assert client.get("/api/v1/users", headers=auth).json() == []
    refused(client.delete(f"/api/v1/users/{user['id']}", headers=auth), 404, "not_found")


def test_the_last_admin_is_never_removed_demoted_or_disabled(
    client: TestClient, db: Database, account: NewAccount, auth: dict[str, str]
) -> None:
    body = {"role": "admin", "password": PASSWORD}
    first = client.post("/api/v1/users", json={**body, "email": "a@shop.example"}, headers=auth).json()["id"]
    for change in ({"role": "marketer"}, {"disabled": True}):
        message = refused(
            client.patch(f"/api/v1/users/{first}", json=change, headers=auth), 409, "last_admin"
        )
        assert message == "a@shop.example is the account's last admin: make another user admin first"
    refused(client.delete(f"/api/v1/users/{first}", headers=auth), 409, "last_admin")

    second = client.post("/api/v1/users", json={**body, "email": "b@shop.example"}, headers=auth).json()["id"]
    assert client.patch(f"/api/v1/users/{second}", json={"disabled": True}, headers=auth).status_code == 200
    refused(
        client.delete(f"/api/v1/users/{first}", headers=auth), 409, "last_admin"
    )  # a disabled one counts not
    assert client.patch(f"/api/v1/users/{second}", json={"disabled": False}, headers=auth).status_code == 200
    assert client.patch(f"/api/v1/users/{first}", json={"role": "agent"}, headers=auth).status_code == 200
    assert client.delete(f"/api/v1/users/{first}", headers=auth).status_code == 204
    # a signed-in user (the dashboard says who acts) never changes or removes its own user
    with db.session() as session:
        for act in (
            lambda: service.remove_user(session, account.account_id, second, by=second),
            lambda: service.update_user(session, account.account_id, second, role="agent", by=second),
            lambda: service.update_user(session, account.account_id, second, disabled=True, by=second),
        ):
            with pytest.raises(ApiError) as refusal:
                act()
            assert refusal.value.code == "own_user"
    assert [u["role"] for u in client.get("/api/v1/users", headers=auth).json()] == ["admin"]


def test_authenticate_gives_one_answer_for_unknown_email_and_wrong_password(
    db: Database, account: NewAccount
) -> None:
    with db.session() as session:
        service.create_user(
            session, account.account_id, email="asha@shop.example", role="marketer", password=PASSWORD
        )
    with db.session() as session:
        assert service.authenticate(session, account.account_id, "nobody@shop.example", PASSWORD) is None
        assert (
            service.authenticate(session, account.account_id, "asha@shop.example", "wrong password!") is None
        )
        assert service.authenticate(session, "TID-OTHER", "asha@shop.example", PASSWORD) is None
        user = service.authenticate(session, account.account_id, " ASHA@shop.example", PASSWORD)
        assert user is not None and user.role == "marketer"
        assert user.password_hash.startswith("$argon2id$")
        service.update_user(session, account.account_id, user.id, disabled=True)
        assert service.authenticate(session, account.account_id, "asha@shop.example", PASSWORD) is None


def test_a_hash_with_old_parameters_is_remade_at_sign_in(db: Database, account: NewAccount) -> None:
    with db.session() as session:
        user = service.create_user(
            session, account.account_id, email="a@shop.example", role="agent", password=PASSWORD, hasher=CHEAP
        )
        old = user.password_hash
    assert service.HASHER.check_needs_rehash(old)
    with db.session() as session:
        assert service.authenticate(session, account.account_id, "a@shop.example", "wrong password!") is None
        assert session.get_one(service.User, user.id).password_hash == old  # only a success rehashes
        assert service.authenticate(session, account.account_id, "a@shop.example", PASSWORD) is not None
    with db.read() as session:
        new = session.get_one(service.User, user.id).password_hash
    assert new != old and not service.HASHER.check_needs_rehash(new)
    with db.session() as session:  # the new hash opens with the same password
        assert service.authenticate(session, account.account_id, "a@shop.example", PASSWORD) is not None


def test_sign_ins_are_limited_per_email_and_per_address(db: Database, account: NewAccount) -> None:
    now = [0.0]
    limiter = SignInLimiter(per_address=4, per_account=2, window=60, clock=lambda: now[0])
    with db.session() as session:
        service.create_user(
            session, account.account_id, email="a@shop.example", role="admin", password=PASSWORD
        )

    def sign_in(email: str, password: str, address: str) -> Any:
        with db.session() as session:
            return service.sign_in(session, limiter, account.account_id, email, password, address)

    assert sign_in("a@shop.example", PASSWORD, "10.0.0.1").email == "a@shop.example"  # 10.0.0.1 trusted
    for address in ("10.0.0.2", "10.0.0.3"):
        with pytest.raises(ApiError) as wrong:
            sign_in("A@shop.example", "wrong password!", address)
        assert wrong.value.status == 401 and wrong.value.message == "wrong e-mail or password"
    with pytest.raises(TooManySignIns):  # per e-mail: even the right password, from a new address
        sign_in("a@shop.example", PASSWORD, "10.0.0.4")
    assert sign_in("a@shop.example", PASSWORD, "10.0.0.1") is not None  # its own address is not locked out

    for email in ("b@x.example", "c@x.example", "d@x.example", "e@x.example"):  # per address
        with pytest.raises(ApiError):
            sign_in(email, "wrong password!", "10.0.0.9")
    with pytest.raises(TooManySignIns) as limited:
        sign_in("f@x.example", "whatever it is", "10.0.0.9")
    assert limited.value.status == 429 and 0 < limited.value.wait <= 60
    now[0] += 61  # the window passes
    assert sign_in("a@shop.example", PASSWORD, "10.0.0.9") is not None


def test_sessions_start_expire_and_end(db: Database, account: NewAccount) -> None:
    with db.session() as session:
        user = service.create_user(
            session, account.account_id, email="a@shop.example", role="agent", password=PASSWORD
        )
        first = service.start_session(session, user)
        second = service.start_session(session, user)
        short = service.start_session(session, user, lifetime=timedelta(seconds=1))
    assert len({first.token, second.token, short.token}) == 3
    with db.read() as session:
        found = service.session_user(session, first.token)
        assert found is not None and found.id == user.id
        assert service.session_user(session, short.token, now=utcnow() + timedelta(seconds=2)) is None
        assert service.session_user(session, "forged") is None
        assert (
            service.session_user(session, service.sha256(first.token)) is None
        )  # the stored hash opens none
    with db.session() as session:
        service.end_session(session, first.token)  # sign-out
    with db.read() as session:
        assert service.session_user(session, first.token) is None
        assert service.session_user(session, second.token) is not None
    with db.session() as session:
        service.remove_user(session, account.account_id, user.id)
    with db.read() as session:
        assert service.session_user(session, second.token) is None


def _cli_env(settings: Settings, db: Database, tmp_path: Path) -> dict[str, str]:
    return {
        "TIDINGS_DATABASE_URL": db.url,
        "TIDINGS_DATA_DIR": str(tmp_path),
        "TIDINGS_SECRET_KEY": settings.secret_key or "",
    }


def test_the_cli_creates_the_first_admin_and_an_api_key(
    settings: Settings, db: Database, account: NewAccount, tmp_path: Path
) -> None:
    env = _cli_env(settings, db, tmp_path)
    args = [
        "user",
        "create",
        "--email",
        "Admin@Shop.example",
        "--role",
        "admin",
        "--account",
        account.account_id,
    ]
    created = CliRunner().invoke(cli, [*args, "--password-stdin"], input=PASSWORD + "\n", env=env)
    assert created.exit_code == 0, created.output
    assert "admin@shop.example" in created.output
    prompted = CliRunner().invoke(
        cli, [*args[:2], "--email", "m@shop.example", "--role", "marketer", "--account", account.account_id],
        input=f"{PASSWORD}\n{PASSWORD}\n", env=env,
    )  # fmt: skip
    assert prompted.exit_code == 0, prompted.output
    again = CliRunner().invoke(cli, [*args, "--password-stdin"], input=PASSWORD + "\n", env=env)
    assert again.exit_code == 2 and "user_exists" in again.output
    with db.session() as session:
        admin = service.authenticate(session, account.account_id, "admin@shop.example", PASSWORD)
        assert admin is not None and admin.role == "admin"
        assert service.authenticate(session, account.account_id, "m@shop.example", PASSWORD) is not None

    key_args = [
        "api-key",
        "create",
        "--account",
        account.account_id,
        "--role",
        "agent",
        "--name",
        "BI",
        "--json",
    ]
    made = CliRunner().invoke(cli, key_args, env=env)
    assert made.exit_code == 0, made.output
    secret = json.loads(made.output)["secret"]
    with db.read() as session:
        key = service.key_for(session, secret)
        assert key is not None and key.role == "agent" and key.name == "BI"
    bad_role = CliRunner().invoke(cli, [*key_args[:4], "--role", "owner", "--name", "x"], env=env)
    assert bad_role.exit_code == 2 and "invalid_role" in bad_role.output


def test_basic_auth_still_works_next_to_keys(client: TestClient, account: NewAccount) -> None:
    assert client.get("/api/v1/account", headers=basic(account)).status_code == 200
