"""Writing as a sandbox user from the API (``POST /api/v1/integrations/whatsapp/sandbox/messages``) and
the CLI (``tidings sandbox say``): the message takes the signed inbound webhook, as a real user's does, and
lands in the inbox; STOP opts the number out; a non-sandbox account is refused."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from tests.helpers import refused
from tidings.accounts import integrations
from tidings.accounts.service import NewAccount
from tidings.cli import app as cli
from tidings.config import Settings
from tidings.conversations.models import Conversation, InboundMessage
from tidings.db import Database
from tidings.profiles.models import Profile
from tidings.secrets import SecretBox

ROUTE = "/api/v1/integrations/whatsapp/sandbox/messages"
USER = "+14155550123"


def test_a_sandbox_user_writes_through_the_api(
    client: TestClient, db: Database, account: NewAccount, auth: dict[str, str]
) -> None:
    said = {"from": USER, "text": "Hello, is my order on its way?", "profile_name": "Ana"}
    hello = client.post(ROUTE, json=said, headers=auth)
    assert hello.status_code == 202, hello.text
    stop = client.post(ROUTE, json={"from": USER, "text": "Stop please"}, headers=auth)
    assert stop.status_code == 202, stop.text
    with db.read() as session:
        inbound = session.scalars(select(InboundMessage).order_by(InboundMessage.id)).all()
        assert [(m.provider, m.text, m.provider_message_id) for m in inbound] == [
            ("sandbox", "Hello, is my order on its way?", hello.json()["provider_message_id"]),
            ("sandbox", "Stop please", stop.json()["provider_message_id"]),
        ]
        conversation = session.scalars(select(Conversation)).one()
        assert (conversation.phone, conversation.state, conversation.unread) == (USER, "new", 2)
        profile = session.scalars(select(Profile)).one()
        assert profile.properties["Name"] == "Ana" and profile.whatsapp_opt_in is False


def test_bad_input_and_other_providers_are_refused(
    client: TestClient, db: Database, box: SecretBox, account: NewAccount, auth: dict[str, str]
) -> None:
    assert refused(client.post(ROUTE, json={"from": "nope", "text": "hi"}, headers=auth), 422, "invalid")
    assert client.post(ROUTE, json={"from": USER, "kind": "fax"}, headers=auth).status_code == 422
    with db.session() as session:
        integrations.configure(
            session, box, account.account_id, kind="meta",
            settings={"phone_number_id": "1555000", "waba_id": "42"},
            secrets={"access_token": "t", "app_secret": "s"},
        )  # fmt: skip
    assert refused(client.post(ROUTE, json={"from": USER, "text": "hi"}, headers=auth), 409, "not_sandbox")
    with db.read() as session:
        assert session.scalars(select(InboundMessage)).all() == []


def test_the_cli_writes_to_the_running_server(
    live: tuple[str, FastAPI], settings: Settings, db: Database, account: NewAccount, tmp_path: Path
) -> None:
    url, _ = live
    env = {
        "TIDINGS_DATABASE_URL": db.url,
        "TIDINGS_DATA_DIR": str(tmp_path),
        "TIDINGS_SECRET_KEY": settings.secret_key or "",
        "TIDINGS_PUBLIC_URL": url,
    }
    args = ["sandbox", "say", "--account", account.account_id, "--from", USER]
    said = CliRunner().invoke(cli, [*args, "What time does it start?"], env=env)
    assert said.exit_code == 0, said.output
    with db.read() as session:
        assert session.scalars(select(InboundMessage.text)).all() == ["What time does it start?"]
    bad = CliRunner().invoke(cli, [*args, "hi", "--kind", "fax"], env=env)
    assert bad.exit_code != 0 and "fax" in bad.output
