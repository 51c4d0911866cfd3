"""Campaigns: the list (and, next, the guided "+ Campaign" flow and each campaign's stats)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from tidings.campaigns import service as campaigns
from tidings.deps import Db
from tidings.web.auth import MARKETER_PAGES, CurrentViewer
from tidings.web.render import render

router = APIRouter(include_in_schema=False, dependencies=[MARKETER_PAGES])


@router.get("/campaigns")
def campaign_list(request: Request, viewer: CurrentViewer, db: Db) -> Response:
    with db.read() as session:
        found = campaigns.list_campaigns(session, viewer.account.id)
    return render(request, "campaigns/list.html", viewer, {"title": "Campaigns", "campaigns": found})
