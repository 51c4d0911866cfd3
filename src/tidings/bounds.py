"""Numbers and times the API accepts: what the databases can hold. An id that no row can have (zero,
negative, past 2^63) is simply not found (404); any other number past what a 64-bit column holds, or a
time without a zone, is refused with 422 ``validation_error`` — never an error in the database."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import Query
from pydantic import AfterValidator, AwareDatetime

MAX_INT64 = 2**63 - 1
NO_ROW = 0  # no row has this id: looking it up finds nothing


def _row_id(value: int) -> int:
    return value if 1 <= value <= MAX_INT64 else NO_ROW


# The id of a row, in a path (``/api/v1/campaigns/{campaign_id}``) or a body (``template_id``).
Id = Annotated[int, AfterValidator(_row_id)]
# How many rows a list skips.
Offset = Annotated[int, Query(ge=0, le=MAX_INT64, description="How many to skip")]


def _utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time is out of range once converted to UTC") from None


# A point in time sent to the API: with its time zone (a time without one is refused, since the account's
# zone, the user's and UTC would each read it differently), kept in UTC.
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_utc)]
