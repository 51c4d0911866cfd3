"""The CleverTap-compatible ingest (``POST /1/upload``) and the profiles read API (``/api/v1/profiles``)."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from tidings.bounds import Offset
from tidings.campaigns.triggers import on_events
from tidings.conversations import service as conversations
from tidings.conversations.schemas import InboundOut, InboundPage
from tidings.db import utcnow
from tidings.deps import MARKETER, CurrentAccount, CurrentCaller, Db, record_key_use, require, sign_in
from tidings.errors import Forbidden, Invalid, TooManySignIns
from tidings.profiles import service
from tidings.profiles.schemas import (
    CatalogueEvent,
    ConsentChangeOut,
    ConsentPage,
    ConsentUpdate,
    EventOut,
    EventPage,
    ProfileMessageOut,
    ProfileMessagePage,
    ProfileOut,
    ProfilePage,
    PropertyCatalogueOut,
    UploadFailure,
    UploadRequest,
    UploadResponse,
)
from tidings.users.models import Role

# ``/1/upload`` signs the caller in itself, to answer in CleverTap's shape; the profile routes declare the
# role they need as every router does.
upload_router = APIRouter()
router = APIRouter(dependencies=[MARKETER])


class CleverTapJSONResponse(JSONResponse):
    """ASCII JSON: records are echoed back as sent, even with a lone surrogate escape in a string."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


class BadUpload(ValueError):
    pass


def _fail(status: int, error: str) -> CleverTapJSONResponse:
    return CleverTapJSONResponse({"status": "fail", "error": error, "code": status}, status_code=status)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} is out of range")
    return value


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def parse_upload(body: bytes) -> list[Any]:
    """The records of an upload body ``{"d": [...]}``; raises BadUpload with a clear message."""
    try:
        document = json.loads(body, parse_float=_finite, parse_constant=_constant)
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise BadUpload(f"The request body is not valid JSON: {reason}") from None
    if not isinstance(document, dict):
        raise BadUpload('The request body must be a JSON object {"d": [records]}')
    records = document.get("d")
    if not isinstance(records, list):
        raise BadUpload('The request body must have a list of records in "d": {"d": [records]}')
    if len(records) > service.MAX_RECORDS:
        raise BadUpload(
            f"Too many records: {len(records)}; at most {service.MAX_RECORDS} records are allowed per call"
        )
    return records


async def _raw_body(request: Request) -> bytes:
    return await request.body()


_UPLOAD_EXAMPLE = {
    "d": [
        {
            "identity": "1189549",
            "ts": 1468308340,
            "type": "profile",
            "profileData": {
                "Name": "Jack Montana",
                "Phone": "+14155552671",
                "MSG-whatsapp": True,
                "DOB": "$D_1487576752",
                "Tags": {"$add": ["shoes", "bags"]},
                "Visits": {"$incr": 1},
            },
        },
        {
            "identity": "1189549",
            "type": "event",
            "evtName": "Charged",
            "evtData": {"Amount": 300, "Currency": "USD", "Delivery By": "$D_1468322268"},
        },
    ]
}


@upload_router.post(
    "/1/upload",
    tags=["ingest"],
    summary="Upload profiles and events (CleverTap-compatible)",
    description=(
        "CleverTap's `POST /1/upload`: authenticate with the headers `X-CleverTap-Account-Id` and "
        "`X-CleverTap-Passcode`. Each record is applied in order; a record that cannot be applied is "
        "returned in `unprocessed` with CleverTap's code, and the others are kept. A body that is not "
        'JSON, not `{"d": [...]}`, or has more than 1000 records is refused (400) and nothing is written.'
    ),
    response_class=CleverTapJSONResponse,
    response_model=None,
    responses={
        200: {"model": UploadResponse, "description": "Processed (check `unprocessed`)"},
        400: {"model": UploadFailure, "description": "Bad body; nothing written"},
        401: {
            "model": UploadFailure,
            "description": "Wrong account id or passcode, or an unknown or revoked API key; nothing written",
        },
        403: {"model": UploadFailure, "description": "The API key's role is not marketer or admin"},
        413: {
            "model": UploadFailure,
            "description": "Body over 8 MiB; refused before it is read whole or authenticated",
        },
        429: {
            "model": UploadFailure,
            "description": "Too many failed sign-ins from this address or for this account; retry after "
            "the `Retry-After` header's seconds",
        },
        500: {"model": UploadFailure, "description": "Unexpected failure (logged); nothing written"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": UploadRequest.model_json_schema(), "example": _UPLOAD_EXAMPLE}
            },
        }
    },
)
def upload(request: Request, db: Db, body: Annotated[bytes, Depends(_raw_body)]) -> CleverTapJSONResponse:
    with db.session() as session:
        try:
            caller = sign_in(request, session)
        except TooManySignIns as exc:
            refused = _fail(429, f"Too many failed sign-ins; try again in {exc.wait} seconds")
            refused.headers["Retry-After"] = str(exc.wait)
            return refused
        if caller is None:
            return _fail(401, "Account ID or passcode is not valid")
        try:
            require(caller, Role.marketer)
        except Forbidden as exc:
            return _fail(403, exc.message)
        record_key_use(session, caller)
        account = caller.account
        try:
            records = parse_upload(body)
        except BadUpload as exc:
            return _fail(400, str(exc))
        now = utcnow()
        result = service.ingest(session, account.id, records, now=now, actor=caller.actor)
        # Live campaigns are planned in the same transaction as the events: none lost, none doubled.
        planned = on_events(session, account.id, [event.id for event in result.events], now)
    worker = request.app.state.worker
    if planned and worker is not None:  # committed: let this process's dispatcher take them now
        worker.nudge()
    return CleverTapJSONResponse(
        {"status": "success", "processed": result.processed, "unprocessed": result.unprocessed}
    )


Limit = Annotated[int, Query(ge=1, le=500, description="Page size")]


@router.get(
    "/api/v1/profiles",
    tags=["profiles"],
    response_model=ProfilePage,
    summary="List or find profiles",
    description=(
        "Without `q`: the account's profiles, newest first, paged by `offset`, with the total. With `q`: the "
        "profiles whose identity starts with `q`, then those whose phone starts with it (in any format "
        "that reads as an E.164 number, or digits), then those whose `Name` starts with it whatever the "
        "case; paged by `cursor` (`next_cursor` of the page before), not counted."
    ),
)
def list_profiles(
    account: CurrentAccount,
    db: Db,
    limit: Limit = 50,
    offset: Offset = 0,
    q: Annotated[str | None, Query(max_length=200, description="Find by identity, phone or name")] = None,
    cursor: Annotated[str | None, Query(max_length=1000, description="A search's `next_cursor`")] = None,
) -> ProfilePage:
    with db.read() as session:
        if q is None or not q.strip():
            if cursor is not None:
                raise Invalid("a cursor pages a search: give `q` with it", code="invalid_cursor")
            profiles, total = service.list_profiles(session, account.id, limit, offset)
            return ProfilePage(
                total=total,
                limit=limit,
                offset=offset,
                items=[ProfileOut.model_validate(p) for p in profiles],
            )
        if offset:
            raise Invalid("a search is paged by `cursor`, not `offset`", code="invalid_offset")
        found, next_cursor = service.find_profiles(session, account.id, q, limit, cursor)
        return ProfilePage(
            total=None,
            limit=limit,
            offset=0,
            items=[ProfileOut.model_validate(p) for p in found],
            next_cursor=next_cursor,
        )


@router.get(
    "/api/v1/properties",
    tags=["profiles"],
    response_model=PropertyCatalogueOut,
    summary="The property names the account has uploaded",
    description=(
        "For pickers: the profile property names and, per event name, the event property names the "
        "account has uploaded, each with when it was last uploaded (kept to the hour). Read from a "
        "catalogue the upload keeps, not from the events."
    ),
)
def list_properties(account: CurrentAccount, db: Db) -> PropertyCatalogueOut:
    with db.read() as session:
        catalogue = service.property_catalogue(session, account.id)
    return PropertyCatalogueOut(
        profile=catalogue.profile,
        events=[
            CatalogueEvent(name=name, last_seen_at=seen, properties=properties)
            for name, (seen, properties) in catalogue.events.items()
        ],
    )


# Declared before the profile route: an identity may hold "/", so both use the path converter.
@router.get(
    "/api/v1/profiles/{identity:path}/events",
    tags=["profiles"],
    response_model=EventPage,
    summary="A profile's events, latest first",
)
def list_events(
    identity: str, account: CurrentAccount, db: Db, limit: Limit = 50, offset: Offset = 0
) -> EventPage:
    with db.read() as session:
        events, total = service.list_events(session, account.id, identity, limit, offset)
        return EventPage(
            identity=identity,
            total=total,
            limit=limit,
            offset=offset,
            items=[EventOut.model_validate(e) for e in events],
        )


@router.get(
    "/api/v1/profiles/{identity:path}/consent",
    tags=["profiles"],
    response_model=ConsentPage,
    summary="A profile's consent history, newest first",
)
def consent_history(
    identity: str, account: CurrentAccount, db: Db, limit: Limit = 50, offset: Offset = 0
) -> ConsentPage:
    with db.read() as session:
        changes, total = service.consent_history(session, account.id, identity, limit, offset)
        return ConsentPage(
            identity=identity,
            total=total,
            limit=limit,
            offset=offset,
            items=[ConsentChangeOut.model_validate(c) for c in changes],
        )


@router.put(
    "/api/v1/profiles/{identity:path}/consent",
    tags=["profiles"],
    response_model=ProfileOut,
    summary="Opt a profile in or out of WhatsApp by hand",
    description=(
        "Sets `MSG-whatsapp`, recorded in the consent history with source `api` and the caller (the API "
        "key's name, or `passcode`). Opting out settles the profile's unsent messages as skipped "
        "`not_opted_in`. Setting the value it has already changes nothing and records nothing."
    ),
)
def change_consent(identity: str, body: ConsentUpdate, caller: CurrentCaller, db: Db) -> ProfileOut:
    with db.session() as session:
        profile = service.change_consent(
            session, caller.account.id, identity, body.whatsapp, service.ConsentSource.api, caller.actor
        )
        return ProfileOut.model_validate(profile)


@router.get(
    "/api/v1/profiles/{identity:path}/messages",
    tags=["profiles"],
    response_model=ProfileMessagePage,
    summary="The WhatsApp messages sent to a profile, newest first",
    description=(
        "Outbound: every ledger message planned or sent to the profile (campaign messages, agents' "
        "replies, consent confirmations), with its state. The messages the user sent: `…/inbound`."
    ),
)
def profile_messages(
    identity: str, account: CurrentAccount, db: Db, limit: Limit = 50, offset: Offset = 0
) -> ProfileMessagePage:
    with db.read() as session:
        messages, total = service.profile_messages(session, account.id, identity, limit, offset)
    return ProfileMessagePage(
        identity=identity,
        total=total,
        limit=limit,
        offset=offset,
        items=[ProfileMessageOut.model_validate(m) for m in messages],
    )


@router.get(
    "/api/v1/profiles/{identity:path}/inbound",
    tags=["profiles"],
    response_model=InboundPage,
    summary="The WhatsApp messages a profile sent, newest first",
    description=(
        "Inbound: what the user sent from the profile's number (text, buttons tapped, files, reactions, "
        "locations), each with the campaign it answers when it answers one. Their conversation: "
        "`/api/v1/conversations?q=<phone>`."
    ),
)
def profile_inbound(
    identity: str, account: CurrentAccount, db: Db, limit: Limit = 50, offset: Offset = 0
) -> InboundPage:
    with db.read() as session:
        messages, total = conversations.profile_inbound(session, account.id, identity, limit, offset)
        items = [InboundOut.model_validate(m) for m in messages]
    return InboundPage(identity=identity, total=total, limit=limit, offset=offset, items=items)


@router.get(
    "/api/v1/profiles/{identity:path}", tags=["profiles"], response_model=ProfileOut, summary="One profile"
)
def get_profile(identity: str, account: CurrentAccount, db: Db) -> ProfileOut:
    with db.read() as session:
        return ProfileOut.model_validate(service.get_profile(session, account.id, identity))
