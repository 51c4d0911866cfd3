"""Users and API keys of the account (admins only): a thin router over ``tidings.users.service``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from tidings.bounds import Id
from tidings.deps import ADMIN, CurrentAccount, Db
from tidings.errors import error_responses
from tidings.users import service
from tidings.users.schemas import ApiKeyCreate, ApiKeyOut, NewApiKeyOut, UserCreate, UserOut, UserUpdate

ERRORS = {
    404: "No such user or API key in this account (`not_found`).",
    409: "`user_exists`: the account has a user with this e-mail; `last_admin`: the change would leave "
    "the account without an enabled admin user.",
    422: "Refused input: `invalid_email`, `invalid_password` (12 to 256 characters), `invalid_role`, "
    "`invalid_name`, or `validation_error` for a malformed request.",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return error_responses(ERRORS, *statuses)


router = APIRouter(prefix="/api/v1", tags=["users"], dependencies=[ADMIN])


@router.get("/users", response_model=list[UserOut])
def list_users(account: CurrentAccount, db: Db) -> list[UserOut]:
    """The account's users, by e-mail."""
    with db.read() as session:
        return [UserOut.model_validate(user) for user in service.list_users(session, account.id)]


@router.post("/users", status_code=201, response_model=UserOut, responses=_errors(409, 422))
def create_user(body: UserCreate, account: CurrentAccount, db: Db) -> UserOut:
    """Add a user who signs in with this e-mail and password."""
    with db.session() as session:
        user = service.create_user(
            session, account.id, email=body.email, role=body.role.value, password=body.password
        )
        return UserOut.model_validate(user)


@router.patch("/users/{user_id}", response_model=UserOut, responses=_errors(404, 409, 422))
def update_user(user_id: Id, body: UserUpdate, account: CurrentAccount, db: Db) -> UserOut:
    """Change the user's role, or disable or enable the user; either signs the user out everywhere. The
    account's last enabled admin cannot be demoted or disabled (409 `last_admin`)."""
    role = body.role.value if body.role is not None else None
    with db.session() as session:
        user = service.update_user(session, account.id, user_id, role=role, disabled=body.disabled)
        return UserOut.model_validate(user)


@router.delete("/users/{user_id}", status_code=204, response_class=Response, responses=_errors(404, 409))
def remove_user(user_id: Id, account: CurrentAccount, db: Db) -> Response:
    """Remove the user (signed out everywhere); not the account's last enabled admin (409 `last_admin`)."""
    with db.session() as session:
        service.remove_user(session, account.id, user_id)
    return Response(status_code=204)


@router.get("/api-keys", response_model=list[ApiKeyOut])
def list_api_keys(account: CurrentAccount, db: Db) -> list[ApiKeyOut]:
    """The account's API keys, newest first, revoked ones too; never their secrets."""
    with db.read() as session:
        return [ApiKeyOut.model_validate(key) for key in service.list_api_keys(session, account.id)]


@router.post("/api-keys", status_code=201, response_model=NewApiKeyOut, responses=_errors(422))
def create_api_key(body: ApiKeyCreate, account: CurrentAccount, db: Db) -> NewApiKeyOut:
    """A new key with this role; its secret is in this answer only."""
    with db.session() as session:
        new = service.create_api_key(session, account.id, name=body.name, role=body.role.value)
        return NewApiKeyOut(**ApiKeyOut.model_validate(new.key).model_dump(), secret=new.secret)


@router.delete("/api-keys/{key_id}", response_model=ApiKeyOut, responses=_errors(404))
def revoke_api_key(key_id: Id, account: CurrentAccount, db: Db) -> ApiKeyOut:
    """Revoke the key: from now on it is refused (401). The key stays listed, with its revocation time."""
    with db.session() as session:
        return ApiKeyOut.model_validate(service.revoke_api_key(session, account.id, key_id))
