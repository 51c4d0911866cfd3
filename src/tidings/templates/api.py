"""Templates API: a thin router over ``tidings.templates.service``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response

from tidings.deps import MARKETER, CurrentAccount, Db
from tidings.errors import error_responses
from tidings.templates import service
from tidings.templates.schemas import TemplateCreate, TemplateOut, TemplateUpdate
from tidings.templates.sync import sync_templates

router = APIRouter(prefix="/api/v1/templates", tags=["templates"], dependencies=[MARKETER])


ERRORS = {
    401: "Missing or wrong account id / passcode, or an unknown or revoked API key (`unauthorized`).",
    404: "No such template in this account (`not_found`).",
    409: "`template_exists`: same name and language already; `template_in_use`: a campaign uses it. "
    "Sync: `sync_not_supported` (Vonage), `sync_not_configured` (no `waba_id`), `provider_unauthorized` "
    "(Meta refused the token), `credentials_unreadable`, `untrusted_base_url`.",
    502: "`provider_error`: the provider failed or could not be reached during template sync; `message` "
    "gives its code and a one-line summary.",
    422: "Refused input: `template_ambiguous` for a name the account has in several languages, "
    "`validation_error` for a malformed request (missing field, wrong type, unknown "
    "field), or `invalid_<field>` (`invalid_name`, `invalid_body`, `invalid_language`, "
    "`invalid_category`, `invalid_status`, `invalid_provider_template_id`) for a value the template "
    "rules refuse; `message` says why.",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return error_responses(ERRORS, *statuses)


@router.post("", status_code=201, response_model=TemplateOut, responses=_errors(401, 409, 422))
def create_template(payload: TemplateCreate, db: Db, account: CurrentAccount) -> TemplateOut:
    """Add a template by hand (registered as already approved at the provider unless `status` says)."""
    with db.session() as session:
        return TemplateOut.model_validate(
            service.create_template(session, account.id, **payload.model_dump())
        )


@router.get("", response_model=list[TemplateOut], responses=_errors(401, 422))
def list_templates(
    db: Db,
    account: CurrentAccount,
    status: str | None = Query(default=None, description="Only templates with this status (any case)."),
    name: str | None = Query(
        default=None, description="Only templates with this full name `<namespace>:<name>` (all languages)."
    ),
) -> list[TemplateOut]:
    """The account's templates, ordered by name and language."""
    with db.read() as session:
        templates = service.list_templates(session, account.id, status=status, name=name)
        return [TemplateOut.model_validate(t) for t in templates]


# A template in a path: its id, or its full name `<namespace>:<name>`.
Ref = Annotated[
    str,
    Path(
        max_length=512,
        description="The template's id, or its name `<namespace>:<name>` (422 `template_ambiguous` when the "
        "account has that name in several languages).",
    ),
]


@router.get("/{ref}", response_model=TemplateOut, responses=_errors(401, 404, 422))
def get_template(ref: Ref, db: Db, account: CurrentAccount) -> TemplateOut:
    with db.read() as session:
        return TemplateOut.model_validate(service.template_by_ref(session, account.id, ref))


@router.patch("/{ref}", response_model=TemplateOut, responses=_errors(401, 404, 409, 422))
def update_template(ref: Ref, payload: TemplateUpdate, db: Db, account: CurrentAccount) -> TemplateOut:
    """Change the fields sent; the template is validated again (a new body gives a new `variable_count`)."""
    with db.session() as session:
        template = service.update_template(session, account.id, ref, **payload.changes())
        return TemplateOut.model_validate(template)


@router.delete("/{ref}", status_code=204, response_class=Response, responses=_errors(401, 404, 409, 422))
def delete_template(ref: Ref, db: Db, account: CurrentAccount) -> None:
    """Delete a template; refused with `template_in_use` while a campaign uses it."""
    with db.session() as session:
        service.delete_template(session, account.id, ref)


@router.post("/sync", responses=_errors(401, 409, 502))
async def sync(request: Request, account: CurrentAccount) -> dict[str, int]:
    """Fetch the templates from the provider (Meta: all pages) and create or update them here, with their
    status and category; a provider that reviews templates made here (the sandbox) gets the pending ones.
    A provider with neither (Vonage) answers 409."""
    return await sync_templates(
        request.app.state.db, request.app.state.box, request.app.state.settings, account.id
    )
