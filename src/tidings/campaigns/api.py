from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.orm import Session

from tidings.campaigns import service
from tidings.campaigns.models import Campaign
from tidings.campaigns.schemas import CampaignCreate, CampaignOut, CampaignStats, VariantOut
from tidings.deps import CurrentAccount, Db
from tidings.stats.service import campaign_stats

router = APIRouter(prefix="/api/v1/campaigns", tags=["campaigns"])


def _out(session: Session, campaign: Campaign) -> CampaignOut:
    out = CampaignOut.model_validate(campaign)
    out.variants = [VariantOut.model_validate(v) for v in service.variants_of(session, campaign.id)]
    return out


@router.post("", status_code=201, response_model=CampaignOut)
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
    with db.session() as session:
        return [_out(session, c) for c in service.list_campaigns(session, account.id)]


@router.get("/{campaign_id}", response_model=CampaignOut)
def read(campaign_id: int, account: CurrentAccount, db: Db) -> CampaignOut:
    with db.session() as session:
        return _out(session, service.get_campaign(session, account.id, campaign_id))


@router.post("/{campaign_id}/schedule", response_model=CampaignOut)
def schedule(campaign_id: int, account: CurrentAccount, db: Db) -> CampaignOut:
    """A draft becomes scheduled: it starts at its start time."""
    with db.session() as session:
        return _out(session, service.schedule_campaign(session, account.id, campaign_id))


@router.post("/{campaign_id}/stop", response_model=CampaignOut)
def stop(campaign_id: int, account: CurrentAccount, db: Db) -> CampaignOut:
    with db.session() as session:
        return _out(session, service.stop_campaign(session, account.id, campaign_id))


@router.get("/{campaign_id}/stats", response_model=CampaignStats)
def stats(campaign_id: int, account: CurrentAccount, db: Db) -> CampaignStats:
    """Sent, Errors (by reason), Delivered, Read, Control group, Replied — in total and per variant, and
    the conversion of the messaged users against the control group when the campaign has a goal."""
    with db.session() as session:
        campaign = service.get_campaign(session, account.id, campaign_id)
        return CampaignStats(**campaign_stats(session, campaign.id))
