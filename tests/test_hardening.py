"""The small holes (issue 9, items 10 and 13): security headers on every answer and no server banner;
request bodies limited before they are read whole (and before authentication); failed sign-ins limited
per address and per account without locking a known client out; the data folder, the key and the
SQLite files readable by their owner only; ``secret.key`` and the migrations safe when processes start
together. Everything runs against the real server on loopback, real files and real processes."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from tests.conftest import PG_URL, basic, clevertap
from tests.helpers import refused
from tidings.accounts.service import NewAccount
from tidings.config import Settings
from tidings.db import Database
from tidings.guards import API_MAX_BODY, UPLOAD_MAX_BODY, WEBHOOK_MAX_BODY, SignInLimiter


@pytest.fixture
def server(settings: Settings, db: Database) -> Iterator[tuple[str, FastAPI]]:
    """The real server on 127.0.0.1, without a worker; other loopback addresses (127.0.0.2, …) reach it
    as other clients."""
    from tidings.app import asgi_app, create_app
    from tidings.server import bind, serving

    sock = bind()
    app = create_app(settings, db)
    with serving(asgi_app(app), sock) as url:
        yield url, app


def from_address(url: str, address: str) -> httpx.Client:
    return httpx.Client(base_url=url, transport=httpx.HTTPTransport(local_address=address), timeout=30)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- security headers --------------------------------------------------------------------------------


def _secured(r: httpx.Response) -> str:
    """Assert the headers every answer carries; returns its CSP."""
    assert "server" not in r.headers, r.headers  # no banner
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    csp: str = r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp
    return csp


def test_every_answer_has_the_security_headers_and_no_server_banner(
    server: tuple[str, FastAPI], account: NewAccount
) -> None:
    url, _ = server
    with httpx.Client(base_url=url) as http:
        answers = [
            http.get("/healthz"),
            http.get("/openapi.json"),
            http.get("/api/v1/campaigns"),  # 401
            http.get("/api/v1/campaigns", headers=basic(account)),
            http.get("/no/such/page"),  # 404
            http.post("/webhooks/sandbox/TID-NOPE/status", content=b"{}"),  # the webhook lane's own answer
            http.get("/webhooks/meta/TID-NOPE"),  # through the lane to FastAPI
            http.post("/1/upload", json={"d": []}, headers=clevertap(account)),
            http.get("/metrics"),
        ]
        for r in answers:
            assert _secured(r) == "default-src 'none'; frame-ancestors 'none'", r.request.url
        assert [r.status_code for r in answers] == [200, 200, 401, 200, 404, 404, 404, 200, 200]


def test_the_docs_page_gets_a_csp_that_lets_it_load_swagger_ui(server: tuple[str, FastAPI]) -> None:
    url, _ = server
    with httpx.Client(base_url=url) as http:
        for path in ("/docs", "/redoc"):
            page = http.get(path)
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            csp = _secured(page)
            directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
            # Every script and stylesheet the page names comes from a source its CSP allows.
            for kind, attribute in (("script-src", "src"), ("style-src", "href")):
                for source in ("https://cdn.jsdelivr.net",):
                    if f'{attribute}="{source}' in page.text:
                        assert source in directives[kind], (path, kind)
            assert "'unsafe-inline'" in directives["script-src"]  # the page starts Swagger UI inline
            assert directives["connect-src"] == "'self'"  # it fetches /openapi.json


# --- request body limits -----------------------------------------------------------------------------


def _raw(url: str, head: str, body: bytes = b"") -> tuple[int, dict[str, Any]]:
    """Send a request by hand (only its head and ``body``, whatever its Content-Length says) and read
    the answer; the server must answer without waiting for the rest of the body."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head_part, _, payload = data.partition(b"\r\n\r\n")
    status = int(head_part.split(b" ", 2)[1])
    return status, json.loads(payload)


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read_or_authenticated(
    server: tuple[str, FastAPI],
) -> None:
    url, _ = server
    # Only the head is sent: the 413 comes without the body, and without credentials (no 401 first).
    for path, limit in (
        ("/api/v1/segments", API_MAX_BODY),
        ("/1/upload", UPLOAD_MAX_BODY),
        ("/webhooks/sandbox/TID-NOPE/status", WEBHOOK_MAX_BODY),
        ("/webhooks/meta/TID-NOPE", WEBHOOK_MAX_BODY),
    ):
        head = f"POST {path} HTTP/1.1\nHost: x\nContent-Type: application/json\nContent-Length: {limit + 1}\n"
        status, body = _raw(url, head)
        assert status == 413, (path, body)
        if path == "/1/upload":
            assert body == {"status": "fail", "error": body["error"], "code": 413}
        else:
            assert body["code"] == "payload_too_large", body


def test_a_streamed_body_over_the_limit_is_refused(server: tuple[str, FastAPI], account: NewAccount) -> None:
    url, _ = server

    def chunks(total: int) -> Iterator[bytes]:
        yield b'{"name": "x", "definition": {"all": true}, "pad": "'
        for _ in range(total // 65536):
            yield b"x" * 65536
        yield b'"}'

    headers = {**basic(account), "Content-Type": "application/json"}
    with httpx.Client(base_url=url, timeout=30) as http:
        r = http.post("/api/v1/segments", content=chunks(2 * API_MAX_BODY), headers=headers)
        refused(r, 413, "payload_too_large")
        # Under the limit, a streamed body goes through whole (refused here only for its unknown field).
        small = http.post("/api/v1/segments", content=chunks(65536), headers=headers)
        assert refused(small, 422, "validation_error").startswith("pad")


def test_an_upload_of_a_thousand_large_records_is_within_its_limit(
    server: tuple[str, FastAPI], account: NewAccount
) -> None:
    url, _ = server
    records = [
        {"identity": f"u{i}", "type": "profile", "profileData": {"Bio": "x" * 500, "Note": "y" * 500}}
        for i in range(1000)
    ]
    body = json.dumps({"d": records}).encode()
    assert API_MAX_BODY < len(body) < UPLOAD_MAX_BODY
    with httpx.Client(base_url=url, timeout=60) as http:
        headers = {**clevertap(account), "Content-Type": "application/json"}
        r = http.post("/1/upload", content=body, headers=headers)
    assert r.status_code == 200 and r.json()["processed"] == 1000, r.text[:500]


# --- failed sign-ins ---------------------------------------------------------------------------------


def _wrong(account: NewAccount) -> dict[str, str]:
    return basic(NewAccount(account.account_id, "wrong-" + account.passcode))


def test_failed_sign_ins_for_an_account_are_limited_but_its_known_client_keeps_working(
    server: tuple[str, FastAPI], account: NewAccount
) -> None:
    url, app = server
    per_account = app.state.signins.per_account
    with (
        from_address(url, "127.0.0.2") as owner,
        from_address(url, "127.0.0.3") as attacker,
        from_address(url, "127.0.0.4") as newcomer,
    ):
        assert owner.get("/api/v1/campaigns", headers=basic(account)).status_code == 200
        for _ in range(per_account):
            refused(attacker.get("/api/v1/campaigns", headers=_wrong(account)), 401, "unauthorized")
        # The account is now closed to addresses it does not know — even with the right passcode …
        blocked = attacker.get("/api/v1/campaigns", headers=basic(account))
        refused(blocked, 429, "too_many_attempts")
        assert 0 < int(blocked.headers["retry-after"]) <= 300
        refused(newcomer.get("/api/v1/account", headers=basic(account)), 429, "too_many_attempts")
        upload = attacker.post("/1/upload", json={"d": []}, headers=clevertap(account))
        assert upload.status_code == 429 and int(upload.headers["retry-after"]) > 0
        assert upload.json() == {"status": "fail", "error": upload.json()["error"], "code": 429}
        # … but its own client, which signed in from its address before, goes on working.
        for _ in range(3):
            assert owner.get("/api/v1/campaigns", headers=basic(account)).status_code == 200
            assert owner.post("/1/upload", json={"d": []}, headers=clevertap(account)).status_code == 200


def test_failed_sign_ins_from_an_address_are_limited(
    server: tuple[str, FastAPI], account: NewAccount
) -> None:
    url, app = server
    per_address = app.state.signins.per_address
    with from_address(url, "127.0.0.5") as guesser, from_address(url, "127.0.0.6") as other:
        for i in range(per_address):  # a different account id each time: the address is what counts
            guess = basic(NewAccount(f"TID-AAA-AAA-{i:03d}", "guess"))
            refused(guesser.get("/api/v1/account", headers=guess), 401, "unauthorized")
        refused(guesser.get("/api/v1/account", headers=basic(account)), 429, "too_many_attempts")
        assert other.get("/api/v1/account", headers=basic(account)).status_code == 200


def test_successes_and_calls_without_credentials_are_not_counted(
    server: tuple[str, FastAPI], account: NewAccount
) -> None:
    url, app = server
    limiter = app.state.signins
    with from_address(url, "127.0.0.7") as http:
        for _ in range(limiter.per_address + 5):
            assert http.get("/api/v1/account", headers=basic(account)).status_code == 200
            refused(http.get("/api/v1/account"), 401, "unauthorized")
        assert http.get("/api/v1/account", headers=basic(account)).status_code == 200


def test_the_limiter_forgets_failures_after_its_window_and_bounds_its_memory() -> None:
    now = [1000.0]
    limiter = SignInLimiter(per_address=3, per_account=2, window=60, max_keys=50, clock=lambda: now[0])
    limiter.failed("TID-A", "10.0.0.1")
    now[0] += 10
    limiter.failed("TID-A", "10.0.0.2")
    assert limiter.wait("TID-A", "10.0.0.3") == 50  # the first failure is 60 s old in 50 s
    assert limiter.wait("TID-B", "10.0.0.3") == 0
    now[0] += 50
    assert limiter.wait("TID-A", "10.0.0.3") == 0
    for i in range(1000):
        limiter.failed(f"TID-{i}", f"10.1.{i // 256}.{i % 256}")
        limiter.succeeded(f"TID-{i}", "10.0.0.9")
    assert len(limiter._failures) <= 50 and len(limiter._trusted) <= 50


# --- files readable by their owner only ---------------------------------------------------------------


@pytest.fixture
def loose_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def test_the_data_folder_key_and_sqlite_files_are_the_owners_only(tmp_path: Path, loose_umask: None) -> None:
    from typer.testing import CliRunner

    from tidings.cli import app as cli
    from tidings.secrets import SecretBox

    folder = tmp_path / "var"
    env = {"TIDINGS_DATA_DIR": str(folder), "TIDINGS_DATABASE_URL": "", "TIDINGS_SECRET_KEY": ""}
    env["TIDINGS_DATABASE_URL"] = f"sqlite:///{folder / 'tidings.db'}"
    result = CliRunner().invoke(cli, ["db", "upgrade"], env=env)
    assert result.exit_code == 0, result.output
    SecretBox.from_settings(None, folder)
    db = Database(f"sqlite:///{folder / 'tidings.db'}")
    with db.session() as session:  # a write: the -wal and -shm files exist now
        session.execute(text("CREATE TABLE IF NOT EXISTS t (x INTEGER)"))
        session.execute(text("INSERT INTO t VALUES (1)"))
    try:
        assert _mode(folder) == 0o700
        files = sorted(p.name for p in folder.iterdir())
        assert {"secret.key", "tidings.db", "tidings.db-wal", "tidings.db-shm"} <= set(files), files
        for path in folder.iterdir():
            assert _mode(path) == 0o600, (path.name, oct(_mode(path)))
    finally:
        db.dispose()


def test_files_an_older_tidings_left_readable_are_tightened(tmp_path: Path, loose_umask: None) -> None:
    from tidings.secrets import SecretBox

    folder = tmp_path / "var"
    folder.mkdir(mode=0o755)
    old = Database(f"sqlite:///{folder / 'tidings.db'}")
    with old.engine.begin() as conn:  # made before: 0644, with its -wal and -shm
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    SecretBox.from_settings(None, folder)
    (folder / "secret.key").chmod(0o644)
    assert _mode(folder / "tidings.db") == 0o644 and (folder / "tidings.db-wal").exists()
    folder.chmod(0o755)
    try:
        Database(f"sqlite:///{folder / 'tidings.db'}").migrate()
        SecretBox.from_settings(None, folder)
        assert _mode(folder) == 0o700
        for name in ("tidings.db", "tidings.db-wal", "tidings.db-shm", "secret.key"):
            assert _mode(folder / name) == 0o600, name
    finally:
        old.dispose()


def test_a_shared_folder_is_left_as_it_is(tmp_path: Path) -> None:
    from tidings.secrets import private_folder

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # sticky, like /tmp
    private_folder(shared)
    assert _mode(shared) == 0o1777


# --- processes that start together --------------------------------------------------------------------


def _key_of(folder: str, barrier: Any, out: Any) -> None:
    from tidings.secrets import SecretBox

    barrier.wait()
    try:
        box = SecretBox.from_settings(None, Path(folder))
        out.put(("ok", box.seal({"x": 1})))
    except Exception as exc:
        out.put(("error", repr(exc)))


def _together(target: Any, args: tuple[Any, ...], n: int) -> list[tuple[str, str]]:
    """Run ``target(*args, barrier, queue)`` in ``n`` processes released at once; their results."""
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return results


def test_secret_key_is_created_once_when_processes_start_together(tmp_path: Path) -> None:
    from tidings.secrets import SecretBox

    for round_ in range(20):  # the old check-then-create failed about one round in three
        folder = tmp_path / f"var{round_}"
        results = _together(_key_of, (str(folder),), 8)
        assert all(kind == "ok" for kind, _ in results), results
        # One key, and everyone used it: each process's sealed value opens with the key on disk.
        box = SecretBox.from_settings(None, folder)
        assert all(box.open(token) == {"x": 1} for _, token in results)
        assert sorted(p.name for p in folder.iterdir()) == ["secret.key"]  # no temporary file left
        assert _mode(folder / "secret.key") == 0o600


def _migrate(url: str, barrier: Any, out: Any) -> None:
    barrier.wait()
    try:
        db = Database(url)
        db.migrate()
        db.dispose()
        out.put(("ok", ""))
    except Exception as exc:
        out.put(("error", repr(exc)))


def _fresh_databases(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'fresh.db'}"
    if PG_URL:  # an empty schema of the test database, first on the search path
        schema = "migrate_race"
        admin = Database(PG_URL)
        with admin.engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        admin.dispose()
        try:
            yield f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"
        finally:
            admin = Database(PG_URL)
            with admin.engine.begin() as conn:
                conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            admin.dispose()


def test_processes_that_start_together_migrate_one_after_the_other(tmp_path: Path) -> None:
    from alembic.script import ScriptDirectory

    from tidings.db import alembic_config

    for url in _fresh_databases(tmp_path):
        for _ in range(2):  # a fresh database, then one already at the head
            results = _together(_migrate, (url,), 4)
            assert all(kind == "ok" for kind, _ in results), (url, results)
        db = Database(url)
        try:
            head = ScriptDirectory.from_config(alembic_config(db.engine)).get_current_head()
            with db.engine.connect() as conn:
                assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [head]
        finally:
            db.dispose()
