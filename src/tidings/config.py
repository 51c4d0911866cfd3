"""Settings, read from ``TIDINGS_*`` environment variables (each is documented in the README) with
pydantic-settings: ``Settings()`` reads the environment, and a value given by keyword wins over it. An
empty variable counts as unset (the default applies). A bad value stops the process at start, naming the
setting (``poll_interval`` for ``TIDINGS_POLL_INTERVAL``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def parse_provider_hosts(raw: str) -> tuple[str, ...]:
    """``TIDINGS_EXTRA_PROVIDER_HOSTS``: comma-separated ``host`` or ``host:port`` (lower-cased)."""
    hosts = []
    for part in raw.split(","):
        item = part.strip().lower()
        if not item:
            continue
        host, colon, port = item.rpartition(":") if ":" in item else (item, "", "")
        if (
            not host
            or "/" in item
            or "@" in item
            or (colon and not (port.isdigit() and 0 < int(port) < 65536))
        ):
            raise ValueError(
                f"TIDINGS_EXTRA_PROVIDER_HOSTS takes comma-separated host or host:port, got {part.strip()!r}"
            )
        hosts.append(item)
    return tuple(hosts)


def extra_provider_hosts() -> tuple[str, ...]:
    """The extra provider hosts of this process's environment."""
    return parse_provider_hosts(os.environ.get("TIDINGS_EXTRA_PROVIDER_HOSTS", ""))


class SandboxSettings(BaseSettings):
    """How the built-in WhatsApp sandbox behaves (rates are probabilities from 0 to 1);
    ``TIDINGS_SANDBOX_*``."""

    model_config = SettingsConfigDict(env_prefix="TIDINGS_SANDBOX_", env_ignore_empty=True, frozen=True)

    delivery_rate: float = 0.95
    read_rate: float = 0.7
    reply_rate: float = 0.1
    failure_rate: float = 0.02
    min_latency: float = 0.05
    max_latency: float = 0.5
    seed: str | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TIDINGS_", env_ignore_empty=True, frozen=True)

    data_dir: Path = Path("./var")
    database_url: str = Field(default="", description="Default: SQLite in the data folder.")
    public_url: str = "http://127.0.0.1:8000"
    secret_key: str | None = None
    dispatch_batch: int = 200
    dispatch_concurrency: int = 64
    poll_interval: float = 0.2
    lease_seconds: float = 60.0
    max_attempts: int = 5
    retry_base: float = 2.0  # seconds before the first retry; doubles with each attempt (with jitter)
    retry_cap: float = 900.0
    template_sync_seconds: float = 3600.0
    # --- the delivery engine at scale (README, "Settings" and "Deployment") ---
    redis_url: str | None = None  # shares each sender's rate limit between processes
    reconcile_seconds: float = 300.0  # how long a dispatched, unanswered send waits for its status webhook
    unknown_outcome: Literal["requeue", "fail"] = "requeue"  # then: send again, or fail (outcome_unknown)
    pair_interval: float = 6.0  # seconds between two messages to the same user from one sender (0: off)
    rate_safety: float = 0.012  # seconds of timing jitter the rate limiter absorbs (spacing (1 + s) / rate)
    pause_error_rate: float = 0.5  # a campaign pauses itself at this share of errors …
    pause_min_attempts: int = 100  # … among at least this many attempts …
    pause_window: float = 60.0  # … in this many seconds (per worker); pause_error_rate 0 turns it off
    metrics_port: int = 0  # ``tidings worker`` serves /metrics on this port (0: not served)
    log_format: Literal["text", "json"] = "text"  # "json": one JSON object a line
    # Hosts (``host`` or ``host:port``) a provider base URL may name besides the providers' own: a regional
    # endpoint, a test stand-in on loopback. http is allowed for these only.
    extra_provider_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)

    @field_validator("unknown_outcome", "log_format", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("extra_provider_hosts", mode="before")
    @classmethod
    def _hosts(cls, value: Any) -> Any:
        return parse_provider_hosts(value) if isinstance(value, str) else value

    @field_validator("public_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="after")
    def _sqlite_by_default(self) -> Settings:
        if not self.database_url:  # (frozen: set once, while the object is built)
            object.__setattr__(self, "database_url", f"sqlite:///{self.data_dir / 'tidings.db'}")
        return self
