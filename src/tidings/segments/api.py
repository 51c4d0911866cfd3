"""Segments API: a thin router over ``tidings.segments.service``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from tidings.bounds import Id
from tidings.db import utcnow
from tidings.deps import MARKETER, CurrentAccount, Db
from tidings.errors import Invalid, error_responses
from tidings.segments import service
from tidings.segments.schemas import (
    EstimateOut,
    EstimateRequest,
    SegmentCreate,
    SegmentOut,
    SegmentUpdate,
)

router = APIRouter(prefix="/api/v1/segments", tags=["segments"], dependencies=[MARKETER])


ERRORS = {
    401: "Missing or wrong account id / passcode, or an unknown or revoked API key (`unauthorized`).",
    404: "No such segment in this account (`not_found`).",
    409: "`segment_exists`: the account has a segment with this name; `segment_in_use`: another segment, "
    "or a campaign still to run, refers to it.",
    422: "Refused input; `message` says where. `invalid_segment`: the definition is malformed "
    "(e.g. `definition.and[1].did.count.at_least must be a positive integer`); `segment_not_found`: "
    "it refers to a segment id the account does not have; `segment_cycle`: saved segments would refer "
    "to each other in a circle; `invalid_name`; `validation_error`: a malformed request.",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return error_responses(ERRORS, *statuses)


@router.post("", status_code=201, response_model=SegmentOut, responses=_errors(401, 409, 422))
def create_segment(payload: SegmentCreate, db: Db, account: CurrentAccount) -> SegmentOut:
    """Save a named segment definition."""
    with db.session() as session:
        segment = service.create_segment(
            session, account.id, name=payload.name, definition=payload.raw_definition()
        )
        return SegmentOut.model_validate(segment)


@router.get("", response_model=list[SegmentOut], responses=_errors(401))
def list_segments(db: Db, account: CurrentAccount) -> list[SegmentOut]:
    """The account's segments, by name."""
    with db.read() as session:
        return [SegmentOut.model_validate(s) for s in service.list_segments(session, account.id)]


@router.post("/estimate", response_model=EstimateOut, responses=_errors(401, 422))
def estimate(payload: EstimateRequest, db: Db, account: CurrentAccount) -> EstimateOut:
    """How many of the account's profiles a definition selects now (saved segments may be referred to
    with `{"segment_id": N}`)."""
    with db.read() as session:
        count = service.estimate(session, account.id, payload.raw_definition(), utcnow(), root="definition")
        return EstimateOut(count=count)


@router.get("/{segment_id}", response_model=SegmentOut, responses=_errors(401, 404, 422))
def get_segment(segment_id: Id, db: Db, account: CurrentAccount) -> SegmentOut:
    with db.read() as session:
        return SegmentOut.model_validate(service.get_segment(session, account.id, segment_id))


@router.patch("/{segment_id}", response_model=SegmentOut, responses=_errors(401, 404, 409, 422))
def update_segment(segment_id: Id, payload: SegmentUpdate, db: Db, account: CurrentAccount) -> SegmentOut:
    """Change the name and/or the definition. Campaigns that refer to the segment and have not started yet
    will use the new definition."""
    sent = payload.model_fields_set
    for field in ("name", "definition"):
        if field in sent and getattr(payload, field) is None:
            raise Invalid(f"{field} cannot be null; leave it out to keep it", code=f"invalid_{field}")
    with db.session() as session:
        segment = service.update_segment(
            session, account.id, segment_id, name=payload.name, definition=payload.raw_definition()
        )
        return SegmentOut.model_validate(segment)


@router.delete(
    "/{segment_id}", status_code=204, response_class=Response, responses=_errors(401, 404, 409, 422)
)
def delete_segment(segment_id: Id, db: Db, account: CurrentAccount) -> None:
    """Delete a segment; refused with `segment_in_use` while another segment or a campaign still to run
    refers to it."""
    with db.session() as session:
        service.delete_segment(session, account.id, segment_id)
