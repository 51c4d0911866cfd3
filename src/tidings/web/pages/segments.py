"""Segments: the saved segments (list, build, edit, delete) and the segment builder that other pages include
(``segments/_builder.html``: the campaign flow's "who" step).

The builder edits a definition of docs/segments.md as groups of rows: a row is a profile property test, an
event the profile did or did not do (how often, in which window, with filters on the event's properties),
or a saved segment; the rows of a group are joined by AND or OR, and so are the groups. Its fields are
plain form fields named ``seg.…``; :func:`definition_from_form` reads them back into the definition, and
:func:`builder_context` gives a page what the include needs. A definition the rows cannot show (``not``
around a group, deeper nesting) is edited as JSON in the same place.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from tidings.bounds import Id
from tidings.db import Database, utcnow
from tidings.deps import Db
from tidings.errors import ApiError, Invalid
from tidings.profiles import service as profiles
from tidings.segments import service as segments
from tidings.segments.compiler import PROPERTY_OPS
from tidings.users.models import Role
from tidings.web.auth import MARKETER_PAGES, CurrentViewer, Viewer, need
from tidings.web.render import render

router = APIRouter(include_in_schema=False, dependencies=[MARKETER_PAGES])

# ------------------------------------------------------------------------------------------- the builder

PREFIX = "seg"
CODE = "invalid_segment"
OP_LABELS = {
    "equals": "is",
    "not_equals": "is not",
    "in": "is one of",
    "contains": "contains",
    "exists": "is set",
    "not_exists": "is not set",
    "gt": "is more than",
    "gte": "is at least",
    "lt": "is less than",
    "lte": "is at most",
    "before": "is before (date)",
    "after": "is after (date)",
    "within_last_days": "is in the last N days",
    "within_next_days": "is in the next N days",
}
assert set(OP_LABELS) == set(PROPERTY_OPS)
NO_VALUE_OPS = ("exists", "not_exists")
DATE_OPS = ("before", "after")
DAY_OPS = ("within_last_days", "within_next_days")
VALUE_TYPES = {"text": "Text", "number": "Number", "boolean": "Yes / no"}
KINDS = {
    "property": "Profile property",
    "did": "Did event",
    "did_not": "Did not do event",
    "segment": "In saved segment",
}
COUNT_OPS = {"at_least": "at least", "at_most": "at most", "exactly": "exactly"}
WINDOWS = {"ever": "ever", "last": "in the last", "between": "between"}
UNITS = {"days": "days", "hours": "hours", "minutes": "minutes"}
JOINS = {"and": "all of", "or": "any of"}
_ROW_KIND = re.compile(rf"{PREFIX}\.g(\d+)\.c(\d+)\.kind")
_WHERE_OP = re.compile(rf"{PREFIX}\.g(\d+)\.c(\d+)\.w(\d+)\.op")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


# the parts of a row that the service's messages name, in words
_PARTS = [
    (r"count\.(at_least|at_most|exactly)\b", "The number of times"),
    (r"in_the_last(\.\w+)?\b", "The window"),
    (r"between\.from\b", "The first day"),
    (r"between\.to\b", "The last day"),
    (r"between\b", "The window"),
    (r"event\b", "The event name"),
    (r"property\b", "The property name"),
    (r"op\b", "The test"),
    (r"value(\[\d+\])?", "The value"),
    (r"segment_id\b:?", "The saved segment"),
]


class NotVisual(Exception):
    """A definition the builder's rows cannot show: it is edited as JSON."""


@dataclass
class Test:
    """A property test as typed: on the profile, or (inside a did row) on the event."""

    property: str = ""
    op: str = "equals"
    value: str = ""  # as typed; the values of `in` separated by commas
    type: str = "text"  # how `value` is read: text, number or boolean (the language never converts)

    def node(self, path: str) -> dict[str, Any]:
        node: dict[str, Any] = {"property": self.property.strip(), "op": self.op}
        if self.op in NO_VALUE_OPS:
            return node
        if self.op in DATE_OPS:
            node["value"] = self.value.strip()
        elif self.op in DAY_OPS:
            node["value"] = _integer(self.value)
        elif self.op == "in":
            parts = [part.strip() for part in self.value.split(",") if part.strip()]
            node["value"] = [_typed(part, self.type, f"{path}.value[{i}]") for i, part in enumerate(parts)]
        else:
            node["value"] = _typed(self.value.strip(), self.type, f"{path}.value")
        return node

    @classmethod
    def of(cls, node: Any) -> Test:
        if not isinstance(node, dict) or set(node) - {"property", "op", "value"} or "property" not in node:
            raise NotVisual("a condition the builder does not know")
        op, value = node.get("op"), node.get("value")
        test = cls(property=str(node["property"]), op=str(op))
        if op not in OP_LABELS:
            raise NotVisual(f"the operator {op!r}")
        if op in NO_VALUE_OPS:
            return test
        if op == "in":
            if not isinstance(value, list) or not value:
                raise NotVisual("an 'in' test without a list")
            kinds = {_type_of(v) for v in value}
            if len(kinds) != 1 or any(isinstance(v, str) and "," in v for v in value):
                raise NotVisual("an 'in' list of mixed values or values with commas")
            test.type = kinds.pop()
            test.value = ", ".join(_text(v) for v in value)
            return test
        test.type = "number" if op in DAY_OPS else _type_of(value)
        test.value = _text(value)
        return test

    def describe(self) -> str:
        if self.op in NO_VALUE_OPS:
            return f"{self.property} {OP_LABELS[self.op]}"
        if self.op in DAY_OPS:
            which = "last" if self.op == "within_last_days" else "next"
            return f"{self.property} is in the {which} {self.value} days"
        if self.op in DATE_OPS:
            return f"{self.property} is {self.op} {self.value}"
        return f"{self.property} {OP_LABELS[self.op]} {self.value}"


@dataclass
class Row:
    """One condition of a group."""

    kind: str = "property"  # property, did, did_not, segment
    test: Test = field(default_factory=Test)
    event: str = ""
    count_op: str = "at_least"
    count: str = "1"
    window: str = "ever"  # ever, last (in the last N units), between
    last_n: str = "30"
    last_unit: str = "days"
    start: str = ""
    end: str = ""
    where: list[Test] = field(default_factory=list)
    segment_id: str = ""

    def blank(self) -> bool:
        typed = {"property": self.test.property, "segment": self.segment_id}.get(self.kind, self.event)
        return not typed.strip()

    def node(self, path: str, paths: dict[str, str], key: str) -> dict[str, Any]:
        paths[path] = key
        if self.kind == "property":
            return self.test.node(path)
        if self.kind == "segment":
            return {"segment_id": _integer(self.segment_id)}
        body: dict[str, Any] = {"event": self.event.strip()}
        event_path = f"{path}.{self.kind}"
        where = [(w, test) for w, test in enumerate(self.where) if test.property.strip()]
        if where:
            body["where"] = []
            for i, (w, test) in enumerate(where):
                paths[f"{event_path}.where[{i}]"] = f"{key}.w{w}"
                body["where"].append(test.node(f"{event_path}.where[{i}]"))
        if not (self.count_op == "at_least" and self.count.strip() == "1"):
            body["count"] = {self.count_op: _integer(self.count)}
        if self.window == "last":
            body["in_the_last"] = {self.last_unit: _integer(self.last_n)}
        elif self.window == "between":
            body["between"] = {k: v.strip() for k, v in (("from", self.start), ("to", self.end)) if v.strip()}
        return {self.kind: body}

    @classmethod
    def of(cls, node: Any) -> Row:
        if isinstance(node, dict) and "property" in node:
            return cls(test=Test.of(node))
        if not isinstance(node, dict) or len(node) != 1:
            raise NotVisual("a condition the builder does not know")
        ((key, inner),) = node.items()
        if key == "segment_id":
            return cls(kind="segment", segment_id=_text(inner))
        if key == "not":
            if isinstance(inner, dict) and set(inner) == {"did"}:
                return cls._event("did_not", inner["did"])
            test = Test.of(inner)
            opposite = {"equals": "not_equals", "not_equals": "equals", "exists": "not_exists"}
            opposite["not_exists"] = "exists"
            if test.op not in opposite:
                raise NotVisual("'not' around a condition")
            test.op = opposite[test.op]
            return cls(test=test)
        if key in ("did", "did_not"):
            return cls._event(key, inner)
        raise NotVisual(f"'{key}' inside a group")

    @classmethod
    def _event(cls, kind: str, body: Any) -> Row:
        if isinstance(body, str):
            return cls(kind=kind, event=body)
        if not isinstance(body, dict) or set(body) - {
            "event",
            "where",
            "count",
            "in_the_last",
            "between",
            "ever",
        }:
            raise NotVisual("an event condition the builder does not know")
        row = cls(kind=kind, event=str(body.get("event", "")))
        where = body.get("where")
        if isinstance(where, dict) and set(where) == {"and"}:
            where = where["and"]
        if where is not None:
            row.where = [Test.of(w) for w in (where if isinstance(where, list) else [where])]
        count = body.get("count")
        if count is not None:
            if not isinstance(count, dict) or len(count) != 1 or next(iter(count)) not in COUNT_OPS:
                raise NotVisual("a count with both 'at least' and 'at most'")
            ((row.count_op, n),) = count.items()
            row.count = _text(n)
        if body.get("in_the_last") is not None:
            last = body["in_the_last"]
            if not isinstance(last, dict) or len(last) != 1 or next(iter(last)) not in UNITS:
                raise NotVisual("a window the builder does not know")
            row.window = "last"
            ((row.last_unit, n),) = last.items()
            row.last_n = _text(n)
        elif body.get("between") is not None:
            between = body["between"]
            if not isinstance(between, dict):
                raise NotVisual("a window the builder does not know")
            row.window, row.start, row.end = (
                "between",
                str(between.get("from", "")),
                str(between.get("to", "")),
            )
        return row

    def describe(self, segment_names: Mapping[int, str]) -> str:
        if self.kind == "property":
            return self.test.describe()
        if self.kind == "segment":
            name = segment_names.get(int(self.segment_id)) if self.segment_id.isdigit() else None
            return f"in segment {name or self.segment_id}"
        text = f"{'did' if self.kind == 'did' else 'did not do'} {self.event}"
        if self.where:
            text += " with " + " and ".join(t.describe() for t in self.where)
        if not (self.count_op == "at_least" and self.count == "1"):
            text += f" {COUNT_OPS[self.count_op]} {self.count} times"
        if self.window == "last":
            text += f" in the last {self.last_n} {self.last_unit}"
        elif self.window == "between":
            text += f" between {self.start or 'the start'} and {self.end or 'now'}"
        return text


@dataclass
class Group:
    join: str = "and"
    rows: list[Row] = field(default_factory=list)


@dataclass
class Builder:
    """A definition as the builder shows it: groups of rows (or, when ``json`` is set, JSON text)."""

    join: str = "and"
    groups: list[Group] = field(default_factory=list)
    json: str | None = None
    note: str | None = None  # why the definition is shown as JSON
    focus: str | None = None  # the key of a row just added (its first control gets the focus)
    paths: dict[str, str] = field(default_factory=dict)  # definition path → row key, by definition()

    def definition(self, root: str = "definition") -> dict[str, Any]:
        """The definition (``{}``: no condition, everyone). Raises ``Invalid`` for a value that is not
        what its type says (a number that is not one), with the path the service's messages use."""
        self.paths = {}
        if self.json is not None:
            self.paths[root] = "json"
            try:
                value = json.loads(self.json or "{}")
            except ValueError as exc:
                raise Invalid(f"{root} is not valid JSON: {exc}", code=CODE) from None
            if not isinstance(value, dict):
                raise Invalid(f"{root} must be a JSON object", code=CODE)
            return value
        # rows left blank (no property, event or segment chosen yet) are not conditions yet
        groups = [
            (g, group, [(c, row) for c, row in enumerate(group.rows) if not row.blank()])
            for g, group in enumerate(self.groups)
        ]
        groups = [(g, group, rows) for g, group, rows in groups if rows]
        nodes = []
        for i, (g, group, rows) in enumerate(groups):
            group_path = root if len(groups) == 1 else f"{root}.{self.join}[{i}]"
            items = []
            for j, (c, row) in enumerate(rows):
                path = group_path if len(rows) == 1 else f"{group_path}.{group.join}[{j}]"
                items.append(row.node(path, self.paths, f"g{g}.c{c}"))
            nodes.append(items[0] if len(items) == 1 else {group.join: items})
        if not nodes:
            return {}
        return nodes[0] if len(nodes) == 1 else {self.join: nodes}

    def errors(self, exc: ApiError) -> dict[str, str]:
        """The error ``exc`` (from :meth:`definition` or the service) next to the row it concerns:
        ``{row key: message}``, or ``{"definition": message}`` when no row is named."""
        message = exc.message
        best = ""
        for path in self.paths:
            if message.startswith(path) and message[len(path) : len(path) + 1] in (".", " ", "[", ":", ""):
                best = path if len(path) > len(best) else best
        if not best:
            if re.match(r"\w+ is empty;", message):  # a saved segment needs a condition (a target does not)
                message = "Add a condition: a saved segment cannot be everyone."
            return {"definition": message}
        rest = re.sub(r"^(did_not|did)\.", "", message[len(best) :].lstrip(".: "))
        for part, words in _PARTS:
            if re.match(part, rest):
                return {self.paths[best]: re.sub(part, words, rest, count=1)}
        return {self.paths[best]: rest}

    def describe(self, segment_names: Mapping[int, str] | None = None) -> str:
        """The definition in words, e.g. ``City is Pune and did Charged in the last 30 days``."""
        if self.json is not None:
            return "a definition written as JSON"
        names = segment_names or {}
        parts = []
        groups = [group for group in self.groups if group.rows]
        for group in groups:
            text = f" {group.join} ".join(row.describe(names) for row in group.rows)
            parts.append(f"({text})" if len(groups) > 1 and len(group.rows) > 1 else text)
        return f" {self.join} ".join(parts) or "everyone"


def builder_for(definition: Any) -> Builder:
    """The builder showing ``definition`` (as JSON when its rows cannot)."""
    try:
        return _visual(definition)
    except NotVisual as exc:
        text = json.dumps(definition, indent=2, ensure_ascii=False)
        return Builder(json=text, note=f"This definition has {exc} that the builder cannot show as rows.")


def _visual(definition: Any) -> Builder:
    if definition in (None, {}, {"all": True}):
        return Builder()
    if isinstance(definition, dict) and "property" in definition:
        return Builder(groups=[Group(rows=[Row.of(definition)])])
    if not isinstance(definition, dict) or len(definition) != 1:
        raise NotVisual("a part")
    ((key, items),) = definition.items()
    if key == "conditions" and isinstance(items, list):
        return Builder(groups=[Group(rows=[Row(test=Test.of(item)) for item in items])])
    if key not in ("and", "or") or not isinstance(items, list):
        return Builder(groups=[Group(rows=[Row.of(definition)])])
    if all(not (isinstance(item, dict) and set(item) & {"and", "or"}) for item in items):
        return Builder(groups=[Group(join=key, rows=[Row.of(item) for item in items])])
    groups = []
    for item in items:
        if isinstance(item, dict) and len(item) == 1 and next(iter(item)) in ("and", "or"):
            ((join, rows),) = item.items()
            if not isinstance(rows, list):
                raise NotVisual("a group that is not a list")
            groups.append(Group(join=join, rows=[Row.of(row) for row in rows]))
        else:
            groups.append(Group(rows=[Row.of(item)]))
    return Builder(join=key, groups=groups)


def _integer(text: str) -> int | str:
    """A whole number typed in a box; anything else is passed on as typed, for the service to name."""
    text = text.strip()
    return int(text) if re.fullmatch(r"[+-]?\d{1,19}", text) else text


def _typed(text: str, kind: str, path: str) -> Any:
    if kind == "number":
        if not _NUMBER.fullmatch(text):
            raise Invalid(f"{path} must be a number, got {text!r}", code=CODE)
        number = float(text)
        return int(number) if number.is_integer() and re.fullmatch(r"[+-]?\d+", text) else number
    if kind == "boolean":
        if text.lower() not in ("true", "false"):
            raise Invalid(f"{path} must be true or false", code=CODE)
        return text.lower() == "true"
    return text


def _type_of(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "text"
    raise NotVisual("a value the builder does not know")


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# ----------------------------------------------------------------------------------- reading the form


def _get(form: Mapping[str, Any], name: str, default: str = "") -> str:
    value = form.get(f"{PREFIX}.{name}")
    return value if isinstance(value, str) else default


def _test(form: Mapping[str, Any], key: str) -> Test:
    op = _get(form, f"{key}.op", "equals")
    kind = _get(form, f"{key}.type", "text")
    return Test(
        property=_get(form, f"{key}.property"),
        op=op if op in OP_LABELS else "equals",
        value=_get(form, f"{key}.value"),
        type=kind if kind in VALUE_TYPES else "text",
    )


def read_builder(form: Mapping[str, Any]) -> Builder:
    """The builder as the form holds it (rows numbered in order, empty groups dropped)."""
    if _get(form, "mode") == "json":
        return Builder(json=_get(form, "json"))
    found: dict[int, dict[int, Row]] = {}
    for name in form:
        if match := _ROW_KIND.fullmatch(name):
            g, c = int(match[1]), int(match[2])
            key = f"g{g}.c{c}"
            kind = _get(form, f"{key}.kind")
            row = Row(
                kind=kind if kind in KINDS else "property",
                test=_test(form, key),
                event=_get(form, f"{key}.event"),
                count_op=_get(form, f"{key}.count_op", "at_least"),
                count=_get(form, f"{key}.count", "1"),
                window=_get(form, f"{key}.window", "ever"),
                last_n=_get(form, f"{key}.last_n", "30"),
                last_unit=_get(form, f"{key}.last_unit", "days"),
                start=_get(form, f"{key}.start"),
                end=_get(form, f"{key}.end"),
                segment_id=_get(form, f"{key}.segment_id"),
            )
            row.count_op = row.count_op if row.count_op in COUNT_OPS else "at_least"
            row.window = row.window if row.window in WINDOWS else "ever"
            row.last_unit = row.last_unit if row.last_unit in UNITS else "days"
            found.setdefault(g, {})[c] = row
    wheres: dict[tuple[int, int], dict[int, Test]] = {}
    for name in form:
        if match := _WHERE_OP.fullmatch(name):
            g, c, w = int(match[1]), int(match[2]), int(match[3])
            wheres.setdefault((g, c), {})[w] = _test(form, f"g{g}.c{c}.w{w}")
    for (g, c), tests in wheres.items():
        if g in found and c in found[g]:
            found[g][c].where = [tests[w] for w in sorted(tests)]
    groups = []
    for g in sorted(found):
        join = _get(form, f"g{g}.join", "and")
        groups.append(
            Group(join=join if join in JOINS else "and", rows=[found[g][c] for c in sorted(found[g])])
        )
    join = _get(form, "join", "and")
    return Builder(join=join if join in JOINS else "and", groups=groups)


def definition_from_form(form: Mapping[str, Any], root: str = "target") -> dict[str, Any]:
    """The definition that the builder's fields in ``form`` describe (``{}``: no condition, everyone).

    Raises ``Invalid`` when a value is not of its type; to show it, or the service's own refusal of the
    definition, next to its row: ``builder = read_builder(form)``, ``builder.definition(root)``, and on an
    ``ApiError`` pass it to :func:`builder_context`."""
    return read_builder(form).definition(root)


def apply_action(builder: Builder, action: str) -> None:
    """A button of the builder: ``add:<group>:<kind>``, ``remove:<group>:<row>``, ``add-where:<g>:<r>``,
    ``remove-where:<g>:<r>:<i>``, ``json`` (edit as JSON), ``visual`` (back to rows)."""
    verb, *numbers = action.split(":")
    if verb == "json":
        try:
            definition = builder.definition()
        except ApiError:
            definition = {}
        builder.json, builder.groups = json.dumps(definition, indent=2, ensure_ascii=False), []
        return
    if verb == "visual":
        try:
            definition = json.loads(builder.json or "{}")
        except ValueError:
            builder.note = "The JSON is not valid: correct it first."
            return
        visual = builder_for(definition)
        builder.json, builder.note, builder.join, builder.groups = (
            visual.json,
            visual.note,
            visual.join,
            visual.groups,
        )
        return
    if builder.json is not None:
        return
    try:
        g = int(numbers[0])
        if verb == "add":
            if g >= len(builder.groups):
                builder.groups.append(Group())
                g = len(builder.groups) - 1
            kind = numbers[1] if numbers[1] in KINDS else "property"
            builder.groups[g].rows.append(Row(kind=kind))
            builder.focus = f"g{g}.c{len(builder.groups[g].rows) - 1}"
        elif verb == "remove":
            del builder.groups[g].rows[int(numbers[1])]
            if not builder.groups[g].rows:
                del builder.groups[g]
        elif verb == "add-where":
            row = builder.groups[g].rows[int(numbers[1])]
            row.where.append(Test())
            builder.focus = f"g{g}.c{numbers[1]}.w{len(row.where) - 1}"
        elif verb == "remove-where":
            del builder.groups[g].rows[int(numbers[1])].where[int(numbers[2])]
    except (IndexError, ValueError):
        return  # a stale button (the form changed meanwhile): nothing to do


def suggestions(session: Session, account_id: str) -> dict[str, Any]:
    """Names to pick from, from the catalogue the upload keeps (and the system events): the account's
    profile properties, event names, each event's properties (``event_lists``: event name → the id of
    its datalist) and those of every event (for a filter whose event is not known yet)."""
    catalogue = profiles.property_catalogue(session, account_id)
    per_event = profiles.event_catalogue(catalogue)
    events = list(per_event)
    return {
        "profile_properties": sorted(catalogue.profile),
        "events": events,
        "event_properties": sorted({name for names in per_event.values() for name in names}),
        "per_event": [(f"seg-ep-{i}", per_event[e]) for i, e in enumerate(events)],
        "event_lists": {event: f"seg-ep-{i}" for i, event in enumerate(events)},
    }


def builder_context(
    session: Session,
    account_id: str,
    builder: Builder,
    error: ApiError | None = None,
    exclude_segment: int | None = None,
) -> dict[str, Any]:
    """What ``segments/_builder.html`` needs: the builder, the error next to its row, the names to pick
    from and the saved segments a row may refer to (but ``exclude_segment``, the one being edited)."""
    return {
        "builder": builder,
        "builder_errors": builder.errors(error) if error is not None else {},
        "suggestions": suggestions(session, account_id),
        "saved_segments": [
            (s.id, s.name) for s in segments.list_segments(session, account_id) if s.id != exclude_segment
        ],
        "builder_labels": {
            "ops": OP_LABELS,
            "kinds": KINDS,
            "types": VALUE_TYPES,
            "counts": COUNT_OPS,
            "windows": WINDOWS,
            "units": UNITS,
            "joins": JOINS,
            "no_value": NO_VALUE_OPS,
            "date_ops": DATE_OPS,
            "day_ops": DAY_OPS,
        },
    }


async def _posted_builder(request: Request) -> Builder:
    return read_builder(await request.form())  # (the form is already parsed: the CSRF check read it)


PostedBuilder = Annotated[Builder, Depends(_posted_builder)]
"""A POST handler's builder, read from the form: ``def handler(..., builder: PostedBuilder)``."""

# ---------------------------------------------------------------------------------------------- the pages


@router.post("/segments/builder", dependencies=[need(Role.marketer)])
def builder_rows(
    request: Request,
    viewer: CurrentViewer,
    db: Db,
    builder: PostedBuilder,
    action: Annotated[str, Form(alias=f"{PREFIX}.action", max_length=64)] = "",
    editing: Annotated[str, Form(alias=f"{PREFIX}.editing", max_length=20)] = "",
) -> Response:
    """The builder's rows again after one of its buttons or selects (a row added, removed, changed kind)."""
    apply_action(builder, action)
    exclude = int(editing) if editing.isdigit() else None
    with db.read() as session:
        context = builder_context(session, viewer.account.id, builder, exclude_segment=exclude)
    return render(request, "segments/_builder_rows.html", viewer, context)


@router.post("/segments/estimate", dependencies=[need(Role.marketer)])
def estimate(request: Request, viewer: CurrentViewer, db: Db, builder: PostedBuilder) -> Response:
    """The live audience estimate of the builder's definition (or why it cannot be counted yet)."""
    context: dict[str, Any] = {"count": None, "everyone": False, "problem": None}
    try:
        definition = builder.definition()
        with db.read() as session:
            context["count"] = segments.estimate(
                session, viewer.account.id, definition, utcnow(), root="definition"
            )
        context["everyone"] = definition == {}
    except ApiError as exc:
        ((key, message),) = builder.errors(exc).items()
        context["problem"] = f"{_row_label(key)}: {message}" if key != "definition" else message
    return render(request, "segments/_estimate.html", viewer, context)


def _row_label(key: str) -> str:
    """``g0.c1.w0`` → ``Group 1, condition 2, filter 1``."""
    if key == "json":
        return "JSON"
    names = {"g": "Group", "c": "condition", "w": "filter"}
    return ", ".join(f"{names[part[0]]} {int(part[1:]) + 1}" for part in key.split("."))


@router.get("/segments")
def segment_list(request: Request, viewer: CurrentViewer, db: Db) -> Response:
    """The saved segments, each with what uses it; their estimates load as their rows come into view."""
    with db.read() as session:
        found = segments.list_segments(session, viewer.account.id)
        users = segments.segment_users(session, viewer.account.id)
    names = {s.id: s.name for s in found}
    rows = [(s, builder_for(s.definition).describe(names), users.get(s.id)) for s in found]
    return render(request, "segments/list.html", viewer, {"title": "Segments", "rows": rows})


@router.get("/segments/new", dependencies=[need(Role.marketer)])
def new_segment(request: Request, viewer: CurrentViewer, db: Db) -> Response:
    return _page(request, viewer, db)


@router.post("/segments/new")
def create_segment(
    request: Request,
    viewer: CurrentViewer,
    db: Db,
    builder: PostedBuilder,
    name: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    return _save(request, viewer, db, builder, name)


@router.get("/segments/{segment_id}")
def segment_page(request: Request, viewer: CurrentViewer, db: Db, segment_id: Id) -> Response:
    """A marketer edits the segment here; an agent sees it in words. Both see what uses it."""
    return _page(request, viewer, db, segment_id=segment_id, saved=request.query_params.get("saved") == "1")


@router.post("/segments/{segment_id}")
def update_segment(
    request: Request,
    viewer: CurrentViewer,
    db: Db,
    segment_id: Id,
    builder: PostedBuilder,
    name: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    return _save(request, viewer, db, builder, name, segment_id)


@router.post("/segments/{segment_id}/delete")
def delete_segment(request: Request, viewer: CurrentViewer, db: Db, segment_id: Id) -> Response:
    """Delete; refused (the service's message, naming the campaigns) while something uses the segment."""
    try:
        with db.session() as session:
            segments.delete_segment(session, viewer.account.id, segment_id)
    except ApiError as exc:
        if exc.status == 404:
            raise
        return _page(request, viewer, db, segment_id=segment_id, refused=exc, errors={"delete": exc.message})
    return RedirectResponse("/segments", status_code=303)


@router.get("/segments/{segment_id}/estimate")
def saved_estimate(request: Request, viewer: CurrentViewer, db: Db, segment_id: Id) -> Response:
    """A saved segment's audience now (the list's rows load it when they come into view)."""
    context: dict[str, Any] = {"count": None, "bare": True, "problem": None}
    with db.read() as session:
        segment = segments.get_segment(session, viewer.account.id, segment_id)
        try:
            context["count"] = segments.estimate(session, viewer.account.id, segment.definition, utcnow())
        except ApiError as exc:  # a stored definition that no longer resolves
            context["problem"] = exc.message
    return render(request, "segments/_estimate.html", viewer, context)


def _save(
    request: Request, viewer: Viewer, db: Database, builder: Builder, name: str, segment_id: int | None = None
) -> Response:
    """Create the segment (or change segment ``segment_id``) and show it; refused: the form again."""
    try:
        definition = builder.definition()
        with db.session() as session:
            if segment_id is None:
                saved = segments.create_segment(session, viewer.account.id, name=name, definition=definition)
            else:
                saved = segments.update_segment(
                    session, viewer.account.id, segment_id, name=name, definition=definition
                )
            saved_id = saved.id
    except ApiError as exc:
        if exc.status == 404:
            raise
        return _page(request, viewer, db, segment_id=segment_id, builder=builder, name=name, refused=exc)
    return RedirectResponse(f"/segments/{saved_id}?saved=1", status_code=303)


def _page(
    request: Request,
    viewer: Viewer,
    db: Database,
    *,
    segment_id: int | None = None,
    builder: Builder | None = None,
    name: str | None = None,
    refused: ApiError | None = None,
    errors: dict[str, str] | None = None,
    saved: bool = False,
) -> Response:
    """The new segment's page, or segment ``segment_id``'s with what uses it; ``builder``: the builder as
    posted (else the saved definition's); ``refused``: the service's refusal, put next to the name, or next
    to the builder's row it concerns, unless ``errors`` places it."""
    if refused is not None and errors is None:
        errors = {"name": refused.message} if refused.code in ("invalid_name", "segment_exists") else {}
    builder_error = refused if refused is not None and not errors else None
    with db.read() as session:
        context: dict[str, Any] = {"title": "New segment", "name": ""}
        if segment_id is not None:
            segment = segments.get_segment(session, viewer.account.id, segment_id)
            found = segments.list_segments(session, viewer.account.id)
            context = {
                "title": segment.name,
                "segment": segment,
                "name": segment.name,
                "users": segments.segment_users(session, viewer.account.id).get(segment.id),
                "editing": segment.id,
                "description": builder_for(segment.definition).describe({s.id: s.name for s in found}),
            }
            builder = builder or builder_for(segment.definition)
        builder = builder or Builder(groups=[Group(rows=[Row()])])  # a new segment starts with one row
        context |= builder_context(
            session, viewer.account.id, builder, error=builder_error, exclude_segment=segment_id
        )
    if name is not None:
        context["name"] = name
    context |= {"errors": errors or {}, "saved": saved}
    return render(request, "segments/edit.html", viewer, context, refused.status if refused else 200)
