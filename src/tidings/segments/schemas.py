"""Request and response models of the segments API.

The definition models (``SegmentDefinition`` and the ``Segment…`` nodes) document the language in the
OpenAPI schema. Requests are not validated against them by pydantic: the service checks a definition itself
so that a refusal names the faulty part (``definition.and[1].did.count.at_least must be a positive
integer``) instead of listing every branch of a union.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, SerializeAsAny, SkipValidation

from tidings.segments.compiler import PropertyOp

__all__ = ["EstimateOut", "EstimateRequest", "SegmentCreate", "SegmentOut", "SegmentUpdate"]

Scalar = str | float | int | bool

_OPS = """How the property's value is tested (a missing property fails every test but `not_equals` and
`not_exists`; types are not converted: `"30"` is a string, `30` a number, `true` a boolean):
`equals` / `not_equals` (value: string, number or boolean); `in` (value: a list of them);
`contains` (a string value: a substring of a string property, or an element of a list property; a number or
boolean: an element of a list property); `exists` / `not_exists` (no value);
`gt` / `gte` / `lt` / `lte` (a number compares numbers, a string compares strings in code point order);
`before` / `after` (value: `YYYY-MM-DD` — the whole day, in UTC — or a date-time with its offset such as
`2025-03-01T09:30:00Z`; the property must hold a date as stored, `YYYY-MM-DDTHH:MM:SSZ`);
`within_last_days` / `within_next_days` (value: N, a whole number of days; the date lies in [now - N days,
now] or [now, now + N days])."""


class SegmentPropertyCondition(BaseModel):
    """A test on a profile property (or, inside `did.where`, on a property of the event)."""

    model_config = ConfigDict(
        json_schema_mode_override="validation",
        extra="forbid",
        json_schema_extra={"examples": [{"property": "City", "op": "equals", "value": "Pune"}]},
    )

    property: str = Field(min_length=1, description="The property's name, as uploaded (case-sensitive).")
    op: PropertyOp = Field(description=_OPS)
    value: Scalar | list[Scalar] | None = Field(
        default=None, description="What to compare with; see `op`. Not used by `exists` / `not_exists`."
    )


class SegmentCount(BaseModel):
    """How many times (default: at least once). `at_least` and `at_most` may be combined."""

    model_config = ConfigDict(json_schema_mode_override="validation", extra="forbid")

    at_least: int | None = Field(default=None, ge=1)
    at_most: int | None = Field(default=None, ge=0)
    exactly: int | None = Field(default=None, ge=0)


class SegmentPeriod(BaseModel):
    """One of minutes, hours or days: the window [now - N, now]."""

    model_config = ConfigDict(json_schema_mode_override="validation", extra="forbid")

    minutes: int | None = Field(default=None, ge=1)
    hours: int | None = Field(default=None, ge=1)
    days: int | None = Field(default=None, ge=1)


class SegmentBetween(BaseModel):
    """From and/or to, both included: `YYYY-MM-DD` (from the start of that day to its end, UTC) or a
    date-time with its offset."""

    model_config = ConfigDict(json_schema_mode_override="validation", extra="forbid", populate_by_name=True)

    from_: str | None = Field(default=None, alias="from", examples=["2025-01-01"])
    to: str | None = Field(default=None, examples=["2025-01-31T18:00:00+05:30"])


class SegmentEvent(BaseModel):
    """Past behaviour: the profile did `event` (with `where` holding on the event's properties) `count`
    times in the window `in_the_last` or `between`, or ever (no window)."""

    model_config = ConfigDict(json_schema_mode_override="validation", extra="forbid")

    event: str = Field(min_length=1, description="The event name, e.g. `Charged`.")
    where: list[SegmentEventNode] | SegmentEventNode | None = Field(
        default=None, description="Conditions on the event's properties (a list: all of them)."
    )
    count: SegmentCount | None = None
    in_the_last: SegmentPeriod | None = None
    between: SegmentBetween | None = None
    ever: Literal[True] | None = Field(default=None, description="The default: no time window.")


class SegmentDid(BaseModel):
    """Did the event (an event name: at least once, ever)."""

    model_config = ConfigDict(json_schema_mode_override="validation", extra="forbid")

    did: str | SegmentEvent


class SegmentDidNot(BaseModel):
    """Did not do the event: the same as `{"not": {"did": …}}`."""

    model_config = ConfigDict(json_schema_mode_override="validation", extra="forbid")

    did_not: str | SegmentEvent


class SegmentAnd(BaseModel):
    model_config = ConfigDict(json_schema_mode_override="validation", extra="forbid", populate_by_name=True)

    and_: list[SegmentDefinition] = Field(alias="and", min_length=1, description="All of them.")


class SegmentOr(BaseModel):
    model_config = ConfigDict(json_schema_mode_override="validation", extra="forbid", populate_by_name=True)

    or_: list[SegmentDefinition] = Field(alias="or", min_length=1, description="At least one of them.")


class SegmentNot(BaseModel):
    model_config = ConfigDict(json_schema_mode_override="validation", extra="forbid", populate_by_name=True)

    not_: SegmentDefinition = Field(alias="not")


class SegmentReference(BaseModel):
    """A saved segment of the account, evaluated as it is defined when the target is used."""

    model_config = ConfigDict(json_schema_mode_override="validation", extra="forbid")

    segment_id: int = Field(ge=1)


class SegmentEveryone(BaseModel):
    """Every profile of the account (`{}` means the same in a campaign's target)."""

    model_config = ConfigDict(json_schema_mode_override="validation", extra="forbid")

    all: Literal[True]


class SegmentConditions(BaseModel):
    """All of these property tests (the original campaign target form)."""

    model_config = ConfigDict(json_schema_mode_override="validation", extra="forbid")

    conditions: list[SegmentPropertyCondition] = Field(min_length=1)


class SegmentEventAnd(BaseModel):
    model_config = ConfigDict(json_schema_mode_override="validation", extra="forbid", populate_by_name=True)

    and_: list[SegmentEventNode] = Field(alias="and", min_length=1)


class SegmentEventOr(BaseModel):
    model_config = ConfigDict(json_schema_mode_override="validation", extra="forbid", populate_by_name=True)

    or_: list[SegmentEventNode] = Field(alias="or", min_length=1)


class SegmentEventNot(BaseModel):
    model_config = ConfigDict(json_schema_mode_override="validation", extra="forbid", populate_by_name=True)

    not_: SegmentEventNode = Field(alias="not")


class SegmentEventNode(
    RootModel[SegmentPropertyCondition | SegmentEventAnd | SegmentEventOr | SegmentEventNot]
):
    """A condition on an event's properties: a property test, or and / or / not of them."""

    model_config = ConfigDict(json_schema_mode_override="validation")


class SegmentDefinition(
    RootModel[
        SegmentAnd
        | SegmentOr
        | SegmentNot
        | SegmentPropertyCondition
        | SegmentDid
        | SegmentDidNot
        | SegmentReference
        | SegmentEveryone
        | SegmentConditions
    ]
):
    """A segment definition: one object with exactly one of the keys `and`, `or`, `not`, `property`,
    `did`, `did_not`, `segment_id`, `all`, `conditions`, nested freely (docs/segments.md). Example:
    `{"and": [{"property": "City", "op": "equals", "value": "Pune"}, {"did": {"event": "Charged",
    "count": {"at_least": 2}, "in_the_last": {"days": 30}}}, {"did_not": "Refund"}]}`."""

    model_config = ConfigDict(
        json_schema_mode_override="validation",
        json_schema_extra={
            "examples": [
                {
                    "and": [
                        {"property": "City", "op": "equals", "value": "Pune"},
                        {
                            "did": {
                                "event": "Charged",
                                "where": [{"property": "Amount", "op": "gte", "value": 500}],
                                "count": {"at_least": 2},
                                "in_the_last": {"days": 30},
                            }
                        },
                        {"not": {"did": "Refund"}},
                    ]
                }
            ]
        },
    )


# The definition as sent, unchecked by pydantic (the service checks it), documented by SegmentDefinition.
Definition = Annotated[
    SerializeAsAny[SkipValidation[SegmentDefinition]], Field(description="See SegmentDefinition.")
]


class SegmentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="1 to 200 characters, unique in the account.", examples=["Loyal in Pune"])
    definition: Definition

    def raw_definition(self) -> Any:
        return self.definition  # the JSON as sent (SkipValidation)


class SegmentUpdate(BaseModel):
    """A partial update: only the fields sent change."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, description="1 to 200 characters, unique in the account.")
    definition: Definition | None = None

    def raw_definition(self) -> Any:
        return self.definition


class SegmentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    definition: Definition
    created_at: datetime
    updated_at: datetime


class EstimateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    definition: Definition

    def raw_definition(self) -> Any:
        return self.definition


class EstimateOut(BaseModel):
    count: int = Field(description="How many of the account's profiles the definition selects, now.")
