"""Fixtures: every test that touches the database runs on SQLite and, when
``TIDINGS_TEST_DATABASE_URL`` is set (CI sets it), on PostgreSQL too. In CI a missing PostgreSQL fails
the run instead of skipping it; elsewhere the summary says loudly what was not tested, and how to."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text

from tidings.accounts.service import NewAccount, create_account
from tidings.config import SandboxSettings, Settings
from tidings.db import Base, Database
from tidings.secrets import SecretBox

PG_URL = os.environ.get("TIDINGS_TEST_DATABASE_URL")
if os.environ.get("CI") and not PG_URL:
    raise pytest.UsageError("CI must set TIDINGS_TEST_DATABASE_URL: the suite runs on PostgreSQL too")

BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])
REDIS_URL = os.environ.get("TIDINGS_TEST_REDIS_URL")  # the Redis tests skip without it (fail in CI)
_ON_SQLITE_ONLY = pytest.StashKey[int]()


def pytest_collection_finish(session: pytest.Session) -> None:
    on_sqlite_only = 0 if PG_URL else sum("database" in item.fixturenames for item in session.items)
    session.config.stash[_ON_SQLITE_ONLY] = on_sqlite_only


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """A run without PostgreSQL or Redis passes without testing them: say so, in red, so that
    a green run on a developer's machine is not taken for CI's."""
    untested = []
    on_sqlite_only = terminalreporter.config.stash.get(_ON_SQLITE_ONLY, 0)
    if on_sqlite_only:
        untested.append(
            f"{on_sqlite_only} database tests ran on SQLite only: their PostgreSQL runs were not generated "
            "(set TIDINGS_TEST_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test)"
        )
    skipped = terminalreporter.stats.get("skipped", [])
    no_redis = sum("TIDINGS_TEST_REDIS_URL" in str(report.longrepr) for report in skipped)
    if no_redis and not REDIS_URL:
        untested.append(
            f"{no_redis} Redis tests were skipped (set TIDINGS_TEST_REDIS_URL=redis://127.0.0.1:6379/15)"
        )
    if untested:
        terminalreporter.section("NOT TESTED here (CI runs them: bash .ci/run)", sep="!", red=True, bold=True)
        for line in untested:
            terminalreporter.write_line(line, red=True, bold=True)


# The provider stand-ins (tests/standins/) listen on loopback: allowed as provider hosts for the tests, for
# code that reads the environment (integrations.configure called directly, worker processes) and for the
# ``settings`` fixture below.
LOOPBACK_PROVIDER_HOSTS = ("127.0.0.1",)
os.environ.setdefault("TIDINGS_EXTRA_PROVIDER_HOSTS", ",".join(LOOPBACK_PROVIDER_HOSTS))


@pytest.fixture(scope="session", params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """A migrated database per backend, shared by the session (tables are emptied after each test)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'tidings.db'}"
    else:
        assert PG_URL
        url = PG_URL
        reset = Database(url)
        with reset.engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        reset.dispose()
    db = Database(url)
    db.migrate()
    yield db
    db.dispose()


def _empty(db: Database) -> None:
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    with db.engine.begin() as conn:
        if db.engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for name in tables:
                conn.execute(text(f"DELETE FROM {name}"))


@pytest.fixture
def db(database: Database) -> Iterator[Database]:
    yield database
    _empty(database)


@pytest.fixture
def settings(db: Database, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        database_url=db.url,
        public_url="http://127.0.0.1:9",
        secret_key=Fernet.generate_key().decode(),
        poll_interval=0.02,
        extra_provider_hosts=LOOPBACK_PROVIDER_HOSTS,
        sandbox=SandboxSettings(min_latency=0.0, max_latency=0.01, seed="tests"),
    )


@pytest.fixture
def box(settings: Settings) -> SecretBox:
    return SecretBox.from_settings(settings.secret_key, settings.data_dir)


@pytest.fixture
def app(settings: Settings, db: Database) -> FastAPI:
    from tidings.app import create_app

    return create_app(settings, db)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    from tidings.app import asgi_app

    with TestClient(asgi_app(app)) as c:
        yield c


def new_account(db: Database, box: SecretBox, name: str = "Acme") -> NewAccount:
    with db.session() as session:
        return create_account(session, box, name)


def basic(account: NewAccount) -> dict[str, str]:
    token = base64.b64encode(f"{account.account_id}:{account.passcode}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def clevertap(account: NewAccount) -> dict[str, str]:
    return {"X-CleverTap-Account-Id": account.account_id, "X-CleverTap-Passcode": account.passcode}


@pytest.fixture
def account(db: Database, box: SecretBox) -> NewAccount:
    return new_account(db, box)


@pytest.fixture
def auth(account: NewAccount) -> dict[str, str]:
    return basic(account)


def with_public_url(settings: Settings, url: str) -> Settings:
    return settings.model_copy(update={"public_url": url})


@pytest.fixture
def live(settings: Settings, db: Database) -> Iterator[tuple[str, FastAPI]]:
    """The real server on a loopback port, with its worker running (the sandbox calls its webhooks)."""
    from tidings.app import asgi_app, create_app
    from tidings.server import bind, serving

    sock = bind()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    app = create_app(with_public_url(settings, url), db, run_worker=True)
    with serving(asgi_app(app), sock):
        yield url, app
