"""The CleverTap-compatible ingest (``POST /1/upload``) and the profiles read API (``/api/v1/profiles``)."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from tidings.bounds import Offset
from tidings.campaigns.triggers import on_events
from tidings.db import utcnow
from tidings.deps import MARKETER, CurrentAccount, Db, record_key_use, require, sign_in
from tidings.errors import Forbidden, TooManySignIns
from tidings.profiles import service
from tidings.profiles.schemas import (
    EventOut,
    EventPage,
    ProfileOut,
    ProfilePage,
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
        result = service.ingest(session, account.id, records, now=now)
        # Live campaigns are planned in the same transaction as the events: none lost, none doubled.
        planned = on_events(session, account.id, [event.id for event in result.events], now)
    worker = request.app.state.worker
    if planned and worker is not None:  # committed: let this process's dispatcher take them now
        worker.nudge()
    return CleverTapJSONResponse(
        {"status": "success", "processed": result.processed, "unprocessed": result.unprocessed}
    )


Limit = Annotated[int, Query(ge=1, le=500, description="Page size")]


@router.get("/api/v1/profiles", tags=["profiles"], response_model=ProfilePage, summary="List profiles")
def list_profiles(account: CurrentAccount, db: Db, limit: Limit = 50, offset: Offset = 0) -> ProfilePage:
    with db.read() as session:
        profiles, total = service.list_profiles(session, account.id, limit, offset)
        return ProfilePage(
            total=total, limit=limit, offset=offset, items=[ProfileOut.model_validate(p) for p in profiles]
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
    "/api/v1/profiles/{identity:path}", tags=["profiles"], response_model=ProfileOut, summary="One profile"
)
def get_profile(identity: str, account: CurrentAccount, db: Db) -> ProfileOut:
    with db.read() as session:
        return ProfileOut.model_validate(service.get_profile(session, account.id, identity))
