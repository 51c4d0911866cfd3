"""Settings → WhatsApp: the integration (provider, credentials, sender and rate, webhook URLs, a test
message) and the Templates tab (list, sync, "+ Add New" with a live preview).

The integration form is drawn from each provider plug-in's typed settings and secrets models (their JSON
schema, as the API documents them): a new provider gets its form without a line here. Saved secrets are
never sent back to the page, only the masked hint ``accounts.integrations.describe`` gives."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import FormData

from tidings.accounts import integrations
from tidings.accounts.service import get_integration
from tidings.accounts.testsend import send_test_message
from tidings.deps import Db, get_box, get_settings
from tidings.errors import ApiError, Invalid
from tidings.providers import registry
from tidings.providers.plugin import AnyProviderType
from tidings.templates import rules
from tidings.templates import service as templates
from tidings.templates.sync import can_sync, sync_templates
from tidings.users.models import Role
from tidings.web.auth import ADMIN_PAGES, MARKETER_PAGES, CurrentViewer, Viewer, need
from tidings.web.render import render

settings_router = APIRouter(include_in_schema=False, dependencies=[ADMIN_PAGES])
templates_router = APIRouter(include_in_schema=False, dependencies=[MARKETER_PAGES])

SETTINGS = "/settings/whatsapp"
TEMPLATES = "/settings/whatsapp/templates"
# A service message names the field it refuses: "vonage: settings.sender must be …".
_FIELD = re.compile(r"\b(settings|secrets)\.([a-z_][a-z0-9_]*)")


# --- the integration form, drawn from the plug-ins' models ----------------------------------------------


@dataclass(frozen=True)
class Control:
    """One form control for a field of a provider's settings or secrets model."""

    name: str  # the form field: "<kind>.settings.<field>" or "<kind>.secrets.<field>"
    label: str
    hint: str
    input: str  # text, number, checkbox, password
    required: bool
    value: Any = ""


def _controls(plugin: AnyProviderType, part: str, saved: dict[str, Any]) -> list[Control]:
    """A control for each field of the plug-in's ``part`` model (``settings`` or ``secrets``), with its
    title, description and constraints; settings show their saved value (or default), secrets never do:
    only whether one is saved (``saved`` holds masked hints for them)."""
    model = plugin.settings_model if part == "settings" else plugin.secrets_model
    schema = model.model_json_schema()
    required = set(schema.get("required", ()))
    controls = []
    # what must be filled in first (a sender model's own id before the tier it inherits), then the rest
    fields = sorted(schema.get("properties", {}).items(), key=lambda item: item[0] not in required)
    for field, spec in fields:
        hints = [spec.get("description", "")]
        if "x-must" in spec:
            hints.append(f"It must be {spec['x-must']}.")
        kind = spec.get("type")
        value: Any
        if part == "secrets":
            control, value = "password", ""
            if field in saved:
                hints.append(f"Saved ({saved[field]}): leave empty to keep it.")
        elif kind == "boolean":
            control, value = "checkbox", bool(saved.get(field, spec.get("default", False)))
        else:
            control = "number" if kind in ("integer", "number") else "text"
            value = saved.get(field, spec.get("default", ""))
        controls.append(
            Control(
                name=f"{plugin.kind}.{part}.{field}",
                label=spec.get("title", field),
                hint=" ".join(h for h in hints if h),
                input=control,
                required=field in required,
                value="" if value is None else value,
            )
        )
    return controls


def _title(plugin: AnyProviderType) -> str:
    return plugin.title[:1].upper() + plugin.title[1:]


def _submitted(form: FormData, kind: str, part: str) -> dict[str, Any]:
    """The fields of ``<kind>.<part>.*`` the form filled in (an empty one is left out: its default, or for
    a secret the saved value); a checkbox is false when the form does not send it."""
    plugin = registry.plugin(kind)
    model = plugin.settings_model if part == "settings" else plugin.secrets_model
    properties = model.model_json_schema().get("properties", {})
    values: dict[str, Any] = {}
    for field, spec in properties.items():
        raw = form.get(f"{kind}.{part}.{field}")
        if spec.get("type") == "boolean":
            values[field] = raw is not None
        elif isinstance(raw, str) and raw.strip():
            values[field] = raw.strip() if part == "settings" else raw
    return values


def _field_error(exc: ApiError, kind: str) -> tuple[str, str]:
    """The form field a refusal concerns ("" for none: the first field it names) and its message as the
    form says it: without the kind's prefix, each field named by its label ("App secret is required")."""
    message = exc.message.removeprefix(f"{kind}: ")
    if message.startswith("rate_limit"):
        return f"{kind}.rate_limit", "The rate" + message.removeprefix("rate_limit")
    plugin = registry.find(kind)
    found = _FIELD.search(message)
    if plugin is None or found is None:
        return "", message
    titles = {
        f"{part}.{name}": spec.get("title", name)
        for part, model in (("settings", plugin.settings_model), ("secrets", plugin.secrets_model))
        for name, spec in model.model_json_schema().get("properties", {}).items()
    }
    labelled = _FIELD.sub(lambda m: titles.get(m.group(0), m.group(0)), message)
    return f"{kind}.{found.group(0)}", labelled[:1].upper() + labelled[1:]


def _settings_page(
    request: Request,
    viewer: Viewer,
    db: Db,
    *,
    chosen: str | None = None,
    form: FormData | None = None,
    errors: dict[str, str] | None = None,
    test: dict[str, Any] | None = None,
    test_to: str = "",
    status: int = 200,
) -> Response:
    with db.read() as session:
        shown = integrations.describe(
            get_integration(session, viewer.account.id), get_box(request), get_settings(request).public_url
        )
    providers = []
    for plugin in registry.plugins():
        same = plugin.kind == shown["kind"]
        saved_settings = shown["settings"] if same else {}
        rate = shown["rate_limit"] if same else plugin.default_rate
        rate_shown = "" if rate is None else f"{float(rate):g}"
        if form is not None and plugin.kind == chosen:  # a refused save: show what was typed
            saved_settings = _submitted(form, plugin.kind, "settings")
            rate_shown = str(form.get(f"{plugin.kind}.rate_limit", ""))
        default = f"{plugin.default_rate:g} a second" if plugin.default_rate else "no limit"
        providers.append(
            {
                "kind": plugin.kind,
                "title": _title(plugin),
                "settings": _controls(plugin, "settings", saved_settings),
                "secrets": _controls(plugin, "secrets", shown["secrets"] if same else {}),
                "rate": Control(
                    name=f"{plugin.kind}.rate_limit",
                    label="Rate (messages a second, optional)",
                    hint=f"How fast the sender may send; empty: {plugin.title}'s own ({default}).",
                    input="number",
                    required=False,
                    value=rate_shown,
                ),
            }
        )
    current = registry.plugin(shown["kind"])
    context = {
        "title": "WhatsApp",
        "providers": providers,
        "current": shown,
        "current_name": current.title,
        "current_title": _title(current),
        "chosen": chosen or shown["kind"],
        "errors": errors or {},
        "saved": request.query_params.get("saved") == "1",
        "test": test,
        "test_to": test_to,
    }
    return render(request, "whatsapp/settings.html", viewer, context, status)


async def _form(request: Request) -> FormData:
    """The posted form as it is: the integration form's fields are named after each provider's models."""
    return await request.form()


@settings_router.get(SETTINGS)
def settings_page(request: Request, viewer: CurrentViewer, db: Db) -> Response:
    return _settings_page(request, viewer, db)


@settings_router.post(SETTINGS)
def save_settings(
    request: Request, viewer: CurrentViewer, db: Db, form: Annotated[FormData, Depends(_form)]
) -> Response:
    """Save the chosen provider with the fields of its fieldset; a refusal is shown next to its field."""
    kind = str(form.get("kind", ""))
    known = registry.find(kind) is not None  # an unknown kind: the service says which are known
    rate = str(form.get(f"{kind}.rate_limit", "")).strip()
    try:
        try:
            rate_limit = float(rate) if rate else None
        except ValueError:
            raise Invalid("rate_limit must be a number of messages a second") from None
        with db.session() as session:
            integrations.configure(
                session,
                get_box(request),
                viewer.account.id,
                kind=kind,
                settings=_submitted(form, kind, "settings") if known else {},
                secrets=_submitted(form, kind, "secrets") if known else {},
                rate_limit=rate_limit,
                extra_hosts=get_settings(request).extra_provider_hosts,
            )
    except ApiError as exc:
        field, message = _field_error(exc, kind)
        errors = {field or "form": message}
        return _settings_page(request, viewer, db, chosen=kind, form=form, errors=errors, status=422)
    return RedirectResponse(f"{SETTINGS}?saved=1", status_code=303)


@settings_router.post(f"{SETTINGS}/test")
async def send_test(
    request: Request,
    viewer: CurrentViewer,
    db: Db,
    to: Annotated[str, Form(max_length=32)],
    text: Annotated[str, Form(max_length=1024)] = "",
) -> Response:
    """Send one message with the saved provider and show what it answered (htmx: only the answer)."""
    try:
        result = await send_test_message(
            request.app.state.db, get_box(request), get_settings(request), viewer.account.id, to=to, text=text
        )
    except ApiError as exc:
        result = {"outcome": "refused", "error_detail": exc.message}
    if request.headers.get("hx-request") == "true":
        return render(request, "whatsapp/_test_result.html", viewer, {"test": result})
    return _settings_page(request, viewer, db, test=result, test_to=to)


# --- the Templates tab -------------------------------------------------------------------------------


def _sync_shown(viewer: Viewer, db: Db) -> bool:
    """The Sync button is offered to those who may change templates, where the provider can sync."""
    if not viewer.may(Role.marketer):
        return False
    with db.read() as session:
        kind = get_integration(session, viewer.account.id).kind
    return can_sync(registry.plugin(kind))


def _list_page(
    request: Request,
    viewer: Viewer,
    db: Db,
    *,
    synced: dict[str, int] | None = None,
    error: str = "",
    status: int = 200,
) -> Response:
    with db.read() as session:
        found = templates.list_templates(session, viewer.account.id)
    context = {
        "title": "WhatsApp templates",
        "templates": found,
        "sync": _sync_shown(viewer, db),
        "synced": synced,
        "error": error,
        "created": request.query_params.get("created", ""),
    }
    return render(request, "whatsapp/templates.html", viewer, context, status)


@templates_router.get(TEMPLATES)
def template_list(request: Request, viewer: CurrentViewer, db: Db) -> Response:
    return _list_page(request, viewer, db)


@templates_router.post(f"{TEMPLATES}/sync")
async def sync(request: Request, viewer: CurrentViewer, db: Db) -> Response:
    try:
        synced = await sync_templates(
            request.app.state.db, get_box(request), get_settings(request), viewer.account.id
        )
    except ApiError as exc:
        return _list_page(request, viewer, db, error=exc.message, status=exc.status)
    return _list_page(request, viewer, db, synced=synced)


def _new_page(
    request: Request,
    viewer: Viewer,
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    values = values or {"name": "", "language": "en", "category": "MARKETING", "body": ""}
    context = {
        "title": "New WhatsApp template",
        "values": values,
        "errors": errors or {},
        "categories": [(c, c.capitalize()) for c in rules.CATEGORIES],
        "name_form": rules.NAME_FORM,
        "name_example": rules.NAME_EXAMPLE,
        "preview": templates.preview(values["body"]),
    }
    return render(request, "whatsapp/template_new.html", viewer, context, status)


@templates_router.get(f"{TEMPLATES}/new", dependencies=[need(Role.marketer)])
def new_template(request: Request, viewer: CurrentViewer) -> Response:
    return _new_page(request, viewer)


@templates_router.post(f"{TEMPLATES}/new")
def create_template(
    request: Request,
    viewer: CurrentViewer,
    db: Db,
    name: Annotated[str, Form(max_length=rules.NAME_MAX + 1)],
    body: Annotated[str, Form(max_length=rules.BODY_MAX + 1)],
    category: Annotated[str, Form(max_length=32)],
    language: Annotated[str, Form(max_length=rules.LANGUAGE_MAX + 1)] = "en",
) -> Response:
    values = {"name": name, "language": language, "category": category, "body": body}
    try:
        with db.session() as session:
            templates.create_template(
                session, viewer.account.id, name=name, body=body, category=category, language=language
            )
    except ApiError as exc:
        field = exc.code.removeprefix("invalid_") if exc.code.startswith("invalid_") else "name"
        return _new_page(request, viewer, values, {field: exc.message}, exc.status)
    return RedirectResponse(f"{TEMPLATES}?{urlencode({'created': name})}", status_code=303)


@templates_router.get(f"{TEMPLATES}/preview")
def preview(request: Request, viewer: CurrentViewer, body: str = "") -> Response:
    """The live preview of the body being typed (htmx), rendered by the templates service."""
    return render(request, "whatsapp/_preview.html", viewer, {"preview": templates.preview(body[:4096])})
