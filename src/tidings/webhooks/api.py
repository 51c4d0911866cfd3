"""Webhook endpoints. Each verifies the provider's signature before anything is read or written, then
hands the events to the process's ``WebhookBatcher``, which applies many requests' events in one
transaction and answers each request once its events are committed.

Every provider's webhooks live under ``/webhooks/<kind>/<account id>``, on the routes its plug-in names
(``ProviderType.webhook_routes``). ``receive`` is the whole of a webhook POST. ``WebhookLane``
(webhooks/lane.py) calls it for every POST under ``/webhooks/`` ahead of FastAPI's routing; the routes
``webhooks_router`` makes document the same endpoints in the OpenAPI document and call the same function
when the app is served without the lane.
"""

# No ``from __future__ import annotations``: the routes' types are made from the registry when the routes
# are, and FastAPI reads the routes' annotations as objects.

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from tidings.db import Database
from tidings.errors import ApiError
from tidings.providers import registry
from tidings.providers.base import WebhookError
from tidings.providers.plugin import AnyProviderType
from tidings.secrets import SecretBox
from tidings.webhooks.batch import WebhookBatcher
from tidings.webhooks.service import integration_for


def route_of(path: str) -> tuple[str, str, str] | None:
    """``(provider, account id, route)`` of a webhook POST path (``/webhooks/<kind>/<account>[/<route>]``),
    or None when it names no provider's webhook."""
    parts = path.split("/")
    if len(parts) not in (4, 5) or not parts[3]:
        return None
    plugin = registry.find(parts[2])
    route = parts[4] if len(parts) == 5 else ""
    if plugin is None or route not in plugin.webhook_routes:
        return None
    return plugin.kind, parts[3], route


async def receive(
    batcher: WebhookBatcher,
    provider: str,
    account_id: str,
    route: str,
    headers: Mapping[str, str],
    body: bytes,
) -> dict[str, Any]:
    """Verify, parse and apply one webhook POST on one of ``provider``'s routes (``""`` for a URL that ends
    at the account); the answer's body, or ``ApiError``. ``headers`` have lower-case names."""
    integration = await batcher.integration(account_id, provider)
    try:
        events = registry.plugin(provider).read_webhook(
            route, headers, body, integration["settings"], integration["secrets"]
        )
    except WebhookError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from exc
    result = await batcher.apply(account_id, provider, events)
    return {"status": "ok", **result}


def _handshake(db: Database, box: SecretBox, provider: str, account_id: str, params: Any) -> str:
    with db.session() as session:
        settings = integration_for(session, box, account_id, provider)["settings"]
    try:
        return registry.plugin(provider).answer_handshake(params, settings)
    except WebhookError as exc:
        raise ApiError(exc.status, "bad_verify_token", exc.message) from exc


def _post_route(plugin: AnyProviderType) -> Callable[..., Awaitable[dict[str, Any]]]:
    """The POST endpoint of a provider whose webhook URL ends at the account."""

    async def webhook(account_id: str, request: Request) -> dict[str, Any]:
        body = await request.body()
        return await receive(request.app.state.webhooks, plugin.kind, account_id, "", request.headers, body)

    return webhook


def _post_routes(
    plugin: AnyProviderType, routes: tuple[str, ...]
) -> Callable[..., Awaitable[dict[str, Any]]]:
    """The POST endpoint of a provider's webhook URLs that end with one of ``routes``."""
    Route = Literal[routes]  # type: ignore[valid-type]  # the routes, made at run time

    async def webhook(account_id: str, route: Route, request: Request) -> dict[str, Any]:
        body = await request.body()
        return await receive(
            request.app.state.webhooks, plugin.kind, account_id, route, request.headers, body
        )

    return webhook


def _handshake_route(plugin: AnyProviderType) -> Callable[[str, Request], Awaitable[str]]:
    async def handshake(account_id: str, request: Request) -> str:
        return await run_in_threadpool(
            _handshake,
            request.app.state.db,
            request.app.state.box,
            plugin.kind,
            account_id,
            request.query_params,
        )

    return handshake


def webhooks_router() -> APIRouter:
    """The webhook routes of the providers registered when the app is made."""
    router = APIRouter(prefix="/webhooks", tags=["webhooks"])
    for plugin in registry.plugins():
        base = f"/{plugin.kind}/{{account_id}}"
        if plugin.handshake:
            router.add_api_route(
                base,
                _handshake_route(plugin),
                methods=["GET"],
                response_class=PlainTextResponse,
                summary=f"{plugin.title} webhook verification",
                description="The provider's GET handshake: answered when its token is the account's.",
                operation_id=f"webhook_handshake_{plugin.kind}",
            )
        if "" in plugin.webhook_routes:
            router.add_api_route(
                base,
                _post_route(plugin),
                methods=["POST"],
                summary=f"{plugin.title} webhooks",
                description=f"Signed as {plugin.title} signs its webhooks; verified before anything is read.",
                operation_id=f"webhook_{plugin.kind}",
            )
        routes = tuple(route for route in plugin.webhook_routes if route)
        if routes:
            router.add_api_route(
                f"{base}/{{route}}",
                _post_routes(plugin, routes),
                methods=["POST"],
                summary=f"{plugin.title} webhooks: {', '.join(routes)}",
                description=f"Signed as {plugin.title} signs its webhooks; verified before anything is read.",
                operation_id=f"webhook_{plugin.kind}_routes",
            )
    return router
