"""The account's engagement rules: system control group, WhatsApp frequency cap, Do-Not-Disturb hours.

Stored in ``accounts.settings``::

    {"system_control_group_pct": 3,                        # 0 (none) or 2-5 % of all profiles
     "frequency_cap": {"max": 3, "hours": 168},            # at most 3 WhatsApp messages a user a week
     "dnd": {"start": "22:00", "end": "08:00",             # local time; the window may cross midnight
             "timezone": "account" | "user",                # "user": the profile's Tz property, else account
             "action": "drop" | "delay"}}                   # drop the message, or send when DND ends
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tidings.errors import Invalid


@dataclass(frozen=True)
class Dnd:
    start: time
    end: time
    timezone: str  # "account" or "user"
    action: str  # "drop" or "delay"

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


@dataclass(frozen=True)
class Rules:
    system_control_group_pct: int = 0
    cap_max: int | None = None
    cap_hours: int | None = None
    dnd: Dnd | None = None


def zone(name: str | None, fallback: str = "UTC") -> ZoneInfo:
    for candidate in (name, fallback):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def _clock(value: Any, where: str) -> time:
    try:
        return time.fromisoformat(str(value))
    except ValueError as exc:
        raise Invalid(f"{where} must be a time of day like 22:00") from exc


def parse_rules(settings: dict[str, Any]) -> Rules:
    """Validate ``accounts.settings``; ``Invalid`` names the faulty part."""
    # "keywords" (consent keywords) is validated by tidings.conversations.keywords.validate_keywords.
    unknown = sorted(set(settings) - {"system_control_group_pct", "frequency_cap", "dnd", "keywords"})
    if unknown:
        raise Invalid(f"settings: unknown key(s) {', '.join(unknown)}")
    pct = settings.get("system_control_group_pct", 0)
    if not isinstance(pct, int) or isinstance(pct, bool) or not (pct == 0 or 2 <= pct <= 5):
        raise Invalid("settings.system_control_group_pct must be 0 (none) or 2 to 5")
    cap_max = cap_hours = None
    cap = settings.get("frequency_cap")
    if cap is not None:
        if not isinstance(cap, dict) or set(cap) != {"max", "hours"}:
            raise Invalid('settings.frequency_cap must be {"max": N, "hours": H}')
        cap_max, cap_hours = cap["max"], cap["hours"]
        if not isinstance(cap_max, int) or cap_max < 1 or not isinstance(cap_hours, int) or cap_hours < 1:
            raise Invalid("settings.frequency_cap.max and .hours must be positive whole numbers")
        if cap_max > 10_000 or cap_hours > 8760:  # beyond, the send-time window would not fit a datetime
            raise Invalid("settings.frequency_cap: max is at most 10000, hours at most 8760 (a year)")
    dnd = None
    raw = settings.get("dnd")
    if raw is not None:
        if not isinstance(raw, dict):
            raise Invalid("settings.dnd must be an object")
        if raw.get("timezone", "account") not in ("account", "user"):
            raise Invalid('settings.dnd.timezone must be "account" or "user"')
        if raw.get("action", "delay") not in ("drop", "delay"):
            raise Invalid('settings.dnd.action must be "drop" or "delay"')
        dnd = Dnd(
            start=_clock(raw.get("start"), "settings.dnd.start"),
            end=_clock(raw.get("end"), "settings.dnd.end"),
            timezone=raw.get("timezone", "account"),
            action=raw.get("action", "delay"),
        )
    return Rules(system_control_group_pct=pct, cap_max=cap_max, cap_hours=cap_hours, dnd=dnd)


def account_rules(settings: dict[str, Any] | None) -> Rules:
    """The rules of ``accounts.settings`` as stored (validated when saved); a setting that no longer
    parses counts as no rule rather than stopping every send of the account."""
    try:
        return parse_rules(settings or {})
    except Invalid:
        return Rules()
