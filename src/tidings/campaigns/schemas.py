from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class CampaignCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    template_id: int
    variables: list[str] = Field(
        default_factory=list,
        description="One Liquid source per template variable {{1}}…{{N}}: fixed text, or e.g. "
        '`{{ Profile.Name | default: "there" }}`.',
    )
    target: dict[str, Any] = Field(
        default_factory=lambda: {"all": True},
        description='`{"all": true}` or `{"conditions": [{"property": "City", "op": "equals", '
        '"value": "Pune"}]}` (ops: equals, not_equals, in, contains, exists, not_exists, gt, gte, lt, lte).',
    )
    control_group_pct: int = Field(0, ge=0, le=99, description="Share of the audience held back (0-99 %).")
    send_at: datetime | None = Field(None, description="When to send (UTC); now when absent.")


class CampaignOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    kind: str
    state: str
    template_id: int
    variables: list[str]
    target: dict[str, Any]
    control_group_pct: int
    scheduled_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    audience_size: int | None
    note: str | None
    created_at: datetime


class CampaignStats(BaseModel):
    sent: int = Field(description="Accepted by the provider.")
    errors: int = Field(description="Could not be sent: skipped at planning or failed, see errors_by_reason.")
    delivered: int
    read: int
    control_group: int = Field(description="Held back because they are in the control group.")
    replied: int
    audience: int = Field(
        description="Everyone the campaign targeted: sent + errors + control_group + pending."
    )
    pending: int = Field(description="Still queued or being sent.")
    errors_by_reason: dict[str, int]
