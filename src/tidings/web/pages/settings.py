"""Account settings (admins only): the account's time zone and engagement rules, its users and roles, its
API keys. The rules are ``campaigns.rules.Rules`` (as ``PATCH /api/v1/account`` takes them), users and
keys ``users.service`` (as ``/api/v1/users`` and ``/api/v1/api-keys``)."""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any
from zoneinfo import available_timezones

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError

from tidings.accounts import service as accounts
from tidings.bounds import Id
from tidings.campaigns.rules import Rules, account_rules
from tidings.deps import Db
from tidings.errors import ApiError
from tidings.users import service as users
from tidings.users.models import Role
from tidings.web.auth import ADMIN_PAGES, CurrentViewer, Viewer
from tidings.web.render import render

router = APIRouter(include_in_schema=False, dependencies=[ADMIN_PAGES])

ROLES = [(role.value, role.value.capitalize()) for role in reversed(Role)]
NO_STORE = {"Cache-Control": "no-store"}  # an answer that shows a secret once


@cache
def time_zones() -> list[str]:
    """The IANA zones a select offers (not the legacy aliases like ``posixrules`` or ``Etc/GMT+5``)."""
    zones = {z for z in available_timezones() if "/" in z and not z.startswith(("Etc/", "posix", "right/"))}
    return sorted(zones | {"UTC"})


def _next_to_field(exc: ApiError, fields: dict[str, str]) -> dict[str, str]:
    """The service's refusal as the error of the form field its code concerns (``fields``: code -> field);
    a refusal that concerns no field of the form is raised on (an error page)."""
    if exc.code not in fields:
        raise exc
    return {fields[exc.code]: exc.message}


# ------------------------------------------------------------------------------------------------ account

# The form's field for each part of ``Rules`` (a pydantic error's ``loc``, joined by "_").
_RULE_FIELDS = {"frequency_cap": "cap", "dnd": "dnd", "consent_replies": "reply"}


def _account_values(timezone: str, rules: Rules) -> dict[str, Any]:
    cap, dnd = rules.frequency_cap, rules.dnd
    return {
        "timezone": timezone,
        "system_control_group_pct": rules.system_control_group_pct,
        "cap_max": cap.max if cap else "",
        "cap_hours": cap.hours if cap else "",
        "dnd_start": dnd.start.strftime("%H:%M") if dnd else "",
        "dnd_end": dnd.end.strftime("%H:%M") if dnd else "",
        "dnd_timezone": dnd.timezone if dnd else "account",
        "dnd_action": dnd.action if dnd else "delay",
        "reply_attribution_hours": rules.reply_attribution_hours,
        "confirm_consent": rules.consent_replies.enabled,
        "reply_opt_out": rules.consent_replies.opt_out,
        "reply_opt_in": rules.consent_replies.opt_in,
    }


def _account_page(
    request: Request, viewer: Viewer, values: dict[str, Any], errors: dict[str, str] | None = None
) -> Response:
    context = {
        "title": "Account settings",
        "values": values,
        "errors": errors or {},
        "zones": [(z, z) for z in time_zones()],
        "saved": request.query_params.get("saved") == "1",
    }
    return render(request, "settings/account.html", viewer, context, 422 if errors else 200)


@router.get("/settings/account")
def account_settings(request: Request, viewer: CurrentViewer) -> Response:
    values = _account_values(viewer.account.timezone, account_rules(viewer.account.settings))
    return _account_page(request, viewer, values)


def _integer(text: str) -> int | str:
    """A number field's value as a number, or as typed (the rules' model then names what is wrong)."""
    try:
        return int(text.strip())
    except ValueError:
        return text


@router.post("/settings/account")
def save_account_settings(
    request: Request,
    viewer: CurrentViewer,
    db: Db,
    timezone: Annotated[str, Form(max_length=64)],
    system_control_group_pct: Annotated[str, Form(max_length=8)] = "0",
    cap_max: Annotated[str, Form(max_length=16)] = "",
    cap_hours: Annotated[str, Form(max_length=16)] = "",
    dnd_start: Annotated[str, Form(max_length=8)] = "",
    dnd_end: Annotated[str, Form(max_length=8)] = "",
    dnd_timezone: Annotated[str, Form(max_length=16)] = "account",
    dnd_action: Annotated[str, Form(max_length=16)] = "delay",
    reply_attribution_hours: Annotated[str, Form(max_length=8)] = "24",
    confirm_consent: Annotated[str, Form(max_length=8)] = "",
    reply_opt_out: Annotated[str, Form(max_length=2000)] = "",
    reply_opt_in: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """The time zone and the rules, replaced as a whole (an empty frequency cap or DND: none); the
    account's consent keywords, which this page does not show, are kept."""
    values = {
        "timezone": timezone,
        "system_control_group_pct": system_control_group_pct,
        "cap_max": cap_max,
        "cap_hours": cap_hours,
        "dnd_start": dnd_start,
        "dnd_end": dnd_end,
        "dnd_timezone": dnd_timezone,
        "dnd_action": dnd_action,
        "reply_attribution_hours": reply_attribution_hours,
        "confirm_consent": bool(confirm_consent),
        "reply_opt_out": reply_opt_out,
        "reply_opt_in": reply_opt_in,
    }
    given: dict[str, Any] = {
        "system_control_group_pct": _integer(system_control_group_pct),
        "reply_attribution_hours": _integer(reply_attribution_hours),
        "consent_replies": {
            "enabled": bool(confirm_consent),
            "opt_out": reply_opt_out.strip(),
            "opt_in": reply_opt_in.strip(),
        },
    }
    cap = {k: _integer(v) for k, v in (("max", cap_max), ("hours", cap_hours)) if v.strip()}
    if cap:
        given["frequency_cap"] = cap
    if dnd_start.strip() or dnd_end.strip():
        hours = {k: v for k, v in (("start", dnd_start), ("end", dnd_end)) if v.strip()}
        given["dnd"] = {**hours, "timezone": dnd_timezone, "action": dnd_action}
    keywords = (viewer.account.settings or {}).get("keywords")
    if keywords is not None:
        given["keywords"] = keywords
    try:
        rules = Rules.model_validate(given)
    except ValidationError as exc:
        errors: dict[str, str] = {}
        for error in exc.errors():
            loc = [_RULE_FIELDS.get(str(part), str(part)) for part in error["loc"]]
            errors.setdefault("_".join(loc), str(error["msg"]).removeprefix("Value error, "))
        return _account_page(request, viewer, values, errors)
    try:
        with db.session() as session:
            accounts.update_account(session, viewer.account.id, timezone=timezone, settings=rules.stored())
    except ApiError as exc:
        return _account_page(request, viewer, values, _next_to_field(exc, {"invalid_timezone": "timezone"}))
    return RedirectResponse("/settings/account?saved=1", status_code=303)


# -------------------------------------------------------------------------------------------------- users

# The invite form's field each refusal of ``users.create_user`` concerns.
_USER_FIELDS = {"invalid_email": "email", "user_exists": "email", "invalid_password": "password",
                "invalid_role": "role"}  # fmt: skip


def _users_page(
    request: Request,
    viewer: Viewer,
    db: Db,
    *,
    invite: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    row_error: tuple[int, str] | None = None,
    handed: tuple[str, str] | None = None,
    status: int = 200,
) -> Response:
    with db.read() as session:
        found = users.list_users(session, viewer.account.id)
    context = {
        "title": "Users",
        "users": found,
        "roles": ROLES,
        "invite": invite or {"email": "", "role": Role.marketer.value},
        "errors": errors or {},
        "row_error": row_error,
        "handed": handed,  # (e-mail, generated password): shown in this answer only
    }
    return render(request, "settings/users.html", viewer, context, status, NO_STORE if handed else None)


@router.get("/settings/users")
def user_list(request: Request, viewer: CurrentViewer, db: Db) -> Response:
    return _users_page(request, viewer, db)


@router.post("/settings/users")
def invite_user(
    request: Request,
    viewer: CurrentViewer,
    db: Db,
    email: Annotated[str, Form(max_length=254)],
    role: Annotated[str, Form(max_length=16)],
    password: Annotated[str, Form(max_length=1024)] = "",
) -> Response:
    """Add a user with the first password the admin typed, or with one made now and shown once."""
    chosen = password or users.new_password()
    try:
        with db.session() as session:
            user = users.create_user(session, viewer.account.id, email=email, role=role, password=chosen)
            added = user.email
    except ApiError as exc:
        errors = _next_to_field(exc, _USER_FIELDS)
        return _users_page(
            request, viewer, db, invite={"email": email, "role": role}, errors=errors, status=422
        )
    if password:
        return RedirectResponse("/settings/users", status_code=303)
    return _users_page(request, viewer, db, handed=(added, chosen))


def _change_user(request: Request, viewer: Viewer, db: Db, user_id: int, **change: Any) -> Response:
    """Change or remove a user (``remove=True``); a refusal (the last admin, one's own user) is shown in
    that user's row."""
    try:
        with db.session() as session:
            if change.pop("remove", False):
                users.remove_user(session, viewer.account.id, user_id, by=viewer.user.id)
            else:
                users.update_user(session, viewer.account.id, user_id, by=viewer.user.id, **change)
    except ApiError as exc:
        if exc.status == 404:
            raise
        return _users_page(request, viewer, db, row_error=(user_id, exc.message), status=exc.status)
    return RedirectResponse("/settings/users", status_code=303)


@router.post("/settings/users/{user_id}/role")
def change_role(
    request: Request, viewer: CurrentViewer, db: Db, user_id: Id, role: Annotated[str, Form(max_length=16)]
) -> Response:
    return _change_user(request, viewer, db, user_id, role=role)


@router.post("/settings/users/{user_id}/disable")
def disable_user(request: Request, viewer: CurrentViewer, db: Db, user_id: Id) -> Response:
    return _change_user(request, viewer, db, user_id, disabled=True)


@router.post("/settings/users/{user_id}/enable")
def enable_user(request: Request, viewer: CurrentViewer, db: Db, user_id: Id) -> Response:
    return _change_user(request, viewer, db, user_id, disabled=False)


@router.post("/settings/users/{user_id}/remove")
def remove_user(request: Request, viewer: CurrentViewer, db: Db, user_id: Id) -> Response:
    return _change_user(request, viewer, db, user_id, remove=True)


# ----------------------------------------------------------------------------------------------- API keys

_KEY_FIELDS = {"invalid_name": "name", "invalid_role": "role"}


def _keys_page(
    request: Request,
    viewer: Viewer,
    db: Db,
    *,
    form: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    new: users.NewApiKey | None = None,
    status: int = 200,
) -> Response:
    with db.read() as session:
        keys = users.list_api_keys(session, viewer.account.id)
    context = {
        "title": "API keys",
        "keys": keys,
        "roles": ROLES,
        "form": form or {"name": "", "role": Role.marketer.value},
        "errors": errors or {},
        "new": new,  # its secret: shown in this answer only
    }
    return render(request, "settings/api_keys.html", viewer, context, status, NO_STORE if new else None)


@router.get("/settings/api-keys")
def api_key_list(request: Request, viewer: CurrentViewer, db: Db) -> Response:
    return _keys_page(request, viewer, db)


@router.post("/settings/api-keys")
def create_api_key(
    request: Request,
    viewer: CurrentViewer,
    db: Db,
    name: Annotated[str, Form(max_length=200)] = "",
    role: Annotated[str, Form(max_length=16)] = Role.marketer.value,
) -> Response:
    try:
        with db.session() as session:
            new = users.create_api_key(session, viewer.account.id, name=name, role=role)
    except ApiError as exc:
        errors = _next_to_field(exc, _KEY_FIELDS)
        return _keys_page(request, viewer, db, form={"name": name, "role": role}, errors=errors, status=422)
    return _keys_page(request, viewer, db, new=new)


@router.post("/settings/api-keys/{key_id}/revoke")
def revoke_api_key(viewer: CurrentViewer, db: Db, key_id: Id) -> Response:
    with db.session() as session:
        users.revoke_api_key(session, viewer.account.id, key_id)
    return RedirectResponse("/settings/api-keys", status_code=303)
