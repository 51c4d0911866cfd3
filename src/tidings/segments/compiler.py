"""Segment definitions: parsed into a small tree (every error names the faulty part), then compiled to one
SQL condition on ``profiles`` that runs on SQLite and PostgreSQL.

The language is documented in ``docs/segments.md``; in short, a node is one of

- ``{"and": [node, …]}``, ``{"or": [node, …]}``, ``{"not": node}``;
- ``{"property": "City", "op": "equals", "value": "Pune"}`` (a profile property);
- ``{"did": "Charged"}`` or ``{"did": {"event": "Charged", "where": …, "count": …, "in_the_last": …,
  "between": …}}`` and ``{"did_not": …}`` (past behaviour);
- ``{"segment_id": 3}`` (a saved segment; inlined by the service before compiling);
- the forms campaigns have always sent: ``{"all": true}`` and ``{"conditions": [property test, …]}``.

Every condition compiles to a predicate that is never NULL (so that ``NOT`` is exact): a property test checks
the JSON type of the value first (a string never equals a number, ``true`` never equals ``1``), and past
behaviour is membership in a set of profile ids that the database reads once from the account's events of
that name (the (account_id, name, ts) index), not a subquery run once per profile. No clock is read here:
relative windows are computed from the ``now`` passed in.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, get_args

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Numeric,
    String,
    Table,
    Text,
    and_,
    case,
    cast,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal

from tidings.errors import Invalid
from tidings.profiles.models import Event, Profile

# ----------------------------------------------------------------------------------------------- limits

MAX_DEPTH = 12  # levels of nesting in a definition as written
# … once saved segments are inlined: a target and up to 4 saved segments in a row, each at most MAX_DEPTH
# deep. SQLite's parser overflows its stack at about 70 levels of and / not (SQLAlchemy's compiler reaches
# Python's recursion limit at about 150).
MAX_RESOLVED_DEPTH = 5 * MAX_DEPTH
MAX_CONDITIONS = 250  # property and event tests in a definition as written
MAX_RESOLVED_CONDITIONS = 2_500  # … once saved segments are inlined
MAX_IN_VALUES = 1_000
# The one size limit every definition keeps, as written and once saved segments are inlined, so that any
# accepted target compiles and runs on both databases: a test counts SIZE_PER_CONDITION (at most that many
# bound parameters on either database, whatever the operator or key) and each value listed in "in" 1 more.
# A campaign's statement holds its target plus a trigger's conditions (each at most MAX_SIZE) and up to
# 1,000 event ids: 2 x 12,000 + 1,000 + planning's own stays under SQLite's 32,766 bound variables (and
# PostgreSQL's 65,535).
MAX_SIZE = 12_000
SIZE_PER_CONDITION = 16
MAX_KEY_BYTES = 120  # as profile and event property keys at upload
MAX_STRING_BYTES = 512  # as property values at upload
MAX_EVENT_NAME_CHARS = 255  # the events.name column
MAX_DAYS = 36_500  # a century, for every relative window
MAX_COUNT = 1_000_000_000
MAX_ID = 2**31 - 1
MAX_INT = 2**63 - 1

CODE = "invalid_segment"

PropertyOp = Literal[
    "equals",
    "not_equals",
    "in",
    "contains",
    "exists",
    "not_exists",
    "gt",
    "gte",
    "lt",
    "lte",
    "before",
    "after",
    "within_last_days",
    "within_next_days",
]
PROPERTY_OPS: tuple[str, ...] = get_args(PropertyOp)
NODE_KEYS = ("and", "or", "not", "property", "did", "did_not", "segment_id", "all", "conditions")
UNITS = {"minutes": 60, "hours": 3600, "days": 86400}

# A stored date: what the upload makes of "$D_<epoch seconds>".
DATE_PATTERN = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_DATE_ONLY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_SQLITE_DATE_GLOB = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]Z"
_PG_DATE_REGEX = "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$"
_FIRST_DATE = "0001-01-01T00:00:00Z"
_LAST_DATE = "9999-12-31T23:59:59Z"

_PROFILES: Table = Profile.__table__  # type: ignore[assignment]
_EVENTS: Table = Event.__table__  # type: ignore[assignment]


# ----------------------------------------------------------------------------------------------- the tree


@dataclass(frozen=True, slots=True)
class Everyone:
    pass


@dataclass(frozen=True, slots=True)
class AllOf:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Negation:
    item: Node


@dataclass(frozen=True, slots=True)
class PropertyTest:
    """``op`` is one of PROPERTY_OPS except before/after, which become ``date_lt``/``date_gt``/``date_gte``
    against a stored-form bound; ``value`` is checked and normalised for the op."""

    key: str
    op: str
    value: Any


@dataclass(frozen=True, slots=True)
class EventTest:
    """Did ``event`` (with ``where`` holding on its properties) between ``at_least`` and ``at_most`` times
    (``None``: no upper bound) within the window: the last ``last``, or [``since``, ``until``], or ever."""

    event: str
    where: Node | None
    at_least: int
    at_most: int | None
    last: timedelta | None = None
    since: datetime | None = None
    until: datetime | None = None
    until_inclusive: bool = True


@dataclass(frozen=True, slots=True)
class SegmentRef:
    segment_id: int
    path: str


Node = Everyone | AllOf | AnyOf | Negation | PropertyTest | EventTest | SegmentRef


# ----------------------------------------------------------------------------------------------- parsing


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _utf8(where: str, text: str) -> bytes:
    try:
        encoded = text.encode()
    except UnicodeEncodeError:
        raise Invalid(f"{where} is not valid Unicode (it holds a lone surrogate)", code=CODE) from None
    if "\x00" in text:
        raise Invalid(f"{where} must not contain the NUL character", code=CODE)
    return encoded


def iso(moment: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` (UTC, whole seconds dropped below), the form dates are stored in."""
    m = moment.astimezone(UTC)
    return f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}Z"


def _floor_second(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)


def _ceil_second(moment: datetime) -> datetime:
    return moment if moment.microsecond == 0 else moment.replace(microsecond=0) + timedelta(seconds=1)


class _Parser:
    def __init__(self, max_depth: int, max_conditions: int) -> None:
        self.max_depth = max_depth
        self.max_conditions = max_conditions
        self.conditions = 0
        self.size = 0

    def count(self, path: str, values: int = 0) -> None:
        self.conditions += 1
        if self.conditions > self.max_conditions:
            raise Invalid(f"{path}: a definition holds at most {self.max_conditions} conditions", code=CODE)
        self.size += SIZE_PER_CONDITION + values
        if self.size > MAX_SIZE:
            raise Invalid(
                f"{path}: the definition is too large: its size is over the limit of {MAX_SIZE} (each "
                f"condition counts {SIZE_PER_CONDITION}, each value listed in 'in' 1; saved segments "
                "count as inlined)",
                code=CODE,
            )

    # ---- nodes

    def node(self, value: Any, path: str, depth: int, *, events: bool = True) -> Node:
        """A node; with ``events=False`` (inside ``where``) only and/or/not and property tests."""
        if depth > self.max_depth:
            raise Invalid(f"{path} is nested too deeply (at most {self.max_depth} levels)", code=CODE)
        if not isinstance(value, dict):
            raise Invalid(f"{path} must be an object, got {_show(value)}", code=CODE)
        allowed = NODE_KEYS if events else ("and", "or", "not", "property")
        kinds = [key for key in NODE_KEYS if key in value]
        if not kinds:
            expected = ", ".join(allowed)
            if not value:
                raise Invalid(f"{path} is empty; it needs one of: {expected}", code=CODE)
            raise Invalid(
                f"{path} must have one of: {expected} (got {', '.join(map(repr, value))})", code=CODE
            )
        kind = kinds[0]
        if kind not in allowed:
            raise Invalid(
                f"{path}.{kind} is not allowed here: event conditions take and, or, not and property tests "
                "on the event's properties",
                code=CODE,
            )
        if kind != "property":
            extra = [key for key in value if key != kind]
            if extra:
                raise Invalid(
                    f"{path} must have only one key, {kind!r}; put {extra[0]!r} in its own object "
                    '(combine them with "and" or "or")',
                    code=CODE,
                )
        item = value[kind]
        here = f"{path}.{kind}"
        if kind in ("and", "or"):
            if not isinstance(item, list) or not item:
                raise Invalid(f"{here} must be a non-empty list of conditions", code=CODE)
            items = tuple(
                self.node(child, f"{here}[{i}]", depth + 1, events=events) for i, child in enumerate(item)
            )
            return AllOf(items) if kind == "and" else AnyOf(items)
        if kind == "not":
            return Negation(self.node(item, here, depth + 1, events=events))
        if kind == "property":
            return self.property_test(value, path)
        if kind in ("did", "did_not"):
            test = self.event_test(item, here, depth)
            return Negation(test) if kind == "did_not" else test
        if kind == "segment_id":
            if not _is_int(item) or not 1 <= item <= MAX_ID:
                raise Invalid(f"{here} must be a positive integer (a saved segment's id)", code=CODE)
            return SegmentRef(item, path)
        if kind == "all":
            if item is not True:
                raise Invalid(f'{here} must be true ({{"all": true}} targets everyone)', code=CODE)
            return Everyone()
        # the original campaign form: an AND of property tests
        if not isinstance(item, list) or not item:
            raise Invalid(
                f'{here} must be a non-empty list of {{"property", "op", "value"}} tests', code=CODE
            )
        tests: list[Node] = []
        for i, cond in enumerate(item):
            where = f"{here}[{i}]"
            if not isinstance(cond, dict):
                raise Invalid(f"{where} must be an object", code=CODE)
            tests.append(self.property_test(cond, where))
        return AllOf(tuple(tests))

    # ---- property tests

    def property_test(self, cond: dict[str, Any], path: str) -> PropertyTest:
        self.count(path)
        extra = [key for key in cond if key not in ("property", "op", "value")]
        if extra:
            raise Invalid(
                f"{path}.{extra[0]} is not a field of a property test (property, op, value)", code=CODE
            )
        key = cond.get("property")
        if not isinstance(key, str) or not key:
            raise Invalid(f"{path}.property must be a non-empty string", code=CODE)
        if len(_utf8(f"{path}.property", key)) > MAX_KEY_BYTES:
            raise Invalid(f"{path}.property is longer than {MAX_KEY_BYTES} bytes", code=CODE)
        op = cond.get("op")
        if op not in PROPERTY_OPS:
            raise Invalid(f"{path}.op must be one of: {', '.join(PROPERTY_OPS)} (got {_show(op)})", code=CODE)
        where = f"{path}.value"
        value = cond.get("value")
        if op in ("exists", "not_exists"):
            return PropertyTest(key, op, None)  # a value is ignored, as it always was
        if "value" not in cond:
            raise Invalid(f"{where} is required for {op!r}", code=CODE)
        if op in ("equals", "not_equals", "contains"):
            return PropertyTest(key, op, self.scalar(value, where, op))
        if op == "in":
            if not isinstance(value, list) or not value:
                raise Invalid(f"{where} must be a non-empty list for 'in'", code=CODE)
            if len(value) > MAX_IN_VALUES:
                raise Invalid(f"{where} holds more than {MAX_IN_VALUES} values", code=CODE)
            self.size += len(value)  # (checked with the next condition, or at the end)
            return PropertyTest(
                key, op, tuple(self.scalar(v, f"{where}[{i}]", op) for i, v in enumerate(value))
            )
        if op in ("gt", "gte", "lt", "lte"):
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise Invalid(
                    f"{where} must be a number or a string for {op!r}, got {_show(value)}", code=CODE
                )
            return PropertyTest(key, op, self.scalar(value, where, op))
        if op in ("before", "after"):
            if not isinstance(value, str):
                raise Invalid(f"{where} must be a date string for {op!r}, got {_show(value)}", code=CODE)
            moment, date_only = self.moment(value, where)
            if op == "before":  # v < bound
                bound = moment if moment.microsecond == 0 else _floor_second(moment) + timedelta(seconds=1)
                return PropertyTest(key, "date_lt", iso(bound))
            if date_only:  # after the whole day
                try:
                    return PropertyTest(key, "date_gte", iso(moment + timedelta(days=1)))
                except OverflowError:
                    return PropertyTest(key, "date_gt", _LAST_DATE)
            return PropertyTest(key, "date_gt", iso(_floor_second(moment)))
        # within_last_days / within_next_days
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_DAYS:
            raise Invalid(
                f"{where} must be a whole number of days from 1 to {MAX_DAYS} for {op!r}", code=CODE
            )
        return PropertyTest(key, op, value)

    def scalar(self, value: Any, where: str, op: str) -> Any:
        if isinstance(value, str):
            if len(_utf8(where, value)) > MAX_STRING_BYTES:
                raise Invalid(f"{where} is longer than {MAX_STRING_BYTES} bytes", code=CODE)
            return value
        if isinstance(value, bool):
            return value
        if _is_int(value):
            if abs(value) > MAX_INT:
                raise Invalid(f"{where} is too large a number", code=CODE)
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise Invalid(f"{where} must be a finite number", code=CODE)
            return value
        raise Invalid(
            f"{where} must be a string, number or boolean for {op!r}, got {_show(value)}", code=CODE
        )

    def moment(self, text: str, where: str) -> tuple[datetime, bool]:
        """A date (``YYYY-MM-DD``: the whole day, UTC) or a date-time with its offset (``Z``, ``+05:30``)."""
        _utf8(where, text)
        hint = 'a date "YYYY-MM-DD" or a date-time "YYYY-MM-DDTHH:MM:SSZ"'
        if _DATE_ONLY.fullmatch(text):
            try:
                return datetime.fromisoformat(text).replace(tzinfo=UTC), True
            except ValueError:
                raise Invalid(f"{where} {_show(text)} is not a valid date", code=CODE) from None
        if "T" not in text[8:]:
            raise Invalid(f"{where} must be {hint}, got {_show(text)}", code=CODE)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise Invalid(f"{where} must be {hint}, got {_show(text)}", code=CODE) from None
        if moment.tzinfo is None:
            raise Invalid(f'{where} {_show(text)} must say its time zone, e.g. "Z" for UTC', code=CODE)
        try:
            return moment.astimezone(UTC), False
        except OverflowError:
            raise Invalid(f"{where} {_show(text)} is out of range", code=CODE) from None

    # ---- past behaviour

    def event_test(self, spec: Any, path: str, depth: int) -> EventTest:
        self.count(path)
        if isinstance(spec, str):
            spec = {"event": spec}
            name_path = path
        elif isinstance(spec, dict):
            name_path = f"{path}.event"
        else:
            raise Invalid(f'{path} must be an event name or an object {{"event": …}}', code=CODE)
        known = ("event", "where", "count", "in_the_last", "between", "ever")
        extra = [key for key in spec if key not in known]
        if extra:
            raise Invalid(f"{path}.{extra[0]} is not a field here (expected: {', '.join(known)})", code=CODE)
        name = spec.get("event")
        if not isinstance(name, str) or not name.strip():
            raise Invalid(f"{name_path} must be a non-empty event name", code=CODE)
        _utf8(name_path, name)
        if len(name) > MAX_EVENT_NAME_CHARS:
            raise Invalid(f"{name_path} is longer than {MAX_EVENT_NAME_CHARS} characters", code=CODE)

        where: Node | None = None
        if "where" in spec:
            raw = spec["where"]
            if isinstance(raw, list):
                if not raw:
                    raise Invalid(f"{path}.where must not be empty (leave it out instead)", code=CODE)
                where = AllOf(
                    tuple(
                        self.node(child, f"{path}.where[{i}]", depth + 1, events=False)
                        for i, child in enumerate(raw)
                    )
                )
            else:
                where = self.node(raw, f"{path}.where", depth + 1, events=False)

        at_least, at_most = self.counts(spec.get("count"), f"{path}.count", "count" in spec)

        windows = [key for key in ("in_the_last", "between", "ever") if key in spec]
        if len(windows) > 1:
            raise Invalid(
                f"{path}: use one of in_the_last, between or ever, not {' and '.join(windows)}", code=CODE
            )
        test = EventTest(name, where, at_least, at_most)
        if not windows:
            return test
        window = windows[0]
        raw_window = spec[window]
        if window == "ever":
            if raw_window is not True:
                raise Invalid(f"{path}.ever must be true (or leave it out)", code=CODE)
            return test
        if window == "in_the_last":
            return EventTest(
                name, where, at_least, at_most, last=self.duration(raw_window, f"{path}.in_the_last")
            )
        here = f"{path}.between"
        if not isinstance(raw_window, dict) or not raw_window or set(raw_window) - {"from", "to"}:
            raise Invalid(
                f'{here} must be an object with "from" and/or "to" (dates or date-times)', code=CODE
            )
        since = until = None
        until_inclusive = True
        if "from" in raw_window:
            if not isinstance(raw_window["from"], str):
                raise Invalid(f"{here}.from must be a date or date-time string", code=CODE)
            since = self.moment(raw_window["from"], f"{here}.from")[0]
        if "to" in raw_window:
            if not isinstance(raw_window["to"], str):
                raise Invalid(f"{here}.to must be a date or date-time string", code=CODE)
            until, date_only = self.moment(raw_window["to"], f"{here}.to")
            if date_only:  # to the end of that day
                until, until_inclusive = until + timedelta(days=1), False
        if (
            since is not None
            and until is not None
            and (since > until or (since == until and not until_inclusive))
        ):
            raise Invalid(f"{here}.from must not be later than {here}.to", code=CODE)
        return EventTest(name, where, at_least, at_most, None, since, until, until_inclusive)

    def counts(self, raw: Any, path: str, given: bool) -> tuple[int, int | None]:
        if not given:
            return 1, None
        if not isinstance(raw, dict) or not raw:
            raise Invalid(
                f'{path} must be an object like {{"at_least": 2}}, {{"at_most": 3}} or {{"exactly": 1}}',
                code=CODE,
            )
        extra = [key for key in raw if key not in ("at_least", "at_most", "exactly")]
        if extra:
            raise Invalid(f"{path}.{extra[0]} is not a field here (at_least, at_most, exactly)", code=CODE)
        if "exactly" in raw:
            if len(raw) > 1:
                raise Invalid(f"{path}: exactly cannot be combined with at_least or at_most", code=CODE)
            n = raw["exactly"]
            if not _is_int(n) or not 0 <= n <= MAX_COUNT:
                raise Invalid(f"{path}.exactly must be a whole number (0 or more)", code=CODE)
            return n, n
        at_least, at_most = 1, None
        if "at_least" in raw:
            at_least = raw["at_least"]
            if not _is_int(at_least) or not 1 <= at_least <= MAX_COUNT:
                raise Invalid(f"{path}.at_least must be a positive integer", code=CODE)
        if "at_most" in raw:
            at_most = raw["at_most"]
            if not _is_int(at_most) or not 0 <= at_most <= MAX_COUNT:
                raise Invalid(f"{path}.at_most must be a whole number (0 or more)", code=CODE)
            if "at_least" not in raw:
                at_least = 0
            elif at_most < at_least:
                raise Invalid(f"{path}.at_most must not be less than {path}.at_least", code=CODE)
        return at_least, at_most

    def duration(self, raw: Any, path: str) -> timedelta:
        if not isinstance(raw, dict) or len(raw) != 1 or next(iter(raw)) not in UNITS:
            raise Invalid(
                f'{path} must be one of {{"minutes": N}}, {{"hours": N}} or {{"days": N}}', code=CODE
            )
        unit, n = next(iter(raw.items()))
        limit = MAX_DAYS * 86400 // UNITS[unit]
        if not _is_int(n) or not 1 <= n <= limit:
            raise Invalid(f"{path}.{unit} must be a whole number from 1 to {limit}", code=CODE)
        return timedelta(seconds=n * UNITS[unit])


def parse(
    definition: Any, root: str = "definition", *, resolved: bool = False, allow_empty: bool = False
) -> Node:
    """Check a definition and return its tree; raises ``Invalid`` (code ``invalid_segment``) whose message
    starts with the path of the faulty part, e.g. ``target.and[1].did.count.at_least``.

    ``allow_empty``: ``{}`` means everyone (what campaigns have always accepted). ``resolved``: the larger
    limits of a definition whose saved segments were inlined."""
    if allow_empty and isinstance(definition, dict) and not definition:
        return Everyone()
    if resolved:
        parser = _Parser(MAX_RESOLVED_DEPTH, MAX_RESOLVED_CONDITIONS)
    else:
        parser = _Parser(MAX_DEPTH, MAX_CONDITIONS)
    node = parser.node(definition, root, 1)
    if parser.size > MAX_SIZE:
        raise Invalid(
            f"{root}: the definition is too large: its size is {parser.size}, over the limit of {MAX_SIZE} "
            f"(each condition counts {SIZE_PER_CONDITION}, each value listed in 'in' 1; saved segments count "
            "as inlined)",
            code=CODE,
        )
    return node


def references(node: Node) -> list[SegmentRef]:
    """The saved segments a tree refers to, in order."""
    if isinstance(node, SegmentRef):
        return [node]
    if isinstance(node, AllOf | AnyOf):
        return [ref for item in node.items for ref in references(item)]
    if isinstance(node, Negation):
        return references(node.item)
    return []


def needs_now(node: Node) -> bool:
    """Whether the tree has a window relative to now (``in_the_last``, ``within_…_days``)."""
    if isinstance(node, PropertyTest):
        return node.op in ("within_last_days", "within_next_days")
    if isinstance(node, EventTest):
        return node.last is not None or (node.where is not None and needs_now(node.where))
    if isinstance(node, AllOf | AnyOf):
        return any(needs_now(item) for item in node.items)
    if isinstance(node, Negation):
        return needs_now(node.item)
    return False


# ----------------------------------------------------------------------------------------------- SQL


class _PerDialect(ColumnElement[bool]):
    """One boolean condition written for SQLite and for PostgreSQL; the statement's compiler picks its own
    (so that a condition can be built without knowing the database it will run on)."""

    __visit_name__ = "tidings_per_dialect"
    inherit_cache = True
    _traverse_internals = [
        ("sqlite", InternalTraversal.dp_clauseelement),
        ("postgresql", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, sqlite: ColumnElement[bool], postgresql: ColumnElement[bool]) -> None:
        self.sqlite = sqlite
        self.postgresql = postgresql
        self.type = Boolean()


@compiles(_PerDialect)
def _compile_per_dialect(element: _PerDialect, compiler: SQLCompiler, **kw: Any) -> str:
    chosen = element.postgresql if compiler.dialect.name == "postgresql" else element.sqlite
    return f"({compiler.process(chosen, **kw)})"  # one term, whatever operators surround it


def _text(value: str) -> ColumnElement[str]:
    return literal(value, String)


# Normalised JSON types: string, number, true, false, array, object, null (None when the key is missing).
_SQLITE_TYPES = {
    "string": ("text",),
    "number": ("integer", "real"),
    "true": ("true",),
    "false": ("false",),
    "array": ("array",),
    "present": ("text", "integer", "real", "true", "false", "array", "object"),
}
# An "in" list is looked for in the JSON text (_SqliteValue.mentions) when it holds at most this many
# strings: each costs a bound parameter, and a test has SIZE_PER_CONDITION of them besides one per value.
_MAX_MENTIONS = 8
_SIMPLE_KEY = re.compile(r"[ !#-\[\]-~]+")  # printable ASCII but '"' and '\': safe in an SQLite JSON path


class _SqliteValue:
    """A property of a JSON column on SQLite: ``json_type``/``json_extract`` with a ``$."key"`` path, or a
    lookup through ``json_each`` for keys a path cannot spell (quotes, backslashes, non-ASCII: SQLite
    matches path labels against the raw, escaped JSON text)."""

    def __init__(self, column: ColumnElement[Any], key: str) -> None:
        self.column = column
        if _SIMPLE_KEY.fullmatch(key):
            path = _text(f'$."{key}"')
            self.type: ColumnElement[Any] = func.json_type(column, path)
            self.value: ColumnElement[Any] = func.json_extract(column, path)
        else:
            entry = func.json_each(column).table_valued("key", "type", "value").alias("entry")
            self.type = select(entry.c.type).where(entry.c.key == _text(key)).scalar_subquery()
            self.value = select(entry.c.value).where(entry.c.key == _text(key)).scalar_subquery()

    def mentions(self, needles: list[str]) -> ColumnElement[bool]:
        """Whether the JSON text holds one of the strings: a necessary condition of a string test, checked
        first because it is far cheaper than parsing the JSON of every row. Only for strings of printable
        ASCII but quotes and backslashes, which the JSON writer stores as they are (it escapes the others,
        e.g. non-ASCII as \\uXXXX); for other strings it is left out (true)."""
        if not all(_SIMPLE_KEY.fullmatch(needle) for needle in needles):
            return true()
        return or_(*(func.instr(self.column, _text(needle)) > 0 for needle in needles))

    def kind(self, *kinds: str) -> ColumnElement[bool]:
        names = [name for kind in kinds for name in _SQLITE_TYPES[kind]]
        return func.coalesce(self.type, "").in_(names)

    def text(self) -> ColumnElement[Any]:
        return self.value

    def number(self) -> ColumnElement[Any]:
        return self.value

    def number_literal(self, value: int | float) -> ColumnElement[Any]:
        return literal(value)

    def substring(self, needle: str) -> ColumnElement[bool]:
        return func.instr(self.value, _text(needle)) > 0

    def is_date(self) -> ColumnElement[bool]:
        return self.value.op("GLOB")(_text(_SQLITE_DATE_GLOB))

    def array_has(self, value: Any) -> ColumnElement[bool]:
        items = func.json_each(case((self.kind("array"), self.value), else_=None)).table_valued(
            "type", "value"
        )
        item = items.alias("item")
        kind = "string" if isinstance(value, str) else "number" if _is_number(value) else str(value).lower()
        match: ColumnElement[bool] = item.c.type.in_(_SQLITE_TYPES[kind])
        if kind in ("string", "number"):
            match = and_(match, item.c.value == literal(value))
        return select(literal(1)).select_from(item).where(match).exists()


class _PostgresValue:
    """A property of a JSONB column on PostgreSQL: ``->``, ``->>``, ``jsonb_typeof``; text compared in
    byte order (``COLLATE "C"``) as on SQLite, numbers as ``numeric`` only where the value is a number."""

    def __init__(self, column: ColumnElement[Any], key: str) -> None:
        self.node = column.op("->", return_type=JSONB)(_text(key))
        self.type = func.jsonb_typeof(self.node)
        self.raw_text = column.op("->>", return_type=Text)(_text(key))

    def mentions(self, needles: list[str]) -> ColumnElement[bool]:
        return true()  # JSONB is stored parsed: a key is found without reading the document as text

    def kind(self, *kinds: str) -> ColumnElement[bool]:
        checks: list[ColumnElement[bool]] = []
        for kind in kinds:
            if kind in ("true", "false"):
                checks.append(func.coalesce(self.node == cast(_text(kind), JSONB), false()))
            elif kind == "present":
                checks.append(func.coalesce(self.type, "null") != "null")
            else:
                checks.append(func.coalesce(self.type, "") == kind)
        return or_(*checks)

    def text(self) -> ColumnElement[Any]:
        return self.raw_text.collate("C")

    def number(self) -> ColumnElement[Any]:
        return case((self.type == "number", cast(self.node, Numeric)), else_=None)

    def number_literal(self, value: int | float) -> ColumnElement[Any]:
        return literal(Decimal(repr(value)) if isinstance(value, float) else value, Numeric)

    def substring(self, needle: str) -> ColumnElement[bool]:
        return func.strpos(self.raw_text, _text(needle)) > 0

    def is_date(self) -> ColumnElement[bool]:
        return self.raw_text.op("~")(_text(_PG_DATE_REGEX))

    def array_has(self, value: Any) -> ColumnElement[bool]:
        return and_(self.kind("array"), self.node.op("@>")(cast(_text(json.dumps([value])), JSONB)))


_Value = _SqliteValue | _PostgresValue


def _typed_equals(v: _Value, value: Any) -> ColumnElement[bool]:
    if isinstance(value, bool):
        return v.kind("true" if value else "false")
    if _is_number(value):
        return and_(v.kind("number"), v.number() == v.number_literal(value))
    return and_(v.kind("string"), v.text() == _text(value))


def _property_sql(v: _Value, test: PropertyTest, now: datetime | None) -> ColumnElement[bool]:
    op, value = test.op, test.value
    if op == "exists":
        return v.kind("present")
    if op == "not_exists":
        return not_(v.kind("present"))
    if op in ("equals", "not_equals"):
        equal = _typed_equals(v, value)
        if isinstance(value, str):
            equal = and_(v.mentions([value]), equal)
        return equal if op == "equals" else not_(equal)
    if op == "in":
        strings = [x for x in value if isinstance(x, str)]
        numbers = [x for x in value if _is_number(x)]
        checks = [_typed_equals(v, x) for x in dict.fromkeys(x for x in value if isinstance(x, bool))]
        if strings:
            checks.append(and_(v.kind("string"), v.text().in_([_text(s) for s in dict.fromkeys(strings)])))
        if numbers:
            checks.append(and_(v.kind("number"), v.number().in_([v.number_literal(n) for n in numbers])))
        if len(strings) == len(value) <= _MAX_MENTIONS:
            return and_(v.mentions(list(dict.fromkeys(strings))), or_(*checks))
        return or_(*checks)
    if op == "contains":
        if isinstance(value, str):
            return and_(
                v.mentions([value]), or_(and_(v.kind("string"), v.substring(value)), v.array_has(value))
            )
        return v.array_has(value)
    if op in ("gt", "gte", "lt", "lte"):
        if isinstance(value, str):
            left, right, kind = v.text(), _text(value), "string"
        else:
            left, right, kind = v.number(), v.number_literal(value), "number"
        compare = {"gt": left > right, "gte": left >= right, "lt": left < right, "lte": left <= right}[op]
        return and_(v.kind(kind), compare)
    date = and_(v.kind("string"), v.is_date())
    if op == "date_lt":
        return and_(date, v.text() < _text(value))
    if op == "date_gt":
        return and_(date, v.text() > _text(value))
    if op == "date_gte":
        return and_(date, v.text() >= _text(value))
    if now is None:
        raise ValueError("a 'within_…_days' condition needs now= to compile")
    span = timedelta(days=value)
    if op == "within_last_days":
        try:
            low = iso(_ceil_second(now - span))
        except OverflowError:
            low = _FIRST_DATE
        high = iso(_floor_second(now))
    else:
        low = iso(_ceil_second(now))
        try:
            high = iso(_floor_second(now + span))
        except OverflowError:
            high = _LAST_DATE
    return and_(date, v.text() >= _text(low), v.text() <= _text(high))


def _property_condition(
    column: ColumnElement[Any], test: PropertyTest, now: datetime | None
) -> ColumnElement[bool]:
    return _PerDialect(
        _property_sql(_SqliteValue(column, test.key), test, now),
        _property_sql(_PostgresValue(column, test.key), test, now),
    )


def _has_events(node: Node) -> bool:
    if isinstance(node, EventTest):
        return True
    if isinstance(node, AllOf | AnyOf):
        return any(_has_events(item) for item in node.items)
    if isinstance(node, Negation):
        return _has_events(node.item)
    return False


def _cheap_first(items: tuple[Node, ...]) -> list[Node]:
    """Property tests before past behaviour (a stable sort: the order is otherwise kept). Conditions have no
    side effects and are never NULL, so the order does not change the result, and a database that tests
    AND/OR terms left to right and stops early skips the tests on events for most profiles."""
    return sorted(items, key=_has_events)


@dataclass(frozen=True, slots=True)
class _Scope:
    """What compiling a tree needs besides the tree: ``now`` for relative windows, and the account, which
    every set of profile ids read from ``events`` is restricted to (so that the (account_id, name, ts)
    index reads only that account's events of that name)."""

    now: datetime | None
    account_id: str | None  # None: a tree of property tests only (properties_condition)


def _compile(node: Node, column: ColumnElement[Any], scope: _Scope) -> ColumnElement[bool]:
    if isinstance(node, Everyone):
        return true()
    if isinstance(node, AllOf):
        return and_(*(_compile(item, column, scope) for item in _cheap_first(node.items)))
    if isinstance(node, AnyOf):
        return or_(*(_compile(item, column, scope) for item in _cheap_first(node.items)))
    if isinstance(node, Negation):
        return not_(_compile(node.item, column, scope))
    if isinstance(node, PropertyTest):
        return _property_condition(column, node, scope.now)
    if isinstance(node, EventTest):
        return _event_condition(node, scope)
    raise Invalid(
        f"{node.path}.segment_id: the saved segment must be inlined (resolve_target) before compiling",
        code=CODE,
    )


def _event_condition(test: EventTest, scope: _Scope) -> ColumnElement[bool]:
    """Whether the profile did the event between ``at_least`` and ``at_most`` times. "At most N times"
    (N = 0: never) is the complement of "at least N + 1 times", so that profiles without any such event
    are in it.

    When the count matters, the test is membership in one set of profile ids that the database reads once
    from the account's events of that name in the window (the (account_id, name, ts) index), counted per
    profile (``GROUP BY … HAVING``), not a count run once per profile. On SQLite every test is such a set
    (``IN``, built once into a temporary index; ``NOT IN`` is exact: ``events.profile_id`` is never NULL).
    PostgreSQL is given ``EXISTS``: as a term of the top-level AND its planner makes it a semi (or anti)
    join, choosing between reading the account's events and probing the (profile_id, name, ts) index once
    per profile; elsewhere it is a subplan, hashed when the set fits in memory."""
    events = _EVENTS.alias()
    conditions: list[ColumnElement[bool]] = [events.c.name == _text(test.event)]
    if test.last is not None:
        if scope.now is None:
            raise ValueError("an 'in_the_last' condition needs now= to compile")
        conditions += [events.c.ts >= scope.now - test.last, events.c.ts <= scope.now]
    if test.since is not None:
        conditions.append(events.c.ts >= test.since)
    if test.until is not None:
        conditions.append(events.c.ts <= test.until if test.until_inclusive else events.c.ts < test.until)
    if test.where is not None:
        conditions.append(_compile(test.where, events.c.properties, scope))

    at_least, at_most, negated = test.at_least, test.at_most, False
    if at_least == 0:  # at most N times: not at least N + 1 times
        assert at_most is not None
        at_least, at_most, negated = at_most + 1, None, True
    ids = select(events.c.profile_id).where(
        events.c.account_id == literal(scope.account_id, String), *conditions
    )
    counted = at_least > 1 or at_most is not None
    if counted:
        n = func.count()
        if at_most is None:
            having = n >= at_least
        elif at_least == at_most:
            having = n == at_least
        else:
            having = n.between(at_least, at_most)
        ids = ids.group_by(events.c.profile_id).having(having)
    found = ids.subquery()
    if counted:
        on_postgres = select(literal(1)).select_from(found).where(found.c.profile_id == _PROFILES.c.id)
    else:
        # The account is implied by the profile; saying it lets PostgreSQL, when it makes EXISTS a hash
        # join, read only this account's events through the (account_id, name, ts) index.
        on_postgres = (
            select(literal(1))
            .select_from(events)
            .where(
                events.c.profile_id == _PROFILES.c.id,
                events.c.account_id == _PROFILES.c.account_id,
                *conditions,
            )
        )
    member = _PerDialect(_PROFILES.c.id.in_(select(found.c.profile_id)), on_postgres.exists())
    return not_(member) if negated else member


def compile_tree(node: Node, now: datetime | None, account_id: str) -> ColumnElement[bool]:
    """The SQL condition on ``profiles`` for a tree without saved-segment references: the account's
    profiles that the tree selects."""
    if now is not None and now.tzinfo is None:
        raise ValueError("now must be an aware datetime (UTC)")
    if now is None and needs_now(node):
        raise ValueError("this definition has a window relative to now: pass now=")
    selected = _compile(node, _PROFILES.c.properties, _Scope(now, account_id))
    return and_(_PROFILES.c.account_id == account_id, selected)


def properties_condition(
    definition: Any, column: ColumnElement[Any], now: datetime | None, *, root: str = "where"
) -> ColumnElement[bool]:
    """Property tests (and AND / OR / NOT of them) over any JSON column, e.g. ``events.properties`` for the
    conditions of a live campaign's trigger; ``Invalid`` names the faulty part."""
    node = parse(definition, root)
    if _has_events(node) or references(node):
        raise Invalid(f"{root}: only property conditions are allowed here", code=CODE)
    return _compile(node, column, _Scope(now, None))
