"""The API keeps its contract: every error is JSON ``{"code", "message"}`` (``/1/upload``: CleverTap's
``{"status": "fail", "error", "code"}``), no request makes a server error, and the OpenAPI document lists
every status a route answers — checked by a schema fuzzer (schemathesis) over every route of the real
server on loopback, and by the inputs that once gave a plain-text 500."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.conftest import clevertap
from tests.helpers import refused
from tidings.accounts.service import NewAccount
from tidings.config import Settings
from tidings.db import Database
from tidings.secrets import SecretBox

# Examples per operation: small enough that the whole run takes seconds (``TIDINGS_FUZZ_EXAMPLES`` and
# ``TIDINGS_FUZZ_SEED`` explore further by hand).
EXAMPLES = int(os.environ.get("TIDINGS_FUZZ_EXAMPLES", "12"))
SEED = os.environ.get("TIDINGS_FUZZ_SEED")


@pytest.fixture
def server(settings: Settings, db: Database) -> Iterator[tuple[str, FastAPI]]:
    """The real server on a loopback port, without a worker (nothing is sent)."""
    from tidings.app import asgi_app, create_app
    from tidings.server import bind, serving

    sock = bind()
    app = create_app(settings, db)
    with serving(asgi_app(app), sock) as url:
        yield url, app


def _seed_objects(url: str, auth: dict[str, str]) -> None:
    """A template, a segment and a campaign, so that small generated ids find something."""
    with httpx.Client(base_url=url, headers=auth) as http:
        template = http.post(
            "/api/v1/templates",
            json={"name": "shop:welcome", "language": "en", "body": "Hi {{1}}", "category": "MARKETING"},
        )
        assert template.status_code == 201, template.text
        segment = http.post("/api/v1/segments", json={"name": "all", "definition": {"all": True}})
        assert segment.status_code == 201, segment.text
        campaign = http.post(
            "/api/v1/campaigns",
            json={"name": "c", "template_id": template.json()["id"], "variables": ["x"], "draft": True},
        )
        assert campaign.status_code == 201, campaign.text
        upload = http.post(
            "/1/upload",
            json={"d": [{"identity": "u1", "type": "profile", "profileData": {"Phone": "+14155552671"}}]},
        )
        assert upload.status_code == 200, upload.text


def _fuzz(operation: Any, url: str, session: requests.Session, auth: dict[str, str], seen: list[int]) -> None:
    """Up to EXAMPLES valid and invalid requests to one operation, each answer checked: no 5xx, and only
    statuses the OpenAPI document lists for it. Raises the failures found."""
    from hypothesis import seed
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import status_code_conformance

    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)

    @hsettings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=SEED is None,  # the same requests on every run, unless a seed asks for others
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=st.one_of(operation.as_strategy(mode) for mode in modes))
    def fuzz(case: Any) -> None:
        response = case.call(base_url=url, session=session, headers=auth)
        seen.append(response.status_code)
        case.validate_response(response, checks=[not_a_server_error, status_code_conformance])

    (seed(int(SEED))(fuzz) if SEED is not None else fuzz)()


def test_fuzzed_requests_get_no_server_error_and_only_documented_statuses(
    server: tuple[str, FastAPI], auth: dict[str, str]
) -> None:
    import schemathesis

    url, app = server
    _seed_objects(url, auth)
    schema = schemathesis.openapi.from_dict(app.openapi())
    session = requests.Session()
    failures: list[str] = []
    seen: dict[str, list[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        name = f"{operation.method.upper()} {operation.path}"
        try:
            _fuzz(operation, url, session, auth, seen.setdefault(name, []))
        except (Exception, BaseExceptionGroup) as exc:  # every operation is fuzzed; all are reported
            failures.append(f"{name}: {exc}")
    assert len(seen) >= 30
    if os.environ.get("TIDINGS_FUZZ_REPORT"):
        for name, statuses in sorted(seen.items()):
            print(name, sorted(statuses))
    assert not failures, "\n\n".join(failures)


# --- the inputs that once gave a plain-text 500 ---------------------------------------------------------


def test_a_start_time_without_a_zone_is_refused(client: Any, auth: dict[str, str]) -> None:
    template = client.post(
        "/api/v1/templates",
        json={"name": "shop:hello", "language": "en", "body": "Hi {{1}}", "category": "MARKETING"},
        headers=auth,
    ).json()
    campaign = {"name": "c", "template_id": template["id"], "variables": ["x"]}
    naive = {**campaign, "send_at": "2030-01-01T09:00:00"}
    answer = client.post("/api/v1/campaigns", json=naive, headers=auth)
    assert "timezone" in refused(answer, 422, "validation_error")
    assert refused(
        client.post("/api/v1/campaigns", json={**campaign, "ends_at": "2030-01-01T09:00:00"}, headers=auth),
        422,
        "validation_error",
    ).startswith("ends_at")
    # A time whose UTC reading is before year 1 cannot be stored either.
    early = {**campaign, "send_at": "0001-01-01T00:00:00+05:00"}
    refused(client.post("/api/v1/campaigns", json=early, headers=auth), 422, "validation_error")
    zoned_at = {**campaign, "send_at": "2030-01-01T09:00:00+05:30", "draft": True}
    zoned = client.post("/api/v1/campaigns", json=zoned_at, headers=auth)
    assert zoned.status_code == 201, zoned.text
    assert zoned.json()["send_at"].startswith("2030-01-01T03:30:00")


HUGE = "99999999999999999999"  # past 2^63


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/api/v1/campaigns/{n}"),
        ("GET", "/api/v1/campaigns/{n}/stats"),
        ("GET", "/api/v1/campaigns/{n}/progress"),
        ("POST", "/api/v1/campaigns/{n}/schedule"),
        ("POST", "/api/v1/campaigns/{n}/stop"),
        ("POST", "/api/v1/campaigns/{n}/resume"),
        ("GET", "/api/v1/templates/{n}"),
        ("GET", "/api/v1/segments/{n}"),
        ("DELETE", "/api/v1/segments/{n}"),
    ],
)
def test_an_id_past_2_63_is_not_found_not_a_server_error(
    client: Any, auth: dict[str, str], method: str, path: str
) -> None:
    for n in (HUGE, str(2**63), "-" + HUGE):
        refused(client.request(method, path.format(n=n), headers=auth), 404, "not_found")


def test_an_offset_past_2_63_is_refused(client: Any, auth: dict[str, str]) -> None:
    r = client.get(f"/api/v1/profiles?offset={HUGE}", headers=auth)
    assert refused(r, 422, "validation_error").startswith("offset")


def test_an_id_past_2_63_in_a_body_is_not_found(client: Any, auth: dict[str, str]) -> None:
    body = {"name": "c", "template_id": int(HUGE), "variables": []}
    assert "template" in refused(client.post("/api/v1/campaigns", json=body, headers=auth), 404, "not_found")
    variants = [{"template_id": int(HUGE), "variables": []}, {"template_id": 2**63, "variables": []}]
    body = {"name": "c", "variants": variants, "split": {"by": "percentage"}}
    r = client.post("/api/v1/campaigns", json=body, headers=auth)
    assert r.status_code in (404, 422), r.text  # the weights are missing too: either is refused first
    assert set(r.json()) >= {"code", "message"}


def test_huge_numbers_in_uploaded_properties_are_kept_or_refused_per_record(
    client: Any, account: NewAccount, db: Database
) -> None:
    records = [
        {"identity": "big", "type": "profile", "profileData": {"Visits": int(HUGE)}},
        {"identity": "big", "type": "profile", "profileData": {"Score": {"$incr": int(HUGE)}}},
        {"identity": "big", "type": "event", "evtName": "Charged", "evtData": {"Amount": int(HUGE) ** 2}},
        {"identity": "big", "type": "event", "evtName": "Charged", "ts": int(HUGE)},
        {"identity": "ok", "type": "profile", "profileData": {"Name": "Ok"}},
    ]
    r = client.post("/1/upload", json={"d": records}, headers=clevertap(account))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "success"
    assert body["processed"] + len(body["unprocessed"]) == len(records)
    assert body["processed"] >= 1  # the plain record at least
    for failure in body["unprocessed"]:
        assert failure["status"] == "fail" and isinstance(failure["code"], int) and failure["error"]


def test_a_body_that_is_not_utf8_is_a_validation_error(client: Any, auth: dict[str, str]) -> None:
    r = client.post(
        "/api/v1/segments", content=b"\xff\xfe{", headers={**auth, "Content-Type": "application/json"}
    )
    refused(r, 422, "validation_error")


def _signature_secret(db: Database, box: SecretBox, account: NewAccount) -> str:
    from tidings.accounts.models import Integration

    with db.session() as session:
        integration = session.get(Integration, account.account_id)
        assert integration is not None
        return str(box.open(integration.secrets)["signature_secret"])


UUID = "aaaaaaaa-bbbb-4ccc-8ddd-0123456789ab"


@pytest.mark.parametrize(
    "client_ref,message_uuid",
    [
        (HUGE * 3, UUID),
        ("1" * 19, UUID),
        ("9" * 19, UUID),
        ("²", UUID),
        ("12" + "٣", UUID),
        ("x" * 300, UUID),
        ("1", "u" * 300),
        ("z", "u" * 300),
    ],
)
def test_an_odd_client_ref_in_a_signed_webhook_is_no_server_error(
    client: Any, db: Database, box: SecretBox, account: NewAccount, client_ref: str, message_uuid: str
) -> None:
    from tidings.providers.vonage import sign_webhook

    payload = {
        "message_uuid": message_uuid,
        "to": "919810000000",
        "from": "14157386102",
        "timestamp": "2026-11-25T10:00:00Z",
        "status": "delivered",
        "channel": "whatsapp",
        "client_ref": client_ref,
    }
    body = json.dumps(payload).encode()
    headers = {
        "Authorization": sign_webhook(body, _signature_secret(db, box, account), "sandbox"),
        "Content-Type": "application/json",
    }
    r = client.post(f"/webhooks/sandbox/{account.account_id}/status", content=body, headers=headers)
    assert r.status_code < 500, r.text
    assert set(r.json()) >= ({"status"} if r.status_code == 200 else {"code", "message"})


# --- every error is JSON in the route's shape ------------------------------------------------------------


def _failing_app() -> FastAPI:
    """An app with Tidings' guard whose routes raise — the path decides the error's shape."""
    from tidings.guards import Guard

    app = FastAPI()
    app.add_middleware(Guard)

    def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/api/v1/boom", boom, methods=["GET"])
    app.add_api_route("/1/upload", boom, methods=["POST"])
    return app


def test_an_unexpected_exception_is_a_json_500_logged_with_its_trace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from fastapi.testclient import TestClient

    with TestClient(_failing_app(), raise_server_exceptions=False) as http:
        r = http.get("/api/v1/boom")
        assert r.status_code == 500 and r.headers["content-type"] == "application/json"
        assert r.json() == {"code": "internal_error", "message": r.json()["message"]}
        assert r.headers["x-content-type-options"] == "nosniff"
        upload = http.post("/1/upload", json={"d": []})
        assert upload.status_code == 500
        assert upload.json() == {"status": "fail", "error": upload.json()["error"], "code": 500}
    traces = [rec for rec in caplog.records if rec.name == "tidings.guards" and rec.exc_info]
    assert len(traces) == 2 and "a bug" in str(traces[0].exc_info[1])


def test_errors_of_the_api_are_json_with_code_and_message(client: Any, auth: dict[str, str]) -> None:
    answers = [
        client.get("/api/v1/campaigns"),  # no credentials
        client.get("/api/v1/nothing-here", headers=auth),
        client.put("/api/v1/campaigns", headers=auth),
        client.get("/api/v1/campaigns/abc", headers=auth),
        client.post("/api/v1/segments", content=b"{", headers={**auth, "Content-Type": "application/json"}),
    ]
    assert [a.status_code for a in answers] == [401, 404, 405, 422, 422]
    for answer in answers:
        assert answer.headers["content-type"].startswith("application/json")
        body = answer.json()
        assert isinstance(body["code"], str) and isinstance(body["message"], str)


def test_upload_refusals_keep_clevertaps_shape(client: Any, account: NewAccount) -> None:
    def fail(r: Any, status: int) -> str:
        assert r.status_code == status, r.text
        body = r.json()
        assert set(body) == {"status", "error", "code"}
        assert body["status"] == "fail" and body["code"] == status
        return str(body["error"])

    fail(client.post("/1/upload", json={"d": []}, headers={"X-CleverTap-Account-Id": "TID-NOPE"}), 401)
    fail(client.post("/1/upload", content=b"not json", headers=clevertap(account)), 400)
    fail(client.post("/1/upload", json={"d": [{}] * 1001}, headers=clevertap(account)), 400)
    fail(client.get("/1/upload", headers=clevertap(account)), 405)
    record = {"identity": "x", "type": "profile", "profileData": {"a": "x" * (9 << 20)}}
    big = json.dumps({"d": [record]}).encode()
    fail(client.post("/1/upload", content=big, headers=clevertap(account)), 413)


# --- the OpenAPI document lists what each route answers --------------------------------------------------


def test_the_openapi_document_lists_every_error_status(app: FastAPI) -> None:
    document = app.openapi()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            statuses = set(operation["responses"])
            assert "500" in statuses, (method, path)
            if path.startswith("/api/v1/") or path == "/1/upload":
                assert {"401", "429"} <= statuses, (method, path)
            if method in ("post", "put", "patch"):
                assert "413" in statuses, (method, path)
            if "{" in path:
                assert {"404", "422"} <= statuses, (method, path)
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    schema = response["content"]["application/json"]["schema"]["$ref"]
                    expected = "UploadFailure" if path == "/1/upload" else "ErrorBody"
                    assert schema.endswith(f"/{expected}"), (method, path, status)
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_a_frequency_cap_too_long_for_a_datetime_is_refused(client: Any, auth: dict[str, str]) -> None:
    for cap in ({"max": 1, "hours": int(HUGE)}, {"max": 2**63, "hours": 24}):
        r = client.patch("/api/v1/account", json={"settings": {"frequency_cap": cap}}, headers=auth)
        assert refused(r, 422, "validation_error").startswith("settings.frequency_cap.")
    fine = {"settings": {"frequency_cap": {"max": 3, "hours": 24}}}
    ok = client.patch("/api/v1/account", json=fine, headers=auth)
    assert ok.status_code == 200, ok.text
