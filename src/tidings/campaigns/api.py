from __future__ import annotations

from fastapi import APIRouter

from tidings.campaigns import service
from tidings.campaigns.schemas import CampaignCreate, CampaignOut, CampaignStats
from tidings.deps import CurrentAccount, Db
from tidings.stats.service import campaign_stats

router = APIRouter(prefix="/api/v1/campaigns", tags=["campaigns"])


@router.post("", status_code=201, response_model=CampaignOut)
def create(body: CampaignCreate, account: CurrentAccount, db: Db) -> CampaignOut:
    with db.session() as session:
        campaign = service.create_campaign(
            session,
            account.id,
            name=body.name,
            template_id=body.template_id,
            variables=body.variables,
            target=body.target,
            control_group_pct=body.control_group_pct,
            send_at=body.send_at,
        )
        return CampaignOut.model_validate(campaign)


@router.get("", response_model=list[CampaignOut])
def list_(account: CurrentAccount, db: Db) -> list[CampaignOut]:
    with db.session() as session:
        return [CampaignOut.model_validate(c) for c in service.list_campaigns(session, account.id)]


@router.get("/{campaign_id}", response_model=CampaignOut)
def read(campaign_id: int, account: CurrentAccount, db: Db) -> CampaignOut:
    with db.session() as session:
        return CampaignOut.model_validate(service.get_campaign(session, account.id, campaign_id))


@router.post("/{campaign_id}/stop", response_model=CampaignOut)
def stop(campaign_id: int, account: CurrentAccount, db: Db) -> CampaignOut:
    with db.session() as session:
        return CampaignOut.model_validate(service.stop_campaign(session, account.id, campaign_id))


@router.get("/{campaign_id}/stats", response_model=CampaignStats)
def stats(campaign_id: int, account: CurrentAccount, db: Db) -> CampaignStats:
    with db.session() as session:
        campaign = service.get_campaign(session, account.id, campaign_id)
        return CampaignStats(**campaign_stats(session, campaign.id))
