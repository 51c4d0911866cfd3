"""The conversations API: the inbox (``/api/v1/conversations``), saved replies, agents' files
(``/api/v1/media``), and the public link a provider fetches an agent's file from (``/media/{token}``). A
thin router over ``tidings.conversations.service``.

Every route needs the agent role (marketers and admins may do what agents do). API keys have no user of
their own: the calls that act as a person take ``user_id``, the user the key acts for (the author of a
reply or a note, the one who takes a conversation); an admin's key acts over whoever holds a conversation
and may assign it to anyone (``service.Agent.admin``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, File, Path, Query, Request, Response, UploadFile
from sqlalchemy import select
from sqlalchemy.orm import Session

from tidings.bounds import Id, Offset
from tidings.campaigns.models import Campaign
from tidings.conversations import service
from tidings.conversations.models import Conversation, MediaFile, State
from tidings.conversations.schemas import (
    ActAs,
    AssignRequest,
    ConversationCounts,
    ConversationDetail,
    ConversationOut,
    ConversationPage,
    LabelsRequest,
    MediaOut,
    NoteOut,
    NoteRequest,
    ProfileSummary,
    QueuedReply,
    ReachedBy,
    ReplyRequest,
    SavedReplyCreate,
    SavedReplyOut,
    StateCount,
    ThreadItem,
)
from tidings.db import utcnow
from tidings.deps import Allow, Caller, CurrentAccount, CurrentCaller, Db, get_settings
from tidings.errors import ApiError, NotFound, error_responses
from tidings.profiles.models import Profile
from tidings.users.models import Role, User

AGENT = Depends(Allow(Role.agent))

router = APIRouter(prefix="/api/v1", tags=["conversations"], dependencies=[AGENT])
# The public link of a file: no credentials, the unguessable token is one.
media_router = APIRouter(tags=["media"])

# The statuses only some routes answer (the others every route may: errors.COMMON_ERRORS).
ERRORS = {
    403: "`forbidden`: the caller's role may not do this; assigning a conversation to someone else "
    "needs an admin.",
    404: "`not_found`: no such conversation, template, file or saved reply in this account.",
    409: "`held_by_other`: another user holds the conversation (`message` names them; only they or an "
    "admin may act on it); `window_closed`: free text or a file outside the 24-hour window (`message` "
    "says when it closed: send an approved template); `not_opted_in`: a template to a user not opted in "
    "(inside the window, answer with free text); `no_profile`: the conversation's profile was deleted; "
    "`shortcut_taken`.",
    413: "`payload_too_large`: the file is over 16 MiB (WhatsApp's limit).",
    422: "`template_values` (a value missing for one of the template's variables), `empty_reply`, "
    "`text_too_long`, `invalid` (the template is not approved), `user_required` (taking needs `user_id`), "
    "`unknown_user`, `invalid_labels`, `invalid_note`, `invalid_shortcut`, `invalid_text`, `empty_file`; "
    "`validation_error` for a malformed request.",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return error_responses(ERRORS, *statuses)


def _agent(session: Session, caller: Caller, user_id: int | None) -> service.Agent:
    """Who acts: the user the key acts for (an active user of the account), with an admin's rights when
    the key is an admin's."""
    if user_id is not None:
        service._user_of(session, caller.account.id, user_id)
    return service.Agent(user_id, admin=caller.role is Role.admin)


def _out(listed: service.Listed, now: datetime) -> ConversationOut:
    c = listed.conversation
    return ConversationOut(
        id=c.id,
        phone=c.phone,
        state=listed.state,
        window_open=service.window_open(c, now),
        window_closes_at=service.window_closes(c),
        unread=c.unread,
        preview=c.preview,
        identity=listed.identity,
        name=listed.name,
        assignee_id=c.assignee_id,
        assignee=listed.assignee,
        labels=listed.labels,
        campaign_id=c.campaign_id,
        campaign=listed.campaign,
        waiting_since=c.waiting_since,
        last_message_at=c.last_message_at,
        last_inbound_at=c.last_inbound_at,
        created_at=c.created_at,
    )


def _described(session: Session, conversation: Conversation) -> ConversationOut:
    """One conversation as the list shows it."""
    now = utcnow()
    profile = session.get(Profile, conversation.profile_id) if conversation.profile_id is not None else None
    assignee = (
        session.scalar(select(User.email).where(User.id == conversation.assignee_id))
        if conversation.assignee_id is not None
        else None
    )
    campaign = (
        session.scalar(select(Campaign.name).where(Campaign.id == conversation.campaign_id))
        if conversation.campaign_id is not None
        else None
    )
    listed = service.Listed(
        conversation,
        service.state_of(conversation, now),
        _name(profile),
        profile.identity if profile is not None else None,
        assignee,
        campaign,
        service.labels_of(session, [conversation.id]).get(conversation.id, []),
    )
    return _out(listed, now)


def _name(profile: Profile | None) -> str | None:
    name = (profile.properties or {}).get("Name") if profile is not None else None
    return str(name) if name is not None else None


# --- the inbox -------------------------------------------------------------------------------------------


@router.get("/conversations", response_model=ConversationPage, summary="List conversations")
def list_conversations(
    account: CurrentAccount,
    db: Db,
    state: Annotated[State | None, Query(description="One shown state (an inbox tab).")] = None,
    campaign_id: Annotated[
        Id | None, Query(description="Conversations with a reply to this campaign.")
    ] = None,
    assignee_id: Annotated[
        int | None, Query(ge=0, le=2**31 - 1, description="Held by this user; `0`: held by nobody.")
    ] = None,
    label: Annotated[str | None, Query(max_length=40, description="Labelled so.")] = None,
    q: Annotated[
        str | None,
        Query(
            max_length=200, description="Part of the number, of the profile's name, or of the user's words."
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="Page size")] = 50,
    offset: Offset = 0,
) -> ConversationPage:
    """The account's conversations, the oldest waiting first (then the latest message first), filtered;
    with how many conversations each state has (the tabs' counts, unfiltered)."""
    now = utcnow()
    filters = service.Filters(state=state, campaign_id=campaign_id, assignee_id=assignee_id, label=label, q=q)
    with db.read() as session:
        found = service.list_conversations(session, account.id, filters, now=now, limit=limit, offset=offset)
        counts = service.counts(session, account.id, now=now)
    return ConversationPage(
        counts={State(s): StateCount(**c) for s, c in counts.items()},
        limit=limit,
        offset=offset,
        items=[_out(listed, now) for listed in found],
    )


@router.get("/conversations/counts", response_model=ConversationCounts, summary="Conversations per state")
def conversation_counts(account: CurrentAccount, db: Db) -> ConversationCounts:
    """How many conversations each shown state has, and how many of them have unread messages."""
    with db.read() as session:
        counts = service.counts(session, account.id)
    return ConversationCounts(counts={State(s): StateCount(**c) for s, c in counts.items()})


@router.get(
    "/conversations/{conversation_id}",
    response_model=ConversationDetail,
    summary="A conversation with its thread and profile",
)
def read_conversation(
    conversation_id: Id,
    account: CurrentAccount,
    db: Db,
    limit: Annotated[int, Query(ge=1, le=500, description="The thread's latest lines")] = 200,
) -> ConversationDetail:
    """The conversation, its thread (the user's messages, the campaign messages and replies sent to the
    number with their states, the agents' notes; oldest first) and the profile with the campaigns that
    reached it. Reading does not mark it read: `POST …/open` does."""
    with db.read() as session:
        conversation = service.get_conversation(session, account.id, conversation_id)
        out = _described(session, conversation)
        thread = service.thread(session, conversation, limit=limit)
        profile = (
            session.get(Profile, conversation.profile_id) if conversation.profile_id is not None else None
        )
        summary = None
        if profile is not None:
            reached = service.profile_campaigns(session, account.id, profile.id)
            summary = ProfileSummary(
                identity=profile.identity,
                name=_name(profile),
                phone=profile.phone,
                whatsapp_opt_in=profile.whatsapp_opt_in,
                campaigns=[ReachedBy(name=n, state=s, sent_at=at) for n, s, at in reached],
            )
    return ConversationDetail(
        conversation=out, thread=[ThreadItem.model_validate(i) for i in thread], profile=summary
    )


@router.post("/conversations/{conversation_id}/open", response_model=ConversationOut, summary="Mark read")
def open_conversation(conversation_id: Id, account: CurrentAccount, db: Db) -> ConversationOut:
    """An agent opened the thread: its messages are read (`unread` 0), and the provider is told of the
    latest one (blue ticks) by the worker."""
    with db.session() as session:
        return _described(session, service.open_conversation(session, account.id, conversation_id))


@router.post(
    "/conversations/{conversation_id}/take",
    response_model=ConversationOut,
    summary="Take a conversation",
    responses=_errors(409, 422),
)
def take(
    conversation_id: Id,
    caller: CurrentCaller,
    db: Db,
    body: Annotated[ActAs | None, Body(description="`user_id` is required.")] = None,
) -> ConversationOut:
    """The user (`user_id`) holds the conversation from now on. Of two taking it at once exactly one
    wins; the other gets 409 `held_by_other` naming who holds it. Taking one's own is no change."""
    with db.session() as session:
        agent = _agent(session, caller, body.user_id if body else None)
        return _described(session, service.take(session, caller.account.id, conversation_id, agent))


@router.post(
    "/conversations/{conversation_id}/assign",
    response_model=ConversationOut,
    summary="Assign a conversation",
    responses=_errors(403, 409, 422),
)
def assign(conversation_id: Id, body: AssignRequest, caller: CurrentCaller, db: Db) -> ConversationOut:
    """Give the conversation to a user (`user_id`), or to nobody (null). An admin's key assigns anyone;
    another key may only give back (null) a conversation nobody else holds (403 `forbidden` otherwise)."""
    with db.session() as session:
        agent = _agent(session, caller, body.acting_user_id)
        conversation = service.assign(session, caller.account.id, conversation_id, body.user_id, agent)
        return _described(session, conversation)


@router.post(
    "/conversations/{conversation_id}/resolve",
    response_model=ConversationOut,
    summary="Resolve a conversation",
    responses=_errors(409, 422),
)
def resolve(
    conversation_id: Id,
    caller: CurrentCaller,
    db: Db,
    body: Annotated[ActAs | None, Body()] = None,
) -> ConversationOut:
    """Close it: the user's next message reopens it (pending when someone holds it, else new)."""
    with db.session() as session:
        agent = _agent(session, caller, body.user_id if body else None)
        return _described(session, service.resolve(session, caller.account.id, conversation_id, agent))


@router.put(
    "/conversations/{conversation_id}/labels",
    response_model=ConversationOut,
    summary="Set a conversation's labels",
    responses=_errors(409, 422),
)
def set_labels(conversation_id: Id, body: LabelsRequest, caller: CurrentCaller, db: Db) -> ConversationOut:
    """Replace the conversation's labels (filter the list by one with `label`)."""
    with db.session() as session:
        agent = _agent(session, caller, body.user_id)
        service.set_labels(session, caller.account.id, conversation_id, body.labels, agent)
        conversation = service.get_conversation(session, caller.account.id, conversation_id)
        return _described(session, conversation)


@router.post(
    "/conversations/{conversation_id}/notes",
    status_code=201,
    response_model=NoteOut,
    summary="Add a private note",
    responses=_errors(422),
)
def add_note(conversation_id: Id, body: NoteRequest, caller: CurrentCaller, db: Db) -> NoteOut:
    """A note for the other agents, shown in the thread; never sent to the user."""
    with db.session() as session:
        agent = _agent(session, caller, body.user_id)
        note = service.add_note(session, caller.account.id, conversation_id, body.text, agent)
        return NoteOut.model_validate(note)


@router.post(
    "/conversations/{conversation_id}/messages",
    status_code=202,
    response_model=QueuedReply,
    summary="Reply",
    responses=_errors(409, 422),
)
def send_reply(
    conversation_id: Id, body: ReplyRequest, caller: CurrentCaller, db: Db, request: Request
) -> QueuedReply:
    """Queue a reply: free text, a file (`media_id`, `text` its caption) or an approved template with its
    values. Free text and files only inside the 24-hour window (409 `window_closed` says when it closed);
    a template at any time, once the window closed only to a user opted in (409 `not_opted_in`). The
    dispatcher sends it like a campaign message (rate limits, retries, status webhooks); follow its state
    in the thread. A conversation nobody holds is taken by the replying user (`user_id`)."""
    answer = service.Reply(
        text=body.text,
        template_id=body.template_id,
        params=tuple(body.params),
        media_id=body.media_id,
        key=body.idempotency_key,
    )
    public_url = get_settings(request).public_url
    with db.session() as session:
        agent = _agent(session, caller, body.user_id)
        message = service.reply(
            session, caller.account.id, conversation_id, answer, agent, public_url=public_url
        )
        queued = QueuedReply(
            id=message.id,
            conversation_id=conversation_id,
            state=message.state,
            created_at=message.created_at,
        )
    worker = request.app.state.worker
    if worker is not None:  # committed: let this process's dispatcher send it now
        worker.nudge()
    return queued


# --- saved replies ---------------------------------------------------------------------------------------


@router.get("/saved-replies", response_model=list[SavedReplyOut], summary="Saved replies")
def list_saved_replies(account: CurrentAccount, db: Db) -> list[SavedReplyOut]:
    """The account's saved replies, by shortcut."""
    with db.read() as session:
        return [SavedReplyOut.model_validate(s) for s in service.saved_replies(session, account.id)]


@router.post(
    "/saved-replies",
    status_code=201,
    response_model=SavedReplyOut,
    summary="Save a reply",
    responses=_errors(409, 422),
)
def create_saved_reply(body: SavedReplyCreate, account: CurrentAccount, db: Db) -> SavedReplyOut:
    """A canned response, inserted in the reply box by typing `/` and its shortcut."""
    with db.session() as session:
        return SavedReplyOut.model_validate(service.save_reply(session, account.id, body.shortcut, body.text))


@router.delete(
    "/saved-replies/{saved_reply_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a saved reply",
)
def delete_saved_reply(saved_reply_id: Id, account: CurrentAccount, db: Db) -> None:
    with db.session() as session:
        service.delete_saved_reply(session, account.id, saved_reply_id)


# --- files -----------------------------------------------------------------------------------------------


@router.post(
    "/media",
    status_code=201,
    response_model=MediaOut,
    summary="Upload a file to send",
    responses=_errors(413, 422),
)
def upload_media(
    account: CurrentAccount,
    db: Db,
    file: Annotated[UploadFile, File(description="The file (multipart/form-data), at most 16 MiB.")],
) -> MediaOut:
    """Keep a file an agent sends: reply with its `id` as `media_id`. It is sent as an image, video or
    audio message by its type (`image/*`, `video/*`, `audio/*`), else as a document; the provider fetches
    it from this server's public link."""
    content = file.file.read(service.MAX_MEDIA + 1)
    if len(content) > service.MAX_MEDIA:
        raise ApiError(413, "payload_too_large", "the file is over 16 MiB, WhatsApp's limit for a file")
    with db.session() as session:
        stored = service.store_media(
            session, account.id, content, file.content_type or "application/octet-stream", file.filename
        )
        return MediaOut.model_validate(stored)


# Served with the type it was uploaded with, but never run as a page of this site: sandboxed, and a
# download unless a provider or a browser shows it as it is (image, video, audio).
def _file_answer(file: MediaFile) -> Response:
    shown = file.mime_type.split("/", 1)[0] in ("image", "video", "audio")
    disposition = "inline" if shown else "attachment"
    name = (file.filename or f"file-{file.id}").replace('"', "").encode("ascii", "replace").decode()
    return Response(
        file.content,
        media_type=file.mime_type,
        headers={
            "Content-Disposition": f'{disposition}; filename="{name}"',
            "Content-Security-Policy": "sandbox; default-src 'none'",
            "Cache-Control": "private",
        },
    )


_FILE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {}}, "description": "The file, with its type."}
}


@router.get("/media/{media_id}", response_class=Response, responses=_FILE, summary="Download a file")
def read_media(media_id: Id, account: CurrentAccount, db: Db) -> Response:
    """A file a user sent (a thread line's `media_id`) or an agent uploaded."""
    with db.read() as session:
        file = session.scalar(
            select(MediaFile).where(MediaFile.id == media_id, MediaFile.account_id == account.id)
        )
        if file is None:
            raise NotFound(f"file {media_id}")
        return _file_answer(file)


@media_router.get(
    "/media/{token}", response_class=Response, responses=_FILE, summary="A file by its public link"
)
def public_media(
    token: Annotated[str, Path(max_length=64, description="The file's unguessable token.")], db: Db
) -> Response:
    """The link an agent's file is sent by: the provider fetches the file from it. No credentials: the
    token is one (404 for any other)."""
    with db.read() as session:
        file = session.scalar(select(MediaFile).where(MediaFile.token == token))
        if file is None:
            raise NotFound("file")
        return _file_answer(file)
