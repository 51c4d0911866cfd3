"""Status webhooks handled per second by ``tidings serve --no-worker``: Vonage-format status callbacks (one
status a POST, signed with an HS256 JWT and a payload hash, as Vonage and the sandbox send them), three
per message (submitted, delivered, read), posted with many in flight, each applied to the ledger.

    .venv/bin/python -m bench.webhooks --messages 5000
    .venv/bin/python -m bench.webhooks --database-url postgresql+psycopg://postgres@127.0.0.1/tidings_f
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import uvloop
from cryptography.fernet import Fernet
from sqlalchemy import func, select

from bench.loadgen import blast, http_request
from bench.throughput import plan, reset, start_now
from tests.cluster import free_port, start_server, stop, tidings_env
from tidings.accounts.models import Integration
from tidings.db import Database, utcnow
from tidings.delivery.claims import claim_batch
from tidings.delivery.models import Message
from tidings.delivery.outcomes import Attempt, record_attempts
from tidings.providers.base import SendResult
from tidings.providers.vonage import sign_webhook
from tidings.secrets import SecretBox

STATUSES = ("submitted", "delivered", "read")
META_STATUS = {"submitted": "sent"}
HOST = "127.0.0.1"


SECRET = "bench-signature-secret-0123456789abcdef"


def sent_messages(db: Database, box: SecretBox, n: int, meta: bool) -> tuple[str, list[tuple[int, str]]]:
    """N messages recorded as sent on a sandbox (or Meta) account: (account id, [(id, message id)])."""
    account_id, campaign_id = plan(db, box, "http://127.0.0.1:9", n, None)
    with db.session() as session:
        integration = session.get(Integration, account_id)
        assert integration is not None
        if meta:
            integration.secrets = box.seal({"access_token": "t", "app_secret": SECRET})
        else:
            integration.kind, integration.settings = "sandbox", {}
            integration.secrets = box.seal({"signature_secret": SECRET})
        start_now(session, campaign_id)
    sent: list[tuple[int, str]] = []
    while True:
        with db.session() as session:
            claimed = claim_batch(session, 1000, timedelta(seconds=600), utcnow())
            if not claimed:
                break
            record_attempts(
                session,
                [Attempt(c, "sandbox", result=SendResult.accepted(f"uuid-{c.id}")) for c in claimed],
                utcnow(),
                max_attempts=5,
                retry_base=1,
                retry_cap=1,
            )
        sent.extend((c.id, f"uuid-{c.id}") for c in claimed)
    return account_id, sent


def meta_requests(
    host: str, port: int, path: str, sent: list[tuple[int, str]], status: str, per_post: int
) -> list[bytes]:
    """Meta's shape: several statuses in one POST signed with ``X-Hub-Signature-256``."""
    requests = []
    for i in range(0, len(sent), per_post):
        statuses = [
            {
                "id": wamid,
                "status": status,
                "timestamp": str(int(time.time())),
                "recipient_id": "919810000000",
                "biz_opaque_callback_data": str(message_id),
            }
            for message_id, wamid in sent[i : i + per_post]
        ]
        change = {"field": "messages", "value": {"messaging_product": "whatsapp", "statuses": statuses}}
        body = json.dumps(
            {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [change]}]}
        ).encode()
        signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        headers = {"X-Hub-Signature-256": signature, "Content-Type": "application/json"}
        requests.append(http_request(host, port, path, body, headers))
    return requests


def vonage_requests(host: str, port: int, path: str, sent: list[tuple[int, str]], status: str) -> list[bytes]:
    """Vonage's (and the sandbox's) shape: one status a POST, signed with an HS256 JWT."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    requests = []
    for message_id, uuid in sent:
        body = json.dumps(
            {
                "message_uuid": uuid,
                "to": "919810000000",
                "from": "14157386102",
                "timestamp": stamp,
                "status": status,
                "channel": "whatsapp",
                "client_ref": str(message_id),
            }
        ).encode()
        headers = {"Authorization": sign_webhook(body, SECRET, "bench"), "Content-Type": "application/json"}
        requests.append(http_request(host, port, path, body, headers))
    return requests


async def post_all(port: int, path: str, sent: list[tuple[int, str]], connections: int, meta: int) -> float:
    """All statuses of one kind, then the next (submitted, delivered, read, as they happen); the rate
    counts only the time spent sending, the requests are built and signed beforehand."""
    elapsed = 0.0
    for status in STATUSES:
        if meta:
            requests = meta_requests(HOST, port, path, sent, META_STATUS.get(status, status), meta)
        else:
            requests = vonage_requests(HOST, port, path, sent, status)
        elapsed += await blast(HOST, port, requests, connections)
    return 3 * len(sent) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temporary folder")
    parser.add_argument("--meta", type=int, default=0, help="post Meta's shape, this many statuses a POST")
    parser.add_argument("--processes", type=int, default=1, help="web processes (tidings serve --processes)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tidings-webhooks-"))
    database_url = args.database_url or f"sqlite:///{workdir / 'bench.db'}"
    key = Fernet.generate_key().decode()
    box = SecretBox.from_settings(key, workdir)
    db = Database(database_url)
    reset(db)
    account_id, sent = sent_messages(db, box, args.messages, bool(args.meta))
    port = free_port()
    server = start_server(
        tidings_env(database_url, workdir, key), port, workdir / "server.log", args.processes
    )
    try:
        path = f"/webhooks/meta/{account_id}" if args.meta else f"/webhooks/sandbox/{account_id}/status"
        rate = uvloop.run(post_all(port, path, sent, args.concurrency, args.meta))
    finally:
        stop(server)
    with db.session() as session:
        read = session.scalar(select(func.count()).where(Message.state == "read")) or 0
    db.dispose()
    assert read == len(sent), f"{read} of {len(sent)} messages are read"
    backend = database_url.split(":", 1)[0].split("+", 1)[0]
    shape = f"Meta, {args.meta} statuses a POST" if args.meta else "Vonage, one status a POST"
    print(
        f"status webhooks ({backend}, {args.processes} web process(es), {shape}): {rate:,.0f} a second "
        f"({3 * len(sent):,} applied)"
    )


if __name__ == "__main__":
    main()
