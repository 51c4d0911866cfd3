from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter
from sqlalchemy.orm import Session

from tidings.bounds import Id
from tidings.campaigns import service
from tidings.campaigns.models import Campaign
from tidings.campaigns.schemas import CampaignCreate, CampaignOut, CampaignStats, VariantOut
from tidings.db import utcnow
from tidings.delivery import service as delivery
from tidings.deps import CurrentAccount, Db
from tidings.errors import error_responses
from tidings.stats.service import campaign_stats

router = APIRouter(prefix="/api/v1/campaigns", tags=["campaigns"])
# The statuses only some campaign routes answer (the others every route may: errors.COMMON_ERRORS).
ERRORS = {
    404: "`not_found`: no such campaign, or the template or segment it names is not in this account.",
    409: "`conflict`: the campaign's state does not allow it (`message` says which states do).",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return error_responses(ERRORS, *statuses)


log = logging.getLogger(__name__)
STOP_WAIT = 10.0  # seconds POST …/stop waits at most for the workers to let go of the campaign
STOP_POLL = 0.02


def _out(session: Session, campaign: Campaign) -> CampaignOut:
    out = CampaignOut.model_validate(campaign)
    out.variants = [VariantOut.model_validate(v) for v in service.variants_of(session, campaign.id)]
    return out


@router.post("", status_code=201, response_model=CampaignOut, responses=_errors(404))
def create(body: CampaignCreate, account: CurrentAccount, db: Db) -> CampaignOut:
    """Create a campaign of one of the four kinds (scheduled for `send_at`, or a draft)."""
    with db.session() as session:
        campaign = service.create_campaign(
            session,
            account.id,
            name=body.name,
            kind=body.kind,
            template_id=body.template_id,
            variables=body.variables,
            variants=[service.VariantIn(**v.model_dump()) for v in body.variants],
            split=body.split,
            target=body.target,
            trigger=body.trigger,
            control_group_pct=body.control_group_pct,
            system_control_group=body.system_control_group,
            respect_rules=body.respect_rules,
            frequency=body.frequency,
            conversion=body.conversion,
            send_at=body.send_at,
            ends_at=body.ends_at,
            draft=body.draft,
            schedule=body.schedule,
        )
        return _out(session, campaign)


@router.get("", response_model=list[CampaignOut])
def list_(account: CurrentAccount, db: Db) -> list[CampaignOut]:
    with db.read() as session:
        return [_out(session, c) for c in service.list_campaigns(session, account.id)]


@router.get("/{campaign_id}", response_model=CampaignOut)
def read(campaign_id: Id, account: CurrentAccount, db: Db) -> CampaignOut:
    with db.read() as session:
        return _out(session, service.get_campaign(session, account.id, campaign_id))


@router.post("/{campaign_id}/schedule", response_model=CampaignOut, responses=_errors(409))
def schedule(campaign_id: Id, account: CurrentAccount, db: Db) -> CampaignOut:
    """A draft becomes scheduled: it starts at its start time."""
    with db.session() as session:
        return _out(session, service.schedule_campaign(session, account.id, campaign_id))


@router.post("/{campaign_id}/stop", response_model=CampaignOut, responses=_errors(409))
def stop(campaign_id: Id, account: CurrentAccount, db: Db) -> CampaignOut:
    """Stop the campaign. Answers once none of its messages is in a worker's hands any more (at most
    10 seconds): workers see the stop within a few milliseconds and give back what they have not
    sent, and the provider calls already started are answered and recorded. From then on no message of
    the campaign reaches the provider; the ones not sent stay queued, unsent."""
    with db.session() as session:
        service.stop_campaign(session, account.id, campaign_id)
    deadline = time.monotonic() + STOP_WAIT
    while True:
        with db.read() as session:
            if not delivery.in_hand(session, campaign_id, utcnow()):
                break
        if time.monotonic() >= deadline:  # a worker that hangs (its lease will run out): not waited for
            log.warning("campaign %s stopped with messages still in a worker's hands", campaign_id)
            break
        time.sleep(STOP_POLL)
    with db.read() as session:
        return _out(session, service.get_campaign(session, account.id, campaign_id))


@router.get("/{campaign_id}/stats", response_model=CampaignStats)
def stats(campaign_id: Id, account: CurrentAccount, db: Db) -> CampaignStats:
    """Sent, Errors (by reason), Delivered, Read, Control group, Replied — in total and per variant, and
    the conversion of the messaged users against the control group when the campaign has a goal."""
    with db.read() as session:
        campaign = service.get_campaign(session, account.id, campaign_id)
        return CampaignStats(**campaign_stats(session, campaign.id))
