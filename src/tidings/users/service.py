"""Users, their sessions, and API keys: the rules the API, the CLI and (next) the dashboard's pages call.

Passwords are hashed with argon2id (``argon2-cffi``); a hash made with older parameters is remade at the
next successful sign-in. Session tokens and API keys are random and long, so only their SHA-256 is kept
(a slow hash would protect nothing more and cost every request).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from tidings.accounts.models import Account
from tidings.db import utcnow
from tidings.errors import ApiError, Conflict, Invalid, NotFound, TooManySignIns
from tidings.guards import SignInLimiter
from tidings.users.models import ApiKey, Role, User, UserSession

HASHER = PasswordHasher()  # argon2id with the library's current recommended parameters (RFC 9106)
MIN_PASSWORD = 12
MAX_PASSWORD = 256  # argon2 takes any length; a megabyte "password" would only cost us time
SESSION_LIFETIME = timedelta(hours=12)
KEY_PREFIX = "tid_"
HINT_LENGTH = len(KEY_PREFIX) + 6  # what a key list shows of each secret
LAST_USED_STEP = timedelta(minutes=1)  # last_used_at is written at most this often per key

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def normalise_email(email: str) -> str:
    """Trimmed and in lower case, so that ``Asha@Shop.com`` and ``asha@shop.com`` are one user."""
    return email.strip().lower()


def parse_role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise Invalid(
            f"role must be one of {', '.join(r.value for r in Role)}", code="invalid_role"
        ) from None


def _check_password(password: str) -> None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise Invalid(
            f"the password must have {MIN_PASSWORD} to {MAX_PASSWORD} characters", code="invalid_password"
        )


# ------------------------------------------------------------------------------------------------ users


def create_user(
    session: Session,
    account_id: str,
    *,
    email: str,
    role: str,
    password: str,
    hasher: PasswordHasher = HASHER,
) -> User:
    email = normalise_email(email)
    if len(email) > 254 or not _EMAIL.fullmatch(email):
        raise Invalid(f"{email!r} is not an e-mail address", code="invalid_email")
    chosen = parse_role(role)
    _check_password(password)
    if session.get(Account, account_id) is None:
        raise NotFound("account")
    taken = session.scalar(select(User.id).where(User.account_id == account_id, User.email == email))
    if taken is not None:
        raise Conflict(f"the account has a user {email}", code="user_exists")
    user = User(account_id=account_id, email=email, role=chosen.value, password_hash=hasher.hash(password))
    session.add(user)
    session.flush()
    return user


_HANDED = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789"  # none that reads as another


def new_password() -> str:
    """A first password for an invited user, shown once for the admin to hand over: four groups of five
    characters none of which reads as another (about 116 random bits)."""
    return "-".join("".join(secrets.choice(_HANDED) for _ in range(5)) for _ in range(4))


def list_users(session: Session, account_id: str) -> list[User]:
    return list(session.scalars(select(User).where(User.account_id == account_id).order_by(User.email)))


def get_user(session: Session, account_id: str, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None or user.account_id != account_id:
        raise NotFound("user")
    return user


def _keep_an_admin(session: Session, user: User, by: int | None, doing: str) -> None:
    """Refuse changing one's own user (``by``: the signed-in user acting, None for an API caller), and
    taking the account's last enabled admin away: someone must be left who may manage users."""
    if by == user.id:
        raise Conflict(f"you cannot {doing} yourself; ask another admin", code="own_user")
    if user.role != Role.admin.value or user.disabled_at is not None:
        return
    others = session.scalar(
        select(User.id)
        .where(
            User.account_id == user.account_id,
            User.role == Role.admin.value,
            User.disabled_at.is_(None),
            User.id != user.id,
        )
        .limit(1)
    )
    if others is None:
        raise Conflict(
            f"{user.email} is the account's last admin: make another user admin first", code="last_admin"
        )


def update_user(
    session: Session,
    account_id: str,
    user_id: int,
    *,
    role: str | None = None,
    disabled: bool | None = None,
    by: int | None = None,
) -> User:
    """Change the role or disable (enable) the user; either signs the user out everywhere, so that no
    session keeps what was taken away. Refused for one's own user and for the last admin
    (``_keep_an_admin``)."""
    user = get_user(session, account_id, user_id)
    chosen = parse_role(role) if role is not None else None
    if (chosen is not None and chosen.value != user.role) or (disabled and user.disabled_at is None):
        _keep_an_admin(session, user, by, "disable" if disabled else "change the role of")
    changed = False
    if chosen is not None and chosen.value != user.role:
        user.role = chosen.value
        changed = True
    if disabled is not None and disabled != (user.disabled_at is not None):
        user.disabled_at = utcnow() if disabled else None
        changed = True
    if changed:
        end_sessions(session, user.id)
    session.flush()
    return user


def remove_user(session: Session, account_id: str, user_id: int, *, by: int | None = None) -> None:
    """Remove the user (signed out everywhere); refused for one's own user and for the last admin."""
    user = get_user(session, account_id, user_id)
    _keep_an_admin(session, user, by, "remove")
    end_sessions(session, user.id)
    session.delete(user)
    session.flush()


@cache
def _decoy(hasher: PasswordHasher) -> str:
    return hasher.hash(secrets.token_urlsafe(16))


def authenticate(
    session: Session, account_id: str, email: str, password: str, hasher: PasswordHasher = HASHER
) -> User | None:
    """The enabled user with this e-mail and password, or None. An unknown e-mail, a disabled user and a
    wrong password take the same time (a password is checked against a decoy hash) and give the same
    answer. A hash made with other parameters than ``hasher``'s is remade now, with the password at hand."""
    user = None
    if len(password) <= MAX_PASSWORD:
        user = session.scalar(
            select(User).where(User.account_id == account_id, User.email == normalise_email(email))
        )
    stored = user.password_hash if user is not None and user.disabled_at is None else _decoy(hasher)
    try:
        hasher.verify(stored, password[:MAX_PASSWORD])
    except (VerificationError, InvalidHashError):
        return None
    if user is None or user.disabled_at is not None:  # the decoy matched: impossible, but never a user
        return None
    if hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hasher.hash(password)
        session.flush()
    return user


def only_account_of(session: Session, email: str) -> str:
    """The account of the user with this e-mail when there is exactly one, else "" (none, or several:
    the sign-in form then needs the account id; "" signs nobody in, after the same work as a wrong
    password)."""
    found = session.scalars(
        select(User.account_id).where(User.email == normalise_email(email[:254])).limit(2)
    ).all()
    return found[0] if len(found) == 1 else ""


def sign_in(
    session: Session,
    limiter: SignInLimiter,
    account_id: str,
    email: str,
    password: str,
    address: str,
    hasher: PasswordHasher = HASHER,
) -> User:
    """``authenticate`` behind the limiter of failed sign-ins, per address and per e-mail (a per-e-mail key
    stands for the limiter's account key: someone guessing one user's password from elsewhere is slowed
    down without locking the user out of the addresses they signed in from). Raises ``TooManySignIns``
    (429) before the password is checked, or 401."""
    key = f"{account_id}/{normalise_email(email)}"
    wait = limiter.wait(key, address)
    if wait:
        raise TooManySignIns(wait)
    user = authenticate(session, account_id, email, password, hasher)
    if user is None:
        limiter.failed(key, address)
        raise ApiError(401, "unauthorized", "wrong e-mail or password")
    limiter.succeeded(key, address)
    return user


# --------------------------------------------------------------------------------------------- sessions


@dataclass(frozen=True)
class NewSession:
    token: str  # for the cookie; the database keeps only its hash
    expires_at: datetime


def start_session(
    session: Session, user: User, *, lifetime: timedelta = SESSION_LIFETIME, now: datetime | None = None
) -> NewSession:
    token = secrets.token_urlsafe(32)
    expires_at = (now or utcnow()) + lifetime
    session.add(UserSession(token_hash=sha256(token), user_id=user.id, expires_at=expires_at))
    session.flush()
    return NewSession(token=token, expires_at=expires_at)


def session_user(session: Session, token: str, *, now: datetime | None = None) -> User | None:
    """The user a session token signs in, or None when it is unknown, ended, expired or its user
    disabled."""
    found = session.get(UserSession, sha256(token))
    if found is None or found.expires_at <= (now or utcnow()):
        return None
    user = session.get(User, found.user_id)
    return user if user is not None and user.disabled_at is None else None


def end_session(session: Session, token: str) -> None:
    """Sign out: the token opens nothing any more."""
    session.execute(delete(UserSession).where(UserSession.token_hash == sha256(token)))


def end_sessions(session: Session, user_id: int) -> None:
    """Sign the user out everywhere (removed, disabled, or given another role)."""
    session.execute(delete(UserSession).where(UserSession.user_id == user_id))


# --------------------------------------------------------------------------------------------- API keys


@dataclass(frozen=True)
class NewApiKey:
    key: ApiKey
    secret: str  # shown once


def create_api_key(session: Session, account_id: str, *, name: str, role: str) -> NewApiKey:
    chosen = parse_role(role)
    if not name.strip():
        raise Invalid("the key needs a name", code="invalid_name")
    if session.get(Account, account_id) is None:
        raise NotFound("account")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)  # 256 random bits
    key = ApiKey(
        account_id=account_id,
        name=name.strip(),
        role=chosen.value,
        prefix=secret[:HINT_LENGTH],
        secret_hash=sha256(secret),
    )
    session.add(key)
    session.flush()
    return NewApiKey(key=key, secret=secret)


def list_api_keys(session: Session, account_id: str) -> list[ApiKey]:
    """Every key of the account, revoked ones too (with their time), newest first."""
    query = select(ApiKey).where(ApiKey.account_id == account_id).order_by(ApiKey.id.desc())
    return list(session.scalars(query))


def revoke_api_key(session: Session, account_id: str, key_id: int) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None or key.account_id != account_id:
        raise NotFound("API key")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return key


def key_for(session: Session, secret: str) -> ApiKey | None:
    """The live key with this secret, or None (unknown, malformed or revoked). Looked up by its hash:
    the lookup's timing tells nothing about the secret."""
    if not secret.startswith(KEY_PREFIX) or len(secret) > 200:
        return None
    key = session.scalar(select(ApiKey).where(ApiKey.secret_hash == sha256(secret)))
    return key if key is not None and key.revoked_at is None else None


def needs_marking(key: ApiKey, now: datetime) -> bool:
    return key.last_used_at is None or now - key.last_used_at >= LAST_USED_STEP


def mark_used(session: Session, key_id: int, now: datetime) -> None:
    session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now))
