"""The account's engagement rules (``accounts.settings``): system control group, WhatsApp frequency cap,
Do-Not-Disturb hours, and the account's own consent keywords. One model, :class:`Rules`, read and written
by ``GET/PATCH /api/v1/account`` and used when planning and sending; stored as its
``model_dump(mode="json", exclude_unset=True)``, so the settings are read back as they were given::

    {"system_control_group_pct": 3,                        # 0 (none) or 2-5 % of all profiles
     "frequency_cap": {"max": 3, "hours": 168},            # at most 3 WhatsApp messages a user a week
     "dnd": {"start": "22:00", "end": "08:00",             # local time; the window may cross midnight
             "timezone": "account" | "user",                # "user": the profile's Tz property, else account
             "action": "drop" | "delay"},                   # drop the message, or send when DND ends
     "keywords": {"es": {"opt_out": ["BAJA"], "opt_in": ["ALTA"]}},   # see conversations.keywords
     "consent_replies": {"enabled": true, "opt_out": "…", "opt_in": "…"},  # the confirmation sent
     "reply_attribution_hours": 24}   # a reply without context counts for a campaign message this long
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, ValidationError

from tidings.campaigns.schemas import ClockTime
from tidings.conversations.keywords import AccountKeywords


class FrequencyCap(BaseModel):
    """At most `max` WhatsApp messages to a phone number in `hours`, across campaigns."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Beyond these, the send-time window would not fit a datetime.
    max: StrictInt = Field(ge=1, le=10_000, examples=[3])
    hours: StrictInt = Field(ge=1, le=8760, description="At most 8760 (a year).", examples=[168])


class Dnd(BaseModel):
    """Do-Not-Disturb hours, in local time (the window may cross midnight)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: ClockTime = Field(examples=["22:00"])
    end: ClockTime = Field(examples=["08:00"])
    timezone: Literal["account", "user"] = Field(
        "account", description="`user`: the profile's `Tz` property, else the account's zone."
    )
    action: Literal["drop", "delay"] = Field("delay", description="Drop the message, or send when DND ends.")

    def window_end(self, at: datetime, tz: ZoneInfo) -> datetime | None:
        """When the DND window containing ``at`` ends (UTC), or None when ``at`` is outside DND."""
        local = at.astimezone(tz)
        clock = local.time()
        if self.start == self.end:
            return None
        crosses = self.start > self.end
        inside = (clock >= self.start or clock < self.end) if crosses else self.start <= clock < self.end
        if not inside:
            return None
        end_day = local.date()
        if crosses and clock >= self.start:
            end_day += timedelta(days=1)
        end = datetime.combine(end_day, self.end, tzinfo=tz)
        return end.astimezone(at.tzinfo)

    def zone_for(self, account_tz: ZoneInfo, user_zone: str | None) -> ZoneInfo:
        """The zone DND hours are read in: the account's, or the user's ``Tz`` (else the account's)."""
        return zone(user_zone, account_tz.key) if self.timezone == "user" else account_tz


def _system_pct(value: int) -> int:
    if not (value == 0 or 2 <= value <= 5):
        raise ValueError("must be 0 (none) or 2 to 5")
    return value


class ConsentReplies(BaseModel):
    """The one message that confirms an opt-out (or an opt-in) by keyword; ``enabled`` false sends none."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    opt_out: str = Field(
        default="You will no longer receive WhatsApp messages from us. Reply START to subscribe again.",
        min_length=1,
        max_length=1024,
    )
    opt_in: str = Field(
        default="You are subscribed to WhatsApp messages from us again. Reply STOP to unsubscribe.",
        min_length=1,
        max_length=1024,
    )


class Rules(BaseModel):
    """The account's engagement rules (``accounts.settings``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    system_control_group_pct: Annotated[StrictInt, AfterValidator(_system_pct)] = Field(
        default=0,
        description="0 (none) or 2-5 % of all profiles, the same users for every campaign.",
    )
    frequency_cap: FrequencyCap | None = None
    dnd: Dnd | None = None
    keywords: AccountKeywords | None = None
    consent_replies: ConsentReplies = Field(
        default=ConsentReplies(),
        description="The confirmation sent after STOP or START by message (may be turned off).",
    )
    reply_attribution_hours: StrictInt = Field(
        default=24,
        ge=1,
        le=720,
        description="A reply that quotes no message counts as a reply to the latest campaign message sent "
        "to that number at most this many hours before (1-720, default 24).",
    )

    @property
    def cap_max(self) -> int | None:
        return self.frequency_cap.max if self.frequency_cap else None

    @property
    def cap_hours(self) -> int | None:
        return self.frequency_cap.hours if self.frequency_cap else None

    def stored(self) -> dict[str, Any]:
        """What ``accounts.settings`` holds: the settings as given."""
        return self.model_dump(mode="json", exclude_unset=True)


def zone(name: str | None, fallback: str = "UTC") -> ZoneInfo:
    for candidate in (name, fallback):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def account_rules(settings: dict[str, Any] | None) -> Rules:
    """The rules of ``accounts.settings`` as stored (validated when saved); a setting that no longer
    parses counts as no rule rather than stopping every send of the account."""
    try:
        return Rules.model_validate(settings or {})
    except ValidationError:
        return Rules()


class AccountOut(BaseModel):
    id: str
    name: str
    timezone: str
    settings: Rules = Field(description="The engagement rules, as they were given.")


class AccountUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=200)
    timezone: str | None = Field(None, description="IANA zone, e.g. Asia/Kolkata.")
    settings: Rules | None = Field(None, description="The engagement rules, replaced as a whole.")
