"""The FastAPI application: API routers, webhooks, and (when asked) the worker in the same process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from tidings import __version__
from tidings.config import Settings
from tidings.db import Database
from tidings.errors import ApiError, document_errors
from tidings.guards import MEDIA_PATH, UPLOAD_PATH, Guard, SignInLimiter, error_answer
from tidings.secrets import SecretBox
from tidings.web.render import is_page, page_exception
from tidings.webhooks.lane import WebhookLane

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None, db: Database | None = None, run_worker: bool = False
) -> FastAPI:
    """Build the app. The database must already be migrated (``tidings serve`` and the tests do it)."""
    settings = settings or Settings()
    db = db or Database(settings.database_url)
    box = SecretBox.from_settings(settings.secret_key, settings.data_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker_task = None
        stop = asyncio.Event()
        if run_worker:
            from tidings.worker import Worker

            worker = Worker(db, settings, box)
            app.state.worker = worker
            worker_task = asyncio.create_task(worker.run(stop))
        yield
        if worker_task is not None:
            stop.set()
            await worker_task
        await app.state.webhooks.aclose()

    app = FastAPI(
        title="Tidings",
        version=__version__,
        description=(
            "Self-hosted WhatsApp engagement platform. Authenticate every `/api/v1` call with an API key "
            "(`Authorization: Bearer tid_…`, acting with the key's role), or as the account's admin with "
            "HTTP Basic (`account_id:passcode`) or the CleverTap headers `X-CleverTap-Account-Id` and "
            "`X-CleverTap-Passcode`. Roles: `admin` (everything), `marketer` (templates, segments, "
            "campaigns, profiles, uploads), `agent` (reads those, answers conversations); a route refused "
            "to a role answers 403 `forbidden`. "
            'Errors are JSON: `{"code", "message"}`.'
        ),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.db = db
    app.state.box = box
    app.state.worker = None
    from tidings.webhooks.batch import WebhookBatcher

    app.state.webhooks = WebhookBatcher(db, box)

    app.state.signins = SignInLimiter()
    # Outermost: security headers on every answer, the body-size limit before anything reads the body
    # (authentication included), and a JSON 500 for an unexpected exception (guards.py).
    app.add_middleware(Guard)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        if is_page(request):
            return page_exception(request, exc)
        body = _upload_error(exc.status, exc.message) if request.url.path == UPLOAD_PATH else exc.body()
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        # (pydantic prefixes a model's own refusals with "Value error, ": the field's path says enough)
        said = [str(err.get("msg", "")).removeprefix("Value error, ") for err in errors]
        details = [{"loc": list(e.get("loc", ())), "message": m} for e, m in zip(errors, said, strict=True)]
        first = details[0] if details else {"loc": [], "message": "invalid request"}
        where = ".".join(str(p) for p in first["loc"][1:]) or "body"
        # A model may refuse with a code of its own (tidings.errors.refusal).
        code = (
            (errors[0].get("ctx") or {}).get("api_code", "validation_error") if errors else "validation_error"
        )
        return JSONResponse(
            {"code": code, "message": f"{where}: {first['message']}", "details": details}, status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # FastAPI's answer to a body that is not UTF-8: malformed, like a body that is not JSON (422)
            message = "body: the request body is not valid JSON (UTF-8)"
            return JSONResponse({"code": "validation_error", "message": message}, status_code=422)
        if exc.status_code == 400 and request.url.path == MEDIA_PATH:
            # Starlette's answer to a malformed multipart body (the file upload): malformed as above
            message = f"body: the request body is not valid multipart/form-data ({exc.detail})"
            return JSONResponse({"code": "validation_error", "message": message}, status_code=422)
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status_code, "http_error"
        )
        body = error_answer(request.url.path, exc.status_code, code, str(exc.detail))
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    from tidings.accounts.api import account_router, integrations_router
    from tidings.campaigns.api import router as campaigns_router
    from tidings.conversations.api import media_router
    from tidings.conversations.api import router as conversations_router
    from tidings.profiles.api import router as profiles_router
    from tidings.profiles.api import upload_router
    from tidings.segments.api import router as segments_router
    from tidings.templates.api import router as templates_router
    from tidings.users.api import router as users_router
    from tidings.webhooks.api import webhooks_router

    app.include_router(upload_router)
    app.include_router(profiles_router)
    app.include_router(templates_router)
    app.include_router(campaigns_router)
    app.include_router(segments_router)
    app.include_router(conversations_router)
    app.include_router(media_router)
    app.include_router(integrations_router())
    app.include_router(account_router)
    app.include_router(users_router)
    app.include_router(webhooks_router())

    @app.get("/healthz", tags=["meta"])
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    from tidings.web import mount

    mount(app)

    from tidings.delivery.api import router as delivery_router
    from tidings.metrics import exposition, watch_ledger

    app.include_router(delivery_router)
    watch_ledger(db)

    @app.get("/metrics", tags=["meta"], include_in_schema=False)
    def metrics() -> Response:
        """Prometheus metrics of this process, and the ledger's queue depth."""
        body, content_type = exposition()
        return Response(body, media_type=content_type)

    from tidings.deps import Allow, _current_caller, get_db

    document_errors(app, _current_caller, Allow, get_db, UPLOAD_PATH, "UploadFailure")
    return app


def _upload_error(status: int, message: str) -> dict[str, object]:
    """CleverTap's shape of a refused ``/1/upload``: ``{"status": "fail", "error", "code"}``."""
    return error_answer(UPLOAD_PATH, status, "", message)


def asgi_app(app: FastAPI) -> WebhookLane:
    """What a server runs: ``app`` behind the webhook lane, which answers webhook POSTs before FastAPI's
    middleware, routing and dependencies (webhooks/lane.py); everything else goes on to ``app``."""
    return WebhookLane(app, app.state.webhooks)


def app_from_env() -> WebhookLane:
    """The app of one of ``tidings serve --processes N``'s processes (the database is already migrated)."""
    import os

    from tidings.metrics import setup_logging

    settings = Settings()
    setup_logging(os.environ.get("TIDINGS_SERVE_LOG_LEVEL", "info"), settings.log_format)
    return asgi_app(create_app(settings, run_worker=os.environ.get("TIDINGS_SERVE_WORKER") == "1"))
