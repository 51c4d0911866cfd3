"""What every provider's inbound parser shares: how a location and shared contacts read as one line of
text (the inbox shows ``InboundReply.text`` for every kind; the details stay in ``InboundReply.data``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# The kinds of file a user can send; an ``InboundReply`` of one of them carries a ``MediaRef``.
MEDIA_KINDS = ("image", "video", "audio", "document", "sticker")


def text_of(value: Any) -> str:
    return value if isinstance(value, str) else ""


def number_of(value: Any) -> float | None:
    """A coordinate as a float (providers send numbers, some send strings); None when it is none."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None  # NaN is no coordinate


def location_data(latitude: Any, longitude: Any, name: Any, address: Any, url: Any) -> dict[str, Any]:
    """``InboundReply.data`` of a location: ``latitude``, ``longitude``, ``name``, ``address`` (and ``url``
    when the provider gave one)."""
    data: dict[str, Any] = {
        "latitude": number_of(latitude),
        "longitude": number_of(longitude),
        "name": text_of(name) or None,
        "address": text_of(address) or None,
    }
    if text_of(url):
        data["url"] = url
    return data


def location_text(data: Mapping[str, Any]) -> str:
    """A location as one short line: "📍 name, address", or "📍 latitude, longitude" without them."""
    words = ", ".join(str(data[k]) for k in ("name", "address") if data.get(k))
    if words:
        return f"\U0001f4cd {words}"
    lat, lon = data.get("latitude"), data.get("longitude")
    return f"\U0001f4cd {lat}, {lon}" if lat is not None and lon is not None else "\U0001f4cd"


def contacts_text(contacts: Sequence[Mapping[str, Any]]) -> str:
    """Shared contacts as one line: each one's name and first phone number, joined by "; " (Meta and
    Vonage both use WhatsApp's contact object: ``name.formatted_name``, ``phones[].phone``)."""
    parts = []
    for contact in contacts:
        name = contact.get("name")
        name = name if isinstance(name, Mapping) else {}
        label = text_of(name.get("formatted_name")) or " ".join(
            text_of(name.get(k)) for k in ("first_name", "last_name") if name.get(k)
        )
        raw_phones = contact.get("phones")
        phones = [p for p in raw_phones if isinstance(p, Mapping)] if isinstance(raw_phones, list) else []
        phone = text_of(phones[0].get("phone")) if phones else ""
        parts.append(" ".join(p for p in (label, phone) if p))
    return "; ".join(p for p in parts if p)
