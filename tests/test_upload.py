"""POST /1/upload: CleverTap-compatible profiles and events, read back from the database."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select

from tests.conftest import clevertap
from tidings.accounts.service import NewAccount
from tidings.db import Database
from tidings.profiles import service
from tidings.profiles.models import Event, Profile
from tidings.profiles.service import profile_seed

PHONE = "+14155552671"


def upload(client: TestClient, account: NewAccount, records: list[Any]) -> dict[str, Any]:
    r = client.post("/1/upload", json={"d": records}, headers=clevertap(account))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["status"] == "success"
    return body


def profile(db: Database, account: NewAccount, identity: str) -> Profile | None:
    with db.session() as session:
        return session.scalars(
            select(Profile).where(Profile.account_id == account.account_id, Profile.identity == identity)
        ).one_or_none()


def props(db: Database, account: NewAccount, identity: str) -> dict[str, Any]:
    found = profile(db, account, identity)
    assert found is not None, f"no profile {identity}"
    return found.properties


def events(db: Database, account: NewAccount, identity: str | None = None) -> list[Event]:
    with db.session() as session:
        stmt = select(Event).where(Event.account_id == account.account_id).order_by(Event.id)
        if identity is not None:
            stmt = stmt.join(Profile, Profile.id == Event.profile_id).where(Profile.identity == identity)
        return list(session.scalars(stmt))


def counts(db: Database) -> tuple[int, int]:
    with db.session() as session:
        return (
            session.scalar(select(func.count()).select_from(Profile)) or 0,
            session.scalar(select(func.count()).select_from(Event)) or 0,
        )


def p(identity: Any, data: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "profile", "identity": identity, "profileData": data, **extra}


def e(identity: Any, name: Any, data: Any = None, **extra: Any) -> dict[str, Any]:
    record = {"type": "event", "identity": identity, "evtName": name, **extra}
    if data is not None:
        record["evtData"] = data
    return record


# --- per-record codes


def test_mixed_batch_reports_every_code_and_keeps_the_good_records(
    client: TestClient, db: Database, account: NewAccount
) -> None:
    records: list[Any] = [
        p("good-1", {"Name": "Jack", "Phone": PHONE}),  # 0
        "not an object",  # 1  → 512
        {"type": "other", "identity": "x", "profileData": {}},  # 2 → 524
        {"type": "profile", "profileData": {"Name": "nobody"}},  # 3 → 523
        p("y" * 121, {"Name": "too long"}),  # 4 → 523
        p("bad-phone", {"Name": "Kept?", "Phone": "4155552671"}),  # 5 → 516
        {"type": "event", "identity": "good-1", "evtData": {"a": 1}},  # 6 → 509
        e("good-1", "Charged", {"Amount": 1}, ts=1468208340000),  # 7 → 525 (milliseconds)
        e("good-1", "Charged", {"Amount": 2}, ts=-5),  # 8 → 525
        e("good-1", "Charged", {"Amount": 3}, ts="1468208340.5"),  # 9 → 525
        p("bad-data", ["not", "an", "object"]),  # 10 → 512
        e("good-1", "Charged", "not an object"),  # 11 → 512
        p("bad-op", {"Tags": {"$push": "x"}}),  # 12 → 512
        p("bad-key", {"k" * 121: 1}),  # 13 → 512
        p("bad-value", {"Bio": "é" * 257}),  # 14 → 512 (514 bytes)
        p("bad-date", {"DOB": "$D_yesterday"}),  # 15 → 512
        {"type": "event", "objectId": 987654, "evtName": "App Launched"},  # 16 good, numeric objectId
        p("bad-optin", {"MSG-whatsapp": "yes"}),  # 17 → 512
        e("good-1", "Charged", {"Amount": 4}, ts="1468208340"),  # 18 good, ts as a string of digits
        p("good-2", {"Name": "Jill"}, ts=1468308340),  # 19 good
        e("good-1", "Notification Viewed", {"Campaign id": 1}),  # 20 → 513: Tidings records it itself
    ]
    body = upload(client, account, records)
    expected = {
        1: 512,
        2: 524,
        3: 523,
        4: 523,
        5: 516,
        6: 509,
        7: 525,
        8: 525,
        9: 525,
        10: 512,
        11: 512,
        12: 512,
        13: 512,
        14: 512,
        15: 512,
        17: 512,
        20: 513,
    }
    got = {}
    for failure in body["unprocessed"]:
        index = int(failure["error"].split("d[", 1)[1].split("]", 1)[0])
        got[index] = failure["code"]
        assert failure["status"] == "fail"
        assert failure["record"] == records[index]  # echoed as sent
    assert got == expected
    assert body["processed"] == len(records) - len(expected) == 4
    messages = {index: f["error"] for index, f in zip(sorted(got), body["unprocessed"], strict=True)}
    assert all(message.startswith(f"Record d[{index}]") for index, message in messages.items())
    assert "'identity' or 'objectId'" in messages[3]
    assert "120" in messages[4]
    assert "phone" in messages[5].lower()
    assert "evtName" in messages[6]
    assert "epoch in seconds" in messages[7] and "milliseconds" in messages[7]
    assert "$D_" in messages[15]

    with db.session() as session:
        identities = set(session.scalars(select(Profile.identity)))
    assert identities == {"good-1", "good-2", "987654"}  # nothing of the bad records was kept
    assert props(db, account, "good-1") == {"Name": "Jack", "Phone": PHONE}
    kept = events(db, account)
    assert [(ev.name, ev.properties) for ev in kept] == [("App Launched", {}), ("Charged", {"Amount": 4})]
    assert kept[1].ts == datetime.fromtimestamp(1468208340, UTC)


def test_identity_wins_over_object_id_and_numbers_are_keys(
    client: TestClient, db: Database, account: NewAccount
) -> None:
    body = upload(
        client,
        account,
        [
            {"type": "profile", "identity": 1189549, "objectId": "device-1", "profileData": {"a": 1}},
            {"type": "profile", "objectId": "device-2", "profileData": {"a": 2}},
            {"type": "profile", "identity": "", "objectId": "device-3", "profileData": {"a": 3}},
            {"type": "profile", "identity": True, "profileData": {"a": 4}},
            {"type": "profile", "identity": "x" * 120, "profileData": {"a": 5}},
        ],
    )
    assert [f["code"] for f in body["unprocessed"]] == [523]
    assert props(db, account, "1189549") == {"a": 1}
    assert props(db, account, "device-2") == {"a": 2}
    assert props(db, account, "device-3") == {"a": 3}
    assert props(db, account, "x" * 120) == {"a": 5}
    assert profile(db, account, "device-1") is None


def test_new_profiles_get_their_seed(client: TestClient, db: Database, account: NewAccount) -> None:
    upload(client, account, [p("seeded", {"a": 1}), e("seeded-by-event", "Viewed")])
    for identity in ("seeded", "seeded-by-event"):
        found = profile(db, account, identity)
        assert found is not None
        assert found.seed == profile_seed(account.account_id, identity)
        assert 0 <= found.seed < service.BUCKET_PRIME


# --- WhatsApp keys


def test_whatsapp_opt_in_is_false_until_set_true(
    client: TestClient, db: Database, account: NewAccount
) -> None:
    upload(client, account, [p("u1", {"Name": "A", "Phone": PHONE}), e("u2", "Viewed")])
    for identity in ("u1", "u2"):
        found = profile(db, account, identity)
        assert found is not None and found.whatsapp_opt_in is False
        assert "MSG-whatsapp" not in found.properties

    for value, expected in [(True, True), ("FALSE", False), ("True", True), (False, False), ("true", True)]:
        body = upload(client, account, [p("u1", {"MSG-whatsapp": value})])
        assert body["processed"] == 1, body
        found = profile(db, account, "u1")
        assert found is not None
        assert found.whatsapp_opt_in is expected
        assert found.properties["MSG-whatsapp"] is expected

    for bad in ["yes", 1, 0, None, {"$delete": 1}, ["true"]]:
        body = upload(client, account, [p("u1", {"MSG-whatsapp": bad, "Name": "changed"})])
        assert [f["code"] for f in body["unprocessed"]] == [512], bad
    found = profile(db, account, "u1")
    assert found is not None and found.whatsapp_opt_in is True and found.properties["Name"] == "A"


def test_phone_is_normalised_to_e164(client: TestClient, db: Database, account: NewAccount) -> None:
    upload(
        client, account, [p("u1", {"Phone": " +1 (415) 555-2671 "}), p("u2", {"Phone": "+44 7911 123456"})]
    )
    u1 = profile(db, account, "u1")
    assert u1 is not None and u1.phone == PHONE and u1.properties["Phone"] == PHONE
    u2 = profile(db, account, "u2")
    assert u2 is not None and u2.phone == "+447911123456"

    # an invalid phone rejects the whole record: neither the phone nor the other keys are kept
    body = upload(
        client,
        account,
        [
            p("u1", {"Phone": "+1 555", "Name": "lost"}),
            p("u1", {"Phone": 14155552671}),
            p("u1", {"Phone": "not a number"}),
            p("u1", {"Phone": {"$add": PHONE}}),
        ],
    )
    assert [f["code"] for f in body["unprocessed"]] == [516, 516, 516, 516]
    assert props(db, account, "u1") == {"Phone": PHONE}

    upload(client, account, [p("u1", {"Phone": {"$delete": 1}})])
    u1 = profile(db, account, "u1")
    assert u1 is not None and u1.phone is None and "Phone" not in u1.properties


# --- values and operations


def test_dates_become_iso_utc_strings(client: TestClient, db: Database, account: NewAccount) -> None:
    body = upload(
        client,
        account,
        [
            p("u1", {"DOB": "$D_1487576752", "Old": "$D_-86400", "Dates": ["$D_0"]}),
            e("u1", "Charged", {"Delivery By": "$D_1468322268", "Items": [{"When": "$D_1"}]}),
            p("u1", {"Bad": "$D_1.5"}),
            p("u1", {"Bad": "$D_1468322268000"}),
            e("u1", "Charged", {"Bad": "$D_"}),
        ],
    )
    assert [f["code"] for f in body["unprocessed"]] == [512, 512, 512]
    assert props(db, account, "u1") == {
        "DOB": "2017-02-20T07:45:52Z",
        "Old": "1969-12-31T00:00:00Z",
        "Dates": ["1970-01-01T00:00:00Z"],
    }
    (charged,) = events(db, account, "u1")
    assert charged.properties == {"Delivery By": "2016-07-12T11:17:48Z", "Items": [{"When": "$D_1"}]}


def test_each_profile_operation(client: TestClient, db: Database, account: NewAccount) -> None:
    upload(
        client,
        account,
        [p("u1", {"Name": "Jack", "Tags": "shoes", "Score": 5, "Gone": "x", "List": ["a"], "Nothing": 1})],
    )
    body = upload(
        client,
        account,
        [
            p(
                "u1",
                {
                    "Name": "Jill",  # plain values overwrite
                    "Tags": {"$add": ["bags", "shoes", "hats"]},  # scalar becomes a list, no duplicates
                    "New": {"$add": "first"},  # missing property
                    "List": {"$remove": ["a", "zzz"]},
                    "Score": {"$incr": 2.5},
                    "Visits": {"$incr": 3},  # missing counts as 0
                    "Balance": {"$decr": 10},
                    "Gone": {"$delete": 1},
                    "Nothing": None,  # null removes too
                    "Missing": {"$remove": "x"},  # no-op
                },
            )
        ],
    )
    assert body["unprocessed"] == []
    assert props(db, account, "u1") == {
        "Name": "Jill",
        "Tags": ["shoes", "bags", "hats"],
        "New": ["first"],
        "List": [],
        "Score": 7.5,
        "Visits": 3,
        "Balance": -10,
    }
    upload(client, account, [p("u1", {"Tags": {"$remove": "bags"}, "Name": {"$remove": "Jill"}})])
    assert props(db, account, "u1")["Tags"] == ["shoes", "hats"]
    assert "Name" not in props(db, account, "u1")  # removing a scalar's own value removes it

    body = upload(
        client,
        account,
        [
            p("u1", {"Tags": {"$incr": 1}}),  # not a number: 512, record not applied
            p("u1", {"Score": {"$incr": "1"}}),
            p("u1", {"Score": {"$add": 1, "$incr": 1}}),
            p("u1", {"Score": {"$add": [{"nested": 1}]}}),
            p("u1", {"Score": {"nested": 1}}),
            p("u1", {"Visits": {"$incr": 1}}),  # still applied
        ],
    )
    assert [f["code"] for f in body["unprocessed"]] == [512] * 5
    assert "Tags" in body["unprocessed"][0]["error"] and "d[0]" in body["unprocessed"][0]["error"]
    assert props(db, account, "u1")["Visits"] == 4
    assert props(db, account, "u1")["Tags"] == ["shoes", "hats"]


def test_true_and_one_are_different_values(client: TestClient, db: Database, account: NewAccount) -> None:
    upload(client, account, [p("u1", {"Flag": 1, "Set": {"$add": [1]}})])
    upload(client, account, [p("u1", {"Flag": True, "Set": {"$add": [True, 1.0]}})])
    assert props(db, account, "u1") == {"Flag": True, "Set": [1, True, 1.0]}


def test_records_for_one_identity_apply_in_order(
    client: TestClient, db: Database, account: NewAccount
) -> None:
    body = upload(
        client,
        account,
        [
            p("u1", {"Name": "first", "Count": 1}),
            e("u1", "Viewed"),
            p("u1", {"Name": "second", "Count": {"$incr": 10}}),
            p("u2", {"Name": "other"}),
            p("u1", {"Count": {"$decr": 4}, "MSG-whatsapp": True}),
            p("u1", {"MSG-whatsapp": "false"}),
        ],
    )
    assert body == {"status": "success", "processed": 6, "unprocessed": []}
    u1 = profile(db, account, "u1")
    assert u1 is not None
    assert u1.properties == {"Name": "second", "Count": 7, "MSG-whatsapp": False}
    assert u1.whatsapp_opt_in is False
    assert props(db, account, "u2") == {"Name": "other"}


# --- events


def test_events_are_stored_with_their_time(client: TestClient, db: Database, account: NewAccount) -> None:
    upload(client, account, [p("known", {"Name": "K"})])
    before = datetime.now(UTC) - timedelta(seconds=1)
    upload(
        client,
        account,
        [
            e(
                "known",
                "Charged",
                {"Amount": 300, "Currency": "USD", "Items": [{"sku": "A", "qty": 2}]},
                ts=1468208340,
            ),
            e("stranger", "Viewed"),  # creates an empty, opted-out profile
        ],
    )
    after = datetime.now(UTC) + timedelta(seconds=1)
    (charged,) = events(db, account, "known")
    assert charged.name == "Charged"
    assert charged.properties == {"Amount": 300, "Currency": "USD", "Items": [{"sku": "A", "qty": 2}]}
    assert charged.ts == datetime(2016, 7, 11, 3, 39, tzinfo=UTC)
    (viewed,) = events(db, account, "stranger")
    assert viewed.ts.tzinfo is not None and before <= viewed.ts <= after
    stranger = profile(db, account, "stranger")
    assert stranger is not None
    assert stranger.properties == {} and stranger.whatsapp_opt_in is False and stranger.phone is None
    assert props(db, account, "known") == {"Name": "K"}  # an event does not touch the profile


# --- whole-call refusals


def test_more_than_1000_records_is_refused_and_nothing_written(
    client: TestClient, db: Database, account: NewAccount
) -> None:
    records = [p(f"u{i}", {"n": i}) for i in range(1001)]
    r = client.post("/1/upload", json={"d": records}, headers=clevertap(account))
    assert r.status_code == 400
    body = r.json()
    assert body["status"] == "fail" and body["code"] == 400 and "1000" in body["error"]
    assert counts(db) == (0, 0)
    assert upload(client, account, records[:1000])["processed"] == 1000
    assert counts(db) == (1000, 0)


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"",
        b'{"d": [',
        b"[]",
        b'{"records": []}',
        b'{"d": {"type": "profile"}}',
        b'{"d": [{"type": "profile", "identity": "a", "profileData": {"x": NaN}}]}',
        b'{"d": [{"type": "profile", "identity": "a", "profileData": {"x": 1e400}}]}',
        b"\xff\xfe\x00",
    ],
)
def test_a_body_that_is_not_an_upload_is_refused(
    client: TestClient, db: Database, account: NewAccount, raw: bytes
) -> None:
    headers = {**clevertap(account), "Content-Type": "application/json"}
    r = client.post("/1/upload", content=raw, headers=headers)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["status"] == "fail" and body["code"] == 400 and body["error"]
    assert counts(db) == (0, 0)


def test_wrong_or_missing_credentials_are_refused_and_nothing_written(
    client: TestClient, db: Database, account: NewAccount
) -> None:
    records = {"d": [p("u1", {"a": 1}), e("u1", "Viewed")]}
    for headers in [
        {},
        {"X-CleverTap-Account-Id": account.account_id},
        {"X-CleverTap-Account-Id": account.account_id, "X-CleverTap-Passcode": account.passcode + "x"},
        {"X-CleverTap-Account-Id": "TID-NOT-THERE", "X-CleverTap-Passcode": account.passcode},
    ]:
        r = client.post("/1/upload", json=records, headers=headers)
        assert r.status_code == 401
        assert r.json() == {"status": "fail", "error": "Account ID or passcode is not valid", "code": 401}
    assert counts(db) == (0, 0)


def test_an_empty_batch_is_fine(client: TestClient, db: Database, account: NewAccount) -> None:
    assert upload(client, account, []) == {"status": "success", "processed": 0, "unprocessed": []}


def test_a_lone_surrogate_is_a_bad_record_and_is_echoed(
    client: TestClient, db: Database, account: NewAccount
) -> None:
    raw = (
        b'{"d": [{"type": "profile", "identity": "a", "profileData": {"x": "\\ud800"}}, '
        + json.dumps(p("b", {"x": "ok"})).encode()
        + b"]}"
    )
    r = client.post("/1/upload", content=raw, headers=clevertap(account))
    assert r.status_code == 200
    body = r.json()
    assert body["processed"] == 1
    assert [f["code"] for f in body["unprocessed"]] == [512]
    assert props(db, account, "b") == {"x": "ok"}
    assert profile(db, account, "a") is None


# --- set-based, concurrency


def test_a_batch_takes_a_fixed_number_of_statements(db: Database, account: NewAccount) -> None:
    with db.session() as session:
        service.ingest(session, account.account_id, [p(f"old{i}", {"n": i}) for i in range(500)])
    records: list[Any] = []
    for i in range(250):
        records += [p(f"old{i}", {"n": {"$incr": 1}}), p(f"new{i}", {"n": i}), e(f"new{i}", "Viewed")]
    records += [e(f"old{i}", "Viewed") for i in range(250)]
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        with db.session() as session:
            result = service.ingest(session, account.account_id, records)
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    assert result.processed == 1000 and result.unprocessed == []
    assert len(result.created_profile_ids) == 250 and len(result.updated_profile_ids) == 250
    assert len(result.events) == 500
    # SELECT, INSERT profiles, UPDATE profiles, INSERT events (+ BEGIN/COMMIT on SQLite), the property
    # catalogue's SELECT and upsert (of names it lacks), never per record
    assert len([s for s in statements if not s.startswith(("BEGIN", "COMMIT"))]) <= 8, statements
    assert counts(db) == (750, 500)
    with db.session() as session:
        assert session.scalar(select(Profile.properties).where(Profile.identity == "old7")) == {"n": 8}


def test_a_profile_created_by_a_concurrent_upload_gets_this_batch_on_top(
    db: Database, account: NewAccount, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upload did not see the profile (a concurrent upload created it after the SELECT)."""
    with db.session() as session:
        service.ingest(session, account.account_id, [p("raced", {"Count": 5, "Name": "theirs"})])
    real_load = service._load
    calls: list[list[str]] = []

    def blind_first_load(*args: Any, **kwargs: Any) -> Any:
        calls.append(list(args[2]))
        return {} if len(calls) == 1 else real_load(*args, **kwargs)

    monkeypatch.setattr(service, "_load", blind_first_load)
    with db.session() as session:
        result = service.ingest(
            session,
            account.account_id,
            [p("raced", {"Count": {"$incr": 2}, "Phone": PHONE}), e("raced", "Viewed"), p("fresh", {"a": 1})],
        )
    assert calls == [["raced", "fresh"], ["raced"]]
    assert result.processed == 3 and len(result.created_profile_ids) == 1
    raced = profile(db, account, "raced")
    assert raced is not None
    assert raced.properties == {"Count": 7, "Name": "theirs", "Phone": PHONE} and raced.phone == PHONE
    assert [ev.profile_id for ev in events(db, account, "raced")] == [raced.id]
    assert props(db, account, "fresh") == {"a": 1}


def test_concurrent_uploads_lose_no_increment(db: Database, account: NewAccount) -> None:
    rounds, threads = 10, 4
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def work(n: int) -> None:
        try:
            barrier.wait()
            for _ in range(rounds):
                with db.session() as session:
                    result = service.ingest(
                        session,
                        account.account_id,
                        [p("shared", {"Count": {"$incr": 1}}), p(f"own{n}", {"Count": {"$incr": 1}})],
                    )
                    assert result.processed == 2
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    assert props(db, account, "shared") == {"Count": rounds * threads}
    for n in range(threads):
        assert props(db, account, f"own{n}") == {"Count": rounds}
