"""Personalization: Liquid values over Profile.* and Event.*, defaults, abort, and WhatsApp's parameter
rules (no newlines or tabs, at most four consecutive spaces, a length limit)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.personalization.service import (
    MAX_PARAM_LENGTH,
    PersonalizationError,
    Renderer,
    check_sources,
    clean_param,
    required_profile_properties,
)


@given(st.text())
def test_cleaned_values_obey_whatsapps_rules(value: str) -> None:
    cleaned = clean_param(value)
    assert "\n" not in cleaned and "\t" not in cleaned and "\r" not in cleaned
    assert "     " not in cleaned  # never five spaces in a row
    assert cleaned == cleaned.strip()
    assert clean_param(cleaned) == cleaned


@given(
    st.text(
        alphabet=st.characters(
            blacklist_characters="\r\n\t ", blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")
        ),
        min_size=1,
    )
)
def test_clean_text_is_left_alone(value: str) -> None:
    assert clean_param(value) == value


def test_profile_and_event_values_with_defaults() -> None:
    renderer = Renderer(
        ('{{ Profile.Name | default: "there" }}', "{{ Event.ticket_no }}", "Gate {{ Event.gate }}")
    )
    assert renderer.render({"Name": "Asha"}, {"ticket_no": "T-1", "gate": 4}) == ["Asha", "T-1", "Gate 4"]
    assert renderer.render({}, {"ticket_no": "T-2", "gate": 1})[0] == "there"


@pytest.mark.parametrize(
    ("profile", "reason"),
    [
        ({}, "missing_personalization"),  # no value and no default
        ({"Name": ""}, "missing_personalization"),  # an empty value would be refused by WhatsApp
        ({"Name": "   \n\t "}, "missing_personalization"),  # empty once cleaned
        ({"Name": "x" * (MAX_PARAM_LENGTH + 1)}, "value_too_long"),
        ({"Name": "Ann", "Tier": "free"}, "liquid_aborted"),
    ],
)
def test_recipients_that_cannot_be_personalized_are_skipped_with_the_reason(
    profile: dict[str, str], reason: str
) -> None:
    renderer = Renderer(('{% if Profile.Tier == "free" %}{% abort %}{% endif %}{{ Profile.Name }}',))
    with pytest.raises(PersonalizationError) as refused:
        renderer.render(profile)
    assert refused.value.reason == reason
    assert refused.value.detail.startswith("{{1}}")


def test_a_missing_property_is_false_in_a_condition() -> None:
    renderer = Renderer(('{% if Profile.Vip %}VIP {% endif %}{{ Profile.Name | default: "guest" }}',))
    assert renderer.render({}) == ["guest"]
    assert renderer.render({"Vip": True, "Name": "Ann"}) == ["VIP Ann"]


def test_values_are_cleaned_not_refused() -> None:
    assert Renderer(("{{ Profile.Address }}",)).render(
        {"Address": "12 Main St\nFlat 4\t\tPune      411001"}
    ) == ["12 Main St Flat 4 Pune 411001"]


def test_required_properties_are_those_printed_without_a_default() -> None:
    assert required_profile_properties('{{ Profile.Name }} {{ Profile["Ticket No"] }}') == {
        "Name",
        "Ticket No",
    }
    assert required_profile_properties('{{ Profile.Name | default: "x" }}') == set()
    assert required_profile_properties("{% if Profile.Vip %}VIP{% endif %}") == set()


def test_syntax_errors_name_the_variable() -> None:
    assert check_sources(["ok", "{{ Profile.Name "]) == [
        check_sources(["{{ Profile.Name "])[0].replace("{{1}}", "{{2}}")
    ]
    assert check_sources(["{% abort %}", "{{ Profile.Name }}"]) == []
