"""Profiles and events: the CleverTap-compatible ingest, and the reads and writes other domains need.

The ingest (:func:`ingest`) is set-based, whatever the batch size: every record is validated in Python,
the batch's existing profiles are loaded with one SELECT (``FOR UPDATE`` on PostgreSQL when the batch
changes profiles, so that concurrent ``$incr`` never lose an update), the records are applied in order
in Python, then new profiles are inserted in one ``INSERT … ON CONFLICT DO NOTHING`` (a concurrent upload
may create the same identity first: such profiles are re-selected and the batch's records re-applied on
top of what the other upload wrote), changed profiles are updated in one executemany, and events are
inserted in one executemany. No query is issued per record.

CleverTap's per-record error codes are kept: 509 missing event name, 512 bad structure, 516 invalid
phone, 522 properties limit exceeded, 523 missing identity, 524 neither profile nor event, 525 ``ts`` not
epoch seconds.

Custom properties are capped as CleverTap caps them: a profile has at most 256 custom keys (the
standard ones — Name, Email, Phone, Gender, DOB, …, and every ``MSG-*`` flag — do not count), an event
at most 256 properties. A record that would go over is refused alone with 522 (CleverTap's "properties
limit exceeded"; its profile codes have none of their own for this limit), and the rest of the batch is
stored.

Profile property semantics:

- plain values overwrite; ``null`` removes the property (JSON merge-patch style);
- ``{"$add": v}`` / ``{"$remove": v}`` add to / remove from a multi-value property (``v`` a value or a
  list; an existing scalar becomes a list), ``{"$incr": n}`` / ``{"$decr": n}`` (a missing property counts
  as 0), ``{"$delete": 1}`` removes the property;
- ``"$D_<epoch seconds>"`` strings become ISO-8601 UTC strings ``YYYY-MM-DDTHH:MM:SSZ``;
- ``Phone`` is normalised to E.164 and mirrored in ``Profile.phone``;
- ``MSG-whatsapp`` (``true``/``false`` or the strings) is mirrored in ``Profile.whatsapp_opt_in``;
  a profile is opted out until it is set true. Every change of it, whatever the path (this upload, the
  consent API or page, a STOP/START keyword), is kept in ``consent_changes`` (:func:`record_consent`);
- ``Name`` is mirrored, case-folded, in ``Profile.name_key`` (:func:`find_profiles`).

The ingest also keeps the account's property catalogue (``property_catalogue``: the profile property
names, the event names and each event's property names, with when they were last uploaded) for the
pickers of the dashboard: it reads the catalogue rows of the batch's event names and writes, in one
statement, only the names that are new or were last seen more than an hour ago (:func:`property_catalogue`
reads it whole, however many events the account has).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from hashlib import sha256
from typing import Any, cast

import phonenumbers
from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Integer,
    String,
    Table,
    Text,
    and_,
    bindparam,
    func,
    insert,
    literal,
    not_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Result, Row
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from tidings.campaigns.models import Campaign, CampaignVariant
from tidings.db import UTCDateTime, is_postgres, utcnow
from tidings.delivery import system_events
from tidings.delivery.models import Message
from tidings.delivery.send_rules import skip_not_opted_in
from tidings.errors import Invalid, NotFound
from tidings.profiles.models import CatalogueEntry, ConsentChange, Event, Profile

BUCKET_PRIME = 1_000_003

MAX_RECORDS = 1000  # per /1/upload call, as CleverTap
MAX_IDENTITY_CHARS = 120
MAX_KEY_BYTES = 120
MAX_VALUE_BYTES = 512
MAX_EVENT_NAME_CHARS = 255  # the events.name column
MAX_NESTING = 32  # of event property values (lists and objects)
MAX_CUSTOM_KEYS = 256  # custom profile keys (CleverTap: "the maximum number of custom user profile keys")
MAX_EVENT_PROPERTIES = 256  # properties of one event (CleverTap's upload-events page)
STANDARD_KEYS = frozenset(
    {"Name", "Email", "Phone", "Gender", "DOB", "Age", "Photo", "Employed", "Education", "Married", "Tz"}
)
MAX_EPOCH = 10**11  # a "seconds" value above this is really milliseconds (year 5138)
MIN_DATE = -62_135_596_800  # 0001-01-01T00:00:00Z, the earliest $D_ date

PHONE = "Phone"
WHATSAPP = "MSG-whatsapp"
NAME = "Name"
NAME_KEY_CHARS = 120  # Profile.name_key
CATALOGUE_STEP = timedelta(hours=1)  # a catalogue entry's last_seen_at is rewritten at most this often


class ConsentSource(StrEnum):
    """The path a change of ``MSG-whatsapp`` came through (``consent_changes.source``)."""

    upload = "upload"  # POST /1/upload (CleverTap's MSG-whatsapp property)
    api = "api"  # PUT /api/v1/profiles/{identity}/consent
    dashboard = "dashboard"  # the profile page's opt in / opt out
    keyword = "keyword"  # a STOP / START keyword (or button) sent by WhatsApp message


# CleverTap's per-record codes.
MISSING_EVENT_NAME = 509
RESTRICTED_SYSTEM_EVENT = 513
BAD_STRUCTURE = 512
INVALID_PHONE = 516
MISSING_IDENTITY = 523
NOT_PROFILE_OR_EVENT = 524
BAD_TS = 525
PROPERTIES_LIMIT = 522

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_OPERATIONS = ("$add", "$remove", "$incr", "$decr", "$delete")
_PROFILES = cast(Table, Profile.__table__)
_EVENTS = cast(Table, Event.__table__)
_CONSENT = cast(Table, ConsentChange.__table__)
_CATALOGUE = cast(Table, CatalogueEntry.__table__)


def profile_seed(account_id: str, identity: str) -> int:
    """A stable number in ``[0, BUCKET_PRIME)`` per profile (control groups hash it with the campaign)."""
    digest = sha256(f"{account_id}:{identity}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKET_PRIME


@lru_cache(maxsize=65_536)  # re-uploads of the same profiles are common; parsing costs ~0.1 ms
def normalize_phone(raw: str) -> str | None:
    """The E.164 form of a phone number written with its country code and a leading ``+``, else None."""
    text = raw.strip()
    if not text.startswith("+") or len(text) > 64:
        return None
    try:
        number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def iso_date(epoch_seconds: int) -> str:
    """``"YYYY-MM-DDTHH:MM:SSZ"`` for an epoch in seconds (how ``$D_`` values are stored)."""
    moment = _EPOCH + timedelta(seconds=epoch_seconds)
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}Z"
    )


# --------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class IngestedEvent:
    """An event written by :func:`ingest` (for live triggers, which run in the same transaction)."""

    id: int
    profile_id: int
    identity: str
    name: str
    properties: dict[str, Any]
    ts: datetime


@dataclass
class IngestResult:
    processed: int
    # CleverTap's shape: {"status": "fail", "code": 5xx, "error": "...", "record": <as sent>}, by index.
    unprocessed: list[dict[str, Any]] = field(default_factory=list)
    events: list[IngestedEvent] = field(default_factory=list)
    created_profile_ids: list[int] = field(default_factory=list)
    updated_profile_ids: list[int] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- parsing


class RecordError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class _Op:
    key: str
    kind: str  # set | delete | add | remove | incr
    value: Any = None


@dataclass(slots=True)
class _ProfileRecord:
    index: int
    key: str
    ops: list[_Op]


@dataclass(slots=True)
class _EventRecord:
    index: int
    key: str
    name: str
    properties: dict[str, Any]
    ts: datetime


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= 60 else text[:57] + "..."


def _utf8_len(where: str, what: str, text: str, code: int = BAD_STRUCTURE) -> int:
    try:
        return len(text.encode())
    except UnicodeEncodeError:
        raise RecordError(code, f"{where}: {what} is not valid Unicode (a lone surrogate escape)") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _parse(index: int, record: Any, now: datetime) -> _ProfileRecord | _EventRecord:
    where = f"Record d[{index}]"
    if not isinstance(record, dict):
        raise RecordError(BAD_STRUCTURE, f"{where} is not a JSON object, got {_show(record)}")
    kind = record.get("type")
    if kind not in ("profile", "event"):
        raise RecordError(
            NOT_PROFILE_OR_EVENT,
            f'{where}: \'type\' must be "profile" or "event", got {_show(kind)}',
        )
    key = _identity(where, record)
    ts = _ts(where, record.get("ts"), now)
    if kind == "profile":
        return _ProfileRecord(index, key, _profile_ops(where, record.get("profileData")))
    name = record.get("evtName")
    if not isinstance(name, str) or not name.strip():
        raise RecordError(
            MISSING_EVENT_NAME, f"{where}: 'evtName' is mandatory for an event (a non-empty string)"
        )
    if name.strip() in SYSTEM_EVENTS:
        raise RecordError(
            RESTRICTED_SYSTEM_EVENT, f"{where}: {name.strip()!r} is a system event: Tidings records it itself"
        )
    _utf8_len(where, "'evtName'", name)
    if len(name) > MAX_EVENT_NAME_CHARS:
        raise RecordError(
            BAD_STRUCTURE, f"{where}: 'evtName' is longer than {MAX_EVENT_NAME_CHARS} characters"
        )
    return _EventRecord(index, key, name, _event_properties(where, record.get("evtData")), ts)


def _identity(where: str, record: dict[str, Any]) -> str:
    """The profile key: ``identity`` when given, else ``objectId``."""
    for name in ("identity", "objectId"):
        raw = record.get(name)
        if raw is None or raw == "":
            continue
        if isinstance(raw, str):
            _utf8_len(where, f"'{name}'", raw, MISSING_IDENTITY)
            text = raw.strip()
        elif isinstance(raw, int) and not isinstance(raw, bool):
            text = str(raw)
        elif isinstance(raw, float):
            text = str(int(raw)) if raw.is_integer() else repr(raw)
        else:
            raise RecordError(
                MISSING_IDENTITY, f"{where}: '{name}' must be a string or a number, got {_show(raw)}"
            )
        if not text:
            continue
        if len(text) > MAX_IDENTITY_CHARS:
            raise RecordError(
                MISSING_IDENTITY,
                f"{where}: '{name}' is {len(text)} characters long; at most {MAX_IDENTITY_CHARS} are allowed",
            )
        return text
    raise RecordError(
        MISSING_IDENTITY,
        f"{where}: 'identity' or 'objectId' (a string or number of at most {MAX_IDENTITY_CHARS} "
        "characters) is necessary to identify the user",
    )


def _ts(where: str, raw: Any, now: datetime) -> datetime:
    if raw is None:
        return now
    seconds: int | None = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        seconds = raw
    elif isinstance(raw, str) and raw.isascii() and raw.isdigit():
        seconds = int(raw)
    if seconds is None or not 0 <= seconds <= MAX_EPOCH:
        hint = " (milliseconds?)" if seconds is not None and seconds > MAX_EPOCH else ""
        raise RecordError(
            BAD_TS,
            f"{where}: 'ts' must be a UNIX epoch in seconds (a whole number from 0 to {MAX_EPOCH}, "
            f"or a string of digits), got {_show(raw)}{hint}",
        )
    return _EPOCH + timedelta(seconds=seconds)


def _check_key(where: str, container: str, key: str) -> None:
    size = _utf8_len(where, f"a key of {container}", key)
    if size == 0 or size > MAX_KEY_BYTES:
        raise RecordError(
            BAD_STRUCTURE,
            f"{where}: {container} key {_show(key)} must be 1 to {MAX_KEY_BYTES} bytes long (it is {size})",
        )


def _string(where: str, what: str, text: str) -> str:
    """A string value: at most 512 bytes; ``$D_<epoch seconds>`` becomes an ISO-8601 UTC string."""
    size = _utf8_len(where, what, text)
    if size > MAX_VALUE_BYTES:
        raise RecordError(
            BAD_STRUCTURE, f"{where}: {what} is {size} bytes long; at most {MAX_VALUE_BYTES} are allowed"
        )
    if not text.startswith("$D_"):
        return text
    digits = text[3:]
    body = digits[1:] if digits.startswith("-") else digits
    if body.isascii() and body.isdigit() and MIN_DATE <= int(digits) < MAX_EPOCH:
        return iso_date(int(digits))
    raise RecordError(
        BAD_STRUCTURE,
        f'{where}: {what} {_show(text)} is not a date; write dates as "$D_<UNIX epoch in seconds>"',
    )


def _scalar(where: str, what: str, value: Any) -> Any:
    if isinstance(value, str):
        return _string(where, what, value)
    if isinstance(value, bool):
        return value
    if _is_number(value):
        if isinstance(value, float) and not math.isfinite(value):
            raise RecordError(BAD_STRUCTURE, f"{where}: {what} is not a finite number")
        return value
    raise RecordError(
        BAD_STRUCTURE, f"{where}: {what} must be a string, number or boolean, got {_show(value)}"
    )


def _profile_ops(where: str, data: Any) -> list[_Op]:
    if not isinstance(data, dict):
        got = "it is missing" if data is None else f"got {_show(data)}"
        raise RecordError(BAD_STRUCTURE, f"{where}: 'profileData' must be a JSON object; {got}")
    if _custom_count(data) > MAX_CUSTOM_KEYS:
        raise RecordError(
            PROPERTIES_LIMIT,
            f"{where}: 'profileData' has {_custom_count(data)} custom keys; a profile has at most "
            f"{MAX_CUSTOM_KEYS}",
        )
    ops: list[_Op] = []
    for key, value in data.items():
        _check_key(where, "profileData", key)
        if key == PHONE:
            ops.append(_phone_op(where, value))
        elif key == WHATSAPP:
            ops.append(_whatsapp_op(where, value))
        else:
            ops.append(_property_op(where, key, value))
    return ops


def _is_delete(value: Any) -> bool:
    return value is None or (isinstance(value, dict) and list(value) == ["$delete"])


def _phone_op(where: str, value: Any) -> _Op:
    if _is_delete(value):
        return _Op(PHONE, "delete")
    if isinstance(value, str):
        _utf8_len(where, "profileData.Phone", value, INVALID_PHONE)
        e164 = normalize_phone(value)
        if e164 is not None:
            return _Op(PHONE, "set", e164)
    raise RecordError(
        INVALID_PHONE,
        f"{where}: profileData.Phone {_show(value)} is not a valid phone number; write it with the "
        'country code, starting with + (e.g. "+14155552671")',
    )


def _whatsapp_op(where: str, value: Any) -> _Op:
    if isinstance(value, bool):
        return _Op(WHATSAPP, "set", value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return _Op(WHATSAPP, "set", value.strip().lower() == "true")
    raise RecordError(
        BAD_STRUCTURE,
        f'{where}: profileData.{WHATSAPP} must be true or false (or the strings "true"/"false"), '
        f"got {_show(value)}",
    )


def _property_op(where: str, key: str, value: Any) -> _Op:
    what = f"profileData.{key}"
    if value is None:
        return _Op(key, "delete")
    if isinstance(value, list):
        return _Op(key, "set", [_scalar(where, f"an item of {what}", item) for item in value])
    if not isinstance(value, dict):
        return _Op(key, "set", _scalar(where, what, value))
    if len(value) != 1 or next(iter(value)) not in _OPERATIONS:
        raise RecordError(
            BAD_STRUCTURE,
            f"{where}: {what} must be a value or one operation of {', '.join(_OPERATIONS)}; "
            f"got {_show(value)}",
        )
    ((operation, argument),) = value.items()
    if operation == "$delete":
        return _Op(key, "delete")
    if operation in ("$add", "$remove"):
        items = argument if isinstance(argument, list) else [argument]
        values = [_scalar(where, f"the {operation} value of {what}", item) for item in items]
        return _Op(key, operation[1:], values)
    if not _is_number(argument) or (isinstance(argument, float) and not math.isfinite(argument)):
        raise RecordError(
            BAD_STRUCTURE, f"{where}: {operation} of {what} needs a number, got {_show(argument)}"
        )
    return _Op(key, "incr", argument if operation == "$incr" else -argument)


def _event_properties(where: str, data: Any) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecordError(BAD_STRUCTURE, f"{where}: 'evtData' must be a JSON object, got {_show(data)}")
    if len(data) > MAX_EVENT_PROPERTIES:
        raise RecordError(
            PROPERTIES_LIMIT,
            f"{where}: 'evtData' has {len(data)} properties; an event has at most {MAX_EVENT_PROPERTIES}",
        )
    properties: dict[str, Any] = {}
    for key, value in data.items():
        _check_key(where, "evtData", key)
        what = f"evtData.{key}"
        if isinstance(value, str):
            properties[key] = _string(where, what, value)
        elif isinstance(value, list):
            properties[key] = [
                _string(where, f"an item of {what}", item)
                if isinstance(item, str)
                else _nested(where, what, item, 1)
                for item in value
            ]
        else:
            properties[key] = _nested(where, what, value, 0)
    return properties


def _nested(where: str, what: str, value: Any, depth: int) -> Any:
    """Check a nested event value (keys and string sizes, depth); returns it unchanged."""
    if depth > MAX_NESTING:
        raise RecordError(BAD_STRUCTURE, f"{where}: {what} is nested more than {MAX_NESTING} levels deep")
    if isinstance(value, str):
        size = _utf8_len(where, what, value)
        if size > MAX_VALUE_BYTES:
            raise RecordError(
                BAD_STRUCTURE,
                f"{where}: a string in {what} is {size} bytes long; at most {MAX_VALUE_BYTES} are allowed",
            )
    elif isinstance(value, float) and not math.isfinite(value):
        raise RecordError(BAD_STRUCTURE, f"{where}: {what} holds a number that is not finite")
    elif isinstance(value, list):
        for item in value:
            _nested(where, what, item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_key(where, what, key)
            _nested(where, what, item, depth + 1)
    elif value is not None and not isinstance(value, int | float):
        raise RecordError(BAD_STRUCTURE, f"{where}: {what} holds a value that is not JSON: {_show(value)}")
    return value


# --------------------------------------------------------------------------------------------- applying


def _same(a: Any, b: Any) -> bool:
    """Equality that tells 1, 1.0 and true apart (so that changing one into another is a change)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _contains(items: Sequence[Any], value: Any) -> bool:
    return any(_same(item, value) for item in items)


def _custom_count(properties: dict[str, Any]) -> int:
    return sum(1 for key in properties if key not in STANDARD_KEYS and not key.startswith("MSG-"))


def _apply(properties: dict[str, Any], ops: list[_Op]) -> str | None:
    """Apply one record's operations, all or nothing; the reason it cannot be applied, or None."""
    staged = dict(properties)
    for op in ops:
        if op.kind == "set":
            staged[op.key] = op.value
        elif op.kind == "delete":
            staged.pop(op.key, None)
        elif op.kind == "incr":
            current = staged.get(op.key, 0)
            if not _is_number(current):
                return f"cannot $incr/$decr profileData.{op.key}: its value {_show(current)} is not a number"
            total = current + op.value
            if isinstance(total, float) and not math.isfinite(total):
                return f"$incr/$decr of profileData.{op.key} overflows"
            staged[op.key] = total
        else:
            current = staged.get(op.key)
            items = [] if current is None else list(current) if isinstance(current, list) else [current]
            if op.kind == "add":
                for value in op.value:
                    if not _contains(items, value):
                        items.append(value)
                staged[op.key] = items
            elif current is not None:  # remove
                kept = [item for item in items if not _contains(op.value, item)]
                if isinstance(current, list):
                    staged[op.key] = kept
                elif not kept:
                    del staged[op.key]
    properties.clear()
    properties.update(staged)
    return None


def name_key(name: Any) -> str | None:
    """The ``Name`` as ``Profile.name_key`` holds it (and as a name search is compared with it)."""
    return name.casefold()[:NAME_KEY_CHARS] if isinstance(name, str) and name else None


def _columns(properties: dict[str, Any]) -> tuple[str | None, bool, str | None]:
    """The columns mirrored from the properties: phone, opted in, name key."""
    phone = properties.get(PHONE)
    return (
        (phone if isinstance(phone, str) else None),
        properties.get(WHATSAPP) is True,
        name_key(properties.get(NAME)),
    )


@dataclass(slots=True)
class _Row:
    id: int
    phone: str | None
    whatsapp_opt_in: bool
    properties: dict[str, Any]


def _run(
    base: dict[str, Any], records: Sequence[_ProfileRecord]
) -> tuple[dict[str, Any], dict[int, tuple[int, str]]]:
    """The records applied in order; those that cannot be, by index: (CleverTap code, message)."""
    properties = dict(base)
    failed: dict[int, tuple[int, str]] = {}
    for record in records:
        before = _custom_count(properties)
        kept = dict(properties) if before + len(record.ops) > MAX_CUSTOM_KEYS else None
        reason = _apply(properties, record.ops)
        if reason is not None:
            failed[record.index] = (BAD_STRUCTURE, f"Record d[{record.index}]: {reason}")
            continue
        after = _custom_count(properties)
        if kept is not None and after > MAX_CUSTOM_KEYS and after > before:  # this record adds too many
            properties.clear()
            properties.update(kept)
            failed[record.index] = (
                PROPERTIES_LIMIT,
                f"Record d[{record.index}]: the profile would have {after} custom keys; at most "
                f"{MAX_CUSTOM_KEYS} are allowed",
            )
    return properties, failed


def _load(session: Session, account_id: str, keys: Sequence[str], lock: bool) -> dict[str, _Row]:
    """The batch's existing profiles, in one SELECT (locked ``FOR UPDATE`` on PostgreSQL if ``lock``)."""
    if not keys:
        return {}
    columns = (
        _PROFILES.c.id,
        _PROFILES.c.identity,
        _PROFILES.c.phone,
        _PROFILES.c.whatsapp_opt_in,
        _PROFILES.c.properties,
    )
    if is_postgres(session):
        # A join with unnest(array) rather than IN (…): the generic plan PostgreSQL settles on for a
        # prepared IN list of hundreds of parameters scans every profile of the account; this one looks
        # each key up in the (account_id, identity) index, however large the account.
        wanted = (
            func.unnest(bindparam("keys", list(keys), type_=ARRAY(String)))
            .table_valued("identity")
            .render_derived(name="wanted")
        )
        stmt = select(*columns).select_from(
            wanted.join(
                _PROFILES,
                and_(_PROFILES.c.account_id == account_id, _PROFILES.c.identity == wanted.c.identity),
            )
        )
        if lock:  # SQLite needs no lock: it has one writer at a time
            stmt = stmt.with_for_update(of=_PROFILES)
    else:
        stmt = select(*columns).where(_PROFILES.c.account_id == account_id, _PROFILES.c.identity.in_(keys))
    stmt = stmt.order_by(_PROFILES.c.id)  # rows are locked in this order: no deadlock between two batches
    return {
        row.identity: _Row(row.id, row.phone, row.whatsapp_opt_in, dict(row.properties or {}))
        for row in session.execute(stmt)
    }


def ingest(
    session: Session,
    account_id: str,
    records: Sequence[Any],
    now: datetime | None = None,
    *,
    source: ConsentSource = ConsentSource.upload,
    actor: str | None = None,
) -> IngestResult:
    """Upload CleverTap records (profiles and events) for an account, in order, set-based.

    Each record that cannot be applied is reported in ``unprocessed`` with its code and is not written;
    the others are. Changes of ``MSG-whatsapp`` are recorded with ``source`` and ``actor``. The caller
    owns the transaction (the request's unit of work).
    """
    now = now or utcnow()
    failures: dict[int, tuple[int, str]] = {}
    parsed: list[_ProfileRecord | _EventRecord] = []
    for index, record in enumerate(records):
        try:
            parsed.append(_parse(index, record, now))
        except RecordError as exc:
            failures[index] = (exc.code, exc.message)

    keys = list(dict.fromkeys(item.key for item in parsed))
    profile_records: dict[str, list[_ProfileRecord]] = {}
    event_keys: set[str] = set()
    for item in parsed:
        if isinstance(item, _ProfileRecord):
            profile_records.setdefault(item.key, []).append(item)
        else:
            event_keys.add(item.key)

    rows = _load(session, account_id, keys, lock=bool(profile_records))
    apply_failures: dict[str, dict[int, tuple[int, str]]] = {}
    updates: dict[str, tuple[_Row, dict[str, Any]]] = {}
    creates: dict[str, dict[str, Any]] = {}
    for key in keys:
        row = rows.get(key)
        properties, failed = _run(row.properties if row else {}, profile_records.get(key, ()))
        apply_failures[key] = failed
        if row is not None:
            updates[key] = (row, properties)
        elif key in event_keys or len(failed) < len(profile_records.get(key, ())):
            creates[key] = properties

    ids = {key: row.id for key, row in rows.items()}
    created: list[int] = []
    consent: list[tuple[int, bool | None, bool]] = []  # (profile id, old, new) of MSG-whatsapp
    if creates:
        new_rows = []
        for key in sorted(creates):  # one insert order for every batch: no deadlock between two
            phone, opted_in, name = _columns(creates[key])
            new_rows.append((key, phone, opted_in, name, creates[key], profile_seed(account_id, key)))
        for row_id, identity in _insert_profiles(session, account_id, new_rows, now):
            ids[identity] = row_id
            created.append(row_id)
            if WHATSAPP in creates[identity]:  # a new profile's consent, as uploaded
                consent.append((row_id, None, creates[identity][WHATSAPP] is True))
        raced = [key for key in creates if key not in ids]
        if raced:  # created by a concurrent upload since our SELECT: apply this batch on top of theirs
            theirs = _load(session, account_id, sorted(raced), lock=True)
            for key, row in theirs.items():
                properties, apply_failures[key] = _run(row.properties, profile_records.get(key, ()))
                ids[key] = row.id
                updates[key] = (row, properties)

    changes: list[tuple[int, str | None, bool, str | None, dict[str, Any]]] = []
    opted_out: list[int] = []  # MSG-whatsapp true → false in this batch
    for row, properties in updates.values():
        phone, opted_in, name = _columns(properties)
        if row.phone != phone or row.whatsapp_opt_in != opted_in or not _same(row.properties, properties):
            changes.append((row.id, phone, opted_in, name, properties))
        if row.whatsapp_opt_in != opted_in:
            consent.append((row.id, row.whatsapp_opt_in, opted_in))
        if row.whatsapp_opt_in and not opted_in:
            opted_out.append(row.id)
    if changes:
        _update_profiles(session, changes, now)
    record_consent(session, account_id, consent, source, actor, now)
    if opted_out:  # their unsent messages are settled in the same transaction, in one statement
        skip_not_opted_in(session, opted_out)

    events = [item for item in parsed if isinstance(item, _EventRecord)]
    ingested: list[IngestedEvent] = []
    if events:
        event_rows = [(ids[item.key], item.name, item.properties, item.ts) for item in events]
        event_ids = _insert_events(session, account_id, event_rows, now)
        ingested = [
            IngestedEvent(event_id, ids[item.key], item.key, item.name, item.properties, item.ts)
            for event_id, item in zip(event_ids, events, strict=True)
        ]

    for failed in apply_failures.values():
        for index, (code, message) in failed.items():
            failures[index] = (code, message)
    _catalogue(session, account_id, parsed, failures, now)
    unprocessed = [
        {"status": "fail", "code": code, "error": message, "record": records[index]}
        for index, (code, message) in sorted(failures.items())
    ]
    return IngestResult(
        processed=len(records) - len(failures),
        unprocessed=unprocessed,
        events=ingested,
        created_profile_ids=created,
        updated_profile_ids=[change[0] for change in changes],
    )


# On PostgreSQL each write is one statement over arrays (``unnest``): a multi-row VALUES with thousands of
# parameters costs more to build and parse than to run. On SQLite, executemany is fast already.


def _arrays(*columns: tuple[str, list[Any], Any]) -> Any:
    """``unnest(:a, :b, …) AS new(a, b, …)``: rows from one array parameter per column (PostgreSQL)."""
    unnest = func.unnest(*(bindparam(name, values, type_=ARRAY(type_)) for name, values, type_ in columns))
    return unnest.table_valued(*(name for name, _, _ in columns)).render_derived(name="new")


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _insert_profiles(
    session: Session,
    account_id: str,
    rows: list[tuple[str, str | None, bool, str | None, dict[str, Any], int]],
    now: datetime,
) -> list[tuple[int, str]]:
    """``INSERT … ON CONFLICT DO NOTHING`` of (identity, phone, opted in, name key, properties, seed) rows;
    (id, identity) of the rows inserted (not of those another upload inserted first)."""
    if is_postgres(session):
        identity, phone, opt_in, name, properties, seed = (list(column) for column in zip(*rows, strict=True))
        new = _arrays(
            ("identity", identity, String),
            ("phone", phone, String),
            ("opt_in", opt_in, Boolean),
            ("name_key", name, String),
            ("properties", [_json(p) for p in properties], Text),
            ("seed", seed, Integer),
        )
        at = bindparam("now", now, type_=UTCDateTime())
        source = select(
            literal(account_id, String),
            new.c.identity,
            new.c.phone,
            new.c.opt_in,
            new.c.name_key,
            new.c.properties.cast(JSONB),
            new.c.seed,
            at,
            at,
        )
        columns = ["account_id", "identity", "phone", "whatsapp_opt_in", "name_key", "properties", "seed"]
        stmt: Any = pg_insert(_PROFILES).from_select([*columns, "created_at", "updated_at"], source)
        stmt = stmt.on_conflict_do_nothing(index_elements=["account_id", "identity"])
        return [
            (r.id, r.identity) for r in session.execute(stmt.returning(_PROFILES.c.id, _PROFILES.c.identity))
        ]
    params = [
        {
            "account_id": account_id,
            "identity": identity,
            "phone": phone,
            "whatsapp_opt_in": opted_in,
            "name_key": name,
            "properties": properties,
            "seed": seed,
            "created_at": now,
            "updated_at": now,
        }
        for identity, phone, opted_in, name, properties, seed in rows
    ]
    stmt = sqlite_insert(_PROFILES).on_conflict_do_nothing(index_elements=["account_id", "identity"])
    result = session.execute(stmt.returning(_PROFILES.c.id, _PROFILES.c.identity), params)
    return [(r.id, r.identity) for r in result]


def _update_profiles(
    session: Session, changes: list[tuple[int, str | None, bool, str | None, dict[str, Any]]], now: datetime
) -> None:
    """Write (id, phone, opted in, name key, properties) of changed profiles, in one statement."""
    if is_postgres(session):
        ids, phone, opt_in, name, properties = (list(column) for column in zip(*changes, strict=True))
        new = _arrays(
            ("id", ids, BigInteger),
            ("phone", phone, String),
            ("opt_in", opt_in, Boolean),
            ("name_key", name, String),
            ("properties", [_json(p) for p in properties], Text),
        )
        session.execute(
            update(_PROFILES)
            .where(_PROFILES.c.id == new.c.id)
            .values(
                phone=new.c.phone,
                whatsapp_opt_in=new.c.opt_in,
                name_key=new.c.name_key,
                properties=new.c.properties.cast(JSONB),
                updated_at=bindparam("now", now, type_=UTCDateTime()),
            )
        )
        return
    session.execute(
        update(_PROFILES)
        .where(_PROFILES.c.id == bindparam("b_id"))
        .values(
            phone=bindparam("b_phone"),
            whatsapp_opt_in=bindparam("b_opt_in"),
            name_key=bindparam("b_name_key"),
            properties=bindparam("b_properties"),
            updated_at=bindparam("b_updated_at"),
        ),
        [
            {
                "b_id": i,
                "b_phone": phone,
                "b_opt_in": opt_in,
                "b_name_key": name,
                "b_properties": props,
                "b_updated_at": now,
            }
            for i, phone, opt_in, name, props in changes
        ],
    )


def _insert_events(
    session: Session,
    account_id: str,
    rows: list[tuple[int, str, dict[str, Any], datetime]],
    now: datetime,
) -> Sequence[int]:
    """Insert (profile id, name, properties, ts) events in one statement; their ids, in ``rows`` order."""
    if is_postgres(session):
        profile_id, name, properties, ts = (list(column) for column in zip(*rows, strict=True))
        new = _arrays(
            ("profile_id", profile_id, BigInteger),
            ("name", name, String),
            ("properties", [_json(p) for p in properties], Text),
            ("ts", [t.astimezone(UTC).replace(tzinfo=None) for t in ts], DateTime),  # as UTCDateTime
        )
        source = select(
            literal(account_id, String),
            new.c.profile_id,
            new.c.name,
            new.c.properties.cast(JSONB),
            new.c.ts,
            bindparam("now", now, type_=UTCDateTime()),
        )
        columns = ["account_id", "profile_id", "name", "properties", "ts", "created_at"]
        # The rows are inserted in array order, so the id sequence hands out ascending ids in that order
        # (the same reasoning as SQLAlchemy's sort_by_parameter_order for SERIAL keys): sorted ids line up.
        stmt = insert(_EVENTS).from_select(columns, source).returning(_EVENTS.c.id)
        return sorted(session.execute(stmt).scalars())
    # SQLAlchemy cannot order RETURNING rows on SQLite and would insert one row per statement. SQLite
    # has one writer at a time (every transaction is BEGIN IMMEDIATE), so number the rows as SQLite
    # itself would (max + 1): a writer that did not hold the lock would fail on the primary key, not
    # mix ids up.
    first = (session.scalar(select(func.max(_EVENTS.c.id))) or 0) + 1
    ids = range(first, first + len(rows))
    session.execute(
        insert(_EVENTS),
        [
            {
                "id": event_id,
                "account_id": account_id,
                "profile_id": profile_id,
                "name": name,
                "properties": properties,
                "ts": ts,
                "created_at": now,
            }
            for event_id, (profile_id, name, properties, ts) in zip(ids, rows, strict=True)
        ],
    )
    return ids


# CleverTap's system events of a channel's subscription: the profile opted in to WhatsApp, or out.
SUBSCRIBED = "Channel Subscribed"
UNSUBSCRIBED = "Channel Unsubscribed"

# The events Tidings records itself, with their properties: the dashboard's pickers offer them next to the
# uploaded ones, and an upload may not name them (CleverTap's 513, restricted system event).
SYSTEM_EVENTS: dict[str, tuple[str, ...]] = {
    **{name: system_events.PROPERTIES for name in system_events.NAMES},
    SUBSCRIBED: ("Channel", WHATSAPP, "Source", "Actor"),
    UNSUBSCRIBED: ("Channel", WHATSAPP, "Source", "Actor"),
}


def event_catalogue(catalogue: PropertyCatalogue) -> dict[str, list[str]]:
    """Every event a segment or a goal may name, with its properties: the uploaded ones and the system
    events."""
    merged = {name: set(props) for name, (_, props) in catalogue.events.items()}
    for name, props in SYSTEM_EVENTS.items():
        merged.setdefault(name, set()).update(props)
    return {name: sorted(props) for name, props in sorted(merged.items())}


def consent_events(
    changes: Sequence[tuple[int, bool | None, bool]], source: ConsentSource, actor: str | None, now: datetime
) -> list[tuple[int, str, dict[str, Any], datetime]]:
    """The events of these consent changes, as ``_insert_events`` takes them: ``Channel Subscribed`` or
    ``Channel Unsubscribed`` with the channel, the new ``MSG-whatsapp``, its source and who made it, at
    the change's time — so that segments and conversion goals can use a change of consent like any
    event. (They are not uploaded events: no live trigger fires on them.)"""
    rows = []
    for profile_id, _old, new in changes:
        properties: dict[str, Any] = {"Channel": "WhatsApp", WHATSAPP: new, "Source": source.value}
        if actor:
            properties["Actor"] = actor[:254]
        rows.append((profile_id, SUBSCRIBED if new else UNSUBSCRIBED, properties, now))
    return rows


def record_consent(
    session: Session,
    account_id: str,
    changes: Sequence[tuple[int, bool | None, bool]],
    source: ConsentSource,
    actor: str | None,
    now: datetime,
) -> None:
    """Keep (profile id, old value or None for a new profile, new value) changes of ``MSG-whatsapp`` in
    the consent history, in one statement (an executemany), and on each profile as an event
    (``consent_events``)."""
    if not changes:
        return
    _insert_events(session, account_id, consent_events(changes, source, actor, now), now)
    session.execute(
        insert(_CONSENT),
        [
            {
                "account_id": account_id,
                "profile_id": profile_id,
                "old_value": old,
                "new_value": new,
                "source": source.value,
                "actor": actor[:254] if actor else None,
                "changed_at": now,
            }
            for profile_id, old, new in changes
        ],
    )


def _catalogue(
    session: Session,
    account_id: str,
    parsed: Sequence[_ProfileRecord | _EventRecord],
    failures: dict[int, tuple[int, str]],
    now: datetime,
) -> None:
    """Add the batch's property and event names to the account's catalogue: one SELECT of the catalogue
    rows of the batch's event names, then one upsert of the names new to it or last seen over
    ``CATALOGUE_STEP`` ago (so that most uploads write nothing there, and two uploads of one account
    seldom wait for each other on a catalogue row)."""
    names: set[tuple[str, str]] = set()
    for item in parsed:
        if item.index in failures:
            continue
        if isinstance(item, _EventRecord):
            names.add((item.name, ""))
            names.update((item.name, key) for key in item.properties)
        else:
            names.update(("", op.key) for op in item.ops if op.kind != "delete")
    if not names:
        return
    events = sorted({event for event, _ in names})
    fresh = {
        (row.event_name, row.property)
        for row in session.execute(
            select(_CATALOGUE.c.event_name, _CATALOGUE.c.property).where(
                _CATALOGUE.c.account_id == account_id,
                _CATALOGUE.c.event_name.in_(events),
                _CATALOGUE.c.last_seen_at > now - CATALOGUE_STEP,
            )
        )
    }
    stale = sorted(names - fresh)  # in one order for every batch: no deadlock between two
    if not stale:
        return
    upsert: Any = pg_insert(_CATALOGUE) if is_postgres(session) else sqlite_insert(_CATALOGUE)
    upsert = upsert.on_conflict_do_update(
        index_elements=["account_id", "event_name", "property"],
        set_={"last_seen_at": upsert.excluded.last_seen_at},
        where=_CATALOGUE.c.last_seen_at < upsert.excluded.last_seen_at,
    )
    session.execute(
        upsert,
        [
            {"account_id": account_id, "event_name": event, "property": key, "last_seen_at": now}
            for event, key in stale
        ],
    )


# --------------------------------------------------------------------------------------------- other domains


def update_profile(session: Session, account_id: str, identity: str, profile_data: dict[str, Any]) -> Profile:
    """Apply one ``profileData`` (same rules as the upload) to a profile, creating it if needed.

    Raises :class:`tidings.errors.Invalid` (code ``"clevertap_<code>"``) when the data is rejected.
    """
    result = ingest(
        session, account_id, [{"type": "profile", "identity": identity, "profileData": profile_data}]
    )
    if result.unprocessed:
        failure = result.unprocessed[0]
        raise Invalid(failure["error"], code=f"clevertap_{failure['code']}")
    profile = get_profile(session, account_id, identity.strip())
    session.refresh(profile)  # the ingest wrote with Core statements
    return profile


def get_profile(session: Session, account_id: str, identity: str) -> Profile:
    profile = session.scalars(
        select(Profile).where(Profile.account_id == account_id, Profile.identity == identity)
    ).one_or_none()
    if profile is None:
        raise NotFound(f"profile {identity!r}")
    return profile


def profile_by_phone(session: Session, account_id: str, phone: str) -> Profile | None:
    """The account's profile with this phone (E.164, with or without the leading +), latest updated."""
    text = phone.strip()
    e164 = normalize_phone(text if text.startswith("+") else f"+{text}") or text
    return session.scalars(
        select(Profile)
        .where(Profile.account_id == account_id, Profile.phone == e164)
        .order_by(Profile.updated_at.desc(), Profile.id.desc())
        .limit(1)
    ).first()


def _set_whatsapp_opt_in(
    session: Session,
    account_id: str,
    profiles: Sequence[Profile],
    value: bool,
    source: ConsentSource,
    actor: str | None,
) -> None:
    """Set the column and ``MSG-whatsapp`` of these profiles, keep the changes in the consent history,
    and on an opt-out settle all their unsent messages as skipped ``not_opted_in``, in one statement."""
    now = utcnow()
    changed = [(p.id, p.whatsapp_opt_in, value) for p in profiles if p.whatsapp_opt_in != value]
    for profile in profiles:
        profile.whatsapp_opt_in = value
        profile.properties = {**(profile.properties or {}), WHATSAPP: value}
        profile.updated_at = now
    session.flush()
    record_consent(session, account_id, changed, source, actor, now)
    if not value and profiles:  # an opt-out wins over everything queued: its unsent messages are settled now
        skip_not_opted_in(session, [p.id for p in profiles])


def set_whatsapp_opt_in(
    session: Session, profile: Profile, value: bool, source: ConsentSource, actor: str | None
) -> None:
    """Opt a profile in to or out of WhatsApp (the column and the ``MSG-whatsapp`` property), recorded in
    its consent history with ``source`` and ``actor``; opting out settles the profile's unsent messages as
    skipped ``not_opted_in`` in the same transaction."""
    _set_whatsapp_opt_in(session, profile.account_id, [profile], value, source, actor)


def profiles_by_phone(session: Session, account_id: str, phone: str) -> list[Profile]:
    """Every profile of the account with this phone (E.164, with or without the leading +)."""
    text = phone.strip()
    e164 = normalize_phone(text if text.startswith("+") else f"+{text}") or text
    return list(
        session.scalars(
            select(Profile)
            .where(Profile.account_id == account_id, Profile.phone == e164)
            .order_by(Profile.id)
        )
    )


def set_whatsapp_opt_in_by_phone(
    session: Session, account_id: str, phone: str, value: bool, source: ConsentSource, actor: str | None
) -> list[int]:
    """Opt every profile with this phone in to or out of WhatsApp: one person, one number, whatever
    identities they have. As ``set_whatsapp_opt_in`` does for one (the column and ``MSG-whatsapp``, the
    consent history; an opt-out settles the unsent messages of all of them as skipped ``not_opted_in``,
    in one statement). Returns the ids of the profiles it applied to."""
    profiles = profiles_by_phone(session, account_id, phone)
    _set_whatsapp_opt_in(session, account_id, profiles, value, source, actor)
    return [p.id for p in profiles]


def list_profiles(
    session: Session, account_id: str, limit: int = 50, offset: int = 0
) -> tuple[list[Profile], int]:
    """A page of the account's profiles, newest first, and how many it has in all."""
    total = session.scalar(select(func.count()).select_from(Profile).where(Profile.account_id == account_id))
    page = session.scalars(
        select(Profile)
        .where(Profile.account_id == account_id)
        .order_by(Profile.created_at.desc(), Profile.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return list(page), int(total or 0)


def list_events(
    session: Session, account_id: str, identity: str, limit: int = 50, offset: int = 0
) -> tuple[list[Event], int]:
    """A page of a profile's events, latest first, and how many it has in all (NotFound if no profile)."""
    profile = get_profile(session, account_id, identity)
    events = select(Event).where(Event.account_id == account_id, Event.profile_id == profile.id)
    page, total = _page(session, events.order_by(Event.ts.desc(), Event.id.desc()), limit, offset)
    return list(page.scalars()), total


def profile_events(
    session: Session, profile: Profile, limit: int = 20, cursor: str | None = None
) -> tuple[list[Event], str | None]:
    """A page of the profile's events, newest first (``ts``, then ``id``), and the cursor of the next page
    (None after the last): a range of ix_events_profile_ts from the cursor, ``limit + 1`` rows read, not
    counted, however many events the profile has."""
    events = select(Event).where(Event.profile_id == profile.id)
    if cursor:
        ts, event_id = _read_event_cursor(cursor)
        events = events.where(tuple_(Event.ts, Event.id) < tuple_(literal(ts, UTCDateTime()), event_id))
    found = list(session.scalars(events.order_by(Event.ts.desc(), Event.id.desc()).limit(limit + 1)))
    if len(found) <= limit:
        return found, None
    last = found[limit - 1]
    return found[:limit], f"{(last.ts - _EPOCH) // timedelta(microseconds=1)}.{last.id}"


def _read_event_cursor(cursor: str) -> tuple[datetime, int]:
    micros, _, event_id = cursor.partition(".")
    try:
        return _EPOCH + timedelta(microseconds=int(micros)), int(event_id)
    except (ValueError, OverflowError):
        raise _bad_cursor() from None


def newest_profiles(
    session: Session, account_id: str, limit: int = 20, cursor: str | None = None
) -> tuple[list[Profile], str | None]:
    """A page of the account's profiles, newest (highest id) first, and the cursor of the next page (None
    after the last): ix_profiles_account_newest read backwards from the cursor, ``limit + 1`` rows, not
    counted."""
    profiles = select(Profile).where(Profile.account_id == account_id)
    if cursor:
        if not (cursor.isascii() and cursor.isdigit() and int(cursor) < 2**63):
            raise _bad_cursor()
        profiles = profiles.where(Profile.id < int(cursor))
    found = list(session.scalars(profiles.order_by(Profile.id.desc()).limit(limit + 1)))
    if len(found) <= limit:
        return found, None
    return found[:limit], str(found[limit - 1].id)


def _page(session: Session, rows: Select[Any], limit: int, offset: int) -> tuple[Result[Any], int]:
    """A page of ``rows`` (in their order), and how many rows there are in all."""
    total = session.scalar(select(func.count()).select_from(rows.order_by(None).subquery()))
    return session.execute(rows.limit(limit).offset(offset)), int(total or 0)


def consent_history(
    session: Session, account_id: str, identity: str, limit: int = 50, offset: int = 0
) -> tuple[list[ConsentChange], int]:
    """A page of a profile's ``MSG-whatsapp`` changes, newest first, and how many it has (NotFound if no
    profile)."""
    profile = get_profile(session, account_id, identity)
    changes = select(ConsentChange).where(ConsentChange.profile_id == profile.id)
    newest_first = changes.order_by(ConsentChange.changed_at.desc(), ConsentChange.id.desc())
    page, total = _page(session, newest_first, limit, offset)
    return list(page.scalars()), total


def change_consent(
    session: Session,
    account_id: str,
    identity: str,
    whatsapp: bool,
    source: ConsentSource,
    actor: str | None,
) -> Profile:
    """Opt a profile in or out by hand (the consent API, the profile page): see ``set_whatsapp_opt_in``."""
    profile = get_profile(session, account_id, identity)
    set_whatsapp_opt_in(session, profile, whatsapp, source, actor)
    return profile


# Finding a profile: by identity prefix, then by phone prefix, then by name prefix (case-folded). Each is a
# range scan of one index — uq_profiles_account_id (account_id, identity), ix_profiles_account_phone
# (account_id, phone), ix_profiles_account_name_key (account_id, name_key, id) — read in index order from
# where the cursor points, at most ``limit + 1`` rows each; a profile found by an earlier one is not
# repeated by a later one.
_FIND_BY = (Profile.identity, Profile.phone, Profile.name_key)
_PHONE_PUNCTUATION = str.maketrans("", "", " -().")


def _past_prefix(prefix: str) -> str | None:
    """The least string after every string that starts with ``prefix`` (in code point order, which is
    the order of UTF-8 bytes, of SQLite and of PostgreSQL's C collations); None: no such string."""
    while prefix:
        following = ord(prefix[-1]) + 1
        if 0xD800 <= following <= 0xDFFF:
            following = 0xE000
        if following <= 0x10FFFF:
            return prefix[:-1] + chr(following)
        prefix = prefix[:-1]
    return None


def _phone_prefix(q: str) -> str | None:
    """The E.164 form (or its beginning) a search for a phone number is written in, else None."""
    text = q.strip()
    e164 = normalize_phone(text if text.startswith("+") else f"+{text}")
    if e164 is not None:
        return e164
    digits = text.translate(_PHONE_PUNCTUATION)
    body = digits[1:] if digits.startswith("+") else digits
    return f"+{body}" if body.isascii() and body.isdigit() else None


def _bad_cursor() -> Invalid:
    return Invalid("the cursor is not one this list gave", code="invalid_cursor")


def _cursor(kind: int, key: str, row_id: int) -> str:
    return base64.urlsafe_b64encode(json.dumps([kind, key, row_id]).encode()).decode().rstrip("=")


def _read_cursor(cursor: str) -> tuple[int, str, int]:
    try:
        kind, key, row_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError, binascii.Error):
        raise _bad_cursor() from None
    if not (
        isinstance(kind, int)
        and 0 <= kind < len(_FIND_BY)
        and isinstance(key, str)
        and isinstance(row_id, int)
    ):
        raise _bad_cursor()
    return kind, key, row_id


def find_profiles(
    session: Session, account_id: str, q: str, limit: int = 20, cursor: str | None = None
) -> tuple[list[Profile], str | None]:
    """The account's profiles whose identity starts with ``q``, then those whose phone starts with the
    E.164 form of ``q`` (written in any format ``normalize_phone`` reads, or digits), then those whose
    ``Name`` starts with ``q`` whatever the case; a page of them and the cursor of the next page (None
    after the last)."""
    text = q.strip()
    phone = _phone_prefix(text)
    prefixes = [text or None, phone, name_key(text)]
    start, after_key, after_id = _read_cursor(cursor) if cursor else (0, None, 0)
    found: list[tuple[int, Profile]] = []
    for kind in range(start, len(_FIND_BY)):
        prefix = prefixes[kind]
        if prefix is None:
            continue
        column = _FIND_BY[kind]
        # Identities are unique in an account: their order needs no id (and their index has none).
        order = (column,) if column is Profile.identity else (column, Profile.id)
        stmt = select(Profile).where(Profile.account_id == account_id, *_starts(column, prefix))
        if kind == start and after_key is not None:
            after = column > after_key if len(order) == 1 else tuple_(*order) > tuple_(after_key, after_id)
            stmt = stmt.where(after)
        for earlier in range(kind):  # found by an earlier kind already
            if prefixes[earlier] is not None:
                earlier_column = _FIND_BY[earlier]
                stmt = stmt.where(
                    not_(and_(earlier_column.is_not(None), *_starts(earlier_column, prefixes[earlier])))
                )
        stmt = stmt.order_by(*order).limit(limit + 1 - len(found))
        found.extend((kind, profile) for profile in session.scalars(stmt))
        if len(found) > limit:
            break
    page = found[:limit]
    if len(found) <= limit:
        return [profile for _, profile in page], None
    kind, last = page[-1]
    return [profile for _, profile in page], _cursor(kind, getattr(last, _FIND_BY[kind].key), last.id)


def _starts(column: Any, prefix: str | None) -> list[Any]:
    """The conditions of ``column`` starting with ``prefix``, as an index range."""
    assert prefix is not None
    past = _past_prefix(prefix)
    return [column >= prefix] if past is None else [column >= prefix, column < past]


def profile_messages(
    session: Session, account_id: str, identity: str, limit: int = 50, offset: int = 0
) -> tuple[list[Row[Any]], int]:
    """A page of the profile's ledger rows (every message planned or sent to it, agent replies too), each
    with its campaign's name and its variant's key, newest first, and how many it has (NotFound if no
    profile); ix_messages_profile_created serves both."""
    profile = get_profile(session, account_id, identity)
    messages = (
        select(
            *cast(Table, Message.__table__).c,
            Campaign.name.label("campaign_name"),
            CampaignVariant.key.label("variant"),
        )
        .outerjoin(Campaign, Campaign.id == Message.campaign_id)
        .outerjoin(CampaignVariant, CampaignVariant.id == Message.variant_id)
        .where(Message.profile_id == profile.id, Message.account_id == account_id)
    )
    page, total = _page(
        session, messages.order_by(Message.created_at.desc(), Message.id.desc()), limit, offset
    )
    return list(page), total


@dataclass(frozen=True)
class PropertyCatalogue:
    """The property names the account has uploaded, each with when it was last uploaded (to the hour)."""

    profile: dict[str, datetime]
    events: dict[str, tuple[datetime, dict[str, datetime]]]  # event name → (last seen, its properties)


def property_catalogue(session: Session, account_id: str) -> PropertyCatalogue:
    """The account's catalogue, read from its own small table (its primary key's range for the account)."""
    profile: dict[str, datetime] = {}
    events: dict[str, tuple[datetime, dict[str, datetime]]] = {}
    rows = session.execute(
        select(_CATALOGUE.c.event_name, _CATALOGUE.c.property, _CATALOGUE.c.last_seen_at)
        .where(_CATALOGUE.c.account_id == account_id)
        .order_by(_CATALOGUE.c.event_name, _CATALOGUE.c.property)
    )
    for event, key, seen in rows:
        if not event:
            profile[key] = seen
        elif not key:
            events[event] = (seen, {})
        else:
            events.setdefault(event, (seen, {}))[1][key] = seen
    return PropertyCatalogue(profile, events)
