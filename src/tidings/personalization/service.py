"""Personalization: each template variable is a Liquid source over ``Profile.*`` (and ``Event.*``).

A value that is missing and has no ``default`` makes the recipient skipped with the reason named,
never a message with a hole in it. Rendered values are made to obey WhatsApp's parameter rules.

Rendering is bounded, because every account's variables are rendered by the same claimer: a source is at
most 4,096 characters; loops run at most 1,000 iterations in all (nested loops multiply), a range at most
1,000 numbers, the output at most 4 KiB, the local variables at most 16 KiB, and one variable renders in
at most 0.1 s of CPU time (checked as it reads values and writes output) — a source that runs out of
time three times in a row is not rendered again by the process, so that one campaign cannot hold the
claimer every account shares. A recipient whose value breaks a limit is skipped with reason ``liquid_limit``
(``liquid_timeout`` for the time). ``include`` and ``render`` (other
templates) are refused when the campaign is created, and so is a range written larger than the limit.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TextIO

from liquid import BoundTemplate, Environment, FalsyStrictUndefined, ast
from liquid.builtin.expressions.primitive import IntegerLiteral, RangeLiteral
from liquid.context import RenderContext as _RenderContext
from liquid.exceptions import LiquidError, LiquidSyntaxError, ResourceLimitError, UndefinedError
from liquid.expression import Expression
from liquid.output import LimitedStringIO
from liquid.tag import Tag
from liquid.token import TOKEN_TAG
from liquid.undefined import UNDEFINED

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


MAX_SOURCE_CHARS = 4096
MAX_ITERATIONS = 1000  # loop iterations in all, and the numbers in one range
MAX_OUTPUT_BYTES = 4096  # raw output of one variable (a value sent is at most 1,024 characters)
MAX_LOCALS_BYTES = 16_384  # assigned and captured values (sys.getsizeof)
# One variable's budget in CPU time of the rendering thread (``time.thread_time``), not wall-clock time: a
# busy machine, or other threads holding the GIL, slow a render down without it doing more work, and a
# wall-clock budget then skipped ordinary recipients (and, after three strikes, whole campaigns).
RENDER_SECONDS = 0.1
# A source that ran out of time this many times in a row is not rendered again by this process (its
# recipients are skipped at once): one campaign cannot hold the claimer, which every account shares, for
# more than a few budgets.
SLOW_STRIKES = 3
_SLOW: dict[str, int] = {}


class RenderTimeout(ResourceLimitError):
    """A variable took longer than ``RENDER_SECONDS`` to render."""


class _Refused(Tag):
    """``include`` and ``render`` load other templates: there are none to load, and a template that
    includes itself is unbounded work. Refused when the source is parsed (at campaign creation)."""

    block = False

    def parse(self, stream: TokenStream) -> ast.Node:
        raise LiquidSyntaxError(
            f"the {self.name!r} tag is not allowed: a variable cannot load other templates",
            token=stream.current,
        )


class _Include(_Refused):
    name = "include"


class _Render(_Refused):
    name = "render"


class _TimedOutput(LimitedStringIO):
    """The output stream, bounded in size (python-liquid) and in time (here)."""

    def __init__(self, limit: int, deadline: float) -> None:
        super().__init__(limit=limit)
        self.deadline = deadline

    def write(self, __s: str) -> int:
        if time.thread_time() > self.deadline:
            raise RenderTimeout(f"rendering took longer than {RENDER_SECONDS:g} s", token=None)
        return super().write(__s)


class _TimedContext(_RenderContext):
    """A render context that gives up when the render's time is spent (looked at on every value read)."""

    deadline = float("inf")

    def get(self, path: list[object], *, token: Any, default: object = UNDEFINED) -> object:
        if time.thread_time() > self.deadline:
            raise RenderTimeout(f"rendering took longer than {RENDER_SECONDS:g} s", token=token)
        return super().get(path, token=token, default=default)


class _BoundedTemplate(BoundTemplate):
    context_class = _TimedContext

    def render(self, *args: Any, **kwargs: Any) -> str:
        deadline = time.thread_time() + RENDER_SECONDS
        context = _TimedContext(self, globals=self.make_globals(dict(*args, **kwargs)))
        context.deadline = deadline
        buffer = _TimedOutput(MAX_OUTPUT_BYTES, deadline)
        self.render_with_context(context, buffer)
        return buffer.getvalue()


class _BoundedRange(RangeLiteral):
    """A range of at most ``MAX_ITERATIONS`` numbers (``(1..n)`` with a huge ``n`` would otherwise build,
    join or sort millions of items in one filter, outside any loop limit)."""

    __slots__ = ()

    def _make_range(self, start: Any, stop: Any) -> range:
        numbers = super()._make_range(start, stop)
        if len(numbers) > MAX_ITERATIONS:
            raise ResourceLimitError(
                f"a range of {len(numbers)} numbers (at most {MAX_ITERATIONS})", token=self.token
            )
        return numbers


class _Bounded(Environment):
    loop_iteration_limit = MAX_ITERATIONS
    output_stream_limit = MAX_OUTPUT_BYTES
    local_namespace_limit = MAX_LOCALS_BYTES
    context_depth_limit = 10
    template_class = _BoundedTemplate


ENV = _Bounded(undefined=_Missing)
ENV.add_tag(AbortTag)
ENV.add_tag(_Include)
ENV.add_tag(_Render)


def _expressions(template: BoundTemplate) -> Iterator[Expression]:
    """Every expression of a parsed template (tags, outputs, filter arguments, nested blocks)."""
    context = _RenderContext(template)

    def walk_expression(expression: Expression) -> Iterator[Expression]:
        yield expression
        for child in expression.children():
            yield from walk_expression(child)

    def walk(node: ast.Node) -> Iterator[Expression]:
        for expression in node.expressions():
            yield from walk_expression(expression)
        for child in node.children(context, include_partials=False):
            yield from walk(child)

    for node in template.nodes:
        yield from walk(node)

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
    """Parse one variable's Liquid source (cached: campaigns reuse the same few sources). Ranges are made
    bounded; a range written larger than the limit, or a source over ``MAX_SOURCE_CHARS``, is refused."""
    if len(source) > MAX_SOURCE_CHARS:
        raise LiquidSyntaxError(
            f"the source is {len(source)} characters long (at most {MAX_SOURCE_CHARS})", token=None
        )
    template = ENV.from_string(source)
    for expression in _expressions(template):
        if type(expression) is RangeLiteral:
            if isinstance(expression.start, IntegerLiteral) and isinstance(expression.stop, IntegerLiteral):
                span = expression.stop.value - expression.start.value + 1
                if span > MAX_ITERATIONS:
                    raise LiquidSyntaxError(
                        f"a range of {span} numbers; at most {MAX_ITERATIONS} are allowed",
                        token=expression.token,
                    )
            expression.__class__ = _BoundedRange  # the same slots: bounded when it is evaluated
    return template


def check_sources(sources: list[str]) -> list[str]:
    """Syntax errors and refused tags or ranges in the given sources, as messages naming the variable
    ({{n}}); empty when all parse."""
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
            if _SLOW.get(source, 0) >= SLOW_STRIKES:
                raise PersonalizationError(
                    "liquid_timeout",
                    f"{{{{{index}}}}}: rendering took longer than {RENDER_SECONDS:g} s {SLOW_STRIKES} "
                    "times in a row; this source is no longer rendered",
                )
            try:
                raw = compile_source(source).render(**context)
            except Aborted as exc:
                raise PersonalizationError("liquid_aborted", f"{{{{{index}}}}}: {{% abort %}} ran") from exc
            except RenderTimeout as exc:
                if len(_SLOW) >= 1024:
                    _SLOW.clear()
                _SLOW[source] = _SLOW.get(source, 0) + 1
                raise PersonalizationError(
                    "liquid_timeout", f"{{{{{index}}}}}: {str(exc).splitlines()[0]}"
                ) from exc
            except ResourceLimitError as exc:
                raise PersonalizationError(
                    "liquid_limit", f"{{{{{index}}}}}: {str(exc).splitlines()[0]}"
                ) from exc
            except UndefinedError as exc:
                detail = str(exc).splitlines()[0]
                raise PersonalizationError(
                    "missing_personalization", f"{{{{{index}}}}}: {detail} and has no default"
                ) from exc
            except LiquidError as exc:
                raise PersonalizationError(
                    "personalization_error", f"{{{{{index}}}}}: {str(exc).splitlines()[0]}"
                ) from exc
            _SLOW.pop(source, None)
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
