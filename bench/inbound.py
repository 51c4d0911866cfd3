"""Inbound messages applied per second by ``tidings serve --no-worker`` (issue 12), next to the status
webhooks of the same run: the same server, the same data, the same load generator and HTTP path.

    .venv/bin/python -m bench.inbound --messages 5000                  # Vonage shape, one message a POST
    .venv/bin/python -m bench.inbound --messages 5000 --meta 20        # Meta shape, 20 messages a POST
    .venv/bin/python -m bench.inbound --database-url postgresql+psycopg://postgres@127.0.0.1/tidings_h6

N messages are recorded as sent to N opted-in profiles (a campaign, as ``bench.webhooks`` does), then
posted, signed as the provider signs them, with many requests in flight over kept-alive connections:

1. their three status callbacks (submitted/sent, delivered, read), all of one kind before the next:
   ``bench.webhooks``' figure, measured here the same way on the same data;
2. N inbound messages, a mix that resembles what follows a campaign (``MIX``): text replies from the
   campaign's recipients (half quote the message they answer, half do not: attribution finds the last
   message sent to the number; both mark it replied), messages from numbers Tidings does not know (a
   profile is made, opted out), STOP from recipients (every profile with the number opted out, the
   consent history written, a confirmation queued in the ledger), and repeats of messages delivered
   earlier (the provider sending one again: kept once).

Each phase reports what was applied a second (the clock covers only the sending: the requests are built and
signed beforehand) and the webhook's answer time per request, p50 and p95, as the load generator sees it
(from writing the request to reading the whole answer; with many in flight this includes the wait for the
group commit holding it). The benchmark then checks the database: every message kept once, the replies
marked replied, the STOPs opted out with a confirmation queued, a profile for each unknown number.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import math
import os
import random
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import uvloop
from cryptography.fernet import Fernet
from sqlalchemy import func, select

from bench.loadgen import _answer, http_request
from bench.throughput import reset
from bench.webhooks import HOST, META_STATUS, SECRET, STATUSES, meta_requests, sent_messages, vonage_requests
from tests.cluster import free_port, start_server, stop, tidings_env
from tidings.conversations.models import Conversation, InboundMessage
from tidings.db import Database
from tidings.delivery.models import Message
from tidings.profiles.models import Profile
from tidings.providers.vonage import sign_webhook
from tidings.secrets import SecretBox

# Share of the inbound messages of each kind; the rest are replies from the campaign's recipients.
MIX = {"unknown": 0.08, "stop": 0.04, "repeat": 0.10}
REPLIES = (
    "Yes, interested!",
    "What is the price?",
    "Is this available in Pune?",
    "ok",
    "Thanks 🙏",
    "Tell me more",
)
BUSINESS = "14157386102"


@dataclass(frozen=True)
class Inbound:
    """One inbound message as the provider reports it."""

    uuid: str
    sender: str  # E.164 digits without '+', as providers write them
    text: str
    context: str | None = None  # the provider id of the message it quotes
    name: str | None = None  # the user's WhatsApp profile name


@dataclass
class Plan:
    """The inbound messages in the order they are posted (repeats included), and what they should do."""

    messages: list[Inbound] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)
    stop_numbers: set[str] = field(default_factory=set)
    unknown_numbers: set[str] = field(default_factory=set)
    replied: set[int] = field(default_factory=set)  # ledger ids the replies answer


def plan_inbound(sent: Sequence[tuple[int, str, str]], n: int, gap: int, seed: int = 1) -> Plan:
    """N inbound messages for the sent messages ``(ledger id, provider id, phone)``. A repeat is a
    message ``gap`` or more places earlier, so that its first copy is committed when it comes."""
    rnd = random.Random(seed)
    plan = Plan()
    firsts: list[Inbound] = []
    recipients = list(sent)
    rnd.shuffle(recipients)
    next_recipient = 0
    for k in range(n):
        roll = rnd.random()
        if roll < MIX["repeat"] and len(firsts) > gap:
            plan.messages.append(firsts[rnd.randrange(len(firsts) - gap)])
            plan.kinds["repeat"] += 1
            continue
        roll = rnd.random()
        if roll < MIX["unknown"]:
            number = f"9197{20_000_000 + k}"
            message = Inbound(f"in-{k}", number, rnd.choice(REPLIES), name=f"Guest {k}")
            plan.unknown_numbers.add("+" + number)
            kind = "unknown"
        else:
            message_id, provider_id, phone = recipients[next_recipient % len(recipients)]
            next_recipient += 1
            if roll < MIX["unknown"] + MIX["stop"]:
                message = Inbound(f"in-{k}", phone.lstrip("+"), "STOP")
                plan.stop_numbers.add(phone)
                kind = "stop"
            else:
                quoted = provider_id if rnd.random() < 0.5 else None
                message = Inbound(f"in-{k}", phone.lstrip("+"), rnd.choice(REPLIES), context=quoted)
                kind = "reply"
            plan.replied.add(message_id)
        plan.messages.append(message)
        firsts.append(message)
        plan.kinds[kind] += 1
    return plan


def _vonage_body(message: Inbound, stamp: str) -> bytes:
    payload: dict[str, object] = {
        "message_uuid": message.uuid,
        "to": BUSINESS,
        "from": message.sender,
        "timestamp": stamp,
        "channel": "whatsapp",
        "message_type": "text",
        "text": message.text,
    }
    if message.context:
        payload["context"] = {"message_uuid": message.context, "message_from": BUSINESS}
    if message.name:
        payload["profile"] = {"name": message.name}
    return json.dumps(payload).encode()


def inbound_requests(port: int, path: str, messages: Sequence[Inbound], meta: int) -> list[bytes]:
    """The POSTs, signed: one message each (Vonage, with an HS256 JWT), or ``meta`` messages each with
    their senders in ``contacts`` (Meta, ``X-Hub-Signature-256``)."""
    requests = []
    if not meta:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        for message in messages:
            body = _vonage_body(message, stamp)
            headers = {
                "Authorization": sign_webhook(body, SECRET, "bench"),
                "Content-Type": "application/json",
            }
            requests.append(http_request(HOST, port, path, body, headers))
        return requests
    stamp = str(int(time.time()))
    for i in range(0, len(messages), meta):
        items, contacts = [], []
        for message in messages[i : i + meta]:
            item: dict[str, object] = {
                "from": message.sender,
                "id": message.uuid,
                "timestamp": stamp,
                "type": "text",
                "text": {"body": message.text},
            }
            if message.context:
                item["context"] = {"from": BUSINESS, "id": message.context}
            items.append(item)
            contacts.append({"profile": {"name": message.name or "WhatsApp user"}, "wa_id": message.sender})
        value = {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": BUSINESS, "phone_number_id": "1555000"},
            "contacts": contacts,
            "messages": items,
        }
        change = {"field": "messages", "value": value}
        body = json.dumps(
            {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [change]}]}
        ).encode()
        signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        headers = {"X-Hub-Signature-256": signature, "Content-Type": "application/json"}
        requests.append(http_request(HOST, port, path, body, headers))
    return requests


@dataclass
class Timed:
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    answers: list[bytes] = field(default_factory=list)

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


async def blast_timed(port: int, requests: Sequence[bytes], connections: int, timed: Timed) -> None:
    """``bench.loadgen.blast`` that also times each request (write to last byte of its answer) and keeps
    the answers' bodies (read after the clock stops)."""
    queue = iter(requests)
    opened = [await asyncio.open_connection(HOST, port) for _ in range(connections)]
    clock = time.perf_counter

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for request in queue:
            began = clock()
            writer.write(request)
            status, body = await _answer(reader)
            timed.latencies_ms.append((clock() - began) * 1000)
            assert status == 200, f"{status}: {body[:300]!r}"
            timed.answers.append(body)

    began = clock()
    await asyncio.gather(*(run(reader, writer) for reader, writer in opened))
    timed.seconds += clock() - began
    for _, writer in opened:
        writer.close()


async def post_statuses(
    port: int, path: str, sent: list[tuple[int, str]], connections: int, meta: int
) -> Timed:
    """As ``bench.webhooks.post_all``: every status of one kind, then the next."""
    timed = Timed()
    for status in STATUSES:
        if meta:
            requests = meta_requests(HOST, port, path, sent, META_STATUS.get(status, status), meta)
        else:
            requests = vonage_requests(HOST, port, path, sent, status)
        await blast_timed(port, requests, connections, timed)
    return timed


def check(db: Database, account_id: str, plan: Plan, answered: Counter[str]) -> list[str]:
    """What the database holds against what the plan should have done; the problems found."""
    problems = []
    firsts = len(plan.messages) - plan.kinds["repeat"]
    if answered["inbound_new"] != firsts or answered["inbound_repeat"] != plan.kinds["repeat"]:
        problems.append(f"the answers counted {dict(answered)}; planned {dict(plan.kinds)}")
    with db.read() as session:

        def count(*where: object) -> int:
            return int(session.scalar(select(func.count()).where(*where)) or 0)

        if (kept := count(InboundMessage.account_id == account_id)) != firsts:
            problems.append(f"{kept} inbound messages kept, {firsts} sent once")
        replied = count(Message.account_id == account_id, Message.replied_at.is_not(None))
        if replied != len(plan.replied):
            problems.append(f"{replied} ledger rows replied, {len(plan.replied)} answered")
        numbers = plan.stop_numbers | plan.unknown_numbers
        opted = set(
            session.scalars(
                select(Profile.phone).where(
                    Profile.account_id == account_id,
                    Profile.phone.in_(numbers),
                    Profile.whatsapp_opt_in.is_(False),
                )
            )
        )
        if opted != numbers:
            problems.append(f"{len(numbers - opted)} of the STOP and unknown numbers are not opted out")
        confirmations = count(
            Message.account_id == account_id,
            Message.conversation_id.is_not(None),
            Message.occurrence.like("consent:%"),
        )
        if confirmations != len(plan.stop_numbers):
            problems.append(f"{confirmations} confirmations queued for {len(plan.stop_numbers)} STOPs")
        conversations = count(Conversation.account_id == account_id)
        senders = len({m.sender for m in plan.messages})
        if conversations != senders:
            problems.append(f"{conversations} conversations for {senders} numbers")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=5000, help="messages sent, and inbound messages")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temporary folder")
    parser.add_argument("--meta", type=int, default=0, help="post Meta's shape, this many events a POST")
    parser.add_argument("--processes", type=int, default=1, help="web processes (tidings serve --processes)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tidings-inbound-"))
    database_url = args.database_url or f"sqlite:///{workdir / 'bench.db'}"
    key = Fernet.generate_key().decode()
    box = SecretBox.from_settings(key, workdir)
    db = Database(database_url)
    reset(db)
    account_id, sent = sent_messages(db, box, args.messages, bool(args.meta))
    with db.read() as session:
        phones = dict(
            session.execute(
                select(Message.id, Message.to_phone).where(Message.account_id == account_id)
            ).all()
        )
    gap = max(1000, 4 * args.concurrency * max(1, args.meta))
    plan = plan_inbound([(i, uuid, str(phones[i])) for i, uuid in sent], args.messages, gap)
    port = free_port()
    server = start_server(
        tidings_env(database_url, workdir, key), port, workdir / "server.log", args.processes
    )
    load = [os.getloadavg()[0]]
    try:
        if args.meta:
            status_path = inbound_path = f"/webhooks/meta/{account_id}"
        else:
            status_path = f"/webhooks/sandbox/{account_id}/status"
            inbound_path = f"/webhooks/sandbox/{account_id}/inbound"
        statuses = uvloop.run(post_statuses(port, status_path, sent, args.concurrency, args.meta))
        load.append(os.getloadavg()[0])
        requests = inbound_requests(port, inbound_path, plan.messages, args.meta)
        inbound = Timed()
        uvloop.run(blast_timed(port, requests, args.concurrency, inbound))
        load.append(os.getloadavg()[0])
    finally:
        stop(server)
    answered: Counter[str] = Counter()
    for body in inbound.answers:
        answered.update({k: v for k, v in json.loads(body).items() if isinstance(v, int)})
    problems = check(db, account_id, plan, answered)
    with db.read() as session:
        read = session.scalar(
            select(func.count()).where(Message.account_id == account_id, Message.state == "read")
        )
    db.dispose()
    if read != len(sent):
        problems.append(f"{read} of {len(sent)} messages are read")
    backend = database_url.split(":", 1)[0].split("+", 1)[0]
    shape = f"Meta, {args.meta} events a POST" if args.meta else "Vonage, one event a POST"
    print(
        f"{backend}, {args.processes} web process(es), {shape}, {args.concurrency} in flight; "
        f"load average {' → '.join(f'{x:.1f}' for x in load)} on {os.cpu_count()} cores"
    )
    mix = ", ".join(f"{plan.kinds[k]:,} {k}" for k in ("reply", "unknown", "stop", "repeat"))
    print(
        f"  status webhooks:  {3 * len(sent) / statuses.seconds:8,.0f} a second ({3 * len(sent):,} applied); "
        f"answer p50 {statuses.percentile(50):.1f} ms, p95 {statuses.percentile(95):.1f} ms"
    )
    print(
        f"  inbound messages: {len(plan.messages) / inbound.seconds:8,.0f} a second ({len(plan.messages):,}: "
        f"{mix}); answer p50 {inbound.percentile(50):.1f} ms, p95 {inbound.percentile(95):.1f} ms"
    )
    for problem in problems:
        print(f"  PROBLEM: {problem}")
    if problems:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
