"""The dashboard, served by ``tidings serve`` at ``/``: server-rendered pages (Jinja2) over the same
services as the API, enhanced with htmx, live figures over server-sent events. ``pages/`` has one module
per area, ``templates/`` their pages, ``static/`` our CSS and JS (``static/vendor/`` is filled from the
npm lock by ``make``)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from tidings.web.auth import BadCsrf, PageForbidden, SignInNeeded
from tidings.web.pages import (
    campaign_builder,
    campaigns,
    inbox,
    profiles,
    saved_replies,
    segments,
    settings,
    signin,
    whatsapp,
)
from tidings.web.render import HERE, page_exception

# One line per area (campaign_builder before campaigns: /campaigns/new is not the campaign /campaigns/{id}).
PAGE_ROUTERS = [
    signin.router,
    campaign_builder.router,
    campaigns.router,
    segments.router,
    profiles.router,
    settings.router,
    whatsapp.settings_router,
    whatsapp.templates_router,
    saved_replies.router,  # before the inbox: /inbox/saved-replies is not a conversation
    inbox.router,
]


def mount(app: FastAPI) -> None:
    """Add the pages and ``/static`` to ``app``, and the answers to a page's sign-in, role and CSRF
    refusals (an ``ApiError`` raised by a page is answered as a page by the app's own handler)."""
    for router in PAGE_ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=HERE / "static", check_dir=False), name="static")
    for exc in (SignInNeeded, PageForbidden, BadCsrf):
        app.add_exception_handler(exc, page_exception)
