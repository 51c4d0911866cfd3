"""Prometheus metrics and structured logs.

Every process counts what it does itself (Prometheus sums the processes): a worker its sends, retries and
rate-limit waits; a web server the webhooks it handled. ``/metrics`` on the web server also reports the
ledger's queue depth (read from the database at scrape time); ``tidings worker`` serves its own metrics
on ``TIDINGS_METRICS_PORT``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from tidings.db import Database, utcnow
from tidings.delivery.models import Message

SENDS = Counter(
    "tidings_sends_total",
    "Provider calls by provider and outcome (accepted, retry, failed, uncertain, skipped).",
    ["provider", "outcome"],
)
SEND_SECONDS = Histogram(
    "tidings_send_seconds",
    "Time of one provider call.",
    ["provider"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RETRIES = Counter("tidings_retries_total", "Retry-later answers by provider and code.", ["provider", "code"])
RATE_WAIT_SECONDS = Histogram(
    "tidings_rate_limit_wait_seconds",
    "Time a send waited for its sender's rate-limit slot.",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
)
RATE_LOST_SLOTS = Counter(
    "tidings_rate_limit_lost_slots_total", "Slots given up because a send woke up too late for them."
)
PAIR_WAITS = Counter("tidings_pair_rate_waits_total", "Messages held back by WhatsApp's pair rate.")
TIER_SKIPS = Counter("tidings_messaging_limit_skips_total", "Messages skipped over the messaging-limit tier.")
SEND_TIME_REFUSALS = Counter(
    "tidings_send_time_refusals_total",
    "Messages settled at their dispatch mark instead of sent, by reason (not_opted_in, dnd, "
    "global_frequency_cap, campaign_frequency_cap).",
    ["reason"],
)
DND_DELAYS = Counter(
    "tidings_dnd_delays_total", "Messages whose send moment fell inside DND: requeued for its end."
)
OPT_OUT_SETTLED = Counter(
    "tidings_opt_out_settled_total", "Unsent messages settled as not_opted_in when their user opted out."
)
WAITING_FOR_PROOF = Gauge(
    "tidings_reconcile_waiting_for_proof",
    "Dispatched messages with no status past TIDINGS_RECONCILE_SECONDS, kept (not sent again) because no "
    "later message of their sender got a status yet: the webhook path is not shown to work. As seen by "
    "this worker's last reconciliation (every worker sees the same rows).",
)
RECONCILED = Counter(
    "tidings_reconciled_total",
    "Lost claims recovered: requeued_undispatched, requeued_unknown, failed_unknown.",
    ["action"],
)
PAUSES = Counter("tidings_campaign_pauses_total", "Campaigns paused for their error rate.")
LOOP_LAG = Histogram(
    "tidings_event_loop_lag_seconds",
    "How late a worker's event loop woke up (sends are paced on it).",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
)
IN_HAND = Gauge("tidings_worker_in_hand", "Claimed rows this worker holds (not yet recorded).")
IN_FLIGHT = Gauge("tidings_worker_in_flight", "Provider calls in flight in this worker.")
WEBHOOKS = Counter(
    "tidings_webhooks_total", "Webhook requests by provider and HTTP status.", ["provider", "status"]
)
WEBHOOK_SECONDS = Histogram(
    "tidings_webhook_seconds",
    "Time to handle one webhook request.",
    ["provider"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)


class LedgerCollector(Collector):
    """Queue depth at scrape time: rows waiting (due now or later) and being sent."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterable[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "tidings_queue_depth",
            "Ledger rows waiting to be sent, by state (queued_due: due now).",
            labels=["state"],
        )
        now = utcnow()
        try:
            with self.db.session() as session:
                queued = session.scalar(select(func.count()).where(Message.state == "queued")) or 0
                due = (
                    session.scalar(
                        select(func.count()).where(Message.state == "queued", Message.next_attempt_at <= now)
                    )
                    or 0
                )
                sending = session.scalar(select(func.count()).where(Message.state == "sending")) or 0
        except Exception:  # a scrape must never fail because the database is busy
            logging.getLogger(__name__).warning("metrics: could not read the queue depth", exc_info=True)
            return
        gauge.add_metric(["queued"], queued)
        gauge.add_metric(["queued_due"], due)
        gauge.add_metric(["sending"], sending)
        yield gauge


_collector: LedgerCollector | None = None


def watch_ledger(db: Database) -> None:
    """Report this database's queue depth on /metrics (a process has one database; the last one wins)."""
    global _collector
    if _collector is None:
        _collector = LedgerCollector(db)
        REGISTRY.register(_collector)
    _collector.db = db


def exposition() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


# --- structured logs ------------------------------------------------------------------------------------

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and every ``extra={…}`` field."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request at INFO: thousands of lines a second from a busy worker.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
