"""Status webhooks handled per second by ``tidings serve --no-worker``: Vonage-format status callbacks (one
status a POST, signed with an HS256 JWT and a payload hash, as Vonage and the sandbox send them), three
per message (submitted, delivered, read), posted with many in flight, each applied to the ledger.

    .venv/bin/python -m bench.webhooks --messages 5000
    .venv/bin/python -m bench.webhooks --database-url postgresql+psycopg://postgres@127.0.0.1/tidings_f
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.fernet import Fernet
from sqlalchemy import func, select

from bench.cluster import free_port, start_server, stop, tidings_env
from bench.throughput import plan, reset
from tidings.accounts.models import Integration
from tidings.campaigns.service import start_campaign
from tidings.db import Database, utcnow
from tidings.delivery.http import provider_client
from tidings.delivery.models import Message
from tidings.delivery.service import Attempt, claim_batch, record_attempts
from tidings.providers.base import SendResult
from tidings.providers.vonage import sign_webhook
from tidings.secrets import SecretBox

STATUSES = ("submitted", "delivered", "read")


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
        start_campaign(session, campaign_id, utcnow())
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


async def post_meta(url: str, sent: list[tuple[int, str]], concurrency: int, per_post: int) -> float:
    """Meta's shape: several statuses in one signed POST."""
    http = provider_client(timeout=60)
    slots = asyncio.Semaphore(concurrency)

    async def one(items: list[tuple[int, str]], status: str) -> None:
        statuses = [
            {
                "id": wamid,
                "status": status,
                "timestamp": str(int(time.time())),
                "recipient_id": "919810000000",
                "biz_opaque_callback_data": str(message_id),
            }
            for message_id, wamid in items
        ]
        change = {"field": "messages", "value": {"messaging_product": "whatsapp", "statuses": statuses}}
        body = json.dumps(
            {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [change]}]}
        )
        raw = body.encode()
        signature = "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
        async with slots:
            answer = await http.post(
                url,
                content=raw,
                headers={"X-Hub-Signature-256": signature, "Content-Type": "application/json"},
            )
        assert answer.status_code == 200, answer.text

    chunks = [sent[i : i + per_post] for i in range(0, len(sent), per_post)]
    began = time.perf_counter()
    for status in ("sent", "delivered", "read"):
        await asyncio.gather(*(one(chunk, status) for chunk in chunks))
    elapsed = time.perf_counter() - began
    await http.aclose()
    return 3 * len(sent) / elapsed


async def post_all(url: str, secret: str, sent: list[tuple[int, str]], concurrency: int) -> float:
    http = provider_client(timeout=60)
    slots = asyncio.Semaphore(concurrency)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    async def one(message_id: int, uuid: str, status: str) -> None:
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
        headers = {"Authorization": sign_webhook(body, secret, "bench"), "Content-Type": "application/json"}
        async with slots:
            answer = await http.post(url, content=body, headers=headers)
        assert answer.status_code == 200, answer.text

    began = time.perf_counter()
    for status in STATUSES:  # in order, as they happen: all submitted, then delivered, then read
        await asyncio.gather(*(one(i, u, status) for i, u in sent))
    elapsed = time.perf_counter() - began
    await http.aclose()
    return 3 * len(sent) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temporary folder")
    parser.add_argument("--meta", type=int, default=0, help="post Meta's shape, this many statuses a POST")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tidings-webhooks-"))
    database_url = args.database_url or f"sqlite:///{workdir / 'bench.db'}"
    key = Fernet.generate_key().decode()
    box = SecretBox.from_settings(key, workdir)
    db = Database(database_url)
    reset(db)
    account_id, sent = sent_messages(db, box, args.messages, bool(args.meta))
    port = free_port()
    server = start_server(tidings_env(database_url, workdir, key), port, workdir / "server.log")
    try:
        if args.meta:
            url = f"http://127.0.0.1:{port}/webhooks/meta/{account_id}"
            rate = asyncio.run(post_meta(url, sent, args.concurrency, args.meta))
        else:
            url = f"http://127.0.0.1:{port}/webhooks/sandbox/{account_id}/status"
            rate = asyncio.run(post_all(url, SECRET, sent, args.concurrency))
    finally:
        stop(server)
    with db.session() as session:
        read = session.scalar(select(func.count()).where(Message.state == "read")) or 0
    db.dispose()
    assert read == len(sent), f"{read} of {len(sent)} messages are read"
    backend = database_url.split(":", 1)[0].split("+", 1)[0]
    shape = f"Meta, {args.meta} statuses a POST" if args.meta else "Vonage, one status a POST"
    print(
        f"status webhooks ({backend}, one web process, {shape}): {rate:,.0f} a second "
        f"({3 * len(sent):,} applied)"
    )


if __name__ == "__main__":
    main()
