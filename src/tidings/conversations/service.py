"""Conversations: what an inbound message does, and what agents do with a thread.

An inbound message is kept once (a repeat of the same provider id changes nothing), lands in the
conversation with its number (created for a number Tidings does not know, with a profile opted out and the
user's WhatsApp name), marks the campaign message it answers as replied, and a consent keyword (``STOP``
as people write it, Meta's "Stop promotions" button, ``START``, the account's own keywords; see
``tidings.conversations.keywords``) opts every profile with that number out of WhatsApp, or in again, with
one confirmation when the account wants it. Webhooks may arrive out of order: a keyword older than one the
number sent later (already recorded) changes nothing, so the person's last word holds; a message older than
an agent's latest answer is kept in the thread but does not make the conversation wait again.

States (``models.State``): new → (an agent answers) active → (the user answers) pending → active …; an
agent resolves; a user's message reopens a resolved conversation (pending when an agent holds it, else
new). ``inactive`` is an active conversation whose 24-hour window has closed, read from the clock, so no
job has to move it.

Agents' replies are ledger rows (``delivery.models.Message`` with ``conversation_id``): the dispatcher
sends them with the same rate limits, retries, reconciliation and status webhooks as campaign messages.
Free text and files only inside the window, decided here and again where the message leaves
(``delivery.send_rules``); a template at any time, with consent (``MSG-whatsapp``).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, case, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tidings.accounts.models import Account
from tidings.campaigns.models import Campaign
from tidings.campaigns.rules import account_rules
from tidings.conversations.attribution import answered_campaign, mark_replied
from tidings.conversations.keywords import Keywords, account_keywords, consent_change
from tidings.conversations.models import (
    Conversation,
    ConversationLabel,
    ConversationNote,
    InboundMessage,
    MediaFile,
    SavedReply,
    State,
)
from tidings.db import cast_table, is_postgres, utcnow
from tidings.delivery.models import SENT_STATES, Message
from tidings.errors import ApiError, Conflict, Invalid, NotFound
from tidings.profiles.models import Profile
from tidings.profiles.service import (
    ConsentSource,
    ingest,
    normalize_phone,
    profile_by_phone,
    set_whatsapp_opt_in_by_phone,
)
from tidings.providers.base import InboundReply
from tidings.templates.models import Template
from tidings.users.models import User

WINDOW = timedelta(hours=24)  # WhatsApp's customer-service window, from the user's last message
MEDIA_KINDS = frozenset({"image", "video", "audio", "document", "sticker"})
SENDABLE_MEDIA = ("image", "video", "audio", "document")
MAX_MEDIA = 16 * 1024 * 1024  # what an agent may send (WhatsApp's limit for video and audio)
MAX_LABELS = 20

# Kinds whose text is what the user wrote or tapped (others carry a caption or a rendering).
_WORDED = frozenset({"text", "button", "interactive", "reply"})
# How a message of each kind is shown where there is no text (the list's preview, a thread line).
_SHOWN = {
    "image": "📷 Photo",
    "video": "🎥 Video",
    "audio": "🎤 Audio",
    "document": "📄 Document",
    "sticker": "Sticker",
    "location": "📍 Location",
    "contacts": "👤 Contact",
    "reaction": "Reaction",
    "unsupported": "A message WhatsApp does not show here",
}


def shown(kind: str, text: str) -> str:
    """A message as one line: its text, else what kind of message it is."""
    return text.strip() or _SHOWN.get(kind, kind)


# --- the window and the states -------------------------------------------------------------------------


def window_closes(conversation: Conversation) -> datetime | None:
    """When the 24-hour window closes (or closed); None when the user never wrote."""
    last = conversation.last_inbound_at
    return None if last is None else last + WINDOW


def window_open(conversation: Conversation, now: datetime) -> bool:
    closes = window_closes(conversation)
    return closes is not None and now < closes


def state_of(conversation: Conversation, now: datetime) -> State:
    """The state as shown: an active conversation whose window has closed is inactive."""
    if conversation.state == State.active and not window_open(conversation, now):
        return State.inactive
    return State(conversation.state)


def _state_is(state: State, now: datetime) -> Any:
    """The SQL test of a shown state."""
    open_ = Conversation.last_inbound_at > now - WINDOW
    if state == State.active:
        return and_(Conversation.state == State.active, open_)
    if state == State.inactive:
        return and_(
            Conversation.state == State.active,
            or_(Conversation.last_inbound_at.is_(None), Conversation.last_inbound_at <= now - WINDOW),
        )
    return Conversation.state == state


# --- inbound messages ----------------------------------------------------------------------------------


def _consent(kind: str, text: str, payload: str | None, keywords: Keywords) -> bool | None:
    worded = text if kind in _WORDED else None
    return consent_change(worded, payload, keywords) if worded or payload else None


def consent_of(session: Session, account_id: str, reply: InboundReply) -> bool | None:
    """``False`` when the reply opts out, ``True`` when it opts in again, else ``None``: its text (for a
    typed or tapped reply) and a button's payload are both examined. ``None`` too when the number's
    profiles have a later consent keyword on record (an earlier word that arrived late)."""
    if reply.kind not in _WORDED and not reply.payload:
        return None
    account = session.get(Account, account_id)
    keywords = account_keywords(account.settings if account is not None else None)
    consent = _consent(reply.kind, reply.text, reply.payload, keywords)
    if consent is None:
        return None
    later = session.execute(
        select(InboundMessage.kind, InboundMessage.text, InboundMessage.payload).where(
            InboundMessage.account_id == account_id,
            InboundMessage.from_phone == reply.from_phone,
            InboundMessage.received_at > reply.timestamp,
        )
    ).all()
    if any(_consent(kind, text, payload, keywords) is not None for kind, text, payload in later):
        return None
    return consent


# ``profile_by_phone``'s choice, its id only: a reply needs no Profile object loaded.
_PROFILE_ID = (
    select(Profile.id)
    .where(Profile.account_id == bindparam("_account"), Profile.phone == bindparam("_phone"))
    .order_by(Profile.updated_at.desc(), Profile.id.desc())
    .limit(1)
)


def _numbers(from_phone: str) -> tuple[str, str]:
    """A sender's number as kept (E.164 when it parses) and as profiles are looked up by it."""
    phone = normalize_phone(from_phone) or from_phone
    text = phone.strip()
    return phone, normalize_phone(text if text.startswith("+") else f"+{text}") or text


def profile_ids(session: Session, senders: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """The profile ids of these senders ``(account id, from_phone)``, by ``(account id, looked-up
    number)``: ``profile_by_phone``'s choice for a batch in one SELECT per account rather than one a
    message (``record_inbound``'s ``profiles``). A number with no profile is absent."""
    by_account: dict[str, set[str]] = {}
    for account_id, from_phone in senders:
        by_account.setdefault(account_id, set()).add(_numbers(from_phone)[1])
    found: dict[tuple[str, str], int] = {}
    for account_id, numbers in by_account.items():
        ordered = sorted(numbers)
        for start in range(0, len(ordered), 500):
            rows = session.execute(
                select(Profile.phone, Profile.id)
                .where(Profile.account_id == account_id, Profile.phone.in_(ordered[start : start + 500]))
                .order_by(Profile.phone, Profile.updated_at.desc(), Profile.id.desc())
            )
            for number, profile_id in rows:
                found.setdefault((account_id, str(number)), int(profile_id))
    return found


def _profile_id(
    session: Session,
    account_id: str,
    phone: str,
    number: str,
    name: str | None,
    profiles: dict[tuple[str, str], int] | None,
) -> int | None:
    """The id of the number's profile (``profile_by_phone``; from ``profiles`` when it holds it), made
    when it has none (``_new_profile``)."""
    if profiles is not None and (account_id, number) in profiles:
        return profiles[(account_id, number)]
    session.flush()  # what the session holds is seen, as its own SELECT would see it
    found = session.connection().scalar(_PROFILE_ID, {"_account": account_id, "_phone": number})
    if found is None:
        profile = _new_profile(session, account_id, phone, name)
        found = profile.id if profile is not None else None
    if found is not None and profiles is not None:
        profiles[(account_id, number)] = int(found)
    return None if found is None else int(found)


def _new_profile(session: Session, account_id: str, phone: str, name: str | None) -> Profile | None:
    """A profile for a number Tidings does not know: identity the number, opted out (MSG-whatsapp false:
    writing to a business is not consent to its campaigns), named with the user's WhatsApp name."""
    data: dict[str, Any] = {"Phone": phone, "MSG-whatsapp": False}
    if name:
        data["Name"] = name[:255]
    ingest(session, account_id, [{"identity": phone, "type": "profile", "profileData": data}])
    return profile_by_phone(session, account_id, phone)


_CONVERSATIONS = cast_table(Conversation.__table__)
_CONVERSATION = select(Conversation).where(
    Conversation.account_id == bindparam("_account"), Conversation.phone == bindparam("_phone")
)
_CONVERSATION_LOCKED = _CONVERSATION.with_for_update()


def _conversation_for(
    session: Session,
    account_id: str,
    phone: str,
    profile_id: int | None,
    wrote: Callable[[Conversation], None],
) -> Conversation:
    """The number's conversation, locked for this transaction (made when it has none), with the user's
    message applied (``wrote``). A new one is inserted with it applied, by one Core statement (the unit of
    work's flush of one new object costs several times the statement): what is returned for it holds
    its values and id, detached from the session (``session.get`` it to change it)."""
    query = _CONVERSATION_LOCKED if is_postgres(session) else _CONVERSATION
    params = {"_account": account_id, "_phone": phone}
    found = session.scalars(query, params).first()
    if found is None:
        now = utcnow()
        created = Conversation(
            account_id=account_id,
            phone=phone,
            profile_id=profile_id,
            state=State.new,
            last_message_at=now,
            unread=0,
            preview="",
            created_at=now,
            changed_at=now,
        )
        wrote(created)
        values = {
            column.key: getattr(created, column.key) for column in _CONVERSATIONS.c if column.key != "id"
        }
        try:
            with session.begin_nested():
                inserted = session.connection().execute(insert(_CONVERSATIONS), values)
            key = inserted.inserted_primary_key
            assert key is not None
            created.id = int(key[0])
            return created
        except IntegrityError:  # another transaction made it first
            found = session.scalars(query, params).one()
    if found.profile_id is None:
        found.profile_id = profile_id
    wrote(found)
    return found


def _user_wrote(conversation: Conversation, at: datetime, line: str, campaign_id: int | None) -> None:
    """What a user's message does to the conversation."""
    conversation.unread += 1
    conversation.changed_at = utcnow()
    if conversation.last_inbound_at is None or at > conversation.last_inbound_at:
        conversation.last_inbound_at = at
    if at >= conversation.last_message_at or not conversation.preview:
        conversation.last_message_at = max(at, conversation.last_message_at)
        conversation.preview = line[:200]
    if campaign_id is not None:
        conversation.campaign_id = campaign_id
    if conversation.last_agent_at is not None and at <= conversation.last_agent_at:
        return  # older than the agent's latest answer (a late webhook): nobody waits for it
    if conversation.state == State.active:
        conversation.state = State.pending
    elif conversation.state == State.resolved:
        conversation.state = State.pending if conversation.assignee_id is not None else State.new
    if conversation.waiting_since is None or at < conversation.waiting_since:
        conversation.waiting_since = at


def known_inbound(session: Session, keys: Sequence[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
    """Which of these inbound messages ``(account id, provider, provider message id)`` are kept already:
    a batch's repeat check in one SELECT per account and provider rather than one a message."""
    by_source: dict[tuple[str, str], set[str]] = {}
    for account_id, provider, provider_id in keys:
        by_source.setdefault((account_id, provider), set()).add(provider_id)
    known: set[tuple[str, str, str]] = set()
    for (account_id, provider), ids in by_source.items():
        ordered = sorted(ids)
        for start in range(0, len(ordered), 500):
            known.update(
                (account_id, provider, provider_id)
                for provider_id in session.scalars(
                    select(InboundMessage.provider_message_id).where(
                        InboundMessage.account_id == account_id,
                        InboundMessage.provider == provider,
                        InboundMessage.provider_message_id.in_(ordered[start : start + 500]),
                    )
                )
            )
    return known


def record_inbound(
    session: Session,
    account_id: str,
    provider: str,
    reply: InboundReply,
    *,
    checked: bool = False,
    profiles: dict[tuple[str, str], int] | None = None,
) -> bool:
    """Keep one inbound message and apply it (see the module's docstring). Returns whether it was new.
    A batch's caller reads at once what each message would look up: ``checked`` when it knows the
    message is new (``known_inbound``); ``profiles``, the senders' profile ids (``profile_ids``), kept
    up to date here (a profile made is added, a number whose consent changed is read again)."""
    if not checked:
        seen = session.scalar(
            select(InboundMessage.id).where(
                InboundMessage.account_id == account_id,
                InboundMessage.provider == provider,
                InboundMessage.provider_message_id == reply.provider_message_id,
            )
        )
        if seen is not None:
            return False
    phone, number = _numbers(reply.from_phone)
    profile_id = _profile_id(session, account_id, phone, number, reply.profile_name, profiles)
    answered = answered_campaign(session, account_id, phone, reply.context_message_id, reply.timestamp)
    campaign_id = None
    if answered is not None:
        mark_replied(session, answered[0], reply.timestamp)
        campaign_id = answered[1]
    media = reply.media
    # A Core INSERT: nothing reads the row back as an object, and the unit of work's flush of one new
    # object costs several times the statement.
    session.connection().execute(
        insert(cast_table(InboundMessage.__table__)),
        {
            "account_id": account_id,
            "profile_id": profile_id,
            "from_phone": phone,
            "provider": provider,
            "provider_message_id": reply.provider_message_id,
            "kind": reply.kind,
            "text": reply.text,
            "payload": reply.payload[:256] if reply.payload else None,
            "data": reply.data,
            "media": (
                {
                    "ref": media.ref,
                    "mime_type": media.mime_type,
                    "filename": media.filename,
                    "sha256": media.sha256,
                }
                if media is not None
                else None
            ),
            "media_state": "pending" if media is not None else None,
            "context_message_id": reply.context_message_id,
            "answers_message_id": answered[0] if answered is not None else None,
            "campaign_id": campaign_id,
            "received_at": reply.timestamp,
        },
    )
    line = shown(reply.kind, reply.text)
    conversation = _conversation_for(
        session,
        account_id,
        phone,
        profile_id,
        lambda conversation: _user_wrote(conversation, reply.timestamp, line, campaign_id),
    )
    consent = consent_of(session, account_id, reply)
    if consent is not None:
        if profiles is not None:  # the number's profiles are updated: the latest may be another
            profiles.pop((account_id, number), None)
        # Recorded in the consent history as the person's own word: the number that sent it.
        changed = set_whatsapp_opt_in_by_phone(
            session, account_id, phone, consent, ConsentSource.keyword, phone
        )
        if changed and conversation.profile_id is not None:
            held = session.get(Conversation, conversation.id)  # a new one is not in the session
            assert held is not None
            _confirm(session, account_id, held, consent, reply.provider_message_id)
    session.flush()
    return True


def _confirm(
    session: Session, account_id: str, conversation: Conversation, opted_in: bool, because: str
) -> None:
    """Queue the account's confirmation of an opt-out (or opt-in) by message, when it has one: free text
    inside the window the keyword just opened, once per keyword message."""
    account = session.get(Account, account_id)
    replies = account_rules(account.settings if account else None).consent_replies
    text = replies.opt_in if opted_in else replies.opt_out
    if not replies.enabled or not text:
        return
    _queue(session, conversation, occurrence=f"consent:{because}"[:64], text=text, now=utcnow())


# --- agents ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Agent:
    """Who acts on a conversation: a user of the dashboard (``user_id``), or an API key acting for one
    (``user_id`` given in the request) or for nobody in particular (``user_id`` None). ``admin`` may
    assign to others and act over whoever holds a conversation."""

    user_id: int | None
    admin: bool = False


def get_conversation(
    session: Session, account_id: str, conversation_id: int, *, lock: bool = False
) -> Conversation:
    query = select(Conversation).where(
        Conversation.id == conversation_id, Conversation.account_id == account_id
    )
    if lock and is_postgres(session):
        query = query.with_for_update()
    found = session.scalars(query).first()
    if found is None:
        raise NotFound(f"conversation {conversation_id}")
    return found


def _holder_email(session: Session, user_id: int) -> str:
    return session.scalar(select(User.email).where(User.id == user_id)) or f"user {user_id}"


def _held(session: Session, conversation: Conversation, agent: Agent) -> None:
    """Refuse (409 ``held_by_other``) when another agent holds the conversation."""
    holder = conversation.assignee_id
    if holder is not None and holder != agent.user_id and not agent.admin:
        raise Conflict(
            f"{_holder_email(session, holder)} holds this conversation: only they (or an admin) may "
            "answer or change it",
            code="held_by_other",
        )


def _user_of(session: Session, account_id: str, user_id: int) -> User:
    user = session.scalar(
        select(User).where(User.id == user_id, User.account_id == account_id, User.disabled_at.is_(None))
    )
    if user is None:
        raise Invalid(f"user {user_id} is not an active user of this account", code="unknown_user")
    return user


def take(session: Session, account_id: str, conversation_id: int, agent: Agent) -> Conversation:
    """The agent takes the conversation: one guarded UPDATE, so of two agents taking it at once exactly
    one wins; the other is told who holds it (409 ``held_by_other``)."""
    if agent.user_id is None:
        raise Invalid("say which user takes the conversation (user_id)", code="user_required")
    _user_of(session, account_id, agent.user_id)
    taken = session.execute(
        update(Conversation)
        .where(
            Conversation.id == conversation_id,
            Conversation.account_id == account_id,
            or_(Conversation.assignee_id.is_(None), Conversation.assignee_id == agent.user_id),
        )
        .values(assignee_id=agent.user_id, changed_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    conversation = get_conversation(session, account_id, conversation_id)
    session.refresh(conversation)
    if not taken.rowcount:  # type: ignore[attr-defined]
        _held(session, conversation, Agent(agent.user_id))
    return conversation


def assign(
    session: Session, account_id: str, conversation_id: int, assignee_id: int | None, agent: Agent
) -> Conversation:
    """Give the conversation to ``assignee_id`` (None: to nobody). An admin may assign anyone; an agent may
    only give back a conversation they hold."""
    conversation = get_conversation(session, account_id, conversation_id, lock=True)
    if not agent.admin:
        if assignee_id is not None and assignee_id != agent.user_id:
            raise ApiError(403, "forbidden", "only an admin assigns a conversation to someone else")
        _held(session, conversation, agent)
    if assignee_id is not None:
        _user_of(session, account_id, assignee_id)
    conversation.assignee_id = assignee_id
    conversation.changed_at = utcnow()
    session.flush()
    return conversation


def resolve(session: Session, account_id: str, conversation_id: int, agent: Agent) -> Conversation:
    conversation = get_conversation(session, account_id, conversation_id, lock=True)
    _held(session, conversation, agent)
    conversation.state = State.resolved
    conversation.waiting_since = None
    conversation.changed_at = utcnow()
    session.flush()
    return conversation


def set_labels(
    session: Session, account_id: str, conversation_id: int, labels: Sequence[str], agent: Agent
) -> list[str]:
    conversation = get_conversation(session, account_id, conversation_id, lock=True)
    _held(session, conversation, agent)
    wanted = sorted({label.strip().lower() for label in labels if label.strip()})
    if len(wanted) > MAX_LABELS or any(len(label) > 40 for label in wanted):
        raise Invalid(f"at most {MAX_LABELS} labels of at most 40 characters each", code="invalid_labels")
    session.execute(delete(ConversationLabel).where(ConversationLabel.conversation_id == conversation.id))
    session.add_all(
        ConversationLabel(conversation_id=conversation.id, label=label, account_id=account_id)
        for label in wanted
    )
    conversation.changed_at = utcnow()
    session.flush()
    return wanted


def labels_of(session: Session, conversation_ids: Sequence[int]) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    if conversation_ids:
        for cid, label in session.execute(
            select(ConversationLabel.conversation_id, ConversationLabel.label)
            .where(ConversationLabel.conversation_id.in_(list(conversation_ids)))
            .order_by(ConversationLabel.label)
        ):
            found.setdefault(cid, []).append(label)
    return found


def add_note(
    session: Session, account_id: str, conversation_id: int, text: str, agent: Agent
) -> ConversationNote:
    """A private note between agents (anyone who may read the conversation may write one)."""
    conversation = get_conversation(session, account_id, conversation_id)
    text = text.strip()
    if not text or len(text) > 4096:
        raise Invalid("a note has 1 to 4096 characters", code="invalid_note")
    note = ConversationNote(
        account_id=account_id,
        conversation_id=conversation.id,
        author_id=agent.user_id,
        text=text,
        created_at=utcnow(),
    )
    session.add(note)
    conversation.changed_at = utcnow()
    session.flush()
    return note


def open_conversation(session: Session, account_id: str, conversation_id: int) -> Conversation:
    """An agent opened the thread: its messages are read. The provider is told of the latest one (which
    reads the earlier ones too, at Meta) by the worker (``chores.send_read_marks``)."""
    conversation = get_conversation(session, account_id, conversation_id)
    if conversation.unread:
        latest = session.scalar(
            select(InboundMessage.id)
            .where(InboundMessage.account_id == account_id, InboundMessage.from_phone == conversation.phone)
            .order_by(InboundMessage.received_at.desc(), InboundMessage.id.desc())
            .limit(1)
        )
        if latest is not None:
            session.execute(
                update(InboundMessage)
                .where(InboundMessage.id == latest, InboundMessage.read_state.is_(None))
                .values(read_state="pending")
            )
        conversation.unread = 0
        conversation.changed_at = utcnow()
        session.flush()
    return conversation


# --- replies ---------------------------------------------------------------------------------------------


def _queue(
    session: Session,
    conversation: Conversation,
    *,
    occurrence: str,
    now: datetime,
    text: str | None = None,
    template: Template | None = None,
    params: Sequence[str] | None = None,
    media: dict[str, Any] | None = None,
    author_id: int | None = None,
) -> Message:
    """A message of the conversation into the ledger, queued; the same ``occurrence`` twice is one row."""
    assert conversation.profile_id is not None
    existing = session.scalar(
        select(Message).where(
            Message.account_id == conversation.account_id,
            Message.conversation_id == conversation.id,
            Message.occurrence == occurrence,
        )
    )
    if existing is not None:
        return existing
    message = Message(
        account_id=conversation.account_id,
        campaign_id=None,
        profile_id=conversation.profile_id,
        occurrence=occurrence,
        state="queued",
        to_phone=conversation.phone,
        text=text,
        params=list(params) if params is not None else None,
        template_id=template.id if template is not None else None,
        media=media,
        conversation_id=conversation.id,
        author_id=author_id,
        attempts=0,
        next_attempt_at=now,
        created_at=now,
    )
    session.add(message)
    session.flush()
    return message


def _closed(conversation: Conversation) -> Conflict:
    closes = window_closes(conversation)
    if closes is None:
        said = "the user has not written to this number: the window never opened"
    else:
        said = (
            f"the 24-hour window closed at {closes:%Y-%m-%d %H:%M} UTC, 24 hours after the user's last "
            f"message ({conversation.last_inbound_at:%Y-%m-%d %H:%M} UTC)"
        )
    return Conflict(
        f"{said}; only an approved template may be sent until the user writes again", "window_closed"
    )


@dataclass(frozen=True)
class Reply:
    """What an agent sends: free text, a file (with ``text`` its caption), or a template with its values."""

    text: str | None = None
    template_id: int | None = None
    params: Sequence[str] = ()
    media_id: int | None = None
    key: str | None = None  # the client's idempotency key: the same key twice sends once


def reply(
    session: Session,
    account_id: str,
    conversation_id: int,
    answer: Reply,
    agent: Agent,
    *,
    public_url: str,
    now: datetime | None = None,
) -> Message:
    """Queue an agent's reply. Refused: another agent holds the conversation (409 ``held_by_other``); free
    text or a file outside the window (409 ``window_closed``, saying when it closed); a template that is
    not approved or whose values are missing (422); a template to a user not opted in (409
    ``not_opted_in``). An unassigned conversation is taken by the agent who answers it."""
    now = now or utcnow()
    conversation = get_conversation(session, account_id, conversation_id, lock=True)
    _held(session, conversation, agent)
    if conversation.profile_id is None:
        raise Conflict("this conversation's profile was deleted", code="no_profile")
    text = answer.text.strip() if answer.text is not None else None
    template = None
    media = None
    if answer.template_id is not None:
        template = session.scalar(
            select(Template).where(Template.id == answer.template_id, Template.account_id == account_id)
        )
        if template is None:
            raise NotFound(f"template {answer.template_id}")
        if template.status != "APPROVED":
            raise Invalid(f"{template.name} is {template.status}: only an approved template may be sent")
        params = [str(p).strip() for p in answer.params]
        if len(params) != template.variable_count or not all(params):
            raise Invalid(
                f"{template.name} has {template.variable_count} variables: give a value for each "
                f"({len([p for p in params if p])} given)",
                code="template_values",
            )
        # A template is business-initiated: it needs consent even inside the window (where it leaves,
        # ``delivery.send_rules`` skips it as ``not_opted_in`` otherwise), so the agent is told now.
        opted_in = session.scalar(
            select(Profile.whatsapp_opt_in).where(Profile.id == conversation.profile_id)
        )
        if not opted_in:
            raise Conflict(
                "the user is not opted in to WhatsApp (MSG-whatsapp): no template may be sent"
                + (
                    "; answer with free text inside the 24-hour window"
                    if window_open(conversation, now)
                    else ""
                ),
                code="not_opted_in",
            )
        text = None
    else:
        if answer.media_id is not None:
            file = session.scalar(
                select(MediaFile).where(MediaFile.id == answer.media_id, MediaFile.account_id == account_id)
            )
            if file is None:
                raise NotFound(f"file {answer.media_id}")
            kind = media_kind(file.mime_type)
            media = {
                "kind": kind,
                "url": f"{public_url}/media/{file.token}",
                "filename": file.filename,
                "id": file.id,
            }
            text = text or ""
        if text is None or (not text and media is None):
            raise Invalid("write a message, attach a file, or choose a template", code="empty_reply")
        if len(text) > 4096:
            raise Invalid("a WhatsApp message has at most 4096 characters", code="text_too_long")
        if not window_open(conversation, now):
            raise _closed(conversation)
    if conversation.assignee_id is None and agent.user_id is not None:
        conversation.assignee_id = agent.user_id
    key = answer.key or secrets.token_hex(12)
    message = _queue(
        session,
        conversation,
        occurrence=f"reply:{key}"[:64],
        now=now,
        text=text,
        template=template,
        params=list(answer.params) if template is not None else None,
        media=media,
        author_id=agent.user_id,
    )
    conversation.state = State.active
    conversation.waiting_since = None
    conversation.last_agent_at = now
    conversation.last_message_at = max(now, conversation.last_message_at)
    conversation.preview = ("You: " + (text or (template.name if template else "") or "📎 File"))[:200]
    conversation.changed_at = utcnow()
    session.flush()
    return message


def media_kind(mime_type: str) -> str:
    """The WhatsApp message type a file is sent as."""
    major = mime_type.split("/", 1)[0]
    return major if major in ("image", "video", "audio") else "document"


def store_media(
    session: Session, account_id: str, content: bytes, mime_type: str, filename: str | None
) -> MediaFile:
    """Keep a file (an agent's upload, or a user's file fetched from the provider)."""
    if not content:
        raise Invalid("the file is empty", code="empty_file")
    file = MediaFile(
        account_id=account_id,
        token=secrets.token_urlsafe(32),
        mime_type=(mime_type or "application/octet-stream")[:100],
        filename=(filename or None) and filename[:255],
        size=len(content),
        content=content,
        created_at=utcnow(),
    )
    session.add(file)
    session.flush()
    return file


# --- saved replies ---------------------------------------------------------------------------------------


def saved_replies(session: Session, account_id: str) -> list[SavedReply]:
    return list(
        session.scalars(
            select(SavedReply).where(SavedReply.account_id == account_id).order_by(SavedReply.shortcut)
        )
    )


def save_reply(session: Session, account_id: str, shortcut: str, text: str) -> SavedReply:
    shortcut = shortcut.strip().lstrip("/").lower()
    if not shortcut or len(shortcut) > 40 or not all(c.isalnum() or c in "-_" for c in shortcut):
        raise Invalid("a shortcut has 1 to 40 letters, digits, - or _", code="invalid_shortcut")
    text = text.strip()
    if not text or len(text) > 4096:
        raise Invalid("a saved reply has 1 to 4096 characters", code="invalid_text")
    taken = session.scalar(
        select(SavedReply.id).where(SavedReply.account_id == account_id, SavedReply.shortcut == shortcut)
    )
    if taken is not None:
        raise Conflict(f"/{shortcut} is already a saved reply", code="shortcut_taken")
    saved = SavedReply(account_id=account_id, shortcut=shortcut, text=text, created_at=utcnow())
    session.add(saved)
    session.flush()
    return saved


def delete_saved_reply(session: Session, account_id: str, saved_id: int) -> None:
    deleted = session.execute(
        delete(SavedReply).where(SavedReply.id == saved_id, SavedReply.account_id == account_id)
    )
    if not deleted.rowcount:  # type: ignore[attr-defined]
        raise NotFound(f"saved reply {saved_id}")


# --- the inbox -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    state: State | None = None
    campaign_id: int | None = None
    assignee_id: int | None = None  # 0: nobody
    label: str | None = None
    q: str | None = None  # the number, the profile's name, or words of the user's messages


@dataclass(frozen=True)
class Listed:
    conversation: Conversation
    state: State
    name: str | None
    identity: str | None
    assignee: str | None
    campaign: str | None
    labels: list[str]


def _filtered(account_id: str, filters: Filters, now: datetime) -> Any:
    conditions: list[Any] = [Conversation.account_id == account_id]
    if filters.state is not None:
        conditions.append(_state_is(filters.state, now))
    if filters.assignee_id is not None:
        conditions.append(
            Conversation.assignee_id.is_(None)
            if filters.assignee_id == 0
            else Conversation.assignee_id == filters.assignee_id
        )
    if filters.label:
        conditions.append(
            select(ConversationLabel.conversation_id)
            .where(
                ConversationLabel.account_id == account_id,
                ConversationLabel.label == filters.label.strip().lower(),
                ConversationLabel.conversation_id == Conversation.id,
            )
            .exists()
        )
    if filters.campaign_id is not None:
        conditions.append(
            select(InboundMessage.id)
            .where(
                InboundMessage.account_id == account_id,
                InboundMessage.campaign_id == filters.campaign_id,
                InboundMessage.from_phone == Conversation.phone,
            )
            .exists()
        )
    q = (filters.q or "").strip()
    if q:
        like = f"%{q.lower()}%"
        digits = "".join(c for c in q if c.isdigit())
        # The cheapest test first: each conversation is tested in the list's order until a page is full.
        found: list[Any] = [Conversation.phone.like(f"%{digits}%")] if digits else []
        found += [
            select(Profile.id)
            .where(Profile.id == Conversation.profile_id, Profile.name_key.like(like))
            .correlate_except(Profile)  # the list joins profiles too: this one is the subquery's own
            .exists(),
            select(InboundMessage.id)
            .where(
                InboundMessage.account_id == account_id,
                InboundMessage.from_phone == Conversation.phone,
                func.lower(InboundMessage.text).like(like),
            )
            .exists(),
        ]
        conditions.append(or_(*found))
    return and_(*conditions)


def list_conversations(
    session: Session,
    account_id: str,
    filters: Filters,
    *,
    now: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[Listed]:
    """A page of conversations: the oldest waiting first (then the latest message first)."""
    now = now or utcnow()
    rows = session.execute(
        select(
            Conversation, Profile.properties["Name"].as_string(), Profile.identity, User.email, Campaign.name
        )
        .outerjoin(Profile, Profile.id == Conversation.profile_id)
        .outerjoin(User, User.id == Conversation.assignee_id)
        .outerjoin(Campaign, Campaign.id == Conversation.campaign_id)
        .where(_filtered(account_id, filters, now))
        .order_by(
            Conversation.waiting_since.is_(None),
            Conversation.waiting_since,
            Conversation.last_message_at.desc(),
            Conversation.id.desc(),
        )
        .limit(limit)
        .offset(offset)
    ).all()
    labels = labels_of(session, [r[0].id for r in rows])
    return [
        Listed(c, state_of(c, now), name, identity, email, campaign, labels.get(c.id, []))
        for c, name, identity, email, campaign in rows
    ]


def counts(session: Session, account_id: str, *, now: datetime | None = None) -> dict[str, dict[str, int]]:
    """Per shown state: how many conversations, and how many of them have unread messages. Counted per
    kept state in the order of ``ix_conversations_tabs`` (no sort), then the active ones whose window is
    open from a range of it: the other active ones are inactive."""
    now = now or utcnow()
    unread = func.count(case((Conversation.unread > 0, 1)))
    mine = Conversation.account_id == account_id
    found = {s.value: {"total": 0, "unread": 0} for s in State}
    for state, total, waiting in session.execute(
        select(Conversation.state, func.count(), unread).where(mine).group_by(Conversation.state)
    ):
        found[state] = {"total": int(total), "unread": int(waiting)}
    total, waiting = session.execute(
        select(func.count(), unread).where(mine, _state_is(State.active, now))
    ).one()
    kept = found[State.active.value]
    # max(0, …): a conversation may change state between the two statements
    found[State.inactive.value] = {
        "total": max(0, kept["total"] - int(total)),
        "unread": max(0, kept["unread"] - int(waiting)),
    }
    found[State.active.value] = {"total": int(total), "unread": int(waiting)}
    return found


def changed_since(session: Session, account_id: str, since: datetime) -> list[int]:
    """The conversations changed after ``since`` (a live page's poll), newest first, at most 100."""
    return list(
        session.scalars(
            select(Conversation.id)
            .where(Conversation.account_id == account_id, Conversation.changed_at > since)
            .order_by(Conversation.changed_at.desc())
            .limit(100)
        )
    )


@dataclass(frozen=True)
class Item:
    """One line of a thread."""

    at: datetime
    who: str  # "user", "agent" (an agent's reply or a confirmation), "campaign", "note"
    kind: str  # text, image, template, note, …
    text: str
    id: int
    state: str | None = None  # an outbound message's ticks: queued, sending, sent, delivered, read, failed…
    author: str | None = None
    campaign: str | None = None
    media_id: int | None = None  # a kept file (shown at /inbox/media/{id})
    media_state: str | None = None
    data: dict[str, Any] | None = None
    error: str | None = None


def thread(session: Session, conversation: Conversation, *, limit: int = 200) -> list[Item]:
    """The latest ``limit`` lines of the thread, oldest first: the user's messages, the campaign messages
    and agents' replies sent to the number (with their ticks), and the agents' notes."""
    account_id, phone = conversation.account_id, conversation.phone
    items: list[Item] = []
    for m in session.scalars(
        select(InboundMessage)
        .where(InboundMessage.account_id == account_id, InboundMessage.from_phone == phone)
        .order_by(InboundMessage.received_at.desc())
        .limit(limit)
    ):
        items.append(
            Item(
                m.received_at,
                "user",
                m.kind,
                shown(m.kind, m.text),
                m.id,
                media_id=m.media_id,
                media_state=m.media_state,
                data=m.data,
            )
        )
    for out, template, campaign, author in session.execute(
        select(Message, Template.name, Campaign.name, User.email)
        .outerjoin(Template, Template.id == Message.template_id)
        .outerjoin(Campaign, Campaign.id == Message.campaign_id)
        .outerjoin(User, User.id == Message.author_id)
        .where(
            Message.account_id == account_id,
            Message.to_phone == phone,
            or_(Message.conversation_id.is_not(None), Message.state.in_((*SENT_STATES, "failed"))),
        )
        .order_by(Message.created_at.desc())
        .limit(limit)
    ):
        at = out.sent_at or out.created_at
        if out.conversation_id is not None:
            kind = "template" if out.template_id else (out.media or {}).get("kind", "text")
            body = out.text or (f"{template} ({', '.join(out.params or [])})" if template else "")
            items.append(
                Item(
                    at,
                    "agent",
                    kind,
                    body,
                    out.id,
                    state=out.state,
                    author=author or "Tidings",
                    media_id=(out.media or {}).get("id"),
                    error=out.error_detail if out.state in ("failed", "skipped") else None,
                )
            )
        else:
            items.append(
                Item(
                    at,
                    "campaign",
                    "template",
                    campaign or "a campaign",
                    out.id,
                    state=out.state,
                    campaign=campaign,
                    error=out.error_detail if out.state == "failed" else None,
                )
            )
    for note, author in session.execute(
        select(ConversationNote, User.email)
        .outerjoin(User, User.id == ConversationNote.author_id)
        .where(ConversationNote.conversation_id == conversation.id)
        .order_by(ConversationNote.created_at.desc())
        .limit(limit)
    ):
        items.append(Item(note.created_at, "note", "note", note.text, note.id, author=author or "API"))
    items.sort(key=lambda i: (i.at, i.id))
    return items[-limit:]


def outbound_states(session: Session, conversation: Conversation, ids: Sequence[int]) -> dict[int, str]:
    """The current state of these outbound messages of the thread (for the live ticks)."""
    if not ids:
        return {}
    return {
        i: s
        for i, s in session.execute(
            select(Message.id, Message.state).where(
                Message.id.in_(list(ids)), Message.account_id == conversation.account_id
            )
        )
    }


def profile_campaigns(
    session: Session, account_id: str, profile_id: int, limit: int = 10
) -> list[tuple[str, str, datetime | None]]:
    """The campaigns that reached this profile, latest first: name, the message's state, when sent."""
    rows = session.execute(
        select(Campaign.name, Message.state, Message.sent_at)
        .join(Campaign, Campaign.id == Message.campaign_id)
        .where(
            Message.account_id == account_id, Message.profile_id == profile_id, Message.state.in_(SENT_STATES)
        )
        .order_by(Message.created_at.desc())
        .limit(limit)
    ).all()
    return [(r[0], r[1], r[2]) for r in rows]


def conversation_by_phone(session: Session, account_id: str, phone: str) -> Conversation | None:
    e164 = normalize_phone(phone) or phone
    return session.scalar(
        select(Conversation).where(Conversation.account_id == account_id, Conversation.phone == e164)
    )


def profile_inbound(
    session: Session, account_id: str, identity: str, limit: int = 50, offset: int = 0
) -> tuple[list[InboundMessage], int]:
    """A page of the messages the profile sent, newest first, and how many it sent (NotFound if no
    profile); ix_inbound_profile serves both."""
    from tidings.profiles.service import get_profile

    profile = get_profile(session, account_id, identity)
    mine = (InboundMessage.account_id == account_id, InboundMessage.profile_id == profile.id)
    total = session.scalar(select(func.count()).select_from(InboundMessage).where(*mine)) or 0
    page = session.scalars(
        select(InboundMessage)
        .where(*mine)
        .order_by(InboundMessage.received_at.desc(), InboundMessage.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return list(page), total
