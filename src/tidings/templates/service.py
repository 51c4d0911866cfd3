"""Templates: the only code that changes the ``templates`` table.

Every write validates the whole template with ``tidings.templates.rules`` and answers a refusal with an
``Invalid`` (422) whose code says which field is wrong. ``variable_count`` is always derived from the
body. Functions flush but never commit: the caller owns the unit of work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tidings.db import utcnow
from tidings.errors import Conflict, Invalid, NotFound
from tidings.templates import rules
from tidings.templates.models import Template

T = TypeVar("T")

_MAX_ID = 2**31 - 1  # templates.id is INTEGER; a larger id cannot exist (and PostgreSQL refuses it)
_FIELDS = ("name", "body", "category", "language", "status", "provider_template_id")


def _check(field: str, rule: Callable[[Any], T], value: Any) -> T:
    try:
        return rule(value)
    except ValueError as exc:
        raise Invalid(str(exc), code=f"invalid_{field}") from exc


def _validated(
    *, name: Any, body: Any, category: Any, language: Any, status: Any, provider_template_id: Any
) -> dict[str, Any]:
    """Every field checked, in the order a person reads the form; the columns to store."""
    _check("name", rules.parse_template_name, name)
    language = _check("language", rules.validate_language, language)
    category = _check("category", rules.validate_category, category)
    status = _check("status", rules.validate_status, status)
    variable_count = _check("body", rules.validate_body, body)
    provider_template_id = _check(
        "provider_template_id", rules.validate_provider_template_id, provider_template_id
    )
    return {
        "name": name,
        "language": language,
        "category": category,
        "status": status,
        "body": body,
        "variable_count": variable_count,
        "provider_template_id": provider_template_id,
    }


def _assign(template: Template, values: dict[str, Any]) -> None:
    """Set only what differs, so that an update that changes nothing does not touch ``updated_at``."""
    for field, value in values.items():
        if getattr(template, field) != value:
            setattr(template, field, value)


def _exists(name: str, language: str) -> Conflict:
    return Conflict(f"a template {name} in language {language} already exists", code="template_exists")


def _taken(session: Session, account_id: str, name: str, language: str, but: int | None = None) -> bool:
    query = select(Template.id).where(
        Template.account_id == account_id, Template.name == name, Template.language == language
    )
    if but is not None:
        query = query.where(Template.id != but)
    return session.scalar(query.limit(1)) is not None


def _write(session: Session, change: Callable[[], None]) -> None:
    """Make the change and flush it inside a savepoint: a refusal by the database (a lost race on
    (account, name, language), a campaign still using the template) then leaves the caller's
    transaction usable. ``IntegrityError`` is raised to the caller to be answered."""
    with session.begin_nested():  # flushes what was pending before, outside the savepoint
        change()
        session.flush()


def create_template(
    session: Session,
    account_id: str,
    *,
    name: str,
    body: str,
    category: str,
    language: str = "en",
    status: str = "APPROVED",
    provider_template_id: str | None = None,
) -> Template:
    """Add a template. Added by hand, it is registered as already approved at the provider."""
    values = _validated(
        name=name,
        body=body,
        category=category,
        language=language,
        status=status,
        provider_template_id=provider_template_id,
    )
    if _taken(session, account_id, values["name"], values["language"]):
        raise _exists(values["name"], values["language"])
    template = Template(account_id=account_id, **values)
    try:
        _write(session, lambda: session.add(template))
    except IntegrityError as exc:  # created by another transaction since the check
        raise _exists(values["name"], values["language"]) from exc
    return template


def get_template(session: Session, account_id: str, template_id: int) -> Template:
    """The account's template with this id; ``NotFound`` for another account's template too."""
    template = None
    if 1 <= template_id <= _MAX_ID:
        template = session.get(Template, template_id)
    if template is None or template.account_id != account_id:
        raise NotFound("template")
    return template


def template_by_ref(session: Session, account_id: str, ref: int | str) -> Template:
    """The account's template by its id or its full name ``<namespace>:<name>`` (a number in a string is an
    id). A name that the account has in several languages is refused (422 ``template_ambiguous``): which
    one was meant cannot be told, and its id can."""
    if isinstance(ref, int) or (ref.isascii() and ref.isdigit()):
        return get_template(session, account_id, int(ref) if len(str(ref)) < 20 else 0)
    try:
        rules.parse_template_name(ref)
    except ValueError:
        raise NotFound("template") from None
    found = list(
        session.scalars(
            select(Template)
            .where(Template.account_id == account_id, Template.name == ref)
            .order_by(Template.language)
            .limit(10)
        )
    )
    if not found:
        raise NotFound("template")
    if len(found) > 1:
        languages = ", ".join(t.language for t in found)
        raise Invalid(
            f"template {ref} exists in several languages ({languages}): refer to it by its id",
            code="template_ambiguous",
        )
    return found[0]


def find_template(
    session: Session, account_id: str, name: str, language: str | None = None
) -> Template | None:
    """The template by its full name and language; with no language, the oldest one of that name."""
    try:
        rules.parse_template_name(name)
    except ValueError:
        return None
    query = select(Template).where(Template.account_id == account_id, Template.name == name)
    if language is not None:
        query = query.where(Template.language == language)
    return session.scalars(query.order_by(Template.id).limit(1)).first()


def list_templates(
    session: Session, account_id: str, status: str | None = None, name: str | None = None
) -> list[Template]:
    """The account's templates by name and language, optionally only those with this status (any case)
    and this exact full name."""
    query = select(Template).where(Template.account_id == account_id)
    if status is not None:
        query = query.where(Template.status == _check("status", rules.validate_status, status))
    if name is not None:
        try:
            rules.parse_template_name(name)
        except ValueError:
            return []  # no template has a name of another form
        query = query.where(Template.name == name)
    return list(session.scalars(query.order_by(Template.name, Template.language, Template.id)))


def update_template(session: Session, account_id: str, ref: int | str, **changes: Any) -> Template:
    """Change some fields of the template ``ref`` (its id or name: :func:`template_by_ref`); it is
    validated again as a whole (a new body gives a new ``variable_count``). Only ``provider_template_id``
    may be set to None."""
    unknown = sorted(set(changes) - set(_FIELDS))
    if unknown:
        raise Invalid(f"cannot change {', '.join(unknown)}", code="invalid_field")
    for field, value in changes.items():
        if value is None and field != "provider_template_id":
            raise Invalid(f"{field} cannot be null", code=f"invalid_{field}")
    template = template_by_ref(session, account_id, ref)
    current = {field: getattr(template, field) for field in _FIELDS}
    values = _validated(**{**current, **changes})
    if (values["name"], values["language"]) != (template.name, template.language) and _taken(
        session, account_id, values["name"], values["language"], but=template.id
    ):
        raise _exists(values["name"], values["language"])
    try:
        _write(session, lambda: _assign(template, values))
    except IntegrityError as exc:
        raise _exists(values["name"], values["language"]) from exc
    return template


def delete_template(session: Session, account_id: str, ref: int | str) -> None:
    """Delete a template (by id or name); refused (409 ``template_in_use``) while a campaign uses it."""
    template = template_by_ref(session, account_id, ref)
    name, language = template.name, template.language
    try:
        _write(session, lambda: session.delete(template))
    except IntegrityError as exc:  # campaigns.template_id still points at it
        raise Conflict(
            f"template {name} ({language}) is used by a campaign and cannot be deleted",
            code="template_in_use",
        ) from exc


def upsert_synced(
    session: Session,
    account_id: str,
    *,
    name: str,
    language: str,
    category: str,
    status: str,
    body: str,
    provider_template_id: str | None,
) -> Template:
    """Create or update the template (name, language) as the provider reports it (template sync)."""
    values = _validated(
        name=name,
        body=body,
        category=category,
        language=language,
        status=status,
        provider_template_id=provider_template_id,
    )
    for _attempt in range(2):
        template = find_template(session, account_id, values["name"], values["language"])
        if template is not None:
            _assign(template, values)
            session.flush()
            return template
        template = Template(account_id=account_id, **values)
        try:
            _write(session, partial(session.add, template))
        except IntegrityError:
            continue  # another sync created it meanwhile: update that one
        return template
    raise _exists(values["name"], values["language"])  # pragma: no cover - created and gone again


def set_status(session: Session, account_id: str, *, name: str, language: str | None, status: str) -> int:
    """Set the status of a template (every language of that name when ``language`` is None), as a
    provider's status webhook reports it. Returns how many rows changed."""
    new_status = _check("status", rules.validate_status, status)
    try:
        rules.parse_template_name(name)
    except ValueError:
        return 0
    stmt = (
        update(Template)
        .where(Template.account_id == account_id, Template.name == name, Template.status != new_status)
        .values(status=new_status, updated_at=utcnow())
        .execution_options(synchronize_session="fetch")
    )
    if language is not None:
        stmt = stmt.where(Template.language == language)
    result = cast(CursorResult[Any], session.execute(stmt))
    return result.rowcount


def render_body(body: str, params: Sequence[str]) -> str:
    """The body with each ``{{n}}`` replaced by ``params[n-1]`` (``ValueError`` if the counts differ)."""
    return rules.render_body(body, params)


@dataclass(frozen=True)
class Preview:
    """A body as a preview shows it: its parts (``rules.body_parts``), how many variables it has, and
    what is wrong with it (None when the template rules accept it)."""

    parts: list[tuple[str, int | None]]
    variables: int
    error: str | None


def preview(body: str) -> Preview:
    """The preview of a body being typed: highlighted where it can be, with the rule it breaks."""
    try:
        variables, error = rules.validate_body(body), None
    except ValueError as exc:
        variables, error = 0, str(exc)
    return Preview(parts=rules.body_parts(body), variables=variables, error=error)
