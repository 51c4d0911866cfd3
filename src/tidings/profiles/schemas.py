"""Request and response models of the ingest (CleverTap's own shapes) and of the profiles API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# ------------------------------------------------------------------------------------------ /1/upload


class UploadRequest(BaseModel):
    """CleverTap's upload body: up to 1000 profile and event records."""

    d: list[dict[str, Any]] = Field(
        max_length=1000,
        description=(
            'Records. A profile: `{"type": "profile", "identity": "42", "ts": 1468308340, '
            '"profileData": {"Phone": "+14155552671", "MSG-whatsapp": true, "Tags": {"$add": ["vip"]}}}`. '
            'An event: `{"type": "event", "identity": "42", "evtName": "Charged", '
            '"evtData": {"Amount": 300}}`. '
            "`identity` (or `objectId`) is a string or number of at most 120 characters; `ts` is optional, "
            "in UNIX epoch seconds."
        ),
    )


class UnprocessedRecord(BaseModel):
    status: Literal["fail"] = "fail"
    code: int = Field(
        description=(
            "509 missing event name, 512 bad structure, 516 invalid phone, 523 missing identity, "
            "524 neither profile nor event, 525 ts not epoch seconds"
        )
    )
    error: str = Field(description="What is wrong, naming the record by its index in `d`")
    record: Any = Field(description="The record as sent")


class UploadResponse(BaseModel):
    status: Literal["success"] = "success"
    processed: int = Field(description="How many records were written")
    unprocessed: list[UnprocessedRecord] = Field(description="The records that were not written, and why")


class UploadFailure(BaseModel):
    """The whole call was refused and nothing was written."""

    status: Literal["fail"] = "fail"
    error: str
    code: int = Field(
        description="The HTTP status: 400 bad body, 401 bad credentials, 405 not a POST, 413 body over "
        "8 MiB, 429 too many failed sign-ins (see `Retry-After`), 500/503 try again later"
    )


# ------------------------------------------------------------------------------------------ /api/v1/profiles


class ProfileOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    identity: str
    phone: str | None = Field(description="E.164, from the `Phone` property")
    whatsapp_opt_in: bool = Field(description="The `MSG-whatsapp` property; false until set true")
    properties: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class ProfilePage(BaseModel):
    total: int | None = Field(description="How many profiles the account has (null in a search: not counted)")
    limit: int
    offset: int
    items: list[ProfileOut] = Field(
        description="Newest first; in a search (`q`), those found by identity, then by phone, then by name"
    )
    next_cursor: str | None = Field(
        default=None, description="In a search: pass it as `cursor` for the next page; null after the last"
    )


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    properties: dict[str, Any]
    ts: datetime = Field(description="When the event happened (the record's `ts`, else when it arrived)")
    created_at: datetime


class EventPage(BaseModel):
    identity: str
    total: int = Field(description="How many events the profile has")
    limit: int
    offset: int
    items: list[EventOut] = Field(description="Latest first")


class ConsentChangeOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    old_value: bool | None = Field(
        description="`MSG-whatsapp` before; null when the change created the profile"
    )
    new_value: bool = Field(description="`MSG-whatsapp` after")
    source: Literal["upload", "api", "dashboard", "keyword"] = Field(
        description="`upload` POST /1/upload, `api` PUT …/consent, `dashboard` the profile page, `keyword` a "
        "STOP/START keyword sent by WhatsApp"
    )
    actor: str | None = Field(
        description="Who: an API key's name or `passcode` (upload, api), a user's e-mail (dashboard), the "
        "phone number that sent the keyword (keyword)"
    )
    changed_at: datetime


class ConsentPage(BaseModel):
    identity: str
    total: int = Field(description="How many changes the profile has")
    limit: int
    offset: int
    items: list[ConsentChangeOut] = Field(description="Newest first")


class ConsentUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    whatsapp: bool = Field(description="Opt in (true) or out (false) of WhatsApp (`MSG-whatsapp`)")


class ProfileMessageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    campaign_id: int | None
    campaign_name: str | None
    variant: str | None = Field(description="The variant's key (A, B, …) of a multivariate campaign")
    state: str = Field(description="queued, sending, sent, delivered, read, failed, control or skipped")
    reason: str | None = Field(description="Why it was skipped or failed")
    error_detail: str | None
    to_phone: str | None
    params: list[str] | None = Field(description="The rendered {{n}} values")
    text: str | None = Field(description="Free text (an agent's reply)")
    created_at: datetime
    sent_at: datetime | None
    delivered_at: datetime | None
    read_at: datetime | None
    replied_at: datetime | None
    failed_at: datetime | None


class ProfileMessagePage(BaseModel):
    identity: str
    total: int = Field(description="How many messages the profile has")
    limit: int
    offset: int
    items: list[ProfileMessageOut] = Field(description="Newest first")


class CatalogueEvent(BaseModel):
    name: str
    last_seen_at: datetime = Field(description="When an event of this name was last uploaded (to the hour)")
    properties: dict[str, datetime] = Field(description="Its property names, each with when last uploaded")


class PropertyCatalogueOut(BaseModel):
    profile: dict[str, datetime] = Field(
        description="The profile property names uploaded, each with when last uploaded (to the hour)"
    )
    events: list[CatalogueEvent] = Field(description="By name")
