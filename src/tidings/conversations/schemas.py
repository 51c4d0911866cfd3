"""Request and response models of the conversations API (``/api/v1/conversations``, saved replies, files)
and of a profile's inbound messages (``/api/v1/profiles/{identity}/inbound``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tidings.bounds import Id
from tidings.conversations.models import State

_USER_ID = (
    "The user of the account the API key acts for (an agent): the reply's author, the one who takes the "
    "conversation. Without it the call acts for nobody in particular; an admin's key may act over whoever "
    "holds the conversation, another key only on a conversation nobody else holds."
)


class ActAs(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"user_id": 7}]})

    user_id: Id | None = Field(None, description=_USER_ID)


class AssignRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"user_id": 7}]})

    user_id: Id | None = Field(
        description="The user who holds the conversation from now on; null: nobody. Only an admin assigns "
        "a conversation to someone else; an agent's key may give back (null) what its user holds."
    )
    acting_user_id: Id | None = Field(None, description=_USER_ID)


class LabelsRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"labels": ["refund", "vip"], "user_id": 7}]}
    )

    labels: list[str] = Field(
        max_length=20,
        description="The conversation's labels from now on (at most 20, each at most 40 characters); kept "
        "trimmed, in lower case, without repeats. An empty list removes them all.",
    )
    user_id: Id | None = Field(None, description=_USER_ID)


class NoteRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"text": "Called them back; refund on its way."}]}
    )

    text: str = Field(max_length=4096, description="1 to 4096 characters; seen by agents only, never sent.")
    user_id: Id | None = Field(None, description=_USER_ID + " Here: the note's author.")


class ReplyRequest(BaseModel):
    """Free text, a file (``media_id``, with ``text`` as its caption), or a template with its values."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"text": "Your order ships tomorrow.", "idempotency_key": "ticket-4711-1", "user_id": 7},
                {"template_id": 3, "params": ["Ada", "4711"]},
                {"media_id": 12, "text": "The invoice"},
            ]
        },
    )

    text: str | None = Field(
        None, max_length=4096, description="Free text (or a file's caption): only inside the 24-hour window."
    )
    template_id: Id | None = Field(
        None, description="An approved template: at any time (with the user opted in once the window closed)."
    )
    params: list[str] = Field(
        default_factory=list, max_length=100, description="The template's `{{n}}` values, in order."
    )
    media_id: Id | None = Field(None, description="A file uploaded with `POST /api/v1/media`.")
    idempotency_key: str | None = Field(
        None,
        max_length=56,
        description="The same key twice queues one message (a retry after a lost answer sends once).",
    )
    user_id: Id | None = Field(None, description=_USER_ID)


class SavedReplyCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"shortcut": "thanks", "text": "Thank you for writing to us!"}]},
    )

    shortcut: str = Field(
        max_length=41, description="1 to 40 letters, digits, `-` or `_` (a leading `/` is dropped); unique."
    )
    text: str = Field(max_length=4096, description="1 to 4096 characters.")


class SavedReplyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    shortcut: str = Field(description="Typed after `/` in the reply box.")
    text: str
    created_at: datetime


class ConversationOut(BaseModel):
    """One conversation: the thread with one WhatsApp number."""

    id: int
    phone: str = Field(description="The user's number, E.164.", examples=["+14155552671"])
    state: State = Field(
        description="`new` (nobody answered yet), `active` (an agent answered, the window is open), "
        "`pending` (the user answered the agent), `inactive` (active, but the 24-hour window has closed), "
        "`resolved`."
    )
    window_open: bool = Field(
        description="Free text and files may be sent (the user wrote in the last 24 h)."
    )
    window_closes_at: datetime | None = Field(
        description="When the 24-hour window closes (or closed); null when the user never wrote."
    )
    unread: int = Field(description="The user's messages no agent has opened yet.")
    preview: str = Field(description="The latest message, as one line.")
    identity: str | None = Field(description="The profile's identity (null once the profile was deleted).")
    name: str | None = Field(description="The profile's `Name`.")
    assignee_id: int | None = Field(description="The user who holds it; null: nobody.")
    assignee: str | None = Field(description="That user's e-mail.")
    labels: list[str]
    campaign_id: int | None = Field(description="The campaign the user's latest attributed reply answered.")
    campaign: str | None = Field(description="That campaign's name.")
    waiting_since: datetime | None = Field(description="Since when the user waits for an answer.")
    last_message_at: datetime
    last_inbound_at: datetime | None
    created_at: datetime


class StateCount(BaseModel):
    total: int
    unread: int = Field(description="How many of them have unread messages.")


class ConversationCounts(BaseModel):
    counts: dict[State, StateCount] = Field(description="Per shown state (the inbox's tabs).")


class ConversationPage(ConversationCounts):
    limit: int
    offset: int
    items: list[ConversationOut] = Field(
        description="The oldest waiting first (new and pending by `waiting_since`), then the latest message."
    )


class ThreadItem(BaseModel):
    """One line of the thread."""

    model_config = ConfigDict(from_attributes=True)

    id: int = Field(description="The inbound message's, ledger message's or note's id (by `who`).")
    at: datetime
    who: str = Field(
        description="`user` (an inbound message), `agent` (an agent's reply or a consent confirmation), "
        "`campaign` (a campaign message), `note` (a private note)."
    )
    kind: str = Field(description="text, image, video, audio, document, template, location, note, …")
    text: str
    state: str | None = Field(
        description="An outbound message's state: queued, sent, delivered, read, failed…"
    )
    author: str | None = Field(description="The agent's e-mail (a reply or a note).")
    campaign: str | None
    media_id: int | None = Field(description="A file the user sent, at `GET /api/v1/media/{id}`.")
    media_state: str | None = Field(description="A user's file: pending (being fetched), fetched, failed.")
    data: dict[str, Any] | None = Field(description="A reaction, location or contact card.")
    error: str | None = Field(description="Why an outbound message failed.")


class ReachedBy(BaseModel):
    name: str = Field(description="The campaign's name.")
    state: str = Field(description="Its message's state: sent, delivered or read.")
    sent_at: datetime | None


class ProfileSummary(BaseModel):
    identity: str
    name: str | None
    phone: str | None
    whatsapp_opt_in: bool = Field(description="`MSG-whatsapp`: a template may be sent outside the window.")
    campaigns: list[ReachedBy] = Field(description="The campaigns that reached the profile, latest first.")


class ConversationDetail(BaseModel):
    conversation: ConversationOut
    thread: list[ThreadItem] = Field(description="Its latest lines, oldest first.")
    profile: ProfileSummary | None = Field(description="Null once the profile was deleted.")


class NoteOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    conversation_id: int
    author_id: int | None
    text: str
    created_at: datetime


class QueuedReply(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int = Field(description="The ledger message's id (its state also at the profile's messages).")
    conversation_id: int
    state: str = Field(description="`queued`: the dispatcher sends it; then sent, delivered, read or failed.")
    created_at: datetime


class MediaOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int = Field(description="Send it as a reply's `media_id`.")
    mime_type: str
    filename: str | None
    size: int = Field(description="In bytes.")


class InboundOut(BaseModel):
    """A message the user sent."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    from_phone: str
    provider: str
    provider_message_id: str
    kind: str = Field(description="text, button, interactive, image, video, audio, document, location, …")
    text: str = Field(description="What the user wrote or tapped, or a file's caption.")
    payload: str | None = Field(description="A tapped button's payload.")
    data: dict[str, Any] | None = Field(description="A reaction, location or contact card.")
    media_id: int | None = Field(description="The file the user sent, at `GET /api/v1/media/{id}`.")
    media_state: str | None
    campaign_id: int | None = Field(description="The campaign whose message it answers.")
    answers_message_id: int | None = Field(description="The ledger message it answers.")
    received_at: datetime


class InboundPage(BaseModel):
    identity: str
    total: int = Field(description="How many messages the profile sent")
    limit: int
    offset: int
    items: list[InboundOut] = Field(description="Newest first")
