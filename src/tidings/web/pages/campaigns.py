"""Campaigns: the list, each campaign's stats (live while it sends), its per-recipient results and their
CSV, and stop / resume / duplicate. (The guided "+ Campaign" flow is ``campaign_builder``.)"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Annotated, Any, get_args
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from tidings.bounds import MAX_INT64, Id
from tidings.campaigns import service as campaigns
from tidings.campaigns.api import messages_export
from tidings.campaigns.models import Campaign
from tidings.campaigns.progress import campaign_progress
from tidings.campaigns.rules import zone
from tidings.campaigns.schemas import MessageState
from tidings.db import utcnow
from tidings.deps import Db, get_settings
from tidings.stats.recipients import Filters, campaign_messages
from tidings.stats.service import SERIES, Bucket, campaign_stats, campaign_timeline, list_figures
from tidings.templates.service import get_template, render_body
from tidings.web.auth import MARKETER_PAGES, CurrentViewer, Viewer, safe_next
from tidings.web.pages.campaign_builder import KIND_TEXT
from tidings.web.render import env, render

router = APIRouter(include_in_schema=False, dependencies=[MARKETER_PAGES])

KINDS = {kind: label for kind, (label, _explained) in KIND_TEXT.items()}  # the guided flow's names
STATES = ("draft", "scheduled", "running", "paused", "completed", "stopped")
MESSAGE_STATES = get_args(MessageState)
STOPPABLE = ("scheduled", "running", "paused")  # (a draft is deleted, not stopped)
PROGRESSING = ("running", "paused")  # the states whose sending progress the stats page shows
SENDING = ("scheduled", "running")  # the stats page's figures are streamed while the campaign is in one
LIST_PAGE = 25
MESSAGES_PAGE = 50
LIVE_TICK = 1.0  # seconds between two live updates
LIVE_SETTLE = 5  # once it no longer sends, updates go on until the figures stayed the same this many ticks
LIVE_STREAM = 60.0  # seconds one live stream lasts at most (the browser reconnects)
LIVE_RETRY_MS = 1000  # when the browser reconnects
# The stats page's parts that live updates replace: element id -> partial template.
LIVE_PARTS = {
    "live-actions": "campaigns/_head_actions.html",
    "live-status": "campaigns/_status.html",
    "live-figures": "campaigns/_figures.html",
    "live-funnel": "campaigns/_funnel.html",
    "live-chart": "campaigns/_chart.html",
    "live-errors": "campaigns/_errors.html",
}


def _query(**params: Any) -> str:
    """The query string of the non-empty ``params``."""
    return urlencode({k: v for k, v in params.items() if v not in (None, "")})


@router.get("/campaigns")
def campaign_list(
    request: Request,
    viewer: CurrentViewer,
    db: Db,
    q: Annotated[str, Query(max_length=200)] = "",
    type: Annotated[str, Query(max_length=24)] = "",
    status: Annotated[str, Query(max_length=16)] = "",
    after: Annotated[int | None, Query(ge=1, le=MAX_INT64)] = None,
) -> Response:
    """The account's campaigns, the newest first, a page at a time, with Sent / Delivered / Read from one
    aggregate query for the page."""
    kind = type if type in KINDS else ""
    state = status if status in STATES else ""
    with db.read() as session:
        found = campaigns.list_campaigns(
            session,
            viewer.account.id,
            name=q.strip(),
            kind=kind,
            state=state,
            before=after,
            limit=LIST_PAGE + 1,
        )
        page = found[:LIST_PAGE]
        figures = list_figures(session, [c.id for c in page])
    context = {
        "title": "Campaigns",
        "campaigns": page,
        "figures": figures,
        "kinds": KINDS,
        "states": STATES,
        "stoppable": STOPPABLE,
        "q": q,
        "kind": kind,
        "state": state,
        "next": page[-1].id if len(found) > LIST_PAGE else None,
        "base_query": _query(q=q.strip(), type=kind, status=state),
        "here": str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""),
    }
    return render(request, "campaigns/list.html", viewer, context)


def _bucket(campaign: Campaign, now: datetime) -> Bucket:
    """Hours for a campaign that sent within two days, else days."""
    if campaign.started_at is None:
        return "hour"
    return "day" if (campaign.completed_at or now) - campaign.started_at > timedelta(days=2) else "hour"


def _stats_context(
    session: Session, viewer: Viewer, campaign: Campaign, bucket: Bucket, window: timedelta
) -> dict[str, Any]:
    """What the stats page and its live updates show."""
    now = utcnow()
    account_id = viewer.account.id
    variants = campaigns.variants_of(session, campaign.id)
    names = {
        t: get_template(session, account_id, t).name
        for t in {campaign.template_id} | {v.template_id for v in variants}
    }
    tz = zone(viewer.account.timezone)
    points = campaign_timeline(session, campaign.id, bucket, tz)
    return {
        "viewer": viewer,
        "tz": viewer.account.timezone or None,
        "campaign": campaign,
        "kinds": KINDS,
        "stoppable": STOPPABLE,
        "variants": [(v, names[v.template_id]) for v in variants],
        "template_name": names[campaign.template_id],
        "stats": campaign_stats(session, campaign.id),
        "progress": (
            campaign_progress(session, campaign.id, now, reconcile_window=window)
            if campaign.state in PROGRESSING
            else None
        ),
        "bucket": bucket,
        "timeline": points,
        "chart": _chart(points, bucket, tz),
    }


def _chart(points: list[dict[str, Any]], bucket: Bucket, tz: ZoneInfo) -> dict[str, Any]:
    """The timeline for uPlot (``data-chart``): every hour or day from the one before the first to the one
    after the last, those with nothing at 0 (the timeline leaves them out), so that the lines fall to 0."""
    if not points:
        return {"x": [], "series": [], "tz": tz.key}
    by_start = {int(p["start"].timestamp()): p for p in points}
    first, last = points[0]["start"], points[-1]["start"]
    if bucket == "hour":
        x = list(range(min(by_start) - 3600, max(by_start) + 3601, 3600))
    else:
        days = (last.date() - first.date()).days + 2
        x = [
            int(datetime.combine(first.date() + timedelta(days=d), datetime.min.time(), tz).timestamp())
            for d in range(-1, days)
        ]
    empty = dict.fromkeys(SERIES, 0)
    return {
        "x": x,
        "series": [
            {"label": name.capitalize(), "values": [by_start.get(t, empty)[name] for t in x]}
            for name in SERIES
        ],
        "tz": tz.key,
    }


@router.get("/campaigns/{campaign_id:int}")
def campaign_page(
    request: Request, viewer: CurrentViewer, db: Db, campaign_id: Id, bucket: Bucket | None = None
) -> Response:
    """The six figures with rates, in total and per variant; the funnel, the timeline, errors by reason in
    two groups, conversion against the control group; updated live while the campaign sends."""
    window = timedelta(seconds=get_settings(request).reconcile_seconds)
    with db.read() as session:
        campaign = campaigns.get_campaign(session, viewer.account.id, campaign_id)
        chosen = bucket or _bucket(campaign, utcnow())
        context = _stats_context(session, viewer, campaign, chosen, window)
    context["title"] = campaign.name
    context["live_url"] = f"/campaigns/{campaign.id}/live?" + _query(bucket=chosen)
    return render(request, "campaigns/stats.html", viewer, context)


def _digests(parts: dict[str, str]) -> dict[str, str]:
    return {key: format(zlib.crc32(html.encode()), "08x") for key, html in parts.items()}


def _event_id(digests: dict[str, str]) -> str:
    """An update's ``id``: a digest of each part the browser now shows. The browser sends the last one back
    (``Last-Event-ID``) when it reconnects, so that only the parts that changed since are sent again."""
    return ",".join(f"{key}={digest}" for key, digest in sorted(digests.items()))


def _shown(last_event_id: str) -> dict[str, str]:
    pairs = (item.partition("=") for item in last_event_id.split(","))
    return {key: digest for key, sep, digest in pairs if sep and key in LIVE_PARTS}


@router.get("/campaigns/{campaign_id:int}/live")
async def campaign_live(
    request: Request, viewer: CurrentViewer, db: Db, campaign_id: Id, bucket: Bucket = "hour"
) -> Response:
    """Server-sent events for the stats page (``data-live``): ``update`` with the parts that changed, every
    second while the campaign is scheduled or running and until its figures settle, then ``done``. The
    stream ends when the browser goes away (the next write fails), and after ``LIVE_STREAM`` seconds
    without ``done``: the browser then reconnects (``retry``), and a server that is stopping is not held
    up by a page left open."""
    window = timedelta(seconds=get_settings(request).reconcile_seconds)

    def snapshot() -> tuple[dict[str, str], bool]:
        with db.read() as session:
            campaign = campaigns.get_campaign(session, viewer.account.id, campaign_id)
            context = _stats_context(session, viewer, campaign, bucket, window)
        parts = {key: env.get_template(name).render(context) for key, name in LIVE_PARTS.items()}
        return parts, campaign.state in SENDING

    first = await run_in_threadpool(snapshot)  # a campaign not found is a 404 page, not a stream
    shown = _shown(request.headers.get("last-event-id", ""))

    async def events() -> AsyncIterator[str]:
        ends = time.monotonic() + LIVE_STREAM
        quiet = 0
        parts, sending = first
        yield f"retry: {LIVE_RETRY_MS}\n\n"
        while True:
            digests = _digests(parts)
            changed = {key: html for key, html in parts.items() if shown.get(key) != digests[key]}
            if changed:
                shown.update(digests)
                quiet = 0
                yield f"id: {_event_id(shown)}\nevent: update\ndata: {json.dumps(changed)}\n\n"
            else:
                quiet += 1
                yield ": still here\n\n"  # (writing to a browser that went away ends the stream)
            if not sending and quiet >= LIVE_SETTLE:
                yield "event: done\ndata: {}\n\n"
                return
            if time.monotonic() >= ends:
                return
            await asyncio.sleep(LIVE_TICK)
            parts, sending = await run_in_threadpool(snapshot)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def _filters(state: str, variant: str, reason: str, q: str) -> Filters:
    return Filters(
        states=(state,) if state in MESSAGE_STATES else (),
        variant=variant or None,
        reason=reason or None,
        q=q.strip() or None,
    )


@router.get("/campaigns/{campaign_id:int}/messages")
def campaign_messages_page(
    request: Request,
    viewer: CurrentViewer,
    db: Db,
    campaign_id: Id,
    state: Annotated[str, Query(max_length=16)] = "",
    variant: Annotated[str, Query(max_length=16)] = "",
    reason: Annotated[str, Query(max_length=64)] = "",
    q: Annotated[str, Query(max_length=120)] = "",
    after: Annotated[int, Query(ge=0, le=MAX_INT64)] = 0,
) -> Response:
    """Per recipient: who, which variant, the message as rendered for them, each state with its time and
    the reason; paged and filtered."""
    filters = _filters(state, variant, reason, q)
    with db.read() as session:
        campaign = campaigns.get_campaign(session, viewer.account.id, campaign_id)
        variants = campaigns.variants_of(session, campaign.id)
        bodies: dict[str | None, str] = {
            None: get_template(session, viewer.account.id, campaign.template_id).body
        }
        for v in variants:
            bodies[v.key] = get_template(session, viewer.account.id, v.template_id).body
        rows, next_after = campaign_messages(
            session, viewer.account.id, campaign.id, filters, after=after, limit=MESSAGES_PAGE
        )
    for row in rows:
        body = bodies.get(row["variant"], bodies[None])
        row["text"] = render_body(body, row["params"]) if row["params"] is not None else None
    query = _query(state=filters.states[0] if filters.states else "", variant=variant, reason=reason, q=q)
    context = {
        "title": f"{campaign.name}: recipients",
        "campaign": campaign,
        "kinds": KINDS,
        "rows": rows,
        "variants": [v.key for v in variants],
        "message_states": MESSAGE_STATES,
        "state": state if state in MESSAGE_STATES else "",
        "variant": variant,
        "reason": reason,
        "q": q,
        "next": next_after,
        "base_query": query,
        "csv_url": f"/campaigns/{campaign.id}/messages.csv" + (f"?{query}" if query else ""),
    }
    return render(request, "campaigns/messages.html", viewer, context)


@router.get("/campaigns/{campaign_id:int}/messages.csv")
def campaign_messages_csv(
    viewer: CurrentViewer,
    db: Db,
    campaign_id: Id,
    state: Annotated[str, Query(max_length=16)] = "",
    variant: Annotated[str, Query(max_length=16)] = "",
    reason: Annotated[str, Query(max_length=64)] = "",
    q: Annotated[str, Query(max_length=120)] = "",
) -> Response:
    """The API's CSV (``GET /api/v1/campaigns/{id}/messages.csv``), with the page's session."""
    return messages_export(campaign_id, viewer.account, db, _filters(state, variant, reason, q))


def _back(next_url: str, fallback: str) -> RedirectResponse:
    return RedirectResponse(safe_next(next_url) if next_url else fallback, status_code=303)


NextField = Annotated[str, Form(alias="next", max_length=500)]


@router.post("/campaigns/{campaign_id:int}/stop")
def stop(viewer: CurrentViewer, db: Db, campaign_id: Id, next_url: NextField = "") -> Response:
    """Stop sending (answers once no message of the campaign is in a worker's hands)."""
    campaigns.stop_and_wait(db, viewer.account.id, campaign_id)
    return _back(next_url, f"/campaigns/{campaign_id}")


@router.post("/campaigns/{campaign_id:int}/resume")
def resume(viewer: CurrentViewer, db: Db, campaign_id: Id, next_url: NextField = "") -> Response:
    with db.session() as session:
        campaigns.resume(session, viewer.account.id, campaign_id)
    return _back(next_url, f"/campaigns/{campaign_id}")


@router.post("/campaigns/{campaign_id:int}/duplicate")
def duplicate(viewer: CurrentViewer, db: Db, campaign_id: Id) -> Response:
    """A draft copy, opened on its page (which leads on to editing it)."""
    with db.session() as session:
        copy = campaigns.duplicate_campaign(session, viewer.account.id, campaign_id)
        copy_id = copy.id
    return RedirectResponse(f"/campaigns/{copy_id}", status_code=303)
