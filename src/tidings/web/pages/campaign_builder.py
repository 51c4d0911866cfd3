"""The "+ Campaign" guided flow: WhatsApp → type → who → what → control group → when → review.

One step per screen. The campaign is a ``CampaignCreate`` (campaigns.schemas) built step by step and
checked by ``campaigns.service`` as the API checks it; every refusal is shown next to the field it
concerns (a pydantic ``loc`` or the service's message names it, see :func:`_placed`). A draft needs its
template, so until the "what" step is saved the choices travel in the form (``spec``, the campaign's JSON
so far); from then on every step is saved to the draft, which remembers the step it was left at
(``draft_step``) and reopens there from ``/campaigns/{id}/edit``."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError
from starlette.datastructures import FormData

from tidings.bounds import Id
from tidings.campaigns import service as campaigns
from tidings.campaigns.rules import account_rules, zone
from tidings.campaigns.schemas import KINDS, NOT_ON_WHATSAPP, CampaignCreate
from tidings.db import utcnow
from tidings.deps import Db
from tidings.errors import ApiError
from tidings.personalization.service import PersonalizationError, Renderer
from tidings.profiles import service as profiles
from tidings.profiles.models import Profile
from tidings.segments import service as segments
from tidings.templates import service as templates
from tidings.templates.models import Template
from tidings.users.models import Role
from tidings.web.auth import MARKETER_PAGES, CurrentViewer, need
from tidings.web.pages.segments import (
    OP_LABELS,
    VALUE_TYPES,
    Builder,
    Group,
    NotVisual,
    Row,
    Test,
    builder_context,
    builder_for,
    read_builder,
)
from tidings.web.render import render

router = APIRouter(include_in_schema=False, dependencies=[MARKETER_PAGES, need(Role.marketer)])

STEPS = [
    ("type", "Type"),
    ("who", "Who"),
    ("what", "What"),
    ("control", "Control group"),
    ("when", "When"),
    ("review", "Review"),
]
KEYS = [key for key, _ in STEPS]
DRAFTED_FROM = KEYS.index("what")  # a draft exists once its template is chosen
KIND_TEXT = {
    "one_time": ("One time", "Sent once, to a segment: e.g. everyone who booked a ticket last week."),
    "single_action": ("Single action", "Live: sent as soon as a user does something, e.g. buys a ticket."),
    "inaction": (
        "Inaction within time",
        "Live: a user did one thing and not another within a time (added to cart, no checkout in 30 min).",
    ),
    "on_date": ("On a date/time", "Relative to a date property: e.g. one day before the flight departs."),
}
UNITS = {"minutes": 1, "hours": 60, "days": 1440}
CREATE_FIELDS = [name for name in CampaignCreate.model_fields if name not in ("draft", "schedule")]
_PROPERTY_SOURCE = re.compile(
    r"""\{\{\s*(Profile|Event)\s*(?:\.\s*([A-Za-z_][\w-]*)|\[\s*(["'])(.*?)\3\s*\])\s*"""
    r"""(?:\|\s*default:\s*(["'])(.*?)\5\s*)?\}\}"""
)
_IDENTIFIER = re.compile(r"[A-Za-z_][\w-]*")
_SERVICE_PLACE = re.compile(r"^(variables|variants\[(\d+)\]): (.*)$", re.S)
_VARIABLE = re.compile(r"variable \{\{(\d+)\}\}")
_MARK = "\ue000{}\ue001"
_MARKED = re.compile("\ue000(\\d+)\ue001")


# --- the campaign as the form holds it -----------------------------------------------------------------


def _spec_of(out: Any) -> dict[str, Any]:
    """A stored campaign (``CampaignOut``) as the ``CampaignCreate`` fields it was written with."""
    spec = out.model_dump(mode="json", include=set(CREATE_FIELDS))
    spec["variants"] = [
        {k: v[k] for k in ("key", "template_id", "variables", "weight", "match_value")}
        for v in spec["variants"]
    ]
    if spec["variants"]:
        spec["template_id"], spec["variables"] = None, []
    return spec


def _new_spec() -> dict[str, Any]:
    return {"name": "", "kind": "one_time", "target": {"all": True}, "variables": [], "variants": []}


def _source(kind: str, name: str, default: str, text: str) -> str:
    """The Liquid source of one variable: the text itself, or the property with its default."""
    if kind not in ("profile", "event") or not name:
        return text
    ref = f"{kind.title()}.{name}" if _IDENTIFIER.fullmatch(name) else f'{kind.title()}["{name}"]'
    if not default:
        return "{{ " + ref + " }}"
    quote = "'" if '"' in default else '"'
    return "{{ " + ref + f" | default: {quote}{default}{quote}" + " }}"


@dataclass
class Variable:
    """One ``{{n}}`` as the form shows it."""

    source: str = "text"  # text | profile | event
    text: str = ""
    property: str = ""
    default: str = ""

    def liquid(self) -> str:
        return _source(self.source, self.property, self.default, self.text)


def _variable_of(source: str) -> Variable:
    found = _PROPERTY_SOURCE.fullmatch(source.strip())
    if found is None:
        return Variable(text=source)
    kind, name = found.group(1).lower(), found.group(2) or found.group(4)
    return Variable(source=kind, property=name, default=found.group(6) or "")


@dataclass
class VariantForm:
    template_id: int | str | None
    weight: int | str | None
    variables: list[Variable] = field(default_factory=list)
    multivariate: bool = False


def _variants_of(spec: dict[str, Any]) -> list[VariantForm]:
    if spec.get("variants"):
        return [
            VariantForm(
                v.get("template_id"), v.get("weight"), [_variable_of(s) for s in v.get("variables", [])]
            )
            for v in spec["variants"]
        ]
    return [VariantForm(spec.get("template_id"), None, [_variable_of(s) for s in spec.get("variables", [])])]


def _local(value: str | None, tz: ZoneInfo) -> str:
    """A stored UTC time as the value of a ``datetime-local`` control, in the account's zone."""
    try:
        return datetime.fromisoformat(value).astimezone(tz).strftime("%Y-%m-%dT%H:%M") if value else ""
    except ValueError:  # as typed, refused: shown again as it was
        return value or ""


def _utc(value: str, tz: ZoneInfo) -> str | None:
    """A ``datetime-local`` value read in the account's zone, as the API takes it (with its offset); an
    unreadable value is passed on as it is, for the model to refuse it."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).replace(tzinfo=tz).isoformat()
    except ValueError:
        return value


def _number(value: str) -> int | str | None:
    """A number field: the number, or the text as typed (the model refuses it with its message)."""
    value = value.strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        return value


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def _read_step(step: str, form: FormData, spec: dict[str, Any], tz: ZoneInfo) -> dict[str, Any]:
    """``spec`` with the fields of ``step`` as the form gives them."""
    spec = dict(spec)
    if step == "type":
        spec["name"] = _text(form, "name")
        kind = _text(form, "kind")
        if kind != spec.get("kind"):
            spec["trigger"] = None
        spec["kind"] = kind
    elif step == "who":
        audience = _text(form, "audience")
        segment = _number(_text(form, "segment_id"))
        spec["target"] = {"segment_id": segment} if audience == "segment" else {"all": True}
        if audience == "builder":  # the segment builder's own fields (web/pages/segments.py)
            spec["target"] = read_builder(form).definition("target") or {"all": True}
        spec["trigger"] = _trigger(spec.get("kind", ""), form)
    elif step == "what":
        spec.update(_message(_variant_forms(form)))
    elif step == "control":
        spec["control_group_pct"] = _number(_text(form, "control_group_pct")) or 0
        spec["system_control_group"] = form.get("system_control_group") == "on"
    elif step == "when":
        later = _text(form, "start") == "later"
        spec["send_at"] = _utc(_text(form, "send_at"), tz) if later else None
        live = spec.get("kind") != "one_time"
        spec["ends_at"] = _utc(_text(form, "ends_at"), tz) if live else None
        rule = _text(form, "frequency") or "every_time"
        spec["frequency"] = None
        if live:
            spec["frequency"] = {"rule": rule}
            if rule == "min_gap":
                spec["frequency"]["hours"] = _number(_text(form, "frequency_hours"))
        spec["respect_rules"] = form.get("respect_rules") == "on"
    return spec


def _trigger(kind: str, form: FormData) -> dict[str, Any] | None:
    if kind == "single_action":
        return {"event": _text(form, "event"), "where": _where(form)}
    if kind == "inaction":
        return {
            "event": _text(form, "event"),
            "where": _where(form),
            "absent_event": _text(form, "absent_event"),
            "within_minutes": _minutes(form, "within"),
        }
    if kind == "on_date":
        offset = _minutes(form, "offset")
        if isinstance(offset, int) and _text(form, "offset_direction") == "before":
            offset = -offset
        return {
            "property": _text(form, "property"),
            "offset_minutes": offset if offset is not None else 0,
            "at_time": _text(form, "at_time") or None,
            "timezone": _text(form, "date_timezone") or "account",
        }
    return None


def _filters(form: FormData) -> list[Test]:
    """The trigger event's filters as the form holds them (a row without a property is left out)."""
    tests = []
    i = 0
    while f"where.{i}.property" in form:
        op, kind = _text(form, f"where.{i}.op"), _text(form, f"where.{i}.type")
        test = Test(
            property=_text(form, f"where.{i}.property"),
            op=op if op in OP_LABELS else "equals",
            value=_text(form, f"where.{i}.value"),
            type=kind if kind in VALUE_TYPES else "text",
        )
        if test.property:
            tests.append(test)
        i += 1
    return tests


def _where(form: FormData) -> dict[str, Any] | None:
    """The trigger's conditions on the event's properties, in the segment language (the segment builder's
    tests: ``Invalid`` for a value that is not of its type), all of them required."""
    kept = _text(form, "where_json")
    if kept:  # filters the rows cannot show, kept as they are
        found: dict[str, Any] = json.loads(kept)
        return found
    nodes = [test.node(f"trigger.where[{i}]") for i, test in enumerate(_filters(form))]
    return None if not nodes else nodes[0] if len(nodes) == 1 else {"and": nodes}


def _filter_rows(where: Any) -> list[Test] | None:
    """The filters of a stored trigger as rows, or None when the rows cannot show them."""
    if where is None:
        return []
    nodes = where["and"] if isinstance(where, dict) and set(where) == {"and"} else [where]
    try:
        return [Test.of(node) for node in nodes]
    except NotVisual:
        return None


def _minutes(form: FormData, name: str) -> int | str | None:
    amount = _number(_text(form, f"{name}_amount"))
    unit = UNITS.get(_text(form, f"{name}_unit"), 1)
    return amount * unit if isinstance(amount, int) else amount


def _in_unit(minutes: int | None) -> tuple[int | None, str]:
    if minutes is None:
        return None, "minutes"
    for unit in ("days", "hours"):
        if minutes and minutes % UNITS[unit] == 0:
            return minutes // UNITS[unit], unit
    return minutes, "minutes"


def _variant_forms(form: FormData) -> list[VariantForm]:
    """The "what" step's message, or variants, as the form shows them (kept as they are when the step
    is drawn again: a property not chosen yet has no Liquid source)."""
    multivariate = _text(form, "mode") == "multivariate"
    count = max(2, min(_int(_text(form, "variant_count"), 2), 26)) if multivariate else 1
    forms = []
    for i in range(count):
        variables = []
        n = 1
        while f"v{i}_var{n}_source" in form:
            prefix = f"v{i}_var{n}"
            variables.append(
                Variable(
                    _text(form, f"{prefix}_source") or "text",
                    str(form.get(f"{prefix}_text") or ""),
                    _text(form, f"{prefix}_property"),
                    _text(form, f"{prefix}_default"),
                )
            )
            n += 1
        template, weight = _number(_text(form, f"v{i}_template")), _number(_text(form, f"v{i}_weight"))
        forms.append(VariantForm(template, weight, variables, multivariate))
    return forms


def _message(forms: list[VariantForm]) -> dict[str, Any]:
    """The campaign's fields for the message: one, or variants split by percentage."""
    variants = [
        {"template_id": f.template_id, "variables": [v.liquid() for v in f.variables], "weight": f.weight}
        for f in forms
    ]
    if not forms[0].multivariate:
        return {
            "template_id": variants[0]["template_id"],
            "variables": variants[0]["variables"],
            "variants": [],
        }
    return {"template_id": None, "variables": [], "variants": variants, "split": {"by": "percentage"}}


def _int(value: str, fallback: int) -> int:
    return int(value) if value.isdigit() else fallback


# --- where an error goes -------------------------------------------------------------------------------

TRIGGER_FIELDS = (
    "event",
    "where",
    "absent_event",
    "absent_where",
    "within_minutes",
    "property",
    "offset_minutes",
    "at_time",
    "timezone",
)
FIELD_OF_TRIGGER = {
    "within_minutes": "within_amount",
    "offset_minutes": "offset_amount",
    "timezone": "date_timezone",
}


def _placed(loc: tuple[Any, ...], message: str) -> tuple[str, str, str]:
    """(step, field, message) for an error of the model at ``loc``."""
    head = loc[0] if loc else None
    if head in ("name", "kind"):
        return "type", str(head), message
    if head == "target":
        return "who", "builder" if len(loc) > 1 else "segment_id", message
    if head == "trigger":
        where, _, rest = message.partition(": ")
        if where in TRIGGER_FIELDS:
            return "who", FIELD_OF_TRIGGER.get(where, where), rest
        return "who", "event", message
    if head == "template_id":
        return "what", "v0_template", message
    if head == "variables":
        return "what", (f"v0_var{loc[1] + 1}" if len(loc) > 1 else "v0_template"), message
    if head == "variants" and len(loc) > 2:
        i, part = loc[1], loc[2]
        if part == "variables" and len(loc) > 3:
            return "what", f"v{i}_var{loc[3] + 1}", message
        return "what", f"v{i}_{'weight' if part == 'weight' else 'template'}", message
    if head in ("variants", "split") or head is None:
        return "what", "variants" if "variant" in message or "weight" in message else "v0_template", message
    if head == "control_group_pct":
        return "control", "control_group_pct", message
    if head in ("send_at", "ends_at"):
        return "when", str(head), message
    if head == "frequency":
        return "when", "frequency_hours", message
    return "review", "form", message


def _model_errors(exc: ValidationError) -> list[tuple[str, str, str]]:
    placed = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        placed.append(_placed(tuple(error["loc"]), message))
    return placed


def _service_error(exc: ApiError) -> tuple[str, str, str]:
    """Where a refusal of ``campaigns.service`` goes: its message names the part (``variables: …``,
    ``variants[1]: …``, ``target…``, ``trigger.where…``)."""
    message = exc.message
    found = _SERVICE_PLACE.match(message)
    if found:
        i = int(found.group(2) or 0)
        variable = _VARIABLE.search(found.group(3))
        name = f"v{i}_var{variable.group(1)}" if variable else f"v{i}_template"
        return "what", name, found.group(3)
    if exc.code in ("not_found", "template_ambiguous") and "template" in message:
        return "what", "v0_template", message
    if message.startswith("trigger.where"):
        return "who", "where", message
    if message.startswith("trigger.") or exc.code == "invalid_trigger":
        return "who", "event", message
    if exc.code.startswith(("segment", "invalid_segment")) or message.startswith("target"):
        return "who", "segment_id", message
    if message.startswith("ends_at"):
        return "when", "ends_at", message
    return "review", "form", message


# --- rendering a step ----------------------------------------------------------------------------------


@dataclass
class Flow:
    """A step of the flow as it is drawn: the campaign so far, and where it is kept."""

    step: str
    spec: dict[str, Any]
    campaign_id: int | None = None
    errors: dict[str, str] = field(default_factory=dict)
    forms: list[VariantForm] | None = None  # the "what" step as it was posted, to draw it again
    carried: bool = False  # the form carries the campaign (a refused change of a draft, not saved)
    builder: Builder | None = None  # the who step's segment builder as posted
    builder_error: ApiError | None = None
    filters: list[Test] | None = None  # the who step's event filters as posted (with a blank one more)

    @property
    def action(self) -> str:
        return f"/campaigns/{self.campaign_id}/edit" if self.campaign_id else "/campaigns/new"


def _catalogue(session: Any, account_id: str) -> dict[str, Any]:
    catalogue = profiles.property_catalogue(session, account_id)
    return {
        "profile_properties": sorted(catalogue.profile),
        "events": profiles.event_catalogue(catalogue),
    }


def _draw(request: Request, viewer: CurrentViewer, db: Db, flow: Flow, status: int = 200) -> Response:
    account_id = viewer.account.id
    tz = zone(viewer.account.timezone)
    spec = flow.spec
    context: dict[str, Any] = {
        "title": "New campaign" if flow.campaign_id is None else f"Campaign: {spec.get('name') or 'draft'}",
        "flow": flow,
        "steps": STEPS,
        "index": KEYS.index(flow.step),
        "spec": spec,
        "spec_json": json.dumps(spec) if flow.campaign_id is None or flow.carried else "",
        "errors": flow.errors,
        "kinds": [(k, *KIND_TEXT[k]) for k in KINDS],
        "not_on_whatsapp": NOT_ON_WHATSAPP,
        "kind_text": KIND_TEXT,
        "account_tz": tz.key,
    }
    with db.read() as session:
        context.update(_catalogue(session, account_id))
        found = {t.id: t for t in templates.list_templates(session, account_id, status="APPROVED")}
        saved = segments.list_segments(session, account_id)
        variants = flow.forms if flow.forms and flow.step == "what" else _variants_of(spec)
        for variant in variants:  # one value per variable of the template chosen
            template = found.get(variant.template_id) if isinstance(variant.template_id, int) else None
            if template is not None:
                wanted = template.variable_count
                variant.variables = (variant.variables + [Variable() for _ in range(wanted)])[:wanted]
        if flow.step in ("what", "review"):
            context["previews"] = [_preview(session, account_id, spec, v, found) for v in variants]
        if flow.step == "who":
            target = spec.get("target") or {}
            own = _audience(target) == "builder"
            builder = flow.builder or (builder_for(target) if own else Builder(groups=[Group(rows=[Row()])]))
            context.update(builder_context(session, account_id, builder, error=flow.builder_error))
    trigger = spec.get("trigger") or {}
    filters = flow.filters if flow.filters is not None else _filter_rows(trigger.get("where"))
    target = spec.get("target") or {}
    context.update(
        audience_words=builder_for(target).describe({s.id: s.name for s in saved}),
        filters=filters or [],
        blank_filter=Test(),
        where_json=json.dumps(trigger.get("where")) if filters is None else "",
        op_labels=OP_LABELS,
        value_types=VALUE_TYPES,
        audience=_audience(spec.get("target") or {}),
        templates_by_id=found,
        template_options=[(t.id, f"{t.name} ({t.language})") for t in found.values()],
        template_names={t.id: t.name for t in found.values()},
        segment_options=[(s.id, s.name) for s in saved],
        segment_names={s.id: s.name for s in saved},
        variants=variants,
        multivariate=bool(spec.get("variants")),
        trigger=trigger,
        event_properties=context["events"].get(trigger.get("event") or "", []),
    )
    offset = trigger.get("offset_minutes")
    send_at = spec.get("send_at")
    later = isinstance(send_at, str) and _after_now(send_at)
    context.update(
        within=_in_unit(trigger.get("within_minutes")),
        offset=_in_unit(abs(offset)) if isinstance(offset, int) else (1, "days"),
        offset_before=isinstance(offset, int) and offset < 0,
        rules=account_rules(viewer.account.settings),
        later=later,
        send_at_local=_local(send_at if later else None, tz),
        ends_at_local=_local(spec.get("ends_at"), tz),
    )
    return render(request, f"campaigns/step_{flow.step}.html", viewer, context, status)


def _audience(target: dict[str, Any]) -> str:
    """Who the target is, as the who step offers it: everyone, a saved segment, or conditions."""
    if target in ({}, {"all": True}):
        return "all"
    return "segment" if set(target) == {"segment_id"} else "builder"


def _after_now(value: str) -> bool:
    try:
        return datetime.fromisoformat(value) > utcnow()
    except (TypeError, ValueError):  # as typed, refused: shown again as "later"
        return True


@dataclass
class Preview:
    template: Template | None
    identity: str | None = None
    parts: list[tuple[str, bool]] = field(default_factory=list)
    problem: str | None = None


def _preview(
    session: Any, account_id: str, spec: dict[str, Any], variant: VariantForm, found: dict[int, Template]
) -> Preview:
    """The variant's message for a real user of the target (the first one opted in), rendered by the
    personalization service as it will be sent: the parts of the body, each value marked."""
    template = found.get(variant.template_id) if isinstance(variant.template_id, int) else None
    if template is None:
        return Preview(None)
    sources = [v.liquid() for v in variant.variables]
    if len(sources) != template.variable_count:
        return Preview(template, problem="Give a value for each variable to see the preview.")
    try:
        profile = segments.sample_profile(session, account_id, spec.get("target") or {"all": True}, utcnow())
    except ApiError as exc:
        return Preview(template, problem=exc.message)
    if profile is None:
        return Preview(
            template, problem="No profile is in this audience yet: nobody to preview the message for."
        )
    event = _sample_event(session, profile, (spec.get("trigger") or {}).get("event"))
    preview = Preview(template, identity=profile.identity)
    try:
        values = Renderer(tuple(sources)).render(profile.properties, event)
    except PersonalizationError as exc:
        preview.problem = f"{profile.identity} would not get it: {exc.detail}"
        return preview
    marked = templates.render_body(template.body, [_MARK.format(i) for i in range(len(values))])
    pieces = _MARKED.split(marked)  # text, value index, text, …
    preview.parts = [(values[int(p)], True) if i % 2 else (p, False) for i, p in enumerate(pieces)]
    return preview


def _sample_event(session: Any, profile: Profile, name: str | None) -> dict[str, Any] | None:
    """The properties of the user's latest ``name`` event (among their 50 latest), for ``Event.*``."""
    if not name:
        return None
    events, _ = profiles.profile_events(session, profile, limit=50)
    return next((dict(e.properties or {}) for e in events if e.name == name), None)


# --- routes --------------------------------------------------------------------------------------------


@router.get("/campaigns/new")
def new(request: Request, viewer: CurrentViewer, db: Db, step: str = "") -> Response:
    """WhatsApp (the one channel) then the first step, with nothing saved yet."""
    if step not in KEYS[:DRAFTED_FROM]:
        return render(request, "campaigns/new.html", viewer, {"title": "New campaign", "steps": STEPS})
    return _draw(request, viewer, db, Flow(step, _new_spec()))


@router.get("/campaigns/{campaign_id}/edit")
def edit(request: Request, campaign_id: Id, viewer: CurrentViewer, db: Db, step: str = "") -> Response:
    """A draft, at ``step`` or where it was left."""
    with db.read() as session:
        campaign = campaigns.get_campaign(session, viewer.account.id, campaign_id)
        if campaign.state != "draft":
            return RedirectResponse(f"/campaigns/{campaign_id}", status_code=303)
        spec = _spec_of(campaigns.described(session, campaign))
        left_at = campaign.draft_step
    step = step if step in KEYS else left_at if left_at in KEYS else "review"
    return _draw(request, viewer, db, Flow(step, spec, campaign_id))


def _carried(form: FormData) -> dict[str, Any] | None:
    """The campaign the form carries (before its draft exists, or a refused change of a draft)."""
    try:
        spec = json.loads(str(form.get("spec") or "null"))
    except json.JSONDecodeError:
        return None
    return spec if isinstance(spec, dict) else None


@router.post("/campaigns/new")
async def submit_new(request: Request, viewer: CurrentViewer, db: Db) -> Response:
    form = await request.form()
    return _submit(request, viewer, db, form, {**_new_spec(), **(_carried(form) or {})}, None)


@router.post("/campaigns/{campaign_id}/edit")
async def submit_edit(request: Request, campaign_id: Id, viewer: CurrentViewer, db: Db) -> Response:
    form = await request.form()
    with db.read() as session:
        campaign = campaigns.get_campaign(session, viewer.account.id, campaign_id)
        spec = _carried(form) or _spec_of(campaigns.described(session, campaign))
    return _submit(request, viewer, db, form, spec, campaign_id)


def _submit(
    request: Request,
    viewer: CurrentViewer,
    db: Db,
    form: FormData,
    spec: dict[str, Any],
    campaign_id: int | None,
) -> Response:
    """Read the step's fields; ``action``: ``refresh`` (draw it again: another template, a variant more),
    ``back``, ``next``, ``save`` (keep the draft and leave), ``schedule`` (from the review)."""
    step = _text(form, "step")
    if step not in KEYS:
        step = "type"
    action = _text(form, "action") or "next"
    forms = _variant_forms(form) if step == "what" else None
    builder = read_builder(form) if step == "who" and _text(form, "audience") == "builder" else None
    filters = _filters(form) if step == "who" else None
    try:
        spec = _read_step(step, form, spec, zone(viewer.account.timezone))
    except ApiError as exc:  # a value of the segment builder, or of a filter, that is not of its type
        flow = Flow(step, spec, campaign_id, builder=builder, filters=filters)
        if exc.message.startswith("trigger.where"):
            return _refused(request, viewer, db, flow, [("who", "where", exc.message)])
        flow.builder_error = exc
        return _refused(request, viewer, db, flow, [("who", "builder", exc.message)])
    index = KEYS.index(step)
    if action == "add_filter" and filters is not None:
        filters.append(Test())
        action = "refresh"
    if action == "add_variant" and forms and forms[0].multivariate:
        forms.append(VariantForm(forms[-1].template_id, None, list(forms[-1].variables), True))
        spec.update(_message(forms))
    if action in ("refresh", "add_variant"):
        return _draw(request, viewer, db, Flow(step, spec, campaign_id, forms=forms, filters=filters))
    if action == "back" and campaign_id is None:
        return _draw(request, viewer, db, Flow(KEYS[max(index - 1, 0)], spec))
    goes_to = KEYS[min(index + 1, len(KEYS) - 1)] if action == "next" else step
    if action == "back":
        goes_to = KEYS[max(index - 1, 0)]
    try:
        checked = CampaignCreate.model_validate(
            {**{k: spec.get(k) for k in CREATE_FIELDS if k in spec}, "draft": True}
        )
    except ValidationError as exc:
        placed = _model_errors(exc)
        if campaign_id is None and index < DRAFTED_FROM:  # the later steps' fields are not given yet
            placed = [p for p in placed if KEYS.index(p[0]) <= index]
            if not placed:
                return _draw(request, viewer, db, Flow(goes_to, spec))
        flow = Flow(step, spec, campaign_id, forms=forms, builder=builder, filters=filters)
        return _refused(request, viewer, db, flow, placed)
    if campaign_id is None and index < DRAFTED_FROM:
        return _draw(request, viewer, db, Flow(goes_to, spec))
    try:
        with db.session() as session:
            if campaign_id is None:
                campaign_id = campaigns.create_campaign(
                    session, viewer.account.id, checked, draft_step=goes_to
                ).id
            else:
                campaigns.update_draft(session, viewer.account.id, campaign_id, checked, draft_step=goes_to)
            if action == "schedule":
                campaigns.schedule_campaign(session, viewer.account.id, campaign_id)
    except ApiError as exc:
        if exc.status != 422 and exc.code != "not_found":
            raise
        return _refused(
            request, viewer, db, Flow(step, spec, campaign_id, forms=forms), [_service_error(exc)]
        )
    if action == "schedule":
        return RedirectResponse(f"/campaigns/{campaign_id}", status_code=303)
    if action == "save":
        return RedirectResponse("/campaigns", status_code=303)
    return RedirectResponse(f"/campaigns/{campaign_id}/edit?step={goes_to}", status_code=303)


def _refused(
    request: Request,
    viewer: CurrentViewer,
    db: Db,
    flow: Flow,
    placed: list[tuple[str, str, str]],
) -> Response:
    """The first step with an error, drawn with every error of that step next to its field (422)."""
    first = min(KEYS.index(step) for step, _, _ in placed)
    for step, name, message in placed:
        if KEYS.index(step) == first:
            flow.errors.setdefault(name, message)
    flow.step, flow.carried = KEYS[first], True
    return _draw(request, viewer, db, flow, 422)
