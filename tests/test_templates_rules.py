"""The template rules (pure functions), mostly as properties over many generated inputs."""

from __future__ import annotations

from typing import get_args

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tidings.templates import rules
from tidings.templates.rules import (
    body_variables,
    parse_template_name,
    render_body,
    validate_body,
    validate_category,
    validate_language,
    validate_status,
)
from tidings.templates.schemas import Category, Status

# The machine may be busy (other suites run beside this one): judge the rules, not the clock.
relaxed = settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)

NAME_FORM = "name must be <template_namespace>:<template_name>, e.g. tickets:booking_confirmation"

# Characters a name part may hold: letters, marks, digits, punctuation, symbols; never ':' or whitespace.
part_chars = st.characters(categories=("L", "M", "N", "P", "S"), exclude_characters=":")
parts = st.text(part_chars, min_size=1, max_size=40)
whitespace = st.sampled_from([" ", "\t", "\n", "\r", "\u00a0", "\u2003", "\u3000", "\u2028"])

# Text between variables: anything but braces (a lone brace is fine, but two in a row would be syntax).
plain = st.text(st.characters(exclude_characters="{}\x00"), max_size=12)
spaces = st.text(st.sampled_from(" \t\n"), max_size=2)


def var(n: int | str, left: str = "", right: str = "") -> str:
    return "{{" + left + str(n) + right + "}}"


@st.composite
def numbered_body(draw: st.DrawFn, n: int | None = None) -> tuple[str, list[str], list[int]]:
    """A body using every variable 1..N at least once, in random order with repeats, around random text.
    Returns the body, the text pieces and the variable numbers in order (pieces[i] precedes numbers[i])."""
    if n is None:
        n = draw(st.integers(min_value=0, max_value=12))
    numbers = list(range(1, n + 1)) + draw(st.lists(st.integers(1, n), max_size=6) if n else st.just([]))
    numbers = draw(st.permutations(numbers))
    pieces = [draw(plain) for _ in range(len(numbers) + 1)]
    body = pieces[0]
    for number, piece in zip(numbers, pieces[1:], strict=True):
        body += var(number, draw(spaces), draw(spaces)) + piece
    return body, pieces, numbers


# ---- names ---------------------------------------------------------------------------------------------


@relaxed
@given(parts, parts)
def test_every_valid_name_is_accepted_and_split_back(namespace: str, name: str) -> None:
    assert parse_template_name(f"{namespace}:{name}") == (namespace, name)


@pytest.mark.parametrize(
    "name",
    ["", ":", ":booking", "tickets:", "tickets", "tickets::booking", "a:b:c", " tickets:booking"],
)
def test_names_in_another_form_are_refused_with_the_expected_form(name: str) -> None:
    with pytest.raises(ValueError, match=r"^name must be <template_namespace>:<template_name>, e\.g\. "):
        parse_template_name(name)


@relaxed
@given(parts)
def test_a_name_without_one_of_its_parts_is_refused(part: str) -> None:
    for name in (part, f":{part}", f"{part}:", ":"):
        with pytest.raises(ValueError) as refused:
            parse_template_name(name)
        assert str(refused.value).startswith(NAME_FORM)


@relaxed
@given(st.lists(parts, min_size=3, max_size=5))
def test_a_name_with_more_than_one_colon_is_refused(pieces: list[str]) -> None:
    with pytest.raises(ValueError, match="colons"):
        parse_template_name(":".join(pieces))


@relaxed
@given(parts, parts, whitespace, st.data())
def test_a_name_with_whitespace_anywhere_is_refused(
    ns: str, name: str, space: str, data: st.DataObject
) -> None:
    valid = f"{ns}:{name}"
    at = data.draw(st.integers(0, len(valid)))
    with pytest.raises(ValueError, match="whitespace"):
        parse_template_name(valid[:at] + space + valid[at:])


def test_a_name_longer_than_the_column_or_with_control_characters_is_refused() -> None:
    assert parse_template_name("a:" + "b" * 510) == ("a", "b" * 510)
    with pytest.raises(ValueError, match="at most 512"):
        parse_template_name("a:" + "b" * 511)
    with pytest.raises(ValueError, match="control"):
        parse_template_name("a:b\x00")


# ---- body variables ------------------------------------------------------------------------------------


@relaxed
@given(numbered_body())
def test_a_body_using_1_to_n_in_any_order_with_repeats_has_n_variables(
    case: tuple[str, list[str], list[int]],
) -> None:
    body, _, numbers = case
    assert body_variables(body) == max(numbers, default=0)


def test_examples_of_bodies() -> None:
    assert body_variables("Hello") == 0
    assert body_variables("Hi {{1}}, {{ 2 }} and again {{1}}") == 2
    assert body_variables("{{2}}{{1}}") == 2
    assert body_variables("{1} is not a variable, { {1} } neither, {\n{1} }") == 0
    assert body_variables("{{\n 1\t}}") == 1


@relaxed
@given(st.integers(min_value=2, max_value=12), st.data())
def test_a_gap_in_the_numbering_is_refused_and_named(n: int, data: st.DataObject) -> None:
    gap = data.draw(st.integers(min_value=1, max_value=n - 1))  # removing n itself leaves 1..n-1: valid
    numbers = data.draw(st.permutations([k for k in range(1, n + 1) if k != gap]))
    body = "".join(data.draw(plain) + var(k) for k in numbers)
    with pytest.raises(ValueError) as refused:
        body_variables(body)
    message = str(refused.value)
    assert message.startswith(f"variables must be numbered {{{{1}}}} to {{{{{n}}}}} without gaps: ")
    assert f"{{{{{gap}}}}} is missing" in message


def test_the_gap_message_names_the_missing_numbers() -> None:
    with pytest.raises(
        ValueError, match=r"^variables must be numbered \{\{1\}\} to \{\{2\}\} without gaps: "
    ):
        body_variables("Hi {{2}}")
    with pytest.raises(ValueError, match=r"\{\{2\}\}, \{\{3\}\} are missing$"):
        body_variables("{{1}} {{4}}")
    with pytest.raises(ValueError, match=r"\{\{2\}\}, \{\{3\}\}, \{\{4\}\}, … are missing$"):
        body_variables("{{1}} {{9}}")


inner_text = st.text(st.characters(exclude_characters="{}\x00"), min_size=0, max_size=10)


@relaxed
@given(plain, inner_text, plain)
def test_anything_but_a_number_between_braces_is_refused(before: str, inner: str, after: str) -> None:
    assume(not inner.strip().isdigit() or not inner.strip().isascii())
    token = "{{" + inner + "}}"
    with pytest.raises(ValueError) as refused:
        body_variables(before + "{{1}}" + token + after)
    assert str(refused.value).startswith(token + " is not a WhatsApp variable")


@pytest.mark.parametrize("token", ["{{0}}", "{{ 0 }}", "{{00}}", "{{-1}}", "{{1.5}}", "{{name}}", "{{}}"])
def test_zero_negative_and_named_variables_are_refused(token: str) -> None:
    with pytest.raises(ValueError, match=r"is not a WhatsApp variable"):
        body_variables(f"Hello {token}")


def test_the_reasons_say_what_to_write() -> None:
    with pytest.raises(
        ValueError, match=r"^\{\{name\}\} is not a WhatsApp variable; use \{\{1\}\}, \{\{2\}\}"
    ):
        body_variables("Hi {{name}}")
    with pytest.raises(
        ValueError, match=r"^\{\{0\}\} is not a WhatsApp variable: numbering starts at \{\{1\}\}"
    ):
        body_variables("Hi {{0}}")
    with pytest.raises(ValueError, match=r"write \{\{1\}\}$"):
        body_variables("Hi {{01}}")
    with pytest.raises(ValueError, match="too large"):
        body_variables("{{1}} {{12345678901234567890}}")
    with pytest.raises(ValueError, match=r"is not a WhatsApp variable"):
        body_variables("Hi {{\u0661}}")  # an Arabic-Indic digit one is not the ASCII 1


@pytest.mark.parametrize("body", ["Hi {{1}", "Hi {{1", "{{", "Hi {1}} there", "}}"])
def test_unbalanced_braces_are_refused(body: str) -> None:
    with pytest.raises(ValueError, match=r"is not (closed|opened) by"):
        body_variables(body)


def test_validate_body_adds_emptiness_and_length() -> None:
    assert validate_body("Hi {{1}}") == 1
    for empty in ("", "   ", "\n\t"):
        with pytest.raises(ValueError, match="must not be empty"):
            validate_body(empty)
    assert validate_body("x" * 1024) == 0
    with pytest.raises(ValueError, match="at most 1024 characters, got 1025"):
        validate_body("x" * 1025)
    with pytest.raises(ValueError, match="NUL"):
        validate_body("a\x00b")


# ---- rendering -----------------------------------------------------------------------------------------


@relaxed
@given(numbered_body(), st.data())
def test_render_body_fills_each_variable_with_its_value(
    case: tuple[str, list[str], list[int]], data: st.DataObject
) -> None:
    body, pieces, numbers = case
    n = max(numbers, default=0)
    # Values may themselves look like variables: they are inserted as they are, never filled again.
    values = data.draw(
        st.lists(st.text(max_size=8) | st.sampled_from(["{{1}}", "{{2}}", "}}"]), min_size=n, max_size=n)
    )
    expected = pieces[0] + "".join(
        values[k - 1] + piece for k, piece in zip(numbers, pieces[1:], strict=True)
    )
    assert render_body(body, values) == expected


@relaxed
@given(numbered_body())
def test_render_body_with_markers_round_trips_to_the_same_numbering(
    case: tuple[str, list[str], list[int]],
) -> None:
    body, _, numbers = case
    n = max(numbers, default=0)
    # Filling {{k}} with the text "{{k}}" gives back a body with the same variables, spaces removed.
    rendered = render_body(body, [f"{{{{{k}}}}}" for k in range(1, n + 1)])
    assert body_variables(rendered) == n
    assert render_body(rendered, [f"<{k}>" for k in range(1, n + 1)]) == render_body(
        body, [f"<{k}>" for k in range(1, n + 1)]
    )


def test_render_body_needs_one_value_per_variable() -> None:
    assert render_body("Hi {{ 1 }}, {{2}}; bye {{1}}", ["Ann", "B-42"]) == "Hi Ann, B-42; bye Ann"
    assert render_body("No variables", []) == "No variables"
    with pytest.raises(ValueError, match="2 variables but 1 values"):
        render_body("{{1}} {{2}}", ["a"])
    with pytest.raises(ValueError, match="1 variables but 2 values"):
        render_body("{{1}}", ["a", "b"])
    with pytest.raises(ValueError, match="without gaps"):
        render_body("{{2}}", ["a", "b"])


# ---- language, category, status ------------------------------------------------------------------------


@pytest.mark.parametrize("language", ["en", "en_US", "pt_BR", "en-US", "fil", "zh_HK", "es_419", "zh_Hant"])
def test_language_codes_are_accepted_as_written(language: str) -> None:
    assert validate_language(language) == language


@pytest.mark.parametrize(
    "language",
    ["", "e", "english", "en US", "en_", "_US", "en_US_x", "en_U", "english-united-states", "e1", "en\n"],
)
def test_other_languages_are_refused(language: str) -> None:
    with pytest.raises(ValueError, match="language must be a language code like en, en_US or pt_BR"):
        validate_language(language)


@relaxed
@given(st.sampled_from(rules.CATEGORIES), st.data())
def test_category_is_case_insensitive_and_stored_upper_case(category: str, data: st.DataObject) -> None:
    mixed = "".join(c.lower() if data.draw(st.booleans()) else c for c in category)
    assert validate_category(mixed) == category


@pytest.mark.parametrize("category", ["", "PROMOTIONAL", " MARKETING", "ut\u0131l\u0131ty"])
def test_other_categories_are_refused(category: str) -> None:
    with pytest.raises(ValueError, match="category must be one of MARKETING, UTILITY, AUTHENTICATION"):
        validate_category(category)


@relaxed
@given(st.sampled_from(rules.STATUSES), st.data())
def test_status_is_case_insensitive_and_stored_upper_case(status: str, data: st.DataObject) -> None:
    mixed = "".join(c.lower() if data.draw(st.booleans()) else c for c in status)
    assert validate_status(mixed) == status


@pytest.mark.parametrize("status", ["", "ACTIVE", "approved ", "PENDING-DELETION"])
def test_other_statuses_are_refused(status: str) -> None:
    with pytest.raises(ValueError, match="status must be one of APPROVED, PENDING"):
        validate_status(status)


def test_the_schemas_document_the_same_values_as_the_rules() -> None:
    assert get_args(Category) == rules.CATEGORIES
    assert get_args(Status) == rules.STATUSES
