"""Delivery endpoints: a campaign's sending progress, and resuming a campaign that paused itself."""

from __future__ import annotations

from datetime import datetime, timedelta

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from tidings.bounds import Id
from tidings.campaigns import service as campaigns
from tidings.campaigns.progress import campaign_progress
from tidings.campaigns.service import get_campaign
from tidings.db import utcnow
from tidings.deps import MARKETER, CurrentAccount, Db, get_settings
from tidings.errors import error_responses

router = APIRouter(prefix="/api/v1/campaigns", tags=["delivery"], dependencies=[MARKETER])


class Progress(BaseModel):
    campaign_id: int
    state: str
    note: str | None = Field(description="Why the campaign waits, paused or stopped.")
    planned: int = Field(description="Ledger rows to send: the audience less the control group.")
    sent: int = Field(description="Accepted by the provider (sent, delivered or read).")
    failed: int
    skipped: int
    control: int
    remaining: int = Field(description="Still queued or being sent.")
    rate: float = Field(description="Messages handled a second over the last 30 seconds.")
    eta_seconds: float | None = Field(description="Estimated time left at the current rate.")
    waiting_for_proof: int = Field(
        0,
        description="Sent with no status webhook within TIDINGS_RECONCILE_SECONDS, and not sent again "
        "because no later message of the sender got a status yet (the webhook path is not shown to work). "
        "Counted in remaining.",
    )
    as_of: datetime


class Resumed(BaseModel):
    campaign_id: int
    state: str


@router.get("/{campaign_id}/progress", response_model=Progress)
def progress(campaign_id: Id, account: CurrentAccount, db: Db, request: Request) -> Progress:
    """Planned, sent, remaining, the current rate and the estimated time left."""
    now = utcnow()
    window = timedelta(seconds=get_settings(request).reconcile_seconds)
    with db.read() as session:
        campaign = get_campaign(session, account.id, campaign_id)
        figures = campaign_progress(session, campaign_id, now, reconcile_window=window)
        state, note = campaign.state, campaign.note
    return Progress(campaign_id=campaign_id, state=state, note=note, as_of=now, **figures)


@router.post(
    "/{campaign_id}/resume",
    response_model=Resumed,
    responses=error_responses({409: "`not_paused`: only a paused campaign can be resumed."}, 409),
)
def resume(campaign_id: Id, account: CurrentAccount, db: Db) -> Resumed:
    """Resume a paused campaign (paused → running, atomically); 409 when it is not paused."""
    with db.session() as session:
        return Resumed(
            campaign_id=campaign_id, state=campaigns.resume(session, account.id, campaign_id).state
        )
