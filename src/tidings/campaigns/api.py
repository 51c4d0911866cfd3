from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import StreamingResponse

from tidings.bounds import MAX_INT64, Id
from tidings.campaigns import service
from tidings.campaigns.rules import zone
from tidings.campaigns.schemas import (
    CampaignCreate,
    CampaignOut,
    CampaignStats,
    MessagePage,
    MessageRow,
    MessageState,
    Timeline,
    TimelinePoint,
)
from tidings.deps import MARKETER, CurrentAccount, Db
from tidings.errors import error_responses
from tidings.stats.recipients import MAX_PAGE, Filters, campaign_messages, messages_csv
from tidings.stats.service import campaign_stats, campaign_timeline

router = APIRouter(prefix="/api/v1/campaigns", tags=["campaigns"], dependencies=[MARKETER])
# The statuses only some campaign routes answer (the others every route may: errors.COMMON_ERRORS).
ERRORS = {
    404: "`not_found`: no such campaign, or the template or segment it names is not in this account.",
    409: "`conflict`: the campaign's state does not allow it (`message` says which states do).",
    422: "`not_allowed_on_whatsapp`: a recurring or multi-date campaign; `variables_mismatch`, "
    "`invalid_liquid`, `invalid_segment`, `segment_not_found`, `template_ambiguous`; `validation_error` "
    "for a malformed campaign (`message` names the field).",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return error_responses(ERRORS, *statuses)


@router.post("", status_code=201, response_model=CampaignOut, responses=_errors(404, 422))
def create(body: CampaignCreate, account: CurrentAccount, db: Db) -> CampaignOut:
    """Create a campaign of one of the four kinds (scheduled for `send_at`, or a draft)."""
    with db.session() as session:
        return service.described(session, service.create_campaign(session, account.id, body))


@router.get("", response_model=list[CampaignOut])
def list_(account: CurrentAccount, db: Db) -> list[CampaignOut]:
    with db.read() as session:
        return [service.described(session, c) for c in service.list_campaigns(session, account.id)]


@router.get("/{campaign_id}", response_model=CampaignOut)
def read(campaign_id: Id, account: CurrentAccount, db: Db) -> CampaignOut:
    with db.read() as session:
        return service.described(session, service.get_campaign(session, account.id, campaign_id))


@router.put("/{campaign_id}", response_model=CampaignOut, responses=_errors(404, 409, 422))
def update(campaign_id: Id, body: CampaignCreate, account: CurrentAccount, db: Db) -> CampaignOut:
    """Rewrite a draft: the body is the whole campaign, as at creation (what `GET` shows, by the same
    names); it stays a draft with `draft: true`, and is scheduled otherwise. 409 once it is not a draft."""
    with db.session() as session:
        return service.described(session, service.update_draft(session, account.id, campaign_id, body))


@router.delete("/{campaign_id}", status_code=204, response_class=Response, responses=_errors(409))
def delete(campaign_id: Id, account: CurrentAccount, db: Db) -> None:
    """Delete a draft. 409 once it is scheduled or later (stop it instead: its messages stay counted)."""
    with db.session() as session:
        service.delete_draft(session, account.id, campaign_id)


@router.post("/{campaign_id}/schedule", response_model=CampaignOut, responses=_errors(409))
def schedule(campaign_id: Id, account: CurrentAccount, db: Db) -> CampaignOut:
    """A draft becomes scheduled: it starts at its start time."""
    with db.session() as session:
        return service.described(session, service.schedule_campaign(session, account.id, campaign_id))


@router.post("/{campaign_id}/stop", response_model=CampaignOut, responses=_errors(409))
def stop(campaign_id: Id, account: CurrentAccount, db: Db) -> CampaignOut:
    """Stop the campaign. Answers once none of its messages is in a worker's hands any more (at most
    10 seconds): workers see the stop within a few milliseconds and give back what they have not
    sent, and the provider calls already started are answered and recorded. From then on no message of
    the campaign reaches the provider; the ones not sent stay queued, unsent."""
    return service.stop_and_wait(db, account.id, campaign_id)


@router.get("/{campaign_id}/stats", response_model=CampaignStats)
def stats(campaign_id: Id, account: CurrentAccount, db: Db) -> CampaignStats:
    """Sent, Errors (by reason), Delivered, Read, Control group, Replied — in total and per variant, and
    the conversion of the messaged users against the control group when the campaign has a goal."""
    with db.read() as session:
        campaign = service.get_campaign(session, account.id, campaign_id)
        return CampaignStats(**campaign_stats(session, campaign.id))


@router.get("/{campaign_id}/stats/timeline", response_model=Timeline)
def timeline(
    campaign_id: Id,
    account: CurrentAccount,
    db: Db,
    bucket: Annotated[Literal["hour", "day"], Query(description="Count per hour or per day.")] = "hour",
) -> Timeline:
    """Sends, deliveries, reads and replies per hour or per day, in the account's time zone."""
    tz = zone(account.timezone)
    with db.read() as session:
        campaign = service.get_campaign(session, account.id, campaign_id)
        points = campaign_timeline(session, campaign.id, bucket, tz)
    return Timeline(bucket=bucket, timezone=tz.key, points=[TimelinePoint(**p) for p in points])


def _filters(
    state: Annotated[
        list[MessageState], Query(description="Any of these states (repeat the parameter).")
    ] = [],  # noqa: B006
    variant: Annotated[str | None, Query(max_length=16, description="A variant's key.")] = None,
    reason: Annotated[str | None, Query(max_length=64, description="A reason, e.g. `meta:131026`.")] = None,
    q: Annotated[
        str | None, Query(max_length=120, description="The start of the profile's identity or phone.")
    ] = None,
) -> Filters:
    return Filters(states=tuple(state), variant=variant, reason=reason, q=q)


MessageFilters = Annotated[Filters, Depends(_filters)]


@router.get("/{campaign_id}/messages", response_model=MessagePage)
def messages(
    campaign_id: Id,
    account: CurrentAccount,
    db: Db,
    filters: MessageFilters,
    after: Annotated[int, Query(ge=0, le=MAX_INT64, description="The `next` of the page before.")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> MessagePage:
    """Per-recipient results, in ledger order: who, which variant, the rendered values, each state's time
    and the reason explained. Paged: pass `next` as `after` for the next page."""
    with db.read() as session:
        campaign = service.get_campaign(session, account.id, campaign_id)
        rows, after_next = campaign_messages(
            session, account.id, campaign.id, filters, after=after, limit=limit
        )
    return MessagePage(items=[MessageRow(**row) for row in rows], next=after_next)


@router.get(
    "/{campaign_id}/messages.csv",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/csv": {}}, "description": "A header row, then one row per recipient."}
    },
)
def messages_export(
    campaign_id: Id, account: CurrentAccount, db: Db, filters: MessageFilters
) -> StreamingResponse:
    """The per-recipient results as CSV (the same filters), streamed: any size."""
    with db.read() as session:
        campaign_id = service.get_campaign(session, account.id, campaign_id).id
    return StreamingResponse(
        messages_csv(db, account.id, campaign_id, filters),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="campaign-{campaign_id}-messages.csv"'},
    )


@router.post("/{campaign_id}/duplicate", status_code=201, response_model=CampaignOut)
def duplicate(campaign_id: Id, account: CurrentAccount, db: Db) -> CampaignOut:
    """A draft copy of the campaign, in any state, named "… (copy)": the same kind, audience, variants,
    control group, rules and goal; no schedule, no messages."""
    with db.session() as session:
        return service.described(session, service.duplicate_campaign(session, account.id, campaign_id))
