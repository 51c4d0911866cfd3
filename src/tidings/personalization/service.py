"""Personalization: each template variable is a Liquid source over ``Profile.*`` (and ``Event.*``).

A value that is missing and has no ``default`` makes the recipient skipped with the reason named,
never a message with a hole in it. Rendered values are made to obey WhatsApp's parameter rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TextIO

from liquid import BoundTemplate, Environment, FalsyStrictUndefined, ast
from liquid.exceptions import LiquidError, UndefinedError
from liquid.tag import Tag
from liquid.token import TOKEN_TAG

if TYPE_CHECKING:
    from liquid.context import RenderContext
    from liquid.stream import TokenStream


class Aborted(LiquidError):
    """``{% abort %}`` ran: this recipient is skipped (CleverTap's ``LiquidLogicAborted``)."""


class _AbortNode(ast.Node):
    def __str__(self) -> str:
        return "{% abort %}"

    def render_to_output(self, context: RenderContext, buffer: TextIO) -> int:
        raise Aborted("{% abort %}", token=self.token)


class AbortTag(Tag):
    """``{% abort %}``: skip this recipient.

    For example ``{% if Profile.Tier == "free" %}{% abort %}{% endif %}``."""

    name = "abort"
    block = False

    def parse(self, stream: TokenStream) -> ast.Node:
        stream.expect(TOKEN_TAG, value="abort")
        return _AbortNode(stream.current)


class _Missing(FalsyStrictUndefined):
    """A missing property: printing it is an error (the recipient is skipped), but the ``default`` filter
    replaces it, and in a condition it is simply false (``{% if Profile.Vip %}``)."""

    force_liquid_default = True


ENV = Environment(undefined=_Missing)
ENV.add_tag(AbortTag)

MAX_PARAM_LENGTH = 1024  # WhatsApp refuses a body over 1,024 characters; one value cannot be longer
_OUTPUT = re.compile(r"\{\{-?(.*?)-?\}\}", re.S)
_PROFILE_REF = re.compile(r"""Profile\s*(?:\.\s*([A-Za-z_][\w-]*)|\[\s*(["'])(.*?)\2\s*\])""")
_SPACES = re.compile(r" {5,}")
_BREAKS = re.compile(r"[\r\n\t]+")


class PersonalizationError(Exception):
    """This recipient cannot be personalized; ``reason`` is the stable code counted under Errors."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@lru_cache(maxsize=1024)
def compile_source(source: str) -> BoundTemplate:
    """Parse one variable's Liquid source (cached: campaigns reuse the same few sources)."""
    return ENV.from_string(source)


def check_sources(sources: list[str]) -> list[str]:
    """Syntax errors in the given sources, as messages naming the variable ({{n}}); empty when all parse."""
    problems = []
    for index, source in enumerate(sources, start=1):
        try:
            compile_source(source)
        except LiquidError as exc:
            problems.append(f"variable {{{{{index}}}}}: {str(exc).splitlines()[0]}")
    return problems


def required_profile_properties(source: str) -> set[str]:
    """Profile properties printed by ``{{ … }}`` without a ``default`` filter: a profile lacking one is
    skipped when the audience is planned (the render at send time catches every other case)."""
    required = set()
    for expr in _OUTPUT.findall(source):
        if re.search(r"\|\s*default\b", expr):
            continue
        for match in _PROFILE_REF.finditer(expr):
            required.add(match.group(1) or match.group(3))
    return required


def clean_param(value: str) -> str:
    """WhatsApp refuses parameters with newlines or tabs, or more than four consecutive spaces:
    line breaks and tabs become one space, and longer runs of spaces shrink to one."""
    return _SPACES.sub(" ", _BREAKS.sub(" ", value)).strip()


@dataclass(frozen=True)
class Renderer:
    """The compiled variables of one campaign (or variant)."""

    sources: tuple[str, ...]

    def render(self, profile: dict[str, Any], event: dict[str, Any] | None = None) -> list[str]:
        context = {"Profile": profile, "Event": event or {}}
        values = []
        for index, source in enumerate(self.sources, start=1):
            try:
                raw = compile_source(source).render(**context)
            except Aborted as exc:
                raise PersonalizationError("liquid_aborted", f"{{{{{index}}}}}: {{% abort %}} ran") from exc
            except UndefinedError as exc:
                detail = str(exc).splitlines()[0]
                raise PersonalizationError(
                    "missing_personalization", f"{{{{{index}}}}}: {detail} and has no default"
                ) from exc
            except LiquidError as exc:
                raise PersonalizationError(
                    "personalization_error", f"{{{{{index}}}}}: {str(exc).splitlines()[0]}"
                ) from exc
            value = clean_param(raw)
            if not value:
                raise PersonalizationError(
                    "missing_personalization", f"{{{{{index}}}}} is empty for this profile and has no default"
                )
            if len(value) > MAX_PARAM_LENGTH:
                raise PersonalizationError(
                    "value_too_long",
                    f"{{{{{index}}}}} is {len(value)} characters (at most {MAX_PARAM_LENGTH})",
                )
            values.append(value)
        return values
