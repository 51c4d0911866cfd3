"""Settings, read only from ``TIDINGS_*`` environment variables (each is documented in the README)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _env(name: str, default: str) -> str:
    return os.environ.get(f"TIDINGS_{name}", default)


def _float(name: str, default: float) -> float:
    raw = _env(name, str(default))
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"TIDINGS_{name} must be a number, got {raw!r}") from exc


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
    return parse_provider_hosts(_env("EXTRA_PROVIDER_HOSTS", ""))


def _choice(name: str, default: str, allowed: tuple[str, ...]) -> str:
    raw = _env(name, default).strip().lower()
    if raw not in allowed:
        raise ValueError(f"TIDINGS_{name} must be one of {', '.join(allowed)}, got {raw!r}")
    return raw


@dataclass(frozen=True)
class SandboxSettings:
    """How the built-in WhatsApp sandbox behaves (rates are probabilities from 0 to 1)."""

    delivery_rate: float = 0.95
    read_rate: float = 0.7
    reply_rate: float = 0.1
    failure_rate: float = 0.02
    min_latency: float = 0.05
    max_latency: float = 0.5
    seed: str | None = None

    @classmethod
    def from_env(cls) -> SandboxSettings:
        return cls(
            delivery_rate=_float("SANDBOX_DELIVERY_RATE", cls.delivery_rate),
            read_rate=_float("SANDBOX_READ_RATE", cls.read_rate),
            reply_rate=_float("SANDBOX_REPLY_RATE", cls.reply_rate),
            failure_rate=_float("SANDBOX_FAILURE_RATE", cls.failure_rate),
            min_latency=_float("SANDBOX_MIN_LATENCY", cls.min_latency),
            max_latency=_float("SANDBOX_MAX_LATENCY", cls.max_latency),
            seed=_env("SANDBOX_SEED", "") or None,
        )


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    public_url: str
    secret_key: str | None
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
    unknown_outcome: str = "requeue"  # then: "requeue" (send again) or "fail" (outcome_unknown)
    pair_interval: float = 6.0  # seconds between two messages to the same user from one sender (0: off)
    rate_safety: float = 0.012  # seconds of timing jitter the rate limiter absorbs (spacing (1 + s) / rate)
    pause_error_rate: float = 0.5  # a campaign pauses itself at this share of errors …
    pause_min_attempts: int = 100  # … among at least this many attempts …
    pause_window: float = 60.0  # … in this many seconds (per worker); pause_error_rate 0 turns it off
    metrics_port: int = 0  # ``tidings worker`` serves /metrics on this port (0: not served)
    log_format: str = "text"  # "text" or "json" (one JSON object a line)
    # Hosts (``host`` or ``host:port``) a provider base URL may name besides the providers' own: a regional
    # endpoint, a test stand-in on loopback. http is allowed for these only.
    extra_provider_hosts: tuple[str, ...] = ()
    sandbox: SandboxSettings = field(default_factory=SandboxSettings)

    @classmethod
    def from_env(cls) -> Settings:
        data_dir = Path(_env("DATA_DIR", "./var"))
        return cls(
            data_dir=data_dir,
            database_url=_env("DATABASE_URL", f"sqlite:///{data_dir / 'tidings.db'}"),
            public_url=_env("PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/"),
            secret_key=_env("SECRET_KEY", "") or None,
            dispatch_batch=int(_float("DISPATCH_BATCH", cls.dispatch_batch)),
            dispatch_concurrency=int(_float("DISPATCH_CONCURRENCY", cls.dispatch_concurrency)),
            poll_interval=_float("POLL_INTERVAL", cls.poll_interval),
            lease_seconds=_float("LEASE_SECONDS", cls.lease_seconds),
            max_attempts=int(_float("MAX_ATTEMPTS", cls.max_attempts)),
            retry_base=_float("RETRY_BASE", cls.retry_base),
            retry_cap=_float("RETRY_CAP", cls.retry_cap),
            template_sync_seconds=_float("TEMPLATE_SYNC_SECONDS", cls.template_sync_seconds),
            redis_url=_env("REDIS_URL", "") or None,
            reconcile_seconds=_float("RECONCILE_SECONDS", cls.reconcile_seconds),
            unknown_outcome=_choice("UNKNOWN_OUTCOME", cls.unknown_outcome, ("requeue", "fail")),
            pair_interval=_float("PAIR_INTERVAL", cls.pair_interval),
            rate_safety=_float("RATE_SAFETY", cls.rate_safety),
            pause_error_rate=_float("PAUSE_ERROR_RATE", cls.pause_error_rate),
            pause_min_attempts=int(_float("PAUSE_MIN_ATTEMPTS", cls.pause_min_attempts)),
            pause_window=_float("PAUSE_WINDOW", cls.pause_window),
            metrics_port=int(_float("METRICS_PORT", cls.metrics_port)),
            log_format=_choice("LOG_FORMAT", cls.log_format, ("text", "json")),
            extra_provider_hosts=extra_provider_hosts(),
            sandbox=SandboxSettings.from_env(),
        )
