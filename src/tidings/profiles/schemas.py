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
    total: int = Field(description="How many profiles the account has")
    limit: int
    offset: int
    items: list[ProfileOut] = Field(description="Newest first")


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
