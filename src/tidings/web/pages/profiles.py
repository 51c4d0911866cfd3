"""Profiles: find one (by identity, phone or name), and a profile's page — its properties, its consent to
WhatsApp with the history of every change (and, for a marketer, opt in or out by hand), its latest events
and every message the ledger holds for it."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse, Response

from tidings.deps import Db
from tidings.profiles import service as profiles
from tidings.profiles.service import ConsentSource
from tidings.web.auth import MARKETER_PAGES, CurrentViewer
from tidings.web.render import render

router = APIRouter(include_in_schema=False, dependencies=[MARKETER_PAGES])

PAGE = 25  # profiles found per page
EVENTS = 20  # events per page of a profile's
MESSAGES = 20  # messages per page
CHANGES = 10  # consent changes per page

Cursor = Annotated[str | None, Query(max_length=400)]
Offset = Annotated[int, Query(ge=0, le=1_000_000)]


@router.get("/profiles")
def profile_list(
    request: Request,
    viewer: CurrentViewer,
    db: Db,
    q: Annotated[str, Query(max_length=200)] = "",
    after: Cursor = None,
) -> Response:
    """Without ``q`` the newest profiles; with it those found by identity, phone or name. Paged by cursor,
    never counted."""
    with db.read() as session:
        if q.strip():
            found, next_cursor = profiles.find_profiles(session, viewer.account.id, q, PAGE, after)
        else:
            found, next_cursor = profiles.newest_profiles(session, viewer.account.id, PAGE, after)
    context = {"title": "Profiles", "q": q, "profiles": found, "next": next_cursor, "first": not after}
    return render(request, "profiles/list.html", viewer, context)


# Declared before the profile's page: an identity may hold "/", so both use the path converter.
@router.post("/profiles/{identity:path}/consent")
def change_consent(
    viewer: CurrentViewer, db: Db, identity: str, whatsapp: Annotated[bool, Form()]
) -> Response:
    """Opt in or out by hand (a marketer): recorded in the history as ``dashboard`` with the user's e-mail."""
    with db.session() as session:
        profile = profiles.change_consent(
            session, viewer.account.id, identity, whatsapp, ConsentSource.dashboard, viewer.user.email
        )
        url = profile_url(profile.identity)
    return RedirectResponse(url, status_code=303)


@router.get("/profiles/{identity:path}")
def profile_page(
    request: Request,
    viewer: CurrentViewer,
    db: Db,
    identity: str,
    events: Cursor = None,
    messages: Offset = 0,
    history: Offset = 0,
) -> Response:
    with db.read() as session:
        profile = profiles.get_profile(session, viewer.account.id, identity)
        changes, changes_total = profiles.consent_history(
            session, viewer.account.id, identity, CHANGES, history
        )
        event_page, next_events = profiles.profile_events(session, profile, EVENTS, events)
        message_page, messages_total = profiles.profile_messages(
            session, viewer.account.id, identity, MESSAGES, messages
        )
    context = {
        "title": profile.properties.get("Name") or profile.identity,
        "profile": profile,
        "url": profile_url(profile.identity),
        "changes": changes,
        "changes_total": changes_total,
        "history": history,
        "events": event_page,
        "events_cursor": events,
        "next_events": next_events,
        "messages": message_page,
        "messages_total": messages_total,
        "messages_offset": messages,
        "pages": {"history": CHANGES, "messages": MESSAGES},
    }
    return render(request, "profiles/profile.html", viewer, context)


def profile_url(identity: str) -> str:
    """The profile's page (as the templates write it: ``"/profiles/" ~ identity | urlencode``)."""
    return "/profiles/" + quote(identity)
