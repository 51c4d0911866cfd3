"""The profiles service functions other domains call, and property tests of the ingest rules."""

from __future__ import annotations

import hashlib
import itertools
from typing import Any

import phonenumbers
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from tidings.accounts.service import NewAccount
from tidings.db import Database
from tidings.errors import Invalid, NotFound
from tidings.profiles import service
from tidings.profiles.models import Event, Profile

PHONE = "+14155552671"
_ids = itertools.count()
DB_EXAMPLES = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def ingest(db: Database, account: NewAccount, *records: dict[str, Any]) -> service.IngestResult:
    with db.session() as session:
        return service.ingest(session, account.account_id, list(records))


def stored(db: Database, account: NewAccount, identity: str) -> Profile:
    with db.session() as session:
        return service.get_profile(session, account.account_id, identity)


def test_profile_seed_is_the_documented_hash() -> None:
    digest = hashlib.sha256(b"TID-AAA-BBB-CCC:jack").digest()
    assert service.profile_seed("TID-AAA-BBB-CCC", "jack") == int.from_bytes(digest[:8], "big") % 1_000_003
    assert service.BUCKET_PRIME == 1_000_003
    assert service.profile_seed("TID-AAA-BBB-CCC", "jack") != service.profile_seed("TID-AAA-BBB-CCD", "jack")


def test_get_profile_raises_not_found(db: Database, account: NewAccount) -> None:
    with db.session() as session, pytest.raises(NotFound):
        service.get_profile(session, account.account_id, "nobody")


def test_profile_by_phone_finds_the_latest_updated(db: Database, account: NewAccount) -> None:
    ingest(
        db,
        account,
        {"type": "profile", "identity": "old", "profileData": {"Phone": PHONE}},
        {"type": "profile", "identity": "other", "profileData": {"Phone": "+447911123456"}},
    )
    ingest(db, account, {"type": "profile", "identity": "new", "profileData": {"Phone": PHONE}})
    with db.session() as session:
        for asked in [PHONE, "14155552671", " +1 415-555-2671 "]:
            found = service.profile_by_phone(session, account.account_id, asked)
            assert found is not None and found.identity == "new", asked
        assert service.profile_by_phone(session, account.account_id, "+12025550123") is None
        assert service.profile_by_phone(session, "TID-OTHER", PHONE) is None
    ingest(db, account, {"type": "profile", "identity": "old", "profileData": {"Name": "touched"}})
    with db.session() as session:
        found = service.profile_by_phone(session, account.account_id, PHONE)
        assert found is not None and found.identity == "old"


def test_set_whatsapp_opt_in_sets_column_and_property(db: Database, account: NewAccount) -> None:
    ingest(
        db, account, {"type": "profile", "identity": "u1", "profileData": {"Name": "A", "MSG-whatsapp": True}}
    )
    before = stored(db, account, "u1").updated_at
    with db.session() as session:
        profile = service.get_profile(session, account.account_id, "u1")
        service.set_whatsapp_opt_in(session, profile, False, service.ConsentSource.api, "passcode")
    after = stored(db, account, "u1")
    assert after.whatsapp_opt_in is False
    assert after.properties == {"Name": "A", "MSG-whatsapp": False}
    assert after.updated_at > before
    with db.session() as session:
        service.set_whatsapp_opt_in(
            session,
            service.get_profile(session, account.account_id, "u1"),
            True,
            service.ConsentSource.api,
            None,
        )
    assert stored(db, account, "u1").whatsapp_opt_in is True


def test_update_profile_applies_the_upload_rules(db: Database, account: NewAccount) -> None:
    with db.session() as session:
        profile = service.update_profile(
            session, account.account_id, "u1", {"Phone": "+1 415 555 2671", "Visits": {"$incr": 2}}
        )
        assert profile.phone == PHONE and profile.properties == {"Phone": PHONE, "Visits": 2}
        profile = service.update_profile(session, account.account_id, "u1", {"Visits": {"$incr": 1}})
        assert profile.properties["Visits"] == 3
    with db.session() as session, pytest.raises(Invalid) as caught:
        service.update_profile(session, account.account_id, "u1", {"Phone": "12"})
    assert caught.value.code == "clevertap_516"
    assert stored(db, account, "u1").properties == {"Phone": PHONE, "Visits": 3}


def test_ingest_reports_events_for_live_triggers(db: Database, account: NewAccount) -> None:
    result = ingest(
        db,
        account,
        {
            "type": "event",
            "identity": "u1",
            "evtName": "Charged",
            "evtData": {"Amount": 1},
            "ts": 1_700_000_000,
        },
        {"type": "event", "identity": "u2", "evtName": "Viewed"},
        {"type": "event", "identity": "u1", "evtName": "Viewed"},
    )
    assert [(ev.identity, ev.name) for ev in result.events] == [
        ("u1", "Charged"),
        ("u2", "Viewed"),
        ("u1", "Viewed"),
    ]
    assert len({ev.id for ev in result.events}) == 3
    assert result.events[0].profile_id == result.events[2].profile_id == stored(db, account, "u1").id
    assert result.events[0].properties == {"Amount": 1}
    with db.session() as session:
        for ingested in result.events:  # each reported id is the row of that record
            row = session.get(Event, ingested.id)
            assert row is not None
            assert (row.profile_id, row.name, row.properties, row.ts) == (
                ingested.profile_id,
                ingested.name,
                ingested.properties,
                ingested.ts,
            )
    assert sorted(result.created_profile_ids) == sorted(
        {stored(db, account, "u1").id, stored(db, account, "u2").id}
    )
    with db.session() as session:
        events, total = service.list_events(session, account.account_id, "u1")
    assert total == 2 and {ev.id for ev in events} == {result.events[0].id, result.events[2].id}


# --- property tests

REGIONS = sorted(phonenumbers.SUPPORTED_REGIONS)
TYPES = [phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE]


@st.composite
def example_numbers(draw: st.DrawFn) -> phonenumbers.PhoneNumber:
    number = phonenumbers.example_number_for_type(
        draw(st.sampled_from(REGIONS)), draw(st.sampled_from(TYPES))
    )
    assume(number is not None and phonenumbers.is_valid_number(number))
    return number


@given(number=example_numbers(), style=st.sampled_from(["international", "e164", "dashes", "padded"]))
def test_phone_normalisation_round_trips(number: phonenumbers.PhoneNumber, style: str) -> None:
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    international = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    written = {
        "international": international,
        "e164": e164,
        "dashes": international.replace(" ", "-"),
        "padded": f"  {international}\t",
    }[style]
    assert service.normalize_phone(written) == e164
    assert service.normalize_phone(e164) == e164  # idempotent
    assert service.normalize_phone(e164[1:]) is None  # the + and country code are required


@given(text=st.text(max_size=30))
def test_normalize_phone_never_raises(text: str) -> None:
    result = service.normalize_phone(text)
    assert result is None or (result.startswith("+") and result[1:].isdigit())


@DB_EXAMPLES
@given(number=example_numbers())
def test_uploaded_phones_are_stored_in_e164(
    db: Database, account: NewAccount, number: phonenumbers.PhoneNumber
) -> None:
    identity = f"phone-{next(_ids)}"
    written = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    result = ingest(db, account, {"type": "profile", "identity": identity, "profileData": {"Phone": written}})
    assert result.unprocessed == []
    profile = stored(db, account, identity)
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    assert profile.phone == e164 and profile.properties["Phone"] == e164


numbers = st.one_of(
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False),
)


@DB_EXAMPLES
@given(
    steps=st.lists(st.tuples(st.sampled_from(["$incr", "$decr"]), numbers), min_size=1, max_size=12),
    cuts=st.sets(st.integers(min_value=1, max_value=11), max_size=4),
)
def test_incr_and_decr_sum_in_order_across_batches(
    db: Database, account: NewAccount, steps: list[tuple[str, int | float]], cuts: set[int]
) -> None:
    identity = f"sum-{next(_ids)}"
    records = [{"type": "profile", "identity": identity, "profileData": {"n": {op: v}}} for op, v in steps]
    bounds = [0, *sorted(c for c in cuts if c < len(records)), len(records)]
    for start, end in itertools.pairwise(bounds):
        assert ingest(db, account, *records[start:end]).processed == end - start
    expected: int | float = 0
    for op, v in steps:
        expected = expected + v if op == "$incr" else expected - v
    assert stored(db, account, identity).properties == {"n": expected}
    assert type(stored(db, account, identity).properties["n"]) is type(expected)


tags = st.lists(st.sampled_from(["a", "b", "c", "d", 1, 2]), max_size=4)


@DB_EXAMPLES
@given(steps=st.lists(st.tuples(st.sampled_from(["$add", "$remove"]), tags), min_size=1, max_size=8))
def test_add_and_remove_behave_like_an_ordered_set(
    db: Database, account: NewAccount, steps: list[tuple[str, list[Any]]]
) -> None:
    identity = f"set-{next(_ids)}"
    result = ingest(
        db,
        account,
        *({"type": "profile", "identity": identity, "profileData": {"t": {op: v}}} for op, v in steps),
    )
    assert result.unprocessed == []
    model: list[Any] | None = None
    for op, values in steps:
        if op == "$add":
            model = list(model or [])
            model += [v for i, v in enumerate(values) if v not in model and v not in values[:i]]
        elif model is not None:
            model = [v for v in model if v not in values]
    profile = stored(db, account, identity)
    assert profile.properties == ({} if model is None else {"t": model})


def test_events_for_new_identities_create_opted_out_profiles(db: Database, account: NewAccount) -> None:
    result = ingest(
        db, account, *({"type": "event", "identity": f"e{i}", "evtName": "Viewed"} for i in range(300))
    )
    assert result.processed == 300 and len(result.created_profile_ids) == 300
    with db.session() as session:
        assert len(list(session.scalars(select(Profile.id).where(Profile.whatsapp_opt_in.is_(False))))) == 300
