"""Test data written straight into the tables (fast, for large audiences)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert

from tidings.db import Database, utcnow
from tidings.profiles.models import Profile
from tidings.profiles.service import profile_seed


def insert_profiles(db: Database, account_id: str, rows: list[dict[str, Any]]) -> None:
    """Each row: identity, and optionally phone, opt_in, properties."""
    now = utcnow()
    values = [
        {
            "account_id": account_id,
            "identity": r["identity"],
            "phone": r.get("phone"),
            "whatsapp_opt_in": r.get("opt_in", True),
            # Kept consistent with the columns, as an upload would leave them.
            "properties": {
                **({"Phone": r["phone"]} if r.get("phone") else {}),
                "MSG-whatsapp": r.get("opt_in", True),
                **r.get("properties", {}),
            },
            "seed": profile_seed(account_id, r["identity"]),
            "created_at": now,
            "updated_at": now,
        }
        for r in rows
    ]
    with db.session() as session:
        for start in range(0, len(values), 5000):
            session.execute(insert(Profile), values[start : start + 5000])


def phone(i: int) -> str:
    return f"+9198{10_000_000 + i}"


def refused(r: Any, status: int, code: str) -> str:
    """Assert an API error answer (status and ``code``); returns its message."""
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code, body
    message: str = body["message"]
    return message


def running_campaign(db: Database, account_id: str, phones: list[str]) -> int:
    """A running one-time campaign (template ``a:b``, no control group) with one queued recipient per
    phone (a profile ``u<i>`` each; numbers may repeat)."""
    from tidings.campaigns.schemas import CampaignCreate
    from tidings.campaigns.service import create_campaign, start_campaign
    from tidings.templates.service import create_template

    insert_profiles(db, account_id, [{"identity": f"u{i}", "phone": p} for i, p in enumerate(phones)])
    with db.session() as session:
        template = create_template(session, account_id, name="a:b", body="Hi", category="UTILITY")
        campaign_id = create_campaign(
            session,
            account_id,
            CampaignCreate(
                name="c",
                template_id=template.id,
                variables=[],
                target={"all": True},
                system_control_group=False,
            ),
        ).id
    with db.session() as session:
        start_campaign(session, campaign_id, utcnow())
    return int(campaign_id)
