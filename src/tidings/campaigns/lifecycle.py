"""A campaign's running state as sending changes it: a dispatcher pauses a campaign that cannot go on,
a user resumes it, and the dispatcher's last look before each provider call asks which campaigns are no
longer running."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tidings.campaigns.models import Campaign


def pause_campaign(session: Session, campaign_id: int, note: str) -> bool:
    """Pause a running campaign (its queued rows are no longer claimed); one guarded UPDATE."""
    result = session.execute(
        update(Campaign)
        .where(Campaign.id == campaign_id, Campaign.state == "running")
        .values(state="paused", note=note[:300])
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def resume_campaign(session: Session, account_id: str, campaign_id: int) -> bool:
    """paused → running, atomically; False when the campaign is not paused (or not the account's)."""
    result = session.execute(
        update(Campaign)
        .where(Campaign.id == campaign_id, Campaign.account_id == account_id, Campaign.state == "paused")
        .values(state="running", note=None)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def halted_campaigns(session: Session, campaign_ids: Iterable[int]) -> set[int]:
    """Which of these campaigns are no longer running (stopped, paused, completed): the dispatcher's
    last look before each provider call (one indexed query, run every few milliseconds while rows are in
    hand)."""
    ids = sorted(set(campaign_ids))
    if not ids:
        return set()
    return set(session.scalars(select(Campaign.id).where(Campaign.id.in_(ids), Campaign.state != "running")))
