"""Targets: which profiles a campaign is for, compiled to one SQL condition (no per-profile loop).

A target is ``{"all": true}`` or ``{"conditions": [{"property", "op", "value"}, …]}`` (all must hold).
Operators: equals, not_equals, in, contains, exists, not_exists, gt, gte, lt, lte.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, false, or_, true

from tidings.errors import Invalid
from tidings.profiles.models import Profile

OPS = {"equals", "not_equals", "in", "contains", "exists", "not_exists", "gt", "gte", "lt", "lte"}


def validate_target(target: dict[str, Any]) -> None:
    """Raise ``Invalid`` pointing at the faulty part."""
    if not target or target.get("all") is True:
        if set(target) - {"all"}:
            raise Invalid('target: use either {"all": true} or {"conditions": [...]}')
        return
    conditions = target.get("conditions")
    if not isinstance(conditions, list) or not conditions or set(target) != {"conditions"}:
        raise Invalid('target must be {"all": true} or {"conditions": [{"property", "op", "value"}, ...]}')
    for i, cond in enumerate(conditions):
        where = f"target.conditions[{i}]"
        if not isinstance(cond, dict):
            raise Invalid(f"{where} must be an object")
        prop, op = cond.get("property"), cond.get("op")
        if not isinstance(prop, str) or not prop:
            raise Invalid(f"{where}.property must be a non-empty string")
        if op not in OPS:
            raise Invalid(f"{where}.op must be one of {', '.join(sorted(OPS))}")
        value = cond.get("value")
        if op in {"exists", "not_exists"}:
            continue
        if op == "in" and not (isinstance(value, list) and value):
            raise Invalid(f"{where}.value must be a non-empty list for 'in'")
        if op in {"gt", "gte", "lt", "lte"} and not isinstance(value, int | float | str):
            raise Invalid(f"{where}.value must be a number or a date string for '{op}'")
        if op in {"equals", "not_equals", "contains"} and not isinstance(value, str | int | float | bool):
            raise Invalid(f"{where}.value must be a string, number or boolean for '{op}'")


def _equals(prop: str, value: Any) -> ColumnElement[bool]:
    element = Profile.properties[prop]
    if isinstance(value, bool):
        return element.as_boolean() == value
    if isinstance(value, int | float):
        return element.as_float() == float(value)
    return element.as_string() == value


def _condition(cond: dict[str, Any]) -> ColumnElement[bool]:
    prop, op, value = cond["property"], cond["op"], cond.get("value")
    element = Profile.properties[prop]
    if op == "exists":
        return element.as_string().is_not(None)
    if op == "not_exists":
        return element.as_string().is_(None)
    if op == "equals":
        return _equals(prop, value)
    if op == "not_equals":
        return or_(element.as_string().is_(None), ~_equals(prop, value))
    if op == "in":
        return or_(*(_equals(prop, v) for v in value)) if value else false()
    if op == "contains":
        return element.as_string().contains(str(value), autoescape=True)
    column = element.as_float() if isinstance(value, int | float) else element.as_string()
    compare = {"gt": column > value, "gte": column >= value, "lt": column < value, "lte": column <= value}
    return compare[op]


def profile_condition(target: dict[str, Any]) -> ColumnElement[bool]:
    """The SQL condition on ``profiles`` for a validated target."""
    if not target or target.get("all") is True:
        return true()
    return and_(*(_condition(c) for c in target["conditions"]))
