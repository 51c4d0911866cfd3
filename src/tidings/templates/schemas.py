"""Request and response models of the templates API (they are what the OpenAPI document shows).

The request models only check types: the rules (name form, variables, language, category, status) are
checked by the service, so that every caller gets the same answers with the same error codes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tidings.templates.rules import Category, Status

_NAME = (
    "`<template_namespace>:<template_name>`: both parts non-empty, no whitespace, exactly one colon "
    "(at most 512 characters)."
)
_BODY = (
    "The body text, 1 to 1,024 characters. Variables are `{{1}}` … `{{N}}` (whitespace inside the braces "
    "is allowed), numbered from 1 without gaps; a variable may repeat. Anything else between `{{` and "
    "`}}` is refused."
)
_LANGUAGE = "Language code as WhatsApp writes it: `en`, `en_US`, `pt_BR` (`en-US` is accepted too)."
_CATEGORY = "`MARKETING`, `UTILITY` or `AUTHENTICATION`, in any case; stored in upper case."
_STATUS = (
    "Approval status at the provider, in any case; stored in upper case. One of APPROVED, PENDING, "
    "REJECTED, PAUSED, DISABLED, ARCHIVED, IN_APPEAL, PENDING_DELETION, DELETED, LIMIT_EXCEEDED, FLAGGED."
)
_PROVIDER_ID = "The template's id at the provider (Meta's template id), when known; at most 64 characters."


class TemplateCreate(BaseModel):
    """A template added by hand: it is registered as already approved at the provider unless told."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "tickets:booking_confirmation",
                    "language": "en_US",
                    "category": "UTILITY",
                    "body": "Hi {{1}}, your booking {{2}} is confirmed. See you on {{3}}!",
                }
            ]
        },
    )

    name: str = Field(description=_NAME, examples=["tickets:booking_confirmation"])
    body: str = Field(description=_BODY)
    category: str = Field(description=_CATEGORY, examples=["UTILITY"])
    language: str = Field(default="en", description=_LANGUAGE, examples=["en_US"])
    status: str = Field(default="APPROVED", description=_STATUS)
    provider_template_id: str | None = Field(default=None, description=_PROVIDER_ID)


class TemplateUpdate(BaseModel):
    """A partial update: only the fields sent change, and the template is validated again as a whole.
    Only ``provider_template_id`` may be set to null."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, description=_NAME)
    body: str | None = Field(default=None, description=_BODY)
    category: str | None = Field(default=None, description=_CATEGORY)
    language: str | None = Field(default=None, description=_LANGUAGE)
    status: str | None = Field(default=None, description=_STATUS)
    provider_template_id: str | None = Field(default=None, description=_PROVIDER_ID)

    def changes(self) -> dict[str, Any]:
        """The fields the client sent (a field sent as null is kept, so that it can be refused)."""
        return self.model_dump(exclude_unset=True)


class TemplateOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str = Field(description="`<template_namespace>:<template_name>`")
    namespace: str = Field(description="The part of `name` before the colon.")
    template_name: str = Field(description="The part of `name` after the colon.")
    language: str
    category: Category
    status: Status
    body: str
    variable_count: int = Field(description="N, for the variables `{{1}}` … `{{N}}` of the body.")
    provider_template_id: str | None
    created_at: datetime
    updated_at: datetime
