"""API errors: JSON bodies with a stable ``code`` and a human ``message``."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, Field
from pydantic_core import PydanticCustomError


class ApiError(Exception):
    """Raised by services and routers; rendered as ``{"code", "message", "details"?}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = dict(headers) if headers else None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return body


class NotFound(ApiError):
    def __init__(self, what: str) -> None:
        super().__init__(404, "not_found", f"{what} not found")


class Invalid(ApiError):
    def __init__(self, message: str, details: Any = None, code: str = "invalid") -> None:
        super().__init__(422, code, message, details)


class Conflict(ApiError):
    def __init__(self, message: str, code: str = "conflict") -> None:
        super().__init__(409, code, message)


class Forbidden(ApiError):
    def __init__(self, needed: str) -> None:
        super().__init__(403, "forbidden", f"this needs the {needed} role")


class TooManySignIns(ApiError):
    def __init__(self, wait: int) -> None:
        super().__init__(
            429,
            "too_many_attempts",
            f"too many failed sign-ins; try again in {wait} s",
            headers={"Retry-After": str(wait)},
        )
        self.wait = wait


def refusal(code: str, message: str) -> PydanticCustomError:
    """A refusal raised inside a request model's validation that the API answers (422) with its own
    ``code`` instead of ``validation_error``."""
    return PydanticCustomError(code, message, {"api_code": code})


class ErrorBody(BaseModel):
    """Every error answer of the API."""

    code: str = Field(description="Stable, machine-readable code, e.g. `template_exists`.")
    message: str = Field(description="What went wrong, for a person.")
    details: Any | None = None


def error_responses(described: Mapping[int, str], *statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route for the OpenAPI document: each status with its description."""
    return {status: {"model": ErrorBody, "description": described[status]} for status in statuses}


# Every status any route may answer besides its own: the OpenAPI document lists them all (a schema
# fuzzer holds the app to it, tests/test_contract.py).
COMMON_ERRORS = {
    400: "`invalid_json` / `invalid_payload`: the webhook body is not what the provider sends.",
    401: "Missing or wrong account id / passcode, or an unknown or revoked API key (`unauthorized`); for a "
    "webhook, a bad signature.",
    403: "`forbidden`: the caller's role may not do this (`message` names the role needed); for the webhook "
    "handshake, `bad_verify_token`: its token is not the account's.",
    404: "`not_found`: no such thing in this account.",
    413: "`payload_too_large`: the request body is over the limit (1 MiB; 8 MiB for `/1/upload`, 4 MiB for "
    "webhooks), refused before it is read whole and before authentication.",
    422: "`validation_error` for a malformed request (missing field, wrong type, unknown field, a number "
    "out of range, a time without a zone), or a code naming the value refused; `message` says why.",
    429: "`too_many_attempts`: too many failed sign-ins from this address or for this account; retry after "
    "the `Retry-After` header's seconds.",
    500: "`internal_error`: an unexpected failure (logged with its trace); try again later.",
    503: "`query_timeout`: the database did not answer in time; narrow the request or try again later.",
}


def _needs(dependant: Any, found: Callable[[Any], bool]) -> bool:
    return any(found(dep.call) or _needs(dep, found) for dep in dependant.dependencies)


def _api_routes(app: Any) -> list[Any]:
    """The app's API routes, those of included routers too (FastAPI ≥ 0.16x keeps those apart)."""
    from fastapi.routing import APIRoute

    try:
        from fastapi.routing import iter_route_contexts  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return [route for route in app.routes if isinstance(route, APIRoute)]
    return [c for c in iter_route_contexts(app.routes) if isinstance(c.original_route, APIRoute)]


def document_errors(
    app: Any,
    caller_dependency: Any,
    role_dependency: type,
    db_dependency: Any,
    upload_path: str,
    upload_error: str,
) -> None:
    """Make ``app.openapi()`` list, for every operation, each error status it can answer (``COMMON_ERRORS``
    for those a route does not describe itself), with our error body instead of FastAPI's default 422.
    A route answers 401 and 429 when it depends on ``caller_dependency``, 403 when on an instance of
    ``role_dependency``."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            cached: dict[str, Any] = app.openapi_schema
            return cached
        document: dict[str, Any] = build()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas.setdefault("ErrorBody", ErrorBody.model_json_schema())
        for route in _api_routes(app):
            if not route.include_in_schema:
                continue
            statuses = {500}
            if _needs(route.dependant, lambda call: call is caller_dependency) or route.path == upload_path:
                statuses |= {401, 429}
            if _needs(route.dependant, lambda call: isinstance(call, role_dependency)):
                statuses.add(403)
            if _needs(route.dependant, lambda call: call is db_dependency):
                statuses.add(503)
            if route.methods & {"POST", "PUT", "PATCH"}:
                statuses.add(413)
            if route.dependant.path_params:
                statuses.add(404)
            if (
                route.dependant.path_params
                or route.dependant.query_params
                or route.dependant.header_params
                or route.body_field is not None
            ):
                statuses.add(422)
            if route.path.startswith("/webhooks/"):
                statuses |= {400, 401, 404, 422}
                if "GET" in route.methods:
                    statuses.add(403)
            model = upload_error if route.path == upload_path else "ErrorBody"
            ref = {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}}
            for method in route.methods:
                operation = document["paths"].get(route.path_format, {}).get(method.lower())
                if operation is None:
                    continue
                responses = operation.setdefault("responses", {})
                default_422 = responses.get("422", {}).get("content", {}).get("application/json", {})
                if default_422.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                    del responses["422"]
                for status in sorted(statuses):
                    responses.setdefault(str(status), {"description": COMMON_ERRORS[status], "content": ref})
        for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 body, replaced above
            if f'/{unused}"' not in json.dumps(document):
                schemas.pop(unused, None)
        app.openapi_schema = document
        return document

    setattr(app, "openapi", openapi)  # noqa: B010 (mypy: a method cannot be assigned)
