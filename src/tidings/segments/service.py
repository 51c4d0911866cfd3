"""Segments: who a campaign is for, as one SQL condition on ``profiles`` (no per-profile loop), and the
saved, named segments that definitions refer to with ``{"segment_id": N}``.

What campaigns call:

- :func:`validate_target` — check a target; ``Invalid`` (422) names the faulty part;
- :func:`resolve_target` — the target with its saved segments inlined (422 ``segment_not_found`` /
  ``segment_cycle``);
- :func:`profile_condition` — the SQL condition for a resolved target, relative to ``now``;
- :func:`estimate` — how many of the account's profiles a target selects.

The definition language is in ``docs/segments.md``; parsing and SQL are in :mod:`tidings.segments.compiler`.
A saved segment is inlined each time a target is resolved, so a campaign sees the segment as it is when the
campaign starts. A segment that a campaign still to run, or another segment, refers to cannot be deleted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tidings.campaigns.models import Campaign
from tidings.db import is_postgres, utcnow
from tidings.errors import Conflict, Invalid, NotFound
from tidings.profiles.models import Profile
from tidings.segments.compiler import (
    MAX_ID,
    PROPERTY_OPS,
    compile_tree,
    parse,
)
from tidings.segments.models import Segment

__all__ = [
    "OPS",
    "create_segment",
    "delete_segment",
    "estimate",
    "get_segment",
    "list_segments",
    "profile_condition",
    "resolve_target",
    "segment_users",
    "update_segment",
    "validate_target",
]

OPS = set(PROPERTY_OPS)
MAX_NAME_CHARS = 200
MAX_CHAIN = 4  # segments referring to segments referring to … (see compiler.MAX_RESOLVED_DEPTH)
_OPEN_CAMPAIGN_STATES = ("draft", "scheduled", "running", "paused")  # campaigns not finished


# --------------------------------------------------------------------------------------------- targets


def validate_target(target: dict[str, Any]) -> None:
    """Raise ``Invalid`` (422, code ``invalid_segment``) pointing at the faulty part, e.g.
    ``target.and[1].did.count.at_least must be a positive integer``. ``{}`` and ``{"all": true}`` mean
    everyone. Saved segments are not looked up here (see :func:`resolve_target`)."""
    parse(target, "target", allow_empty=True)


def resolve_target(
    session: Session, account_id: str, target: dict[str, Any], *, lock: bool = False
) -> dict[str, Any]:
    """The target, validated, with every ``{"segment_id": N}`` replaced by that saved segment's definition
    (recursively). Unknown ids (or another account's) give 422 ``segment_not_found``, a segment that
    refers back to itself 422 ``segment_cycle``.

    ``lock``: share-lock the segments read (PostgreSQL) until the transaction ends, so that a concurrent
    delete waits and then sees what this transaction wrote. Off by default: live triggers resolve targets
    in the ingest transaction, where a row lock per event would cost more than the rare race it closes."""
    return _resolve(session, account_id, target, "target", allow_empty=True, lock=lock)


def profile_condition(
    target: dict[str, Any], *, account_id: str, now: datetime | None = None
) -> ColumnElement[bool]:
    """The SQL condition on ``profiles`` for a resolved target: the account's profiles it selects.

    ``now`` (aware) anchors relative windows ("in the last 30 days"); it is required when the target has
    one (``ValueError`` otherwise): the clock is never read here."""
    return compile_tree(parse(target, "target", resolved=True, allow_empty=True), now, account_id)


def estimate(
    session: Session, account_id: str, target: dict[str, Any], now: datetime, *, root: str = "target"
) -> int:
    """How many of the account's profiles the target selects (opted in or not), in one query. ``root``
    names the definition in error messages."""
    condition = _selected(session, account_id, target, now, root)
    if is_postgres(session):
        # A count over a million profiles is costed high enough to trigger JIT compilation, which takes
        # longer (~0.3 s) than the count itself; this transaction only counts.
        session.execute(text("SET LOCAL jit = off"))
    query = select(func.count()).select_from(Profile).where(condition)
    return int(session.scalar(query) or 0)


def sample_profile(
    session: Session, account_id: str, target: dict[str, Any], now: datetime
) -> Profile | None:
    """One profile the target selects, opted in to WhatsApp when one is (a real user to preview a message
    for): the first such profile by id (the scan stops at the first match)."""
    query = select(Profile).where(_selected(session, account_id, target, now)).order_by(Profile.id).limit(1)
    return session.scalars(query.where(Profile.whatsapp_opt_in)).first() or session.scalars(query).first()


def _selected(
    session: Session, account_id: str, target: dict[str, Any], now: datetime, root: str = "target"
) -> ColumnElement[bool]:
    """The condition for the account's profiles that a target (saved segments not yet inlined) selects."""
    resolved = _resolve(session, account_id, target, root, allow_empty=True)
    return compile_tree(parse(resolved, root, resolved=True, allow_empty=True), now, account_id)


def _resolve(
    session: Session,
    account_id: str,
    definition: Any,
    root: str,
    *,
    allow_empty: bool = False,
    overrides: dict[int, Any] | None = None,
    chain: tuple[int, ...] = (),
    lock: bool = False,
) -> dict[str, Any]:
    """Validate, then inline saved segments. ``overrides``: new definitions of segments being changed (in
    place of the stored ones); ``chain``: the saved segment this definition belongs to, if any (so that a
    segment cannot come to refer to itself)."""
    parse(definition, root, allow_empty=allow_empty)
    loaded: dict[int, Any] = dict(overrides or {})

    def load(segment_id: int, path: str) -> Any:
        if segment_id not in loaded:
            query = select(Segment.definition).where(
                Segment.id == segment_id, Segment.account_id == account_id
            )
            if lock:
                query = query.with_for_update(read=True)
            found = session.execute(query).scalar_one_or_none()
            if found is None:
                raise Invalid(
                    f"{path}.segment_id: segment {segment_id} does not exist in this account",
                    code="segment_not_found",
                )
            loaded[segment_id] = found
        return loaded[segment_id]

    def inline(value: Any, path: str, chain: tuple[int, ...]) -> Any:
        if not isinstance(value, dict):
            return value
        if "segment_id" in value:
            segment_id = value["segment_id"]
            if segment_id in chain:
                cycle = " → ".join(str(i) for i in (*chain[chain.index(segment_id) :], segment_id))
                raise Invalid(
                    f"{path}.segment_id: segment {segment_id} refers back to itself ({cycle})",
                    code="segment_cycle",
                )
            if len(chain) >= MAX_CHAIN:
                raise Invalid(
                    f"{path}.segment_id: more than {MAX_CHAIN} saved segments refer to each other in a row",
                    code="invalid_segment",
                )
            return inline(load(segment_id, path), f"{path}.segment_id({segment_id})", (*chain, segment_id))
        if "and" in value or "or" in value:
            kind = "and" if "and" in value else "or"
            return {kind: [inline(item, f"{path}.{kind}[{i}]", chain) for i, item in enumerate(value[kind])]}
        if "not" in value:
            return {"not": inline(value["not"], f"{path}.not", chain)}
        return value  # property tests and past behaviour hold no references

    resolved: dict[str, Any] = inline(definition, root, chain)
    parse(resolved, root, resolved=True, allow_empty=allow_empty)  # the limits of the inlined whole
    return resolved


def _referenced_ids(value: Any) -> set[int]:
    """Every ``segment_id`` in a stored definition or target (a plain walk: robust to any stored shape)."""
    found: set[int] = set()
    if isinstance(value, dict):
        segment_id = value.get("segment_id")
        if isinstance(segment_id, int) and not isinstance(segment_id, bool):
            found.add(segment_id)
        for item in value.values():
            found |= _referenced_ids(item)
    elif isinstance(value, list):
        for item in value:
            found |= _referenced_ids(item)
    return found


# --------------------------------------------------------------------------------------------- saved segments


def _name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > MAX_NAME_CHARS:
        raise Invalid(f"name must be 1 to {MAX_NAME_CHARS} characters", code="invalid_name")
    if "\x00" in name:
        raise Invalid("name must not contain the NUL character", code="invalid_name")
    return name.strip()


def _exists(name: str) -> Conflict:
    return Conflict(f"a segment named {name!r} exists already", code="segment_exists")


def _taken(session: Session, account_id: str, name: str, other_than: int | None = None) -> bool:
    query = select(Segment.id).where(Segment.account_id == account_id, Segment.name == name)
    if other_than is not None:
        query = query.where(Segment.id != other_than)
    return session.scalar(query) is not None


def _write(session: Session, change: Callable[[], None]) -> None:
    """Flush the change in a savepoint, so that a lost race on the name leaves the transaction usable."""
    with session.begin_nested():
        change()
        session.flush()


def _lock_account_segments(session: Session, account_id: str) -> None:
    """Changes and deletions of an account's segments go one at a time (PostgreSQL row locks, in id order),
    so that two concurrent changes cannot build a cycle that neither sees."""
    session.execute(
        select(Segment.id).where(Segment.account_id == account_id).order_by(Segment.id).with_for_update()
    ).all()


def create_segment(session: Session, account_id: str, *, name: str, definition: Any) -> Segment:
    """Save a named definition (validated, and its references to other saved segments checked)."""
    name = _name(name)
    # (0: the new segment, which counts in a chain of segments referring to each other)
    _resolve(session, account_id, definition, "definition", chain=(0,), lock=True)
    if _taken(session, account_id, name):
        raise _exists(name)
    now = utcnow()
    segment = Segment(account_id=account_id, name=name, definition=definition, created_at=now, updated_at=now)
    try:
        _write(session, lambda: session.add(segment))
    except IntegrityError as exc:  # the same name, saved by another transaction since the check
        raise _exists(name) from exc
    return segment


def list_segments(session: Session, account_id: str) -> list[Segment]:
    """The account's segments by name."""
    return list(
        session.scalars(
            select(Segment).where(Segment.account_id == account_id).order_by(Segment.name, Segment.id)
        )
    )


def get_segment(session: Session, account_id: str, segment_id: int) -> Segment:
    """The account's segment; ``NotFound`` for another account's too."""
    segment = session.get(Segment, segment_id) if 1 <= segment_id <= MAX_ID else None
    if segment is None or segment.account_id != account_id:
        raise NotFound("segment")
    return segment


def update_segment(
    session: Session, account_id: str, segment_id: int, *, name: Any = None, definition: Any = None
) -> Segment:
    """Rename and/or redefine a segment. Campaigns that refer to it see the new definition when they
    start; a definition that would make segments refer to each other in a cycle is refused."""
    _lock_account_segments(session, account_id)
    segment = get_segment(session, account_id, segment_id)
    new_name = _name(name) if name is not None else segment.name
    if definition is not None:
        changed = {segment.id: definition}
        _resolve(
            session, account_id, definition, "definition", overrides=changed, chain=(segment.id,), lock=True
        )
        _check_dependents(session, account_id, segment, changed)
    if new_name != segment.name and _taken(session, account_id, new_name, other_than=segment.id):
        raise _exists(new_name)

    def change() -> None:
        segment.name = new_name
        if definition is not None:
            segment.definition = definition
        segment.updated_at = utcnow()

    try:
        _write(session, change)
    except IntegrityError as exc:
        raise _exists(new_name) from exc
    return segment


def _open_campaigns(session: Session, account_id: str) -> list[Campaign]:
    """The account's campaigns that are not finished (their targets are still to be resolved), newest
    first. Read from the campaigns table directly: the campaigns service calls this module."""
    return list(
        session.scalars(
            select(Campaign)
            .where(Campaign.account_id == account_id, Campaign.state.in_(_OPEN_CAMPAIGN_STATES))
            .order_by(Campaign.id.desc())
        )
    )


def _check_dependents(session: Session, account_id: str, segment: Segment, changed: dict[int, Any]) -> None:
    """The saved segments, and the campaigns still to run, that refer to ``segment`` must stay valid with
    its new definition (limits of the inlined whole), so that a campaign accepted at creation never fails
    to resolve when it starts."""
    for other in list_segments(session, account_id):
        if other.id == segment.id or not _referenced_ids(other.definition):
            continue
        try:
            _resolve(
                session, account_id, other.definition, "definition", overrides=changed, chain=(other.id,)
            )
        except Invalid as exc:
            raise Invalid(
                f"segment {other.name!r} refers to this segment and would become invalid: {exc.message}",
                code=exc.code,
            ) from exc
    for campaign in _open_campaigns(session, account_id):
        if not _referenced_ids(campaign.target):
            continue
        try:
            _resolve(session, account_id, campaign.target, "target", allow_empty=True, overrides=changed)
        except Invalid as exc:
            raise Invalid(
                f"campaign {campaign.name!r} targets this segment and would become invalid: {exc.message}",
                code=exc.code,
            ) from exc


class CampaignRef(NamedTuple):
    id: int
    name: str
    state: str


@dataclass
class SegmentUsers:
    """What refers to a saved segment: campaigns (any state, newest first) and other saved segments."""

    campaigns: list[CampaignRef] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)


def segment_users(session: Session, account_id: str) -> dict[int, SegmentUsers]:
    """For each of the account's segments that something refers to directly: the campaigns whose target,
    and the segments whose definition, name it. Two queries, whatever the number of segments."""
    found: dict[int, SegmentUsers] = {}
    campaigns = session.execute(
        select(Campaign.id, Campaign.name, Campaign.state, Campaign.target)
        .where(Campaign.account_id == account_id)
        .order_by(Campaign.id.desc())
    )
    for campaign_id, name, state, target in campaigns:
        for segment_id in _referenced_ids(target):
            found.setdefault(segment_id, SegmentUsers()).campaigns.append(
                CampaignRef(campaign_id, name, state)
            )
    for segment in list_segments(session, account_id):
        for segment_id in _referenced_ids(segment.definition):
            found.setdefault(segment_id, SegmentUsers()).segments.append(segment)
    return found


def delete_segment(session: Session, account_id: str, segment_id: int) -> None:
    """Delete a segment; refused (409 ``segment_in_use``, naming them all) while another segment, or a
    campaign that is not finished (draft, scheduled, running or paused), refers to it."""
    _lock_account_segments(session, account_id)
    segment = get_segment(session, account_id, segment_id)
    for other in list_segments(session, account_id):
        if other.id != segment.id and segment.id in _referenced_ids(other.definition):
            raise Conflict(
                f"segment {segment.name!r} is used by segment {other.name!r} and cannot be deleted",
                code="segment_in_use",
            )
    users = [c for c in _open_campaigns(session, account_id) if segment.id in _referenced_ids(c.target)]
    if users:
        named = ", ".join(f"campaign {c.name!r} ({c.state})" for c in users[:20])
        more = f" and {len(users) - 20} more" if len(users) > 20 else ""
        refused = Conflict(
            f"segment {segment.name!r} is used by {named}{more} and cannot be deleted", code="segment_in_use"
        )
        refused.details = {"campaigns": [{"id": c.id, "name": c.name, "state": c.state} for c in users]}
        raise refused
    session.delete(segment)
    session.flush()
