from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tidings.bounds import Id, UtcDatetime


class VariantCreate(BaseModel):
    template_id: Id
    variables: list[str] = Field(default_factory=list, description="One Liquid source per {{n}}.")
    key: str | None = Field(None, max_length=16, description='A label ("A", "B", … by default).')
    weight: int | None = Field(None, description="Percent of users, for a split by percentage.")
    match_value: str | None = Field(
        None, description="For a split by property: users whose property has this value; none: the default."
    )


class CampaignCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    kind: str = Field(
        "one_time",
        description="one_time, single_action, inaction or on_date. Recurring and multi-date campaigns are "
        "refused: WhatsApp does not allow them.",
    )
    template_id: Id | None = Field(None, description="The template of a single-message campaign.")
    variables: list[str] = Field(
        default_factory=list,
        description="One Liquid source per template variable {{1}}…{{N}}: fixed text, or e.g. "
        '`{{ Profile.Name | default: "there" }}`, `{{ Event.ticket_no }}`; `{% abort %}` skips the user.',
    )
    variants: list[VariantCreate] = Field(default_factory=list, description="Multivariate: two or more.")
    split: dict[str, Any] | None = Field(
        None, description='`{"by": "percentage"}` or `{"by": "property", "property": "Language"}`.'
    )
    target: dict[str, Any] = Field(
        default_factory=lambda: {"all": True},
        description='Who may receive it: a segment definition (docs/segments.md) or `{"segment_id": N}`.',
    )
    trigger: dict[str, Any] | None = Field(None, description="For live kinds; see docs/campaigns.md.")
    control_group_pct: int = Field(0, ge=0, le=99, description="Share of the audience held back (0-99 %).")
    system_control_group: bool = Field(True, description="Hold back the account's system control group too.")
    respect_rules: bool = Field(True, description="Apply the account's frequency cap and DND hours.")
    frequency: dict[str, Any] | None = Field(
        None, description='`{"rule": "every_time"}`, `{"rule": "once"}` or `{"rule": "min_gap", "hours": N}`.'
    )
    conversion: dict[str, Any] | None = Field(
        None, description='`{"event": "Charged", "within_hours": 168}`.'
    )
    send_at: UtcDatetime | None = Field(
        None,
        description="Start, with its time zone (`2026-12-01T09:00:00Z`, `…+05:30`); now when absent. "
        "A time without a zone is refused (422).",
    )
    ends_at: UtcDatetime | None = Field(None, description="End of a live campaign, with its time zone.")
    draft: bool = Field(False, description="Save as a draft; POST …/schedule to schedule it.")
    schedule: Any = Field(None, description="Recurring schedules are refused (WhatsApp forbids them).")


class VariantOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    key: str
    template_id: int
    variables: list[str]
    weight: int | None
    match_value: str | None


class CampaignOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    kind: str
    state: str
    template_id: int
    variables: list[str]
    variants: list[VariantOut] = Field(default_factory=list)
    split: dict[str, Any] | None
    target: dict[str, Any]
    trigger: dict[str, Any] | None
    control_group_pct: int
    system_control_group: bool
    respect_rules: bool
    frequency: dict[str, Any] | None
    conversion_event: str | None
    conversion_window_hours: int | None
    scheduled_at: datetime
    ends_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    audience_size: int | None
    note: str | None
    created_at: datetime


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


class CampaignStats(Counts):
    variants: dict[str, Counts] = Field(default_factory=dict, description="Per variant key (multivariate).")
    conversion: Conversion | None = None


class AccountOut(BaseModel):
    id: str
    name: str
    timezone: str
    settings: dict[str, Any]


class AccountUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=200)
    timezone: str | None = Field(None, description="IANA zone, e.g. Asia/Kolkata.")
    settings: dict[str, Any] | None = Field(
        None,
        description='{"system_control_group_pct": 0 or 2-5, "frequency_cap": {"max": N, "hours": H}, '
        '"dnd": {"start": "22:00", "end": "08:00", "timezone": "account"|"user", "action": "drop"|"delay"}}',
    )
