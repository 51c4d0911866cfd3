"""A campaign as the API, the services and the dashboard see it: one pydantic model per rule (trigger,
split, frequency, conversion goal), so that the OpenAPI document describes every field, and a campaign is
read back with the names it was created with.

The models check what a campaign says on its own (shapes, ranges, a trigger that fits the kind, weights
that add up to 100); the service checks what needs the database (templates and their variables, the
target's saved segments). Stored JSON is the model's ``model_dump(mode="json")``.
"""

from __future__ import annotations

from datetime import datetime, time
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializeAsAny,
    SkipValidation,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from tidings.bounds import Id, UtcDatetime
from tidings.errors import refusal
from tidings.segments.schemas import Definition, SegmentEventNode

if TYPE_CHECKING:
    from tidings.campaigns.models import Campaign, CampaignVariant

CampaignKind = Literal["one_time", "single_action", "inaction", "on_date"]
KINDS = get_args(CampaignKind)
MAX_VARIANTS = 50  # CleverTap: up to 50 variants by property value, plus the default
MAX_WAIT_MINUTES = 30 * 24 * 60  # an inaction campaign waits at most 30 days for the absent event
NOT_ON_WHATSAPP = (
    "WhatsApp does not allow recurring or multi-date campaigns (to prevent spam): use one time, single "
    "action, inaction within time, or on a date/time"
)


def _no_zone(value: time) -> time:
    if value.tzinfo is not None:
        raise ValueError("a time of day is read in the account's or the user's zone: give it without one")
    return value


# A time of day such as "09:00", written back as it is usually written (seconds only when there are some).
ClockTime = Annotated[
    time,
    AfterValidator(_no_zone),
    PlainSerializer(lambda t: t.isoformat("minutes" if not t.second and not t.microsecond else "auto")),
]
EventName = Annotated[str, Field(min_length=1, max_length=255, pattern=r"\S")]
# Conditions on an event's properties, in the segment language (docs/segments.md); checked by the service
# so that a refusal names the faulty part, as for segment definitions.
EventWhere = Annotated[
    SerializeAsAny[SkipValidation[SegmentEventNode]],
    Field(
        description="Tests on the event's properties (docs/segments.md), e.g. "
        '`{"property": "Amount", "op": "gt", "value": 100}`.'
    ),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- triggers: one model per live kind -----------------------------------------------------------------


class SingleActionTrigger(_Strict):
    """`single_action`: the user does `event` (with `where` on its properties). Events more than two hours
    old or two minutes ahead do not trigger."""

    event: EventName = Field(examples=["Charged"])
    where: EventWhere | None = None


class InactionTrigger(_Strict):
    """`inaction`: the user did `event` and not `absent_event` within `within_minutes`; sent then."""

    event: EventName = Field(examples=["Added To Cart"])
    where: EventWhere | None = None
    absent_event: EventName = Field(examples=["Charged"])
    absent_where: EventWhere | None = None
    within_minutes: StrictInt = Field(ge=1, le=MAX_WAIT_MINUTES, description="1 to 43200 (30 days).")


class OnDateTrigger(_Strict):
    """`on_date`: relative to a date property of the profile (or of event `event`): `offset_minutes`
    before (negative) or after, optionally at a time of day; once per user and date."""

    property: str = Field(min_length=1, max_length=255, description="The date property.")
    event: EventName | None = Field(None, description="Read the date from this event, not the profile.")
    offset_minutes: StrictInt = Field(0, ge=-366 * 1440, le=366 * 1440, description="Within a year.")
    at_time: ClockTime | None = Field(None, description="A time of day, e.g. 09:00.")
    timezone: Literal["account", "user"] = Field(
        "account", description="`user`: the profile's `Tz` property (else the account's zone)."
    )


Trigger = SingleActionTrigger | InactionTrigger | OnDateTrigger
TRIGGERS: dict[str, type[Trigger]] = {
    "single_action": SingleActionTrigger,
    "inaction": InactionTrigger,
    "on_date": OnDateTrigger,
}


def trigger_of(kind: str, stored: dict[str, Any] | None) -> Trigger | None:
    """The trigger of a stored campaign, as its model."""
    return TRIGGERS[kind].model_validate(stored) if kind in TRIGGERS and stored is not None else None


# --- split, frequency, conversion ----------------------------------------------------------------------


class PercentageSplit(_Strict):
    """Users are shared among the variants by their `weight`s (adding up to 100)."""

    by: Literal["percentage"]


class PropertySplit(_Strict):
    """Users get the variant whose `match_value` is their `property`'s value, else the default variant."""

    by: Literal["property"]
    property: str = Field(min_length=1, max_length=255, examples=["Language"])


Split = Annotated[PercentageSplit | PropertySplit, Field(discriminator="by")]


class EveryTime(_Strict):
    rule: Literal["every_time"]


class Once(_Strict):
    rule: Literal["once"]


class MinGap(_Strict):
    rule: Literal["min_gap"]
    hours: float = Field(ge=5 / 60, le=720, description="From 0.083 (5 minutes) to 720 (30 days).")


Frequency = Annotated[EveryTime | Once | MinGap, Field(discriminator="rule")]


class ConversionGoal(_Strict):
    """The event that counts as a conversion, within hours of the message (or of planning, for the control
    group)."""

    event: EventName = Field(examples=["Charged"])
    within_hours: StrictInt = Field(ge=1, le=2160, description="1 to 2160 (90 days).")


# --- the campaign --------------------------------------------------------------------------------------

# A template: its id, or its full name `<namespace>:<name>` (when the account has it in one language).
TemplateRef = Annotated[
    Id | Annotated[str, Field(min_length=1, max_length=512)],
    Field(
        description="The template's id, or its name `<namespace>:<name>` (when it exists in one language)."
    ),
]


def _some_value(source: str) -> str:
    if not source.strip():  # rendered empty for every user: nobody could be sent the message
        raise PydanticCustomError("empty_value", "a value is required: text, or a property with a default")
    return source


# One template variable's Liquid source: fixed text, or e.g. `{{ Profile.Name | default: "there" }}`.
Source = Annotated[str, AfterValidator(_some_value)]


class VariantCreate(_Strict):
    template_id: TemplateRef
    variables: list[Source] = Field(default_factory=list, description="One Liquid source per {{n}}.")
    key: str | None = Field(None, max_length=16, description='A label ("A", "B", … by default).')
    weight: int | None = Field(None, ge=1, le=100, description="Percent of users, for a split by percentage.")
    match_value: str | None = Field(
        None,
        max_length=255,
        description="For a split by property: users whose property has this value; none: the default.",
    )


def _kind(value: Any) -> Any:
    """A recurring or multi-date kind is refused with its own code, saying why."""
    named = value.lower() if isinstance(value, str) and value not in KINDS else ""
    if any(word in named for word in ("recur", "repeat", "multi", "dates")):
        raise refusal("not_allowed_on_whatsapp", NOT_ON_WHATSAPP)
    return value


Kind = Annotated[CampaignKind, BeforeValidator(_kind)]


class CampaignCreate(_Strict):
    """A campaign as it is created (`POST`) or a draft is rewritten (`PUT`); read back with these names."""

    name: str = Field(min_length=1, max_length=200)
    kind: Kind = Field(
        "one_time",
        description="Recurring and multi-date campaigns are refused (422 `not_allowed_on_whatsapp`): "
        "WhatsApp does not allow them.",
    )
    template_id: TemplateRef | None = Field(
        None, description="The template of a single-message campaign: its id or `<namespace>:<name>`."
    )
    variables: list[Source] = Field(
        default_factory=list,
        description="One Liquid source per template variable {{1}}…{{N}}: fixed text, or e.g. "
        '`{{ Profile.Name | default: "there" }}`, `{{ Event.ticket_no }}`; `{% abort %}` skips the user.',
    )
    variants: list[VariantCreate] = Field(
        default_factory=list, max_length=MAX_VARIANTS + 1, description="Multivariate: two or more."
    )
    split: Split | None = Field(None, description="How users are shared among the variants.")
    target: Definition = Field(  # type: ignore[assignment]
        default_factory=lambda: {"all": True},
        description='Who may receive it: a segment definition (docs/segments.md), e.g. `{"segment_id": N}`.',
    )
    trigger: SkipValidation[Trigger | None] = Field(
        None,
        validate_default=True,  # a live kind without one is refused
        description="For the live kinds: the model of the campaign's kind (none for one_time).",
    )
    control_group_pct: int = Field(0, ge=0, le=99, description="Share of the audience held back (0-99 %).")
    system_control_group: bool = Field(True, description="Hold back the account's system control group too.")
    respect_rules: bool = Field(True, description="Apply the account's frequency cap and DND hours.")
    frequency: Frequency | None = Field(
        None, description="How often one user may get a live campaign (default: every time)."
    )
    conversion: ConversionGoal | None = None
    send_at: UtcDatetime | None = Field(
        None,
        description="Start, with its time zone (`2026-12-01T09:00:00Z`, `…+05:30`); now when absent. "
        "A time without a zone is refused (422).",
    )
    ends_at: UtcDatetime | None = Field(None, description="End of a live campaign, with its time zone.")
    draft: bool = Field(False, description="Save as a draft; POST …/schedule to schedule it.")
    schedule: Any = Field(None, description="Recurring schedules are refused (WhatsApp forbids them).")

    @field_validator("schedule")
    @classmethod
    def _no_schedule(cls, value: Any) -> None:
        if value is not None:
            raise refusal("not_allowed_on_whatsapp", NOT_ON_WHATSAPP)

    @field_validator("trigger")
    @classmethod
    def _trigger_of_kind(cls, value: Any, info: ValidationInfo) -> Trigger | None:
        """The trigger read with the model of the campaign's kind (``kind`` is validated before it)."""
        kind = info.data.get("kind")
        if kind not in TRIGGERS:
            if value is not None:
                raise ValueError(f"a {kind} campaign has no trigger")
            return None
        model = TRIGGERS[kind]
        if value is None:
            raise ValueError(f"a {kind} campaign needs a trigger ({model.__name__})")
        try:
            return model.model_validate(value.model_dump() if isinstance(value, BaseModel) else value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise PydanticCustomError(
                "invalid_trigger",
                "{where}{message}",
                {"where": f"{where}: " if where else "", "message": first["msg"]},
            ) from None

    def raw_target(self) -> dict[str, Any]:
        """The target as sent (the segments service checks it)."""
        target: dict[str, Any] = self.target  # type: ignore[assignment]
        return target

    @model_validator(mode="after")
    def _variants_fit_the_split(self) -> CampaignCreate:
        variants, split = self.variants, self.split
        if not variants:
            if split is not None:
                raise ValueError("split needs variants")
            if self.template_id is None:
                raise ValueError("template_id is required (or variants, for a multivariate campaign)")
            return self
        if split is None:
            raise ValueError(
                'variants need a split: {"by": "percentage"} or {"by": "property", "property": …}'
            )
        if len(variants) < 2:
            raise ValueError("a multivariate campaign needs at least two variants")
        if self.variables or self.template_id not in (None, variants[0].template_id):
            raise ValueError("a multivariate campaign sets template_id and variables per variant only")
        if isinstance(split, PercentageSplit):
            if any(v.weight is None for v in variants) or sum(v.weight or 0 for v in variants) != 100:
                raise ValueError(
                    "variants: each weight must be at least 1 and the weights must add up to 100"
                )
            if any(v.match_value is not None for v in variants):
                raise ValueError("variants: match_value is for a split by property")
            if len(variants) > MAX_VARIANTS:
                raise ValueError(f"at most {MAX_VARIANTS} variants")
            return self
        if sum(v.match_value is None for v in variants) != 1:
            raise ValueError("variants: exactly one variant must be the default (no match_value)")
        values = [v.match_value for v in variants if v.match_value is not None]
        if len(set(values)) != len(values):
            raise ValueError("variants: each match_value must be different")
        if any(v.weight is not None for v in variants):
            raise ValueError("variants: weight is for a split by percentage")
        return self


class VariantOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    key: str
    template_id: int
    variables: list[str]
    weight: int | None
    match_value: str | None


class CampaignOut(BaseModel):
    """A campaign with the names it was created with, and its state."""

    id: int
    name: str
    kind: str
    state: str
    template_id: int
    variables: list[str]
    variants: list[VariantOut] = Field(default_factory=list)
    split: Split | None
    target: Definition
    trigger: Trigger | None
    control_group_pct: int
    system_control_group: bool
    respect_rules: bool
    frequency: Frequency | None
    conversion: ConversionGoal | None
    send_at: datetime = Field(description="When it starts (or started).")
    ends_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    audience_size: int | None
    note: str | None
    created_at: datetime

    @classmethod
    def of(cls, campaign: Campaign, variants: list[CampaignVariant]) -> CampaignOut:
        conversion = None
        if campaign.conversion_event and campaign.conversion_window_hours:
            conversion = ConversionGoal(
                event=campaign.conversion_event, within_hours=campaign.conversion_window_hours
            )
        return cls.model_validate(
            {
                "id": campaign.id,
                "name": campaign.name,
                "kind": campaign.kind,
                "state": campaign.state,
                "template_id": campaign.template_id,
                "variables": campaign.variables,
                "variants": [VariantOut.model_validate(v) for v in variants],
                "split": campaign.split,
                "target": campaign.target,
                "trigger": trigger_of(campaign.kind, campaign.trigger),
                "control_group_pct": campaign.control_group_pct,
                "system_control_group": campaign.system_control_group,
                "respect_rules": campaign.respect_rules,
                "frequency": campaign.frequency,
                "conversion": conversion,
                "send_at": campaign.scheduled_at,
                "ends_at": campaign.ends_at,
                "started_at": campaign.started_at,
                "completed_at": campaign.completed_at,
                "audience_size": campaign.audience_size,
                "note": campaign.note,
                "created_at": campaign.created_at,
            }
        )


class Counts(BaseModel):
    sent: int = Field(description="Accepted by the provider.")
    errors: int = Field(description="Could not be sent: skipped at planning or failed, see errors_by_reason.")
    delivered: int
    read: int
    control_group: int = Field(description="Held back because they are in a control group.")
    replied: int
    audience: int = Field(description="sent + errors + control_group + pending.")
    pending: int = Field(description="Still queued or being sent.")
    errors_by_reason: dict[str, int]


class Conversion(BaseModel):
    event: str
    within_hours: int
    messaged: int
    messaged_converted: int
    messaged_rate: float | None
    control: int
    control_converted: int
    control_rate: float | None
    lift: float | None = Field(description="(messaged rate - control rate) / control rate.")


class FunnelStep(BaseModel):
    step: Literal["audience", "sent", "delivered", "read", "replied"]
    count: int
    of_audience: float | None = Field(description="count / audience (None when the audience is empty).")
    of_previous: float | None = Field(description="count / the step before (None for the audience).")


class ReasonCount(BaseModel):
    reason: str = Field(description="The ledger's reason: a code of Tidings' own, or `<provider>:<code>`.")
    provider: str | None = Field(description="For a provider's code: meta, vonage or sandbox.")
    code: str = Field(description="The code, without the provider.")
    count: int
    explanation: str | None = Field(description="What the reason means, in plain language.")


class ErrorGroups(BaseModel):
    unreached: list[ReasonCount] = Field(
        description="Users the campaign could not reach (skipped: not opted in, no valid phone, missing "
        "personalization, caps, DND, …), the largest first."
    )
    failed: list[ReasonCount] = Field(
        description="Messages the provider refused or that failed, by the provider's code, the largest first."
    )


class CampaignStats(Counts):
    variants: dict[str, Counts] = Field(default_factory=dict, description="Per variant key (multivariate).")
    conversion: Conversion | None = None
    funnel: list[FunnelStep] = Field(description="Audience → sent → delivered → read → replied.")
    errors_grouped: ErrorGroups = Field(
        description="The errors of errors_by_reason in two groups, explained."
    )


class TimelinePoint(BaseModel):
    start: datetime = Field(
        description="The hour or day's start, in the account's time zone (with its offset)."
    )
    sent: int
    delivered: int
    read: int
    replied: int


class Timeline(BaseModel):
    bucket: Literal["hour", "day"]
    timezone: str = Field(description="The account's time zone, which the buckets follow.")
    points: list[TimelinePoint] = Field(description="The oldest first; hours or days with nothing left out.")


MessageState = Literal["queued", "sending", "sent", "delivered", "read", "failed", "skipped", "control"]


class MessageRow(BaseModel):
    id: int = Field(description="The ledger id (the last one of a page is its `next`).")
    identity: str
    phone: str | None
    variant: str | None = Field(description="The variant's key (multivariate), else null.")
    params: list[str] | None = Field(description="The rendered {{n}} values, once sent.")
    state: MessageState
    reason: str | None = Field(description="Why skipped, held back or failed (see the stats' errors).")
    explanation: str | None = Field(description="The reason in plain language.")
    error_detail: str | None = Field(description="The provider's text, or what was missing.")
    created_at: datetime
    sent_at: datetime | None
    delivered_at: datetime | None
    read_at: datetime | None
    replied_at: datetime | None
    failed_at: datetime | None


class MessagePage(BaseModel):
    items: list[MessageRow]
    next: int | None = Field(description="Pass as `after` for the next page; null on the last page.")
