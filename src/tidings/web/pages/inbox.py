"""The conversations inbox: the list with its status tabs and filters, the open thread with its reply box
(free text while the 24-hour window is open, a template picker once it has closed), the profile beside it,
and a live stream that redraws what changed (new messages, ticks, state and assignment) in every open
browser. Agents and above; an admin may also assign a conversation to someone else.

"Now" is read through ``now()`` only: the app may carry a clock (``app.state.clock``, a function
returning an aware datetime) so that a test can close the window without waiting a day."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from tidings.bounds import Id
from tidings.campaigns.models import Campaign, CampaignVariant
from tidings.campaigns.service import list_campaigns
from tidings.conversations import service as conversations
from tidings.conversations.models import Conversation, MediaFile, State
from tidings.conversations.service import Agent, Filters, Reply
from tidings.db import utcnow
from tidings.delivery.models import Message
from tidings.deps import Db, get_settings
from tidings.errors import ApiError
from tidings.profiles.models import Profile
from tidings.profiles.service import consent_history
from tidings.templates.models import Template
from tidings.templates.service import list_templates, render_body
from tidings.users.models import Role
from tidings.users.service import list_users
from tidings.web.auth import SIGNED_IN_PAGES, CurrentViewer, Viewer
from tidings.web.render import env, render

router = APIRouter(include_in_schema=False, dependencies=[SIGNED_IN_PAGES])

TABS = (State.new, State.pending, State.active, State.inactive, State.resolved)
LIST_PAGE = 50  # conversations the list shows, and how many more "Show more" adds
LIST_MAX = 500
THREAD_LINES = 200
PROPERTIES = 15  # the profile panel's properties at most
CHANGES = 5  # consent changes shown beside the thread
LIVE_TICK = 1.0  # seconds between two polls of the live stream
LIVE_STREAM = 60.0  # seconds one live stream lasts (the browser reconnects)
LIVE_RETRY_MS = 1000
# The parts a live update replaces: element id -> partial template. The list's parts always; the
# thread's when a conversation is open.
LIST_PARTS = {"inbox-tabs": "inbox/_tabs.html", "inbox-list": "inbox/_list.html"}
THREAD_PARTS = {
    "inbox-head": "inbox/_head.html",
    "inbox-window": "inbox/_window.html",
    "inbox-thread": "inbox/_thread.html",
    "inbox-profile": "inbox/_profile.html",
    "inbox-composer": "inbox/_composer.html",
}
FILTER_KEYS = ("state", "campaign", "assignee", "label", "q", "shown")


def now(request: Request) -> datetime:
    """The time the inbox reads the window and the states with: the app's clock when it has one."""
    clock: Callable[[], datetime] | None = getattr(request.app.state, "clock", None)
    return clock() if clock is not None else utcnow()


# --- the list's filters ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chosen:
    """The list's filters as the query string gives them (kept across the page's links and forms)."""

    state: str = ""
    campaign: str = ""
    assignee: str = ""  # "", "mine", "none" or a user id
    label: str = ""
    q: str = ""
    shown: str = ""  # how many conversations the list shows, when more than a page

    @classmethod
    def of(cls, params: dict[str, str]) -> Chosen:
        state = params.get("state", "")
        return cls(
            state=state if state in {s.value for s in TABS} else "",
            campaign=params.get("campaign", "") if params.get("campaign", "").isdigit() else "",
            assignee=_assignee_value(params.get("assignee", "")),
            label=params.get("label", "").strip()[:40],
            q=params.get("q", "").strip()[:120],
            shown=_shown_value(params.get("shown", "")),
        )

    @property
    def limit(self) -> int:
        return int(self.shown) if self.shown else LIST_PAGE

    def query(self, **changed: str) -> str:
        values = {k: getattr(self, k) for k in FILTER_KEYS} | changed
        return urlencode({k: v for k, v in values.items() if v})

    def filters(self, viewer: Viewer) -> Filters:
        assignee: int | None = None
        if self.assignee == "mine":
            assignee = viewer.user.id
        elif self.assignee == "none":
            assignee = 0
        elif self.assignee:
            assignee = int(self.assignee)
        return Filters(
            state=State(self.state) if self.state else None,
            campaign_id=int(self.campaign) if self.campaign else None,
            assignee_id=assignee,
            label=self.label or None,
            q=self.q or None,
        )


def _shown_value(raw: str) -> str:
    """A multiple of the page up to ``LIST_MAX`` ("" for one page)."""
    if not raw.isdigit() or len(raw) > 4:
        return ""
    pages = min(int(raw), LIST_MAX) // LIST_PAGE
    return str(pages * LIST_PAGE) if pages > 1 else ""


def _assignee_value(raw: str) -> str:
    return raw if raw in ("mine", "none") or (raw.isdigit() and len(raw) < 10) else ""


def _chosen(request: Request) -> Chosen:
    return Chosen.of({k: v for k, v in request.query_params.items() if k in FILTER_KEYS})


def _back(raw: str) -> Chosen:
    """The list's filters a form carried back (``back``: the query string the page was drawn with)."""
    return Chosen.of({k: v for k, v in parse_qsl(raw[:600]) if k in FILTER_KEYS})


# --- what the page shows ---------------------------------------------------------------------------------


def left(delta: timedelta) -> str:
    """Time left in the window, as a person says it: "5 h 12 min", "40 min", "under a minute"."""
    minutes = int(delta.total_seconds() // 60)
    if minutes < 1:
        return "under a minute"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


def _list_context(session: Session, viewer: Viewer, chosen: Chosen, at: datetime) -> dict[str, Any]:
    account_id = viewer.account.id
    listed = conversations.list_conversations(
        session, account_id, chosen.filters(viewer), now=at, limit=chosen.limit + 1
    )
    more = len(listed) > chosen.limit and chosen.limit < LIST_MAX
    return {
        "viewer": viewer,
        "tz": viewer.account.timezone or None,
        "chosen": chosen,
        "tabs": TABS,
        "counts": conversations.counts(session, account_id, now=at),
        "listed": listed[: chosen.limit],
        "more": chosen.query(shown=str(chosen.limit + LIST_PAGE)) if more else None,
    }


def _mode(session: Session, viewer: Viewer, conversation: Conversation, at: datetime) -> str:
    """What the reply box offers: ``held`` (another agent holds it), ``open`` (free text), ``closed``
    (templates only), ``opted_out`` (window closed and no consent: nothing may be sent), ``no_profile``."""
    holder = conversation.assignee_id
    if holder is not None and holder != viewer.user.id and not viewer.may(Role.admin):
        return "held"
    if conversation.profile_id is None:
        return "no_profile"
    if conversations.window_open(conversation, at):
        return "open"
    opted_in = session.scalar(select(Profile.whatsapp_opt_in).where(Profile.id == conversation.profile_id))
    return "closed" if opted_in else "opted_out"


def _thread_context(
    session: Session, viewer: Viewer, conversation: Conversation, at: datetime
) -> dict[str, Any]:
    account_id = viewer.account.id
    profile = session.get(Profile, conversation.profile_id) if conversation.profile_id else None
    closes = conversations.window_closes(conversation)
    is_open = conversations.window_open(conversation, at)
    holder = None
    users = [u for u in list_users(session, account_id) if u.disabled_at is None]
    if conversation.assignee_id is not None:
        holder = next((u.email for u in users if u.id == conversation.assignee_id), None) or "another user"
    templates = list_templates(session, account_id, status="APPROVED")
    saved = conversations.saved_replies(session, account_id)
    items = conversations.thread(session, conversation, limit=THREAD_LINES)
    return {
        "conversation": conversation,
        "state": conversations.state_of(conversation, at),
        "items": items,
        "bodies": _campaign_bodies(session, account_id, [i.id for i in items if i.who == "campaign"]),
        "profile": profile,
        "properties": sorted((profile.properties or {}).items())[:PROPERTIES] if profile else [],
        "changes": consent_history(session, account_id, profile.identity, CHANGES)[0] if profile else [],
        "reached": conversations.profile_campaigns(session, account_id, profile.id) if profile else [],
        "labels": conversations.labels_of(session, [conversation.id]).get(conversation.id, []),
        "window": {
            "open": is_open,
            "closes": closes,
            "left": left(closes - at) if closes is not None and is_open else None,
        },
        "holder": holder,
        "mine": conversation.assignee_id == viewer.user.id,
        "users": users,
        "mode": _mode(session, viewer, conversation, at),
        "templates": templates,
        "saved": saved,
        "saved_map": {s.shortcut: s.text for s in saved},
        "key": secrets.token_urlsafe(16),  # the reply's idempotency key: a double submit sends once
    }


def _campaign_bodies(session: Session, account_id: str, message_ids: list[int]) -> dict[int, str]:
    """What the campaign messages of a thread said: their template's body with the values they were sent
    with (the thread itself names the campaign only)."""
    if not message_ids:
        return {}
    rows = session.execute(
        select(Message.id, Message.params, Template.body)
        .join(Campaign, Campaign.id == Message.campaign_id)
        .outerjoin(CampaignVariant, CampaignVariant.id == Message.variant_id)
        .join(
            Template,
            Template.id
            == func.coalesce(Message.template_id, CampaignVariant.template_id, Campaign.template_id),
        )
        .where(Message.id.in_(message_ids), Message.account_id == account_id)
    )
    bodies = {}
    for message_id, params, body in rows:
        try:
            bodies[message_id] = render_body(body, params or [])
        except ValueError:  # values not kept (or the template changed since): the body as written
            bodies[message_id] = body
    return bodies


def _page(
    request: Request,
    viewer: Viewer,
    db: Db,
    chosen: Chosen,
    conversation_id: int | None,
    *,
    error: str | None = None,
    draft: str = "",
    status: int = 200,
) -> Response:
    at = now(request)
    with db.read() as session:
        context = _list_context(session, viewer, chosen, at)
        if conversation_id is not None:
            conversation = conversations.get_conversation(session, viewer.account.id, conversation_id)
            context |= _thread_context(session, viewer, conversation, at)
        campaigns = [(c.id, c.name) for c in list_campaigns(session, viewer.account.id, limit=100)]
        people = [(u.id, u.email) for u in list_users(session, viewer.account.id) if u.disabled_at is None]
    live = {"c": conversation_id, "mode": context["mode"]} if conversation_id is not None else {}
    context |= {
        "title": "Inbox",
        "error": error,
        "draft": draft,
        "campaigns": campaigns,
        "people": people,
        "live_url": "/inbox/live?" + urlencode({**dict(parse_qsl(chosen.query())), **live}),
    }
    return render(request, "inbox/page.html", viewer, context, status_code=status)


@router.get("/inbox")
def inbox(request: Request, viewer: CurrentViewer, db: Db) -> Response:
    """The list with its tabs and filters; no thread open yet."""
    return _page(request, viewer, db, _chosen(request), None)


@router.get("/inbox/{conversation_id:int}")
def inbox_thread(request: Request, viewer: CurrentViewer, db: Db, conversation_id: Id) -> Response:
    """The list, the thread and the profile. Opening it reads the user's messages (the worker then tells
    the provider: blue ticks on the user's phone)."""
    with db.session() as session:
        conversations.open_conversation(session, viewer.account.id, conversation_id)
    return _page(request, viewer, db, _chosen(request), conversation_id)


@router.get("/inbox/{conversation_id:int}/template")
def template_fields(
    request: Request,
    viewer: CurrentViewer,
    db: Db,
    conversation_id: Id,
    template_id: Annotated[str, Query(max_length=12)] = "",
) -> Response:
    """The chosen template's body and one field per variable (the picker redraws it through htmx)."""
    with db.read() as session:
        templates = list_templates(session, viewer.account.id, status="APPROVED")
    chosen = next((t for t in templates if str(t.id) == template_id), None)
    return render(request, "inbox/_template_fields.html", viewer, {"template": chosen})


# --- what agents do ----------------------------------------------------------------------------------------

Back = Annotated[str, Form(max_length=600)]


def _agent(viewer: Viewer) -> Agent:
    return Agent(viewer.user.id, admin=viewer.may(Role.admin))


def _act(
    request: Request,
    viewer: Viewer,
    db: Db,
    conversation_id: int,
    back: str,
    action: Callable[[Session], object],
    draft: str = "",
) -> Response:
    """Do ``action`` in one unit of work and go back to the thread; a refusal (another agent holds it,
    the window has closed, a missing value) is shown on the page, nothing changed."""
    chosen = _back(back)
    try:
        with db.session() as session:
            action(session)
    except ApiError as exc:
        if exc.status == 404:
            raise
        return _page(
            request, viewer, db, chosen, conversation_id, error=exc.message, draft=draft, status=exc.status
        )
    query = chosen.query()
    return RedirectResponse(f"/inbox/{conversation_id}" + (f"?{query}" if query else ""), status_code=303)


@router.post("/inbox/{conversation_id:int}/take")
def take(request: Request, viewer: CurrentViewer, db: Db, conversation_id: Id, back: Back = "") -> Response:
    return _act(
        request,
        viewer,
        db,
        conversation_id,
        back,
        lambda s: _take(s, viewer, conversation_id),
    )


def _take(session: Session, viewer: Viewer, conversation_id: int) -> Conversation:
    """Take it: an agent only when nobody holds it (``take``), an admin over whoever does (``assign``)."""
    agent = _agent(viewer)
    if agent.admin:
        return conversations.assign(session, viewer.account.id, conversation_id, viewer.user.id, agent)
    return conversations.take(session, viewer.account.id, conversation_id, agent)


@router.post("/inbox/{conversation_id:int}/assign")
def assign(
    request: Request,
    viewer: CurrentViewer,
    db: Db,
    conversation_id: Id,
    assignee: Annotated[str, Form(max_length=12)] = "",
    back: Back = "",
) -> Response:
    """An admin gives the conversation to anyone; an agent gives back one they hold (``assignee`` empty)."""
    user_id = int(assignee) if assignee.isdigit() and len(assignee) < 10 else None
    return _act(
        request,
        viewer,
        db,
        conversation_id,
        back,
        lambda s: conversations.assign(s, viewer.account.id, conversation_id, user_id, _agent(viewer)),
    )


@router.post("/inbox/{conversation_id:int}/resolve")
def resolve(
    request: Request, viewer: CurrentViewer, db: Db, conversation_id: Id, back: Back = ""
) -> Response:
    return _act(
        request,
        viewer,
        db,
        conversation_id,
        back,
        lambda s: conversations.resolve(s, viewer.account.id, conversation_id, _agent(viewer)),
    )


@router.post("/inbox/{conversation_id:int}/labels")
def labels(
    request: Request,
    viewer: CurrentViewer,
    db: Db,
    conversation_id: Id,
    labels: Annotated[str, Form(max_length=1000)] = "",
    back: Back = "",
) -> Response:
    """The labels, comma-separated."""
    wanted = [label for label in labels.split(",") if label.strip()]
    return _act(
        request,
        viewer,
        db,
        conversation_id,
        back,
        lambda s: conversations.set_labels(s, viewer.account.id, conversation_id, wanted, _agent(viewer)),
    )


@router.post("/inbox/{conversation_id:int}/note")
def note(
    request: Request,
    viewer: CurrentViewer,
    db: Db,
    conversation_id: Id,
    text: Annotated[str, Form(max_length=5000)] = "",
    back: Back = "",
) -> Response:
    return _act(
        request,
        viewer,
        db,
        conversation_id,
        back,
        lambda s: conversations.add_note(s, viewer.account.id, conversation_id, text, _agent(viewer)),
    )


@router.post("/inbox/{conversation_id:int}/reply")
async def reply(
    request: Request,
    viewer: CurrentViewer,
    db: Db,
    conversation_id: Id,
    key: Annotated[str, Form(max_length=64)] = "",
    text: Annotated[str, Form(max_length=5000)] = "",
    template_id: Annotated[str, Form(max_length=12)] = "",
    params: Annotated[list[str] | None, Form(alias="param")] = None,
    file: Annotated[UploadFile | None, File()] = None,
    back: Back = "",
) -> Response:
    """Free text (with a file attached, its caption) or a template with its values; ``key`` (drawn with the
    form) makes a second submit of the same form send nothing more."""
    content = await file.read(conversations.MAX_MEDIA + 1) if file is not None and file.filename else b""
    public_url = get_settings(request).public_url
    at = now(request)

    def send(session: Session) -> object:
        if len(content) > conversations.MAX_MEDIA:
            raise ApiError(413, "file_too_large", "a file sent on WhatsApp has at most 16 MB")
        media_id = None
        if content:
            assert file is not None
            kept = conversations.store_media(
                session, viewer.account.id, content, file.content_type or "", file.filename
            )
            media_id = kept.id
        answer = Reply(
            text=None if template_id else text,
            template_id=int(template_id) if template_id.isdigit() and len(template_id) < 10 else None,
            params=params or (),
            media_id=media_id,
            key=key or None,
        )
        return conversations.reply(
            session,
            viewer.account.id,
            conversation_id,
            answer,
            _agent(viewer),
            public_url=public_url,
            now=at,
        )

    return await run_in_threadpool(_act, request, viewer, db, conversation_id, back, send, text)


# --- files -------------------------------------------------------------------------------------------------


@router.get("/inbox/media/{media_id:int}")
def media(viewer: CurrentViewer, db: Db, media_id: Id) -> Response:
    """A kept file of this account: images shown in the thread, anything else downloaded. Served with a
    sandbox policy and no sniffing, so a file a user sent can never run as a page of this site."""
    with db.read() as session:
        file = session.scalar(
            select(MediaFile).where(MediaFile.id == media_id, MediaFile.account_id == viewer.account.id)
        )
        if file is None:
            raise ApiError(404, "not_found", f"file {media_id}")
        content, mime, filename = file.content, file.mime_type, file.filename
    inline = mime.startswith(("image/", "video/", "audio/")) and "svg" not in mime
    name = (filename or f"file-{media_id}").replace('"', "")
    disposition = "inline" if inline else f'attachment; filename="{name}"'
    return Response(
        content,
        media_type=mime if inline else "application/octet-stream",
        headers={
            "Content-Disposition": disposition,
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "sandbox; default-src 'none'",
            "Cache-Control": "private, max-age=3600",
        },
    )


# --- live -----------------------------------------------------------------------------------------------


def _digest(html: str) -> str:
    return format(zlib.crc32(html.encode()), "08x")


def _shown(last_event_id: str) -> dict[str, str]:
    pairs = (item.partition("=") for item in last_event_id.split(","))
    known = LIST_PARTS.keys() | THREAD_PARTS.keys()
    return {key: digest for key, sep, digest in pairs if sep and key in known}


@router.get("/inbox/live")
async def inbox_live(
    request: Request,
    viewer: CurrentViewer,
    db: Db,
    c: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    mode: Annotated[str, Query(max_length=12)] = "",
) -> Response:
    """Server-sent events for the page (``data-live``): every second, the conversations changed since the
    last look (``changed_since``) redraw the tabs and the list; the open thread is redrawn when it changed,
    when one of its messages' ticks moved (``outbound_states``) or when the minute turned (the window's
    time left); what the user writes while the thread is open is read (as opening it does). Only the parts
    whose HTML changed are sent (``update``). The reply box is sent again only
    when what it offers changes (window closed, taken by another), so that a half-written answer stays."""
    chosen = _chosen(request)

    def snapshot(at: datetime) -> tuple[dict[str, tuple[str, str]], dict[int, str]]:
        """Each part: its HTML and what it is compared by; and the open thread's outbound messages with
        their states (the ticks shown)."""
        with db.read() as session:
            context = _list_context(session, viewer, chosen, at)
            if c is not None:
                conversation = conversations.get_conversation(session, viewer.account.id, c)
                context |= _thread_context(session, viewer, conversation, at)
        parts = {k: env.get_template(name).render(context) for k, name in LIST_PARTS.items()}
        found = {k: (html, _digest(html)) for k, html in parts.items()}
        if c is not None:
            for k, name in THREAD_PARTS.items():
                html = env.get_template(name).render(context)
                basis = f"{context['mode']}:{c}" if k == "inbox-composer" else html
                found[k] = (html, _digest(basis))
        items = context.get("items", [])
        return found, {i.id: i.state or "" for i in items if i.who in ("agent", "campaign")}

    def moved(since: datetime, ticks: dict[int, str]) -> tuple[bool, bool]:
        """Did anything shown change since ``since`` (a conversation, or a tick of the open thread), and
        was the open conversation among the conversations changed?"""
        with db.read() as session:
            changed = conversations.changed_since(session, viewer.account.id, since)
            if c is None or changed:
                return bool(changed), c in changed
            conversation = conversations.get_conversation(session, viewer.account.id, c)
            states = conversations.outbound_states(session, conversation, list(ticks))
        return states != ticks, False

    def read_open() -> None:
        assert c is not None
        with db.session() as session:
            conversations.open_conversation(session, viewer.account.id, c)

    at = now(request)
    first = await run_in_threadpool(snapshot, at)  # a conversation not found is a 404, not a stream
    shown = _shown(request.headers.get("last-event-id", ""))
    if c is not None and mode and "inbox-composer" not in shown:  # (the page drew the box it offers)
        shown["inbox-composer"] = _digest(f"{mode}:{c}")

    async def events() -> AsyncIterator[str]:
        ends = time.monotonic() + LIVE_STREAM
        found, ticks = first
        looked = utcnow() - timedelta(seconds=2)  # (a write a moment before the snapshot is seen again)
        minute = at.replace(second=0, microsecond=0)
        yield f"retry: {LIVE_RETRY_MS}\n\n"
        while True:
            changed = {k: html for k, (html, digest) in found.items() if shown.get(k) != digest}
            if changed:
                shown.update({k: digest for k, (_html, digest) in found.items()})
                event_id = ",".join(f"{k}={d}" for k, d in sorted(shown.items()))
                yield f"id: {event_id}\nevent: update\ndata: {json.dumps(changed)}\n\n"
            else:
                yield ": still here\n\n"  # (writing to a browser that went away ends the stream)
            if time.monotonic() >= ends:
                return
            await asyncio.sleep(LIVE_TICK)
            polled = utcnow()
            stale, opened = await run_in_threadpool(moved, looked, ticks)
            looked = polled - timedelta(seconds=2)
            when = now(request)
            turned = when.replace(second=0, microsecond=0) != minute
            if stale or turned:
                minute = when.replace(second=0, microsecond=0)
                if opened:  # the agent has the thread open: what arrives is read
                    await run_in_threadpool(read_open)
                found, ticks = await run_in_threadpool(snapshot, when)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
