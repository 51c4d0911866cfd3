"""Rendering a page: one Jinja2 environment (autoescaped), the context every page has, and the answers
for a page that fails (sign-in needed, forbidden, not found, refused input)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from tidings.errors import ApiError
from tidings.web.auth import BadCsrf, PageForbidden, SignInNeeded, Viewer, signin_url

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
env = templates.env
env.globals["nav"] = [
    # (label, path, role needed to see it); Settings' children are drawn under it by base.html
    ("Inbox", "/inbox", "agent"),
    ("Campaigns", "/campaigns", "agent"),
    ("Segments", "/segments", "agent"),
    ("Profiles", "/profiles", "agent"),
]
env.globals["settings_nav"] = [
    ("WhatsApp", "/settings/whatsapp", "admin"),
    ("Templates", "/settings/whatsapp/templates", "agent"),
    ("Account", "/settings/account", "admin"),
    ("Users", "/settings/users", "admin"),
    ("API keys", "/settings/api-keys", "admin"),
]


NONE = "\N{EN DASH}"  # what a table shows for no value


def _number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else NONE if value is None else str(value)


def _percent(value: Any) -> str:
    return NONE if value is None else f"{100 * float(value):.1f} %"


def _when(value: datetime | None, tz: str | None = None) -> str:
    """A time in the account's time zone (UTC when it has none), to the minute."""
    if value is None:
        return NONE
    local = value.astimezone(ZoneInfo(tz)) if tz else value
    return local.strftime("%Y-%m-%d %H:%M")


env.filters["number"] = _number
env.filters["percent"] = _percent
env.filters["when"] = _when


def render(
    request: Request,
    template: str,
    viewer: Viewer | None,
    context: dict[str, Any] | None = None,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    """The page ``template`` with ``context``, plus what every page has: the viewer (None on the sign-in
    page), the account's time zone and the current path (for the navigation)."""
    base = {
        "viewer": viewer,
        "tz": (viewer.account.timezone if viewer is not None else None) or None,
        "path": request.url.path,
        "htmx": request.headers.get("hx-request") == "true",
    }
    return templates.TemplateResponse(
        request, template, {**base, **(context or {})}, status_code=status_code, headers=headers
    )


def is_page(request: Request) -> bool:
    return bool(getattr(request.state, "page", False))


def page_exception(request: Request, exc: Exception) -> Response:
    """The answer to an exception raised by a page (registered in ``web.mount``)."""
    if isinstance(exc, SignInNeeded):
        if request.headers.get("hx-request") == "true":  # htmx follows a redirect in place: go whole
            return Response(status_code=204, headers={"HX-Redirect": signin_url(request)})
        return RedirectResponse(signin_url(request), status_code=303)
    viewer: Viewer | None = getattr(request.state, "viewer", None)
    if isinstance(exc, PageForbidden):
        needed, role = exc.needed.value, exc.viewer.role.value
        message = f"This page needs the {needed} role; you are signed in as {role}."
        return render(request, "error.html", viewer, {"title": "Not allowed", "message": message}, 403)
    if isinstance(exc, BadCsrf):
        message = (
            "The form was out of date or came from another site, so nothing was changed. "
            "Reload the page and try again."
        )
        return render(request, "error.html", viewer, {"title": "Form expired", "message": message}, 403)
    assert isinstance(exc, ApiError)
    title = {404: "Not found", 409: "Conflict", 422: "Not accepted"}.get(exc.status, "Error")
    return render(request, "error.html", viewer, {"title": title, "message": exc.message}, exc.status)
