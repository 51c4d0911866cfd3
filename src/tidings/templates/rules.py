"""WhatsApp's rules for a template, as pure functions: no database, no I/O.

Every function raises ``ValueError`` with a message written for the person who typed the value; the
service turns it into a 422 answer with a stable code.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal, get_args

NAME_FORM = "<template_namespace>:<template_name>"
NAME_EXAMPLE = "tickets:booking_confirmation"
NAME_MAX = 512  # templates.name is VARCHAR(512); Meta's own limit is 512 too
LANGUAGE_MAX = 16  # templates.language is VARCHAR(16)
BODY_MAX = 1024  # Meta: a template body has at most 1,024 characters
PROVIDER_ID_MAX = 64  # templates.provider_template_id is VARCHAR(64)

Category = Literal["MARKETING", "UTILITY", "AUTHENTICATION"]
Status = Literal[
    "APPROVED",
    "PENDING",
    "REJECTED",
    "PAUSED",
    "DISABLED",
    "ARCHIVED",
    "IN_APPEAL",
    "PENDING_DELETION",
    "DELETED",
    "LIMIT_EXCEEDED",
    "FLAGGED",
]
CATEGORIES: tuple[str, ...] = get_args(Category)
STATUSES: tuple[str, ...] = get_args(Status)

# ``{{`` … ``}}``, shortest match; what is inside decides whether it is a variable.
_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_NUMBER = re.compile(r"\s*([0-9]+)\s*")
# ISO 639 language, then optionally a region (US, BR), a script (Hant) or a UN M.49 area (419).
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(?:[_-](?:[A-Za-z]{2,4}|[0-9]{3}))?")
_MAX_DIGITS = 9  # no body of 1,024 characters can number its variables past this


def parse_template_name(name: str) -> tuple[str, str]:
    """Split ``<template_namespace>:<template_name>`` into its two parts, or say what is wrong."""

    def refuse(reason: str) -> ValueError:
        return ValueError(f"name must be {NAME_FORM}, e.g. {NAME_EXAMPLE} ({reason})")

    if not isinstance(name, str):
        raise refuse("it is not text")
    if len(name) > NAME_MAX:
        raise refuse(f"at most {NAME_MAX} characters, got {len(name)}")
    if any(c.isspace() for c in name):
        raise refuse("it must not contain whitespace")
    if not name.isprintable():
        raise refuse("it must not contain control characters")
    colons = name.count(":")
    if colons == 0:
        raise refuse("the colon between the two parts is missing")
    if colons > 1:
        raise refuse(f"it has {colons} colons; exactly one separates the two parts")
    namespace, template_name = name.split(":")
    if not namespace and not template_name:
        raise refuse("the namespace and the template name are empty")
    if not namespace:
        raise refuse("the namespace is empty")
    if not template_name:
        raise refuse("the template name is empty")
    return namespace, template_name


def _variable_number(token: str, inner: str) -> int:
    match = _NUMBER.fullmatch(inner)
    if match is None:
        raise ValueError(f"{token} is not a WhatsApp variable; use {{{{1}}}}, {{{{2}}}}, …")
    digits = match.group(1)
    if digits.strip("0") == "":
        raise ValueError(f"{token} is not a WhatsApp variable: numbering starts at {{{{1}}}}")
    if digits.startswith("0"):
        raise ValueError(f"{token} is not a WhatsApp variable: write {{{{{int(digits)}}}}}")
    if len(digits) > _MAX_DIGITS:
        raise ValueError(f"{token} is not a WhatsApp variable: the number is too large")
    return int(digits)


def _numbers(body: str) -> list[int]:
    """The number of each ``{{n}}`` in order of appearance; refuses anything else between braces."""
    numbers = [_variable_number(m.group(0), m.group(1)) for m in _PLACEHOLDER.finditer(body)]
    rest = _PLACEHOLDER.sub("", body)
    if "{{" in rest:
        raise ValueError("'{{' is not closed by '}}': write variables as {{1}}, {{2}}, …")
    if "}}" in rest:
        raise ValueError("'}}' is not opened by '{{': write variables as {{1}}, {{2}}, …")
    return numbers


def body_variables(body: str) -> int:
    """How many variables the body has: N when it uses exactly ``{{1}}`` … ``{{N}}`` (each at least once,
    in any order, repeats allowed, whitespace inside the braces allowed); 0 when it has none."""
    if not isinstance(body, str):
        raise ValueError("body must be text")
    used = set(_numbers(body))
    if not used:
        return 0
    highest = max(used)
    missing: list[int] = []
    for n in range(1, highest + 1):  # stops early: at most len(used) + 3 rounds
        if n not in used:
            missing.append(n)
            if len(missing) == 3:
                break
    if missing:
        names = ", ".join(f"{{{{{n}}}}}" for n in missing)
        if highest - len(used) > len(missing):
            names += ", …"
        verb = "is" if len(missing) == 1 else "are"
        raise ValueError(
            f"variables must be numbered {{{{1}}}} to {{{{{highest}}}}} without gaps: {names} {verb} missing"
        )
    return highest


def validate_body(body: str) -> int:
    """The whole rule for a body: not empty, at most 1,024 characters, variables ``{{1}}`` … ``{{N}}``.
    Returns N."""
    if not isinstance(body, str):
        raise ValueError("body must be text")
    if not body.strip():
        raise ValueError("body must not be empty")
    if len(body) > BODY_MAX:
        raise ValueError(f"body must be at most {BODY_MAX} characters, got {len(body)}")
    if "\x00" in body:
        raise ValueError("body must not contain NUL characters")
    return body_variables(body)


def validate_language(language: str) -> str:
    """A language code as WhatsApp writes it: ``en``, ``en_US``, ``pt_BR`` (``en-US`` is accepted too)."""
    if not isinstance(language, str) or len(language) > LANGUAGE_MAX or _LANGUAGE.fullmatch(language) is None:
        raise ValueError(f"language must be a language code like en, en_US or pt_BR, got {language!r}")
    return language


def validate_category(category: str) -> str:
    """MARKETING, UTILITY or AUTHENTICATION, in any case; returned in upper case."""
    value = category.upper() if isinstance(category, str) and category.isascii() else ""
    if value not in CATEGORIES:
        raise ValueError(f"category must be one of {', '.join(CATEGORIES)}, got {category!r}")
    return value


def validate_status(status: str) -> str:
    """One of WhatsApp's template statuses, in any case; returned in upper case."""
    value = status.upper() if isinstance(status, str) and status.isascii() else ""
    if value not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    return value


def validate_provider_template_id(provider_template_id: str | None) -> str | None:
    if provider_template_id is None:
        return None
    if (
        not isinstance(provider_template_id, str)
        or not provider_template_id
        or len(provider_template_id) > PROVIDER_ID_MAX
        or not provider_template_id.isprintable()
    ):
        raise ValueError(f"provider_template_id must be 1 to {PROVIDER_ID_MAX} printable characters")
    return provider_template_id


def body_parts(body: str) -> list[tuple[str, int | None]]:
    """The body cut into text and variables, in order: ``(text, None)`` for plain text and
    ``("{{n}}", n)`` for each variable (what a preview highlights). Anything between braces that is not a
    variable stays text; whether the body is valid is ``validate_body``'s to say."""
    parts: list[tuple[str, int | None]] = []
    at = 0
    for match in _PLACEHOLDER.finditer(body):
        try:
            number = _variable_number(match.group(0), match.group(1))
        except ValueError:
            continue
        if match.start() > at:
            parts.append((body[at : match.start()], None))
        parts.append((match.group(0), number))
        at = match.end()
    if at < len(body):
        parts.append((body[at:], None))
    return parts


def render_body(body: str, params: Sequence[str]) -> str:
    """Fill each ``{{n}}`` with ``params[n-1]``. There must be exactly one value per variable; the values
    are inserted as they are (a value that itself looks like ``{{1}}`` is not filled again)."""
    count = body_variables(body)
    if len(params) != count:
        raise ValueError(f"the template has {count} variables but {len(params)} values were given")
    if count == 0:
        return body

    def value(match: re.Match[str]) -> str:
        number = _NUMBER.fullmatch(match.group(1))
        assert number is not None  # body_variables accepted the body
        return params[int(number.group(1)) - 1]

    return _PLACEHOLDER.sub(value, body)
