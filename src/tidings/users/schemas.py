"""Request and response models of the users and API keys API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from tidings.users.models import Role

_PASSWORD = "12 to 256 characters; hashed with argon2id, never shown."


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(max_length=254, description="Unique in the account; kept trimmed and in lower case.")
    role: Role
    password: str = Field(max_length=256, description=_PASSWORD)


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role | None = Field(None, description="Another role signs the user out everywhere.")
    disabled: bool | None = Field(None, description="A disabled user cannot sign in (signed out now).")


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    email: str
    role: Role
    created_at: datetime
    disabled_at: datetime | None


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="What the key is for, e.g. `CRM sync`.")
    role: Role


class ApiKeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    role: Role
    prefix: str = Field(description="The secret's first characters, to recognise the key.")
    created_at: datetime
    last_used_at: datetime | None = Field(description="Recorded to the minute.")
    revoked_at: datetime | None


class NewApiKeyOut(ApiKeyOut):
    secret: str = Field(
        description="`tid_…`: send it as `Authorization: Bearer <secret>`. Shown only now: only its hash "
        "is kept."
    )
