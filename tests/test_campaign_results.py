"""A campaign's results as its stats page reads them: per-recipient rows paged, filtered and explained
(and as CSV, streamed in pages, of any size), the funnel, the errors in two groups with every reason
explained, the timeline in the account's time zone, and duplicating a campaign. Each account sees only its
own. On SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from tests.conftest import basic, clevertap, new_account
from tests.helpers import insert_profiles, phone, refused, running_campaign
from tests.test_campaign_e2e import _wait
from tidings.accounts.service import NewAccount, update_account
from tidings.campaigns.schemas import CampaignCreate
from tidings.campaigns.service import create_campaign, start_campaign
from tidings.db import Database, utcnow
from tidings.delivery.models import Message
from tidings.profiles.models import Profile
from tidings.secrets import SecretBox
from tidings.stats import reasons
from tidings.stats.recipients import CSV_COLUMNS, CSV_PAGE, Filters, messages_csv
from tidings.templates.service import create_template
from tidings.users import service as users
from tidings.users.models import Role

URL = "/api/v1/campaigns"
T0 = datetime(2030, 1, 1, 3, 20, tzinfo=UTC)  # 08:50 in Kolkata (UTC+05:30)


def _marketer(db: Database, account: NewAccount) -> dict[str, str]:
    with db.session() as session:
        secret = users.create_api_key(session, account.account_id, name="m", role=Role.marketer.value).secret
    return {"Authorization": f"Bearer {secret}"}


def _multivariate(db: Database, account_id: str, profiles: list[dict[str, Any]]) -> int:
    """A running one-time campaign with variants A (hello) and B (bye), split by the Language property,
    over ``profiles``, planned now."""
    insert_profiles(db, account_id, profiles)
    with db.session() as session:
        hello = create_template(session, account_id, name="shop:hello", body="Hi {{1}}", category="MARKETING")
        bye = create_template(session, account_id, name="shop:bye", body="Bye {{1}}", category="MARKETING")
        spec = CampaignCreate.model_validate(
            {
                "name": "spring sale",
                "variants": [
                    {
                        "template_id": hello.id,
                        "variables": ["{{ Profile.Name }}"],
                        "key": "A",
                        "match_value": "en",
                    },
                    {"template_id": bye.id, "variables": ["{{ Profile.Name }}"], "key": "B"},
                ],
                "split": {"by": "property", "property": "Language"},
                "target": {"all": True},
                "system_control_group": False,
                "conversion": {"event": "Charged", "within_hours": 24},
                "frequency": {"rule": "once"},
            }
        )
        campaign_id = create_campaign(session, account_id, spec).id
    with db.session() as session:
        start_campaign(session, campaign_id, utcnow())
    return int(campaign_id)


def _settle(db: Database, campaign_id: int, identity: str, **values: Any) -> None:
    """Write what the delivery engine writes when a message moves on (its state, times, reason)."""
    with db.session() as session:
        profile_id = session.scalar(select(Profile.id).where(Profile.identity == identity))
        session.execute(
            update(Message)
            .where(Message.campaign_id == campaign_id, Message.profile_id == profile_id)
            .values(**values)
        )


PEOPLE = [
    {"identity": "asha", "phone": "+919800000001", "properties": {"Name": "Asha", "Language": "en"}},
    {"identity": "ashok", "phone": "+919800000002", "properties": {"Name": "Ashok", "Language": "hi"}},
    {"identity": "bela", "phone": "+447700900003", "properties": {"Name": "Bela", "Language": "en"}},
    {"identity": "chen", "phone": "+447700900004", "properties": {"Name": "Chen", "Language": "zh"}},
    {"identity": "dara", "phone": "+447700900005", "opt_in": False, "properties": {"Name": "Dara"}},
    {"identity": "eli", "properties": {"Name": "Eli"}},  # no phone
    {"identity": "femi", "phone": "+447700900007", "properties": {"Language": "en"}},  # no Name
]


def _sent_campaign(db: Database, account_id: str) -> int:
    """PEOPLE planned (dara, eli and femi skipped by planning), then: asha read and replied, ashok
    delivered, bela failed at the provider (the sandbox's 1300), chen sent."""
    campaign_id = _multivariate(db, account_id, PEOPLE)
    minute = timedelta(minutes=1)
    times = {"created_at": T0 - minute, "sent_at": T0}
    _settle(db, campaign_id, "asha", state="read", params=["Asha"], **times, delivered_at=T0 + minute,
            read_at=T0 + 2 * minute, replied_at=T0 + 40 * minute)  # fmt: skip
    _settle(db, campaign_id, "ashok", state="delivered", params=["Ashok"], **times, delivered_at=T0 + minute)
    _settle(db, campaign_id, "bela", state="failed", params=["Bela"], **times, failed_at=T0 + minute,
            reason="sandbox:1300", error_detail="Not part of the provider network")  # fmt: skip
    _settle(
        db, campaign_id, "chen", state="sent", params=["Chen"], created_at=T0, sent_at=T0 + 16 * 60 * minute
    )
    return campaign_id


def test_the_recipients_are_paged_filtered_and_explained(
    client: TestClient, db: Database, account: NewAccount, box: SecretBox
) -> None:
    campaign_id = _sent_campaign(db, account.account_id)
    auth = _marketer(db, account)  # the marketer role reads them
    everyone = client.get(f"{URL}/{campaign_id}/messages", headers=auth).json()
    assert everyone["next"] is None
    rows = {row["identity"]: row for row in everyone["items"]}
    assert sorted(rows) == sorted(p["identity"] for p in PEOPLE)
    asha = rows["asha"]
    assert (asha["phone"], asha["variant"], asha["params"], asha["state"]) == (
        "+919800000001",
        "A",
        ["Asha"],
        "read",
    )
    assert asha["replied_at"].startswith("2030-01-01T04:00") and asha["read_at"].startswith(
        "2030-01-01T03:22"
    )
    assert (rows["ashok"]["variant"], rows["chen"]["variant"]) == ("B", "B")
    assert rows["bela"]["reason"] == "sandbox:1300"
    assert rows["bela"]["explanation"] == "The number is not on WhatsApp."
    assert rows["bela"]["error_detail"] == "Not part of the provider network"
    assert (rows["dara"]["state"], rows["dara"]["reason"]) == ("skipped", "not_opted_in")
    assert rows["dara"]["explanation"] == reasons.OWN["not_opted_in"]
    assert rows["eli"]["reason"] == "no_valid_phone"
    assert rows["femi"]["reason"] == "missing_personalization"
    assert "Profile.Name is missing" in rows["femi"]["error_detail"]

    # Pages of two, in the order of the whole list, each `next` leading to the rest.
    seen: list[int] = []
    after = 0
    while True:
        page = client.get(
            f"{URL}/{campaign_id}/messages", params={"limit": 2, "after": after}, headers=auth
        ).json()
        assert len(page["items"]) <= 2
        seen += [row["id"] for row in page["items"]]
        if page["next"] is None:
            break
        after = page["next"]
    assert seen == [row["id"] for row in everyone["items"]] and len(set(seen)) == len(PEOPLE)
    # A cursor that is not a row of this campaign gives nothing, not the start again.
    nothing = client.get(f"{URL}/{campaign_id}/messages", params={"after": 10**12}, headers=auth).json()
    assert nothing == {"items": [], "next": None}

    def who(**params: Any) -> list[str]:
        r = client.get(f"{URL}/{campaign_id}/messages", params=params, headers=auth)
        assert r.status_code == 200, r.text
        return sorted(row["identity"] for row in r.json()["items"])

    assert who(state=["failed", "skipped"]) == ["bela", "dara", "eli", "femi"]
    assert who(state="delivered") == ["ashok"]
    assert who(variant="A") == ["asha", "bela", "femi"] and who(variant="Z") == []
    assert who(reason="not_opted_in") == ["dara"]
    assert who(q="ash") == ["asha", "ashok"]  # the identity's start
    assert who(q="9198") == who(q="+9198") == ["asha", "ashok"]  # the phone's start, with or without +
    assert who(q="+44", state="sent") == ["chen"]
    assert who(q="nobody") == [] and who(q="%") == []
    refused(client.get(f"{URL}/{campaign_id}/messages", params={"state": "lost"}, headers=auth), 422,
            "validation_error")  # fmt: skip
    refused(client.get(f"{URL}/{campaign_id}/messages", params={"limit": 501}, headers=auth), 422,
            "validation_error")  # fmt: skip

    # Another account's campaign is not found, by any of these routes.
    other = basic(new_account(db, box, "Other"))
    for path in ("messages", "messages.csv", "stats", "stats/timeline"):
        refused(client.get(f"{URL}/{campaign_id}/{path}", headers=other), 404, "not_found")
    refused(client.post(f"{URL}/{campaign_id}/duplicate", headers=other), 404, "not_found")


def test_the_stats_have_the_funnel_the_errors_in_two_groups_and_a_timeline_in_the_accounts_zone(
    client: TestClient, db: Database, account: NewAccount, auth: dict[str, str]
) -> None:
    campaign_id = _sent_campaign(db, account.account_id)
    with db.session() as session:
        update_account(session, account.account_id, timezone="Asia/Kolkata")
    stats = client.get(f"{URL}/{campaign_id}/stats", headers=auth).json()
    assert [(s["step"], s["count"]) for s in stats["funnel"]] == [
        ("audience", 7),
        ("sent", 3),
        ("delivered", 2),
        ("read", 1),
        ("replied", 1),
    ]
    assert stats["funnel"][1]["of_audience"] == 3 / 7 and stats["funnel"][2]["of_previous"] == 2 / 3
    assert stats["funnel"][0]["of_previous"] is None
    groups = stats["errors_grouped"]
    assert [(e["reason"], e["count"]) for e in groups["unreached"]] == [
        ("missing_personalization", 1),
        ("no_valid_phone", 1),
        ("not_opted_in", 1),
    ]
    assert all(
        e["explanation"] == reasons.OWN[e["reason"]] and e["provider"] is None for e in groups["unreached"]
    )
    assert groups["failed"] == [
        {
            "reason": "sandbox:1300",
            "provider": "sandbox",
            "code": "1300",
            "count": 1,
            "explanation": "The number is not on WhatsApp.",
        }
    ]
    assert stats["errors"] == 4 == sum(stats["errors_by_reason"].values())

    # 03:20Z and 03:40Z are 08:50 and 09:10 in Kolkata: two hours there (one in UTC).
    with db.session() as session:
        update_account(session, account.account_id, timezone="Asia/Kolkata")
    hours = client.get(f"{URL}/{campaign_id}/stats/timeline", params={"bucket": "hour"}, headers=auth).json()
    assert hours["timezone"] == "Asia/Kolkata" and hours["bucket"] == "hour"
    assert [(p["start"], p["sent"], p["delivered"], p["read"], p["replied"]) for p in hours["points"]] == [
        ("2030-01-01T08:00:00+05:30", 3, 2, 1, 0),  # asha, ashok, bela sent at 03:20Z; read 03:22Z
        ("2030-01-01T09:00:00+05:30", 0, 0, 0, 1),  # asha replied at 04:00Z = 09:30
        ("2030-01-02T00:00:00+05:30", 1, 0, 0, 0),  # chen sent at 19:20Z = 00:50 the next day
    ]
    days = client.get(f"{URL}/{campaign_id}/stats/timeline", params={"bucket": "day"}, headers=auth).json()
    assert [(p["start"], p["sent"], p["replied"]) for p in days["points"]] == [
        ("2030-01-01T00:00:00+05:30", 3, 1),
        ("2030-01-02T00:00:00+05:30", 1, 0),
    ]
    with db.session() as session:
        update_account(session, account.account_id, timezone="UTC")
    days = client.get(f"{URL}/{campaign_id}/stats/timeline", params={"bucket": "day"}, headers=auth).json()
    assert [(p["start"], p["sent"]) for p in days["points"]] == [("2030-01-01T00:00:00Z", 4)]


def test_a_campaign_of_ten_thousand_streams_as_csv_in_pages(
    client: TestClient, db: Database, account: NewAccount, auth: dict[str, str]
) -> None:
    campaign_id = running_campaign(db, account.account_id, [phone(i) for i in range(10_000)])
    _settle(db, campaign_id, "u7", state="failed", reason="meta:131026", error_detail="=HYPERLINK(x)")
    with db.read() as session:
        ledger = session.execute(
            select(Message.id, Profile.identity, Message.to_phone, Message.state, Message.reason)
            .join(Profile, Profile.id == Message.profile_id)
            .where(Message.campaign_id == campaign_id)
            .order_by(Message.profile_id, Message.occurrence)  # the pages' order
        ).all()
    assert len(ledger) == 10_000
    chunks = list(messages_csv(db, account.account_id, campaign_id, Filters()))
    assert len(chunks) >= 10_000 // CSV_PAGE  # one chunk a page, never the whole campaign at once
    assert all(chunk.count("\n") <= CSV_PAGE + 1 for chunk in chunks)

    r = client.get(f"{URL}/{campaign_id}/messages.csv", headers=auth)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [
        (int(row["id"]), row["identity"], row["phone"], row["state"], row["reason"] or None) for row in rows
    ] == [tuple(row) for row in ledger]
    failed = next(row for row in rows if row["identity"] == "u7")
    assert failed["explanation"] == reasons.META["131026"]
    assert failed["error_detail"] == "'=HYPERLINK(x)"  # a spreadsheet shows it, never runs it
    filtered = client.get(f"{URL}/{campaign_id}/messages.csv", params={"state": "failed"}, headers=auth)
    assert [row["identity"] for row in csv.DictReader(io.StringIO(filtered.text))] == ["u7"]
    # A search naming up to MAX_Q_PROFILES profiles lists them by id; a wider one joins: the same rows.
    for q, count in (("u12", 111), ("u1", 1111)):
        found = client.get(f"{URL}/{campaign_id}/messages.csv", params={"q": q}, headers=auth)
        identities = [row["identity"] for row in csv.DictReader(io.StringIO(found.text))]
        assert len(identities) == count and all(i.startswith(q) for i in identities)


def test_any_campaign_is_duplicated_as_a_draft_without_its_messages(
    client: TestClient, db: Database, account: NewAccount
) -> None:
    campaign_id = _sent_campaign(db, account.account_id)
    auth = _marketer(db, account)
    source = client.get(f"{URL}/{campaign_id}", headers=auth).json()
    assert source["state"] == "running"
    r = client.post(f"{URL}/{campaign_id}/duplicate", headers=auth)
    assert r.status_code == 201, r.text
    copy = r.json()
    assert copy["id"] != campaign_id and copy["name"] == "spring sale (copy)" and copy["state"] == "draft"
    same = ("kind", "template_id", "variables", "split", "target", "trigger", "control_group_pct",
            "system_control_group", "respect_rules", "frequency", "conversion")  # fmt: skip
    assert {k: copy[k] for k in same} == {k: source[k] for k in same}
    strip = [{k: v for k, v in variant.items() if k != "id"} for variant in copy["variants"]]
    assert strip == [{k: v for k, v in variant.items() if k != "id"} for variant in source["variants"]]
    assert (copy["started_at"], copy["audience_size"], copy["ends_at"]) == (None, None, None)
    assert client.get(f"{URL}/{copy['id']}/messages", headers=auth).json() == {"items": [], "next": None}
    assert client.get(f"{URL}/{copy['id']}/stats", headers=auth).json()["audience"] == 0
    # The copy is a draft like any other: it can be rewritten, scheduled, and copied again.
    again = client.post(f"{URL}/{copy['id']}/duplicate", headers=auth).json()
    assert again["name"] == "spring sale (copy) (copy)"
    assert client.post(f"{URL}/{copy['id']}/schedule", headers=auth).json()["state"] == "scheduled"
    assert client.post(f"{URL}/{campaign_id}/stop", headers=auth).json()["state"] == "stopped"
    assert client.post(f"{URL}/{campaign_id}/duplicate", headers=auth).status_code == 201


SRC = Path(__file__).resolve().parents[1] / "src" / "tidings"
WRITTEN = (
    r'reason="(\w+)"',  # an UPDATE … SET reason=
    r'"reason": "(\w+)"',
    r'"skipped", "(\w+)"\)',  # planning's checks
    r'"control", "(\w+)"',
    r'PersonalizationError\(\s*"(\w+)"',
    r"SendResult\.\w+\(\s*\"(\w+)\"",  # a code a plug-in writes itself
    r'UnusableProvider\(kind, "(\w+)"',
)


def test_every_reason_the_code_writes_is_explained() -> None:
    found: set[str] = set()
    for path in SRC.rglob("*.py"):
        if "web" in path.relative_to(SRC).parts:  # pages write no ledger rows (their field names match)
            continue
        text = path.read_text()
        for pattern in WRITTEN:
            found |= set(re.findall(pattern, text))
    found |= {"messaging_limit", "outcome_unknown", "dnd"}
    assert {"not_opted_in", "no_valid_phone", "liquid_timeout", "credentials_unreadable", "1430"} <= found
    for code in sorted(found):
        reason = f"sandbox:{code}" if code.isdigit() else code
        assert not (reasons.explain(reason) or "").startswith(("Unknown", "Sandbox error")), code
    for code in ("131026", "131047", "131049", "131051", "132000", "132001", "470", "1013"):
        assert code in reasons.META, code
    for code in ("1300", "1340", "1461", "1022"):
        assert code in reasons.VONAGE, code
    assert reasons.explain("vonage:http_503") == "The provider had a server error; retried."
    assert (
        reasons.explain("meta:987654") == "Meta error 987654 (no explanation on file: see the error detail)."
    )
    assert reasons.explain(None) is None


def test_a_campaign_sent_through_the_sandbox_reads_the_same_everywhere(
    live: tuple[str, FastAPI], account: NewAccount
) -> None:
    """On the real server with the sandbox: the per-recipient rows, the CSV, the funnel, the error groups
    and the timeline all count the same messages, and every provider code the sandbox gave is explained."""
    url, app = live
    auth = basic(account)
    records = [
        {
            "identity": f"u{i}",
            "type": "profile",
            "profileData": {
                "Name": f"User {i}",
                "MSG-whatsapp": i % 10 != 0,
                "Phone": f"+9198{10_000_000 + i}",
            },
        }
        for i in range(200)
    ]
    with httpx.Client(base_url=url, timeout=30) as http:
        assert (
            http.post("/1/upload", json={"d": records}, headers=clevertap(account)).json()["processed"] == 200
        )
        template = http.post(
            "/api/v1/templates",
            headers=auth,
            json={"name": "shop:hi", "category": "UTILITY", "body": "Hi {{1}}"},
        ).json()
        body = {"name": "hi", "template_id": template["id"], "variables": ["{{ Profile.Name }}"]}
        campaign_id = http.post(URL, headers=auth, json=body).json()["id"]
        stats = _wait(http, app, campaign_id, auth)
        rows: list[dict[str, Any]] = []
        after = 0
        while after is not None:
            page = http.get(
                f"{URL}/{campaign_id}/messages", params={"after": after, "limit": 500}, headers=auth
            )
            rows += page.json()["items"]
            after = page.json()["next"]
        exported = list(
            csv.DictReader(io.StringIO(http.get(f"{URL}/{campaign_id}/messages.csv", headers=auth).text))
        )
        days = http.get(f"{URL}/{campaign_id}/stats/timeline", params={"bucket": "day"}, headers=auth).json()

    assert len(rows) == len(exported) == stats["audience"] == 200
    assert [int(row["id"]) for row in exported] == [row["id"] for row in rows]
    by_state = Counter(row["state"] for row in rows)
    assert {s["step"]: s["count"] for s in stats["funnel"]} == {
        "audience": 200,
        "sent": by_state["sent"] + by_state["delivered"] + by_state["read"],
        "delivered": by_state["delivered"] + by_state["read"],
        "read": by_state["read"],
        "replied": sum(1 for row in rows if row["replied_at"]),
    }
    sent = [row for row in rows if row["sent_at"]]
    assert all(row["params"] == [f"User {row['identity'][1:]}"] for row in sent)
    assert sum(p["sent"] for p in days["points"]) == len(sent)
    assert stats["errors_grouped"]["unreached"] == [
        {"reason": "not_opted_in", "provider": None, "code": "not_opted_in", "count": 20,
         "explanation": reasons.OWN["not_opted_in"]}
    ]  # fmt: skip
    failed = [row for row in rows if row["state"] == "failed"]
    assert sum(e["count"] for e in stats["errors_grouped"]["failed"]) == len(failed)
    for row in failed:  # the sandbox's Vonage codes, each explained
        provider, code = row["reason"].split(":")
        assert provider == "sandbox" and row["explanation"] == reasons.VONAGE[code], row
