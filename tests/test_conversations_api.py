"""The conversations API: every route refuses a caller without credentials, an agent's key does what an
agent may and no more (assigning to someone else is an admin's), replies are refused with the reason an
agent can act on (the window's closing time, who holds the conversation, the template's missing values),
two takers get one winner, files go up through the API and out through their public link, and the list
filters and counts as the inbox shows them."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
from argon2 import PasswordHasher
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.conftest import basic
from tests.helpers import refused
from tidings.accounts.service import NewAccount
from tidings.conversations import service
from tidings.conversations.models import MediaFile
from tidings.db import Database, utcnow
from tidings.delivery.models import Message
from tidings.guards import MEDIA_MAX_BODY
from tidings.providers.base import InboundReply
from tidings.templates.service import create_template
from tidings.users import service as users
from tidings.users.models import Role

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
ANN, BOB, CAT = "+14155550101", "+14155550102", "+14155550103"


def _key(db: Database, account: NewAccount, role: Role) -> dict[str, str]:
    with db.session() as session:
        secret = users.create_api_key(session, account.account_id, name=role.value, role=role.value).secret
    return {"Authorization": f"Bearer {secret}"}


def _user(db: Database, account: NewAccount, email: str, role: Role = Role.agent) -> int:
    with db.session() as session:
        user = users.create_user(
            session, account.account_id, email=email, role=role.value, password="x" * 12, hasher=CHEAP
        )
        return user.id


_seq = iter(range(10**6))


def _inbound(
    db: Database, account: NewAccount, phone: str, text: str, *, ago: timedelta = timedelta(minutes=5)
) -> int:
    """A user's message, recorded as the webhooks record it; returns the number's conversation id."""
    reply = InboundReply(
        provider_message_id=f"wamid.{next(_seq)}",
        from_phone=phone,
        timestamp=utcnow() - ago,
        text=text,
        profile_name=f"Name {phone[-3:]}",
    )
    with db.session() as session:
        service.record_inbound(session, account.account_id, "meta", reply)
        found = service.conversation_by_phone(session, account.account_id, phone)
        assert found is not None
        return found.id


class Keys:
    def __init__(self, db: Database, account: NewAccount) -> None:
        self.agent = _key(db, account, Role.agent)
        self.marketer = _key(db, account, Role.marketer)
        self.admin = _key(db, account, Role.admin)


# Every conversations route, with a body an agent's key may send (``{id}``: a conversation).
ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/api/v1/conversations", None),
    ("GET", "/api/v1/conversations/counts", None),
    ("GET", "/api/v1/conversations/{id}", None),
    ("POST", "/api/v1/conversations/{id}/open", None),
    ("POST", "/api/v1/conversations/{id}/take", {"user_id": "{user}"}),
    ("POST", "/api/v1/conversations/{id}/assign", {"user_id": None, "acting_user_id": "{user}"}),
    ("POST", "/api/v1/conversations/{id}/resolve", {"user_id": "{user}"}),
    ("PUT", "/api/v1/conversations/{id}/labels", {"labels": ["vip"], "user_id": "{user}"}),
    ("POST", "/api/v1/conversations/{id}/notes", {"text": "hi", "user_id": "{user}"}),
    ("POST", "/api/v1/conversations/{id}/messages", {"text": "Hello", "user_id": "{user}"}),
    ("GET", "/api/v1/saved-replies", None),
    ("POST", "/api/v1/saved-replies", {"shortcut": "s{n}", "text": "Thanks"}),
    ("DELETE", "/api/v1/saved-replies/999999", None),
    ("GET", "/api/v1/media/999999", None),
    ("GET", "/api/v1/profiles/{phone}/inbound", None),
]


def _filled(value: Any, **fill: Any) -> Any:
    if isinstance(value, dict):
        return {k: _filled(v, **fill) for k, v in value.items()}
    if isinstance(value, list):
        return [_filled(v, **fill) for v in value]
    if isinstance(value, str) and value == "{user}":
        return fill["user"]
    return value.format(**fill) if isinstance(value, str) else value


def test_every_route_needs_credentials_and_each_role_may_use_it(
    client: TestClient, db: Database, account: NewAccount
) -> None:
    keys = Keys(db, account)
    user = _user(db, account, "ann@example.com")
    cid = _inbound(db, account, ANN, "Hello?")
    assert client.post("/api/v1/media", files={"file": ("a.txt", b"x")}).status_code == 401
    for n, (method, path, body) in enumerate(ROUTES):
        url = path.format(id=cid, phone=ANN)
        answer = client.request(method, url, json=_filled(body, user=user, n=n))
        assert refused(answer, 401, "unauthorized"), (method, path)
        for role, headers in (("agent", keys.agent), ("marketer", keys.marketer), ("admin", keys.admin)):
            answer = client.request(
                method, url, json=_filled(body, user=user, n=f"{n}{role}"), headers=headers
            )
            assert answer.status_code not in (401, 403, 422, 500), (role, method, path, answer.text)
        if path.endswith("/messages"):
            assert answer.status_code == 202, answer.text


def test_only_an_admin_assigns_to_someone_else(client: TestClient, db: Database, account: NewAccount) -> None:
    keys = Keys(db, account)
    ann, bob = _user(db, account, "ann@example.com"), _user(db, account, "bob@example.com")
    cid = _inbound(db, account, ANN, "Hello?")
    path = f"/api/v1/conversations/{cid}/assign"
    for headers in (keys.agent, keys.marketer):
        for acting in (None, ann):
            answer = client.post(path, json={"user_id": bob, "acting_user_id": acting}, headers=headers)
            assert "only an admin" in refused(answer, 403, "forbidden")
    # An agent takes it for themselves (assigning to oneself is taking).
    answer = client.post(path, json={"user_id": ann, "acting_user_id": ann}, headers=keys.agent)
    assert answer.status_code == 200 and answer.json()["assignee"] == "ann@example.com", answer.text
    # Bob's agent key may not give back what Ann holds; Ann's may; an admin's key gives it to Bob.
    answer = client.post(path, json={"user_id": None, "acting_user_id": bob}, headers=keys.agent)
    assert "ann@example.com holds" in refused(answer, 409, "held_by_other")
    answer = client.post(path, json={"user_id": bob}, headers=keys.admin)
    assert answer.json()["assignee_id"] == bob, answer.text
    answer = client.post(path, json={"user_id": None, "acting_user_id": bob}, headers=keys.agent)
    assert answer.json()["assignee_id"] is None, answer.text
    # A user of another account, or none at all, is refused.
    refused(client.post(path, json={"user_id": 999999}, headers=keys.admin), 422, "unknown_user")
    refused(
        client.post(path, json={"user_id": None, "acting_user_id": 999999}, headers=keys.agent),
        422,
        "unknown_user",
    )


def test_of_two_takers_the_second_is_told_who_holds_it(
    client: TestClient, db: Database, account: NewAccount
) -> None:
    keys = Keys(db, account)
    ann, bob = _user(db, account, "ann@example.com"), _user(db, account, "bob@example.com")
    cid = _inbound(db, account, ANN, "Hello?")
    path = f"/api/v1/conversations/{cid}/take"
    refused(client.post(path, headers=keys.agent), 422, "user_required")
    first = client.post(path, json={"user_id": ann}, headers=keys.agent)
    assert first.status_code == 200 and first.json()["assignee_id"] == ann, first.text
    message = refused(client.post(path, json={"user_id": bob}, headers=keys.agent), 409, "held_by_other")
    assert message.startswith("ann@example.com holds this conversation")
    # Taking it again is no change; Bob may not reply, label or resolve it either.
    assert client.post(path, json={"user_id": ann}, headers=keys.agent).status_code == 200
    for method, suffix, body in (
        ("POST", "messages", {"text": "Hi", "user_id": bob}),
        ("PUT", "labels", {"labels": ["x"], "user_id": bob}),
        ("POST", "resolve", {"user_id": bob}),
    ):
        answer = client.request(
            method, f"/api/v1/conversations/{cid}/{suffix}", json=body, headers=keys.agent
        )
        assert "ann@example.com" in refused(answer, 409, "held_by_other"), suffix
    # An admin's key acts over the holder.
    answer = client.post(f"/api/v1/conversations/{cid}/resolve", json={"user_id": bob}, headers=keys.admin)
    assert answer.json()["state"] == "resolved", answer.text


def test_replies_are_refused_with_what_to_do(client: TestClient, db: Database, account: NewAccount) -> None:
    keys = Keys(db, account)
    ann = _user(db, account, "ann@example.com")
    with db.session() as session:
        template = create_template(
            session, account.account_id, name="shop:order", body="Hi {{1}}, order {{2}}", category="UTILITY"
        )
        template_id = template.id
    late = _inbound(db, account, ANN, "Where is my order?", ago=timedelta(hours=30))
    messages = f"/api/v1/conversations/{late}/messages"
    closed = refused(client.post(messages, json={"text": "Sorry!"}, headers=keys.agent), 409, "window_closed")
    with db.read() as session:
        last = service.get_conversation(session, account.account_id, late).last_inbound_at
    assert last is not None
    assert f"closed at {last + timedelta(hours=24):%Y-%m-%d %H:%M} UTC" in closed
    # Outside the window a template goes only to a user opted in (a stranger's profile is opted out).
    body = {"template_id": template_id, "params": ["Ann", "4711"]}
    refused(client.post(messages, json=body, headers=keys.agent), 409, "not_opted_in")
    client.put(f"/api/v1/profiles/{ANN}/consent", json={"whatsapp": True}, headers=keys.admin)
    answer = client.post(messages, json=body, headers=keys.agent)
    assert answer.status_code == 202 and answer.json()["state"] == "queued", answer.text

    cid = _inbound(db, account, BOB, "Hello?")
    messages = f"/api/v1/conversations/{cid}/messages"
    values = {"template_id": template_id, "params": ["Bob"]}
    assert "2 variables" in refused(
        client.post(messages, json=values, headers=keys.agent), 422, "template_values"
    )
    refused(client.post(messages, json={"text": "  "}, headers=keys.agent), 422, "empty_reply")
    refused(client.post(messages, json={"template_id": 999999}, headers=keys.agent), 404, "not_found")
    # The same idempotency key twice queues one message; the replying user takes the conversation.
    reply = {"text": "On its way", "idempotency_key": "k1", "user_id": ann}
    first = client.post(messages, json=reply, headers=keys.agent)
    again = client.post(messages, json=reply, headers=keys.agent)
    assert first.status_code == again.status_code == 202, first.text
    assert first.json()["id"] == again.json()["id"]
    shown = client.get(f"/api/v1/conversations/{cid}", headers=keys.agent).json()
    assert shown["conversation"]["state"] == "active"
    assert shown["conversation"]["assignee"] == "ann@example.com"
    assert [(i["who"], i["text"]) for i in shown["thread"]] == [("user", "Hello?"), ("agent", "On its way")]
    assert shown["thread"][1]["author"] == "ann@example.com" and shown["thread"][1]["state"] == "queued"


def test_files_go_up_by_the_api_and_out_by_their_public_link(
    client: TestClient, db: Database, account: NewAccount
) -> None:
    keys = Keys(db, account)
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    answer = client.post("/api/v1/media", files={"file": ("photo.png", png, "image/png")}, headers=keys.agent)
    assert answer.status_code == 201, answer.text
    media = answer.json()
    assert media == {"id": media["id"], "mime_type": "image/png", "filename": "photo.png", "size": len(png)}
    # Through the API with credentials, and by its token without.
    assert client.get(f"/api/v1/media/{media['id']}").status_code == 401
    mine = client.get(f"/api/v1/media/{media['id']}", headers=keys.agent)
    assert mine.content == png and mine.headers["content-type"] == "image/png"
    cid = _inbound(db, account, ANN, "Send me the photo")
    answer = client.post(
        f"/api/v1/conversations/{cid}/messages",
        json={"media_id": media["id"], "text": "Here"},
        headers=keys.agent,
    )
    assert answer.status_code == 202, answer.text
    with db.read() as session:
        sent = session.get_one(Message, answer.json()["id"])
        token = session.scalars(select(MediaFile.token).where(MediaFile.id == media["id"])).one()
    assert sent.media == {
        "kind": "image",
        "url": f"http://127.0.0.1:9/media/{token}",
        "filename": "photo.png",
        "id": media["id"],
    }
    public = client.get(f"/media/{token}")
    assert public.status_code == 200 and public.content == png
    assert public.headers["content-type"] == "image/png"
    assert public.headers["cache-control"] == "private"
    assert "sandbox" in public.headers["content-security-policy"]
    refused(client.get(f"/media/{token[:-1]}x"), 404, "not_found")
    # A page uploaded as a file is a download, never run as a page of this site.
    html = client.post(
        "/api/v1/media", files={"file": ("x.html", b"<script>1</script>", "text/html")}, headers=keys.agent
    ).json()
    answer = client.get(f"/api/v1/media/{html['id']}", headers=keys.agent)
    assert answer.headers["content-disposition"].startswith("attachment")
    assert answer.headers["content-security-policy"].startswith("sandbox")
    # Empty, over 16 MiB (refused by the route), and over the route's body limit (refused before reading).
    refused(
        client.post("/api/v1/media", files={"file": ("e.txt", b"")}, headers=keys.agent), 422, "empty_file"
    )
    big = b"x" * (service.MAX_MEDIA + 1)
    answer = client.post("/api/v1/media", files={"file": ("big.bin", big)}, headers=keys.agent)
    assert "16 MiB" in refused(answer, 413, "payload_too_large")
    huge = b"x" * (MEDIA_MAX_BODY + 1)
    refused(
        client.post("/api/v1/media", files={"file": ("huge.bin", huge)}, headers=keys.agent),
        413,
        "payload_too_large",
    )
    # A malformed form is malformed like a body that is not JSON.
    form = {"Content-Type": "multipart/form-data; boundary=b", **keys.agent}
    answer = client.post("/api/v1/media", content=b"--b\r\nNone--b--\r\n", headers=form)
    assert "multipart" in refused(answer, 422, "validation_error")
    refused(client.post("/api/v1/media", json={"file": "x"}, headers=keys.agent), 422, "validation_error")
    # Other routes keep their 1 MiB limit.
    answer = client.post("/api/v1/saved-replies", content=b"x" * (2 * 1024 * 1024), headers=keys.agent)
    refused(answer, 413, "payload_too_large")


def test_saved_replies(client: TestClient, db: Database, account: NewAccount) -> None:
    keys = Keys(db, account)
    created = client.post(
        "/api/v1/saved-replies", json={"shortcut": "/Thanks", "text": " Thank you! "}, headers=keys.agent
    )
    assert created.status_code == 201, created.text
    saved = created.json()
    assert (saved["shortcut"], saved["text"]) == ("thanks", "Thank you!")
    again = client.post("/api/v1/saved-replies", json={"shortcut": "thanks", "text": "x"}, headers=keys.admin)
    refused(again, 409, "shortcut_taken")
    bad = client.post("/api/v1/saved-replies", json={"shortcut": "a b", "text": "x"}, headers=keys.agent)
    refused(bad, 422, "invalid_shortcut")
    client.post(
        "/api/v1/saved-replies", json={"shortcut": "address", "text": "1 Main St"}, headers=keys.agent
    )
    listed = client.get("/api/v1/saved-replies", headers=keys.agent).json()
    assert [s["shortcut"] for s in listed] == ["address", "thanks"]
    assert client.delete(f"/api/v1/saved-replies/{saved['id']}", headers=keys.agent).status_code == 204
    refused(client.delete(f"/api/v1/saved-replies/{saved['id']}", headers=keys.agent), 404, "not_found")
    assert [s["shortcut"] for s in client.get("/api/v1/saved-replies", headers=keys.agent).json()] == [
        "address"
    ]


def test_the_list_filters_and_counts(client: TestClient, db: Database, account: NewAccount) -> None:
    keys = Keys(db, account)
    ann = _user(db, account, "ann@example.com")
    first = _inbound(db, account, ANN, "My parcel is late", ago=timedelta(hours=2))
    second = _inbound(db, account, BOB, "Do you ship to Lyon?", ago=timedelta(hours=1))
    third = _inbound(db, account, CAT, "Thanks!")
    _inbound(db, account, CAT, "Bye")

    def ids(**params: Any) -> list[int]:
        answer = client.get("/api/v1/conversations", params=params, headers=keys.agent)
        assert answer.status_code == 200, answer.text
        return [c["id"] for c in answer.json()["items"]]

    assert ids() == [first, second, third]  # the oldest waiting first
    page = client.get("/api/v1/conversations", params={"limit": 1, "offset": 1}, headers=keys.agent).json()
    assert [c["id"] for c in page["items"]] == [second]
    row = page["items"][0]
    assert (row["state"], row["unread"], row["preview"], row["identity"], row["name"]) == (
        "new",
        1,
        "Do you ship to Lyon?",
        BOB,
        "Name 102",
    )
    assert row["window_open"] is True and row["window_closes_at"] is not None
    assert page["counts"]["new"] == {"total": 3, "unread": 3}

    base = "/api/v1/conversations"
    client.post(f"{base}/{first}/messages", json={"text": "Looking", "user_id": ann}, headers=keys.agent)
    client.put(f"{base}/{second}/labels", json={"labels": ["Shipping", "lyon "]}, headers=keys.agent)
    client.post(f"{base}/{third}/resolve", headers=keys.agent)
    opened = client.post(f"{base}/{second}/open", headers=keys.agent).json()
    assert opened["unread"] == 0 and opened["labels"] == ["lyon", "shipping"]

    assert ids(state="active") == [first]
    assert ids(state="new") == [second]
    assert ids(state="resolved") == [third]
    assert ids(assignee_id=ann) == [first]
    assert sorted(ids(assignee_id=0)) == sorted([second, third])
    assert ids(label="shipping") == [second]
    assert ids(q="parcel") == [first]
    assert ids(q="0103") == [third]
    assert ids(q="name 102") == [second]
    counts = client.get(f"{base}/counts", headers=keys.agent).json()["counts"]
    assert counts["active"] == {"total": 1, "unread": 1}
    assert counts["new"] == {"total": 1, "unread": 0}
    assert counts["resolved"] == {"total": 1, "unread": 1}
    assert counts["pending"] == counts["inactive"] == {"total": 0, "unread": 0}


def test_the_detail_and_the_profiles_messages_both_ways(
    client: TestClient, db: Database, account: NewAccount
) -> None:
    keys = Keys(db, account)
    ann = _user(db, account, "ann@example.com")
    cid = _inbound(db, account, ANN, "Hi there", ago=timedelta(minutes=3))
    _inbound(db, account, ANN, "Anyone?", ago=timedelta(minutes=2))
    base = f"/api/v1/conversations/{cid}"
    note = client.post(f"{base}/notes", json={"text": "VIP customer", "user_id": ann}, headers=keys.agent)
    assert note.status_code == 201 and note.json()["author_id"] == ann, note.text
    refused(client.post(f"{base}/notes", json={"text": " "}, headers=keys.agent), 422, "invalid_note")
    client.post(f"{base}/messages", json={"text": "Hello Ann", "user_id": ann}, headers=keys.agent)
    detail = client.get(base, headers=keys.agent).json()
    assert [(i["who"], i["text"]) for i in detail["thread"]] == [
        ("user", "Hi there"),
        ("user", "Anyone?"),
        ("note", "VIP customer"),
        ("agent", "Hello Ann"),
    ]
    assert detail["profile"] == {
        "identity": ANN,
        "name": "Name 101",
        "phone": ANN,
        "whatsapp_opt_in": False,
        "campaigns": [],
    }
    assert detail["conversation"]["unread"] == 2  # reading is not opening
    refused(client.get("/api/v1/conversations/999999", headers=keys.agent), 404, "not_found")

    inbound = client.get(f"/api/v1/profiles/{ANN}/inbound", headers=keys.agent).json()
    assert inbound["total"] == 2
    assert [m["text"] for m in inbound["items"]] == ["Anyone?", "Hi there"]
    assert inbound["items"][0]["from_phone"] == ANN and inbound["items"][0]["kind"] == "text"
    outbound = client.get(f"/api/v1/profiles/{ANN}/messages", headers=keys.agent).json()
    assert [m["text"] for m in outbound["items"]] == ["Hello Ann"]
    refused(client.get("/api/v1/profiles/nobody/inbound", headers=keys.agent), 404, "not_found")


def test_the_openapi_document_describes_every_conversations_route(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    ours = {
        p: ops for p, ops in paths.items() if "conversations" in p or "saved-replies" in p or "media" in p
    }
    assert len(ours) == 15
    for path, operations in ours.items():
        for method, operation in operations.items():
            where = (method, path)
            assert operation["tags"] and operation["summary"], where
            assert {"404", "500"} <= set(operation["responses"]) or "{" not in path, where
            if path != "/media/{token}":
                assert {"401", "403"} <= set(operation["responses"]), where
    reply = paths["/api/v1/conversations/{conversation_id}/messages"]["post"]
    assert {"202", "409", "422"} <= set(reply["responses"])
    assert "window_closed" in reply["responses"]["409"]["description"]
    assert "401" not in paths["/media/{token}"]["get"]["responses"]
    assert "413" in paths["/api/v1/media"]["post"]["responses"]
    assert "sent" in paths["/api/v1/profiles/{identity}/inbound"]["get"]["summary"]


def test_of_many_takers_at_once_exactly_one_wins(
    client: TestClient, db: Database, account: NewAccount
) -> None:
    keys = Keys(db, account)
    takers = [_user(db, account, f"agent{i}@example.com") for i in range(6)]
    cid = _inbound(db, account, ANN, "Hello?")
    start = threading.Barrier(len(takers))

    def take(user: int) -> tuple[int, str]:
        start.wait()
        answer = client.post(f"/api/v1/conversations/{cid}/take", json={"user_id": user}, headers=keys.agent)
        return answer.status_code, answer.text

    with ThreadPoolExecutor(len(takers)) as pool:
        answers = list(pool.map(take, takers))
    assert sorted(status for status, _ in answers) == [200] + [409] * (len(takers) - 1), answers
    with db.read() as session:
        holder = service.get_conversation(session, account.account_id, cid).assignee_id
    assert holder in takers
    for status, text in answers:
        if status == 409:
            assert f"agent{takers.index(holder)}@example.com holds" in text


def test_a_reply_leaves_through_the_worker(
    live: tuple[str, FastAPI], db: Database, account: NewAccount
) -> None:
    """On the real server with its worker: the reply is queued (202), the worker is nudged, and the
    dispatcher sends it through the sandbox like any message."""
    url, _app = live
    cid = _inbound(db, account, ANN, "Hello?")
    with httpx.Client(base_url=url, timeout=30, headers=basic(account)) as http:
        answer = http.post(f"/api/v1/conversations/{cid}/messages", json={"text": "Hi Ann"})
        assert answer.status_code == 202, answer.text
        message_id = answer.json()["id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            thread = http.get(f"/api/v1/conversations/{cid}").json()["thread"]
            state = next(i["state"] for i in thread if i["id"] == message_id and i["who"] == "agent")
            if state not in ("queued", "sending"):
                break
            time.sleep(0.05)
    assert state in ("sent", "delivered", "read", "failed"), state
