"""API errors: JSON bodies with a stable ``code`` and a human ``message``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field


class ApiError(Exception):
    """Raised by services and routers; rendered as ``{"code", "message", "details"?}``."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

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


class ErrorBody(BaseModel):
    """Every error answer of the API."""

    code: str = Field(description="Stable, machine-readable code, e.g. `template_exists`.")
    message: str = Field(description="What went wrong, for a person.")
    details: Any | None = None


def error_responses(described: Mapping[int, str], *statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route for the OpenAPI document: each status with its description."""
    return {status: {"model": ErrorBody, "description": described[status]} for status in statuses}
