"""The inbox's data set (issue 12): one account with 100,000 conversations, and the inbox's queries timed
over it.

    .venv/bin/python -m bench.inbox_data --database-url sqlite:////work/bigdata/inbox/inbox.db
    .venv/bin/python -m bench.inbox_data --data-dir /work/bigdata/inbox-pg \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/tidings_h6
    .venv/bin/python -m bench.inbox_data --data-dir /work/bigdata/inbox --measure --runs 50

Filling empties the database (as bench/pages_data.py does: the SQLite file is removed, PostgreSQL's
``public`` schema DROPPED), migrates it and writes: the account, its admin and four agents, templates and
30 completed campaigns through the services; then in bulk (``pages_data.Bulk``: COPY on PostgreSQL,
large executemany batches on SQLite, secondary indexes built after the load) a profile per conversation
and the conversations themselves, in every state (a third waiting: new or pending; active with the window
open and closed, i.e. inactive; resolved), most assigned to one of the agents, two in five labelled,
three in five answering a campaign, each with one to five inbound messages, the campaign message it
answers and the agents' replies in the ledger, and a few notes. One conversation is a long thread (300
messages from the user, 150 answers), the one ``thread`` is timed on. A small second account has the same
kinds of rows, which must not matter. ``<data dir>/inbox-bench.json`` records the database, the sign-in,
and the ids the measurement and bench/pages.py open (``--inbox``).

``--measure`` times the inbox's service calls in this process, each ``--runs`` times after warm-ups, in a
read session of its own per call (as a page does): ``list_conversations`` (the default tab, each state's
tab, a label, a campaign, an agent, nobody's, a word of the messages, a name, a number), ``counts``, and
``get_conversation`` + ``thread`` of the long thread; p50 and p95 per call, and the verdict against 50 ms.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text, update

from bench.pages_data import EMAIL, FIRST, LAST, PASSWORD, Bulk, _reset, _stamp
from tidings.accounts.service import create_account
from tidings.campaigns.models import Campaign
from tidings.campaigns.schemas import CampaignCreate
from tidings.campaigns.service import create_campaign
from tidings.conversations.models import (
    Conversation,
    ConversationLabel,
    ConversationNote,
    InboundMessage,
    State,
)
from tidings.conversations.service import Filters, counts, get_conversation, list_conversations, thread
from tidings.db import Database
from tidings.delivery.models import Message
from tidings.profiles.models import Profile
from tidings.profiles.service import PHONE, WHATSAPP, name_key, profile_seed
from tidings.secrets import SecretBox
from tidings.templates.service import create_template
from tidings.users.service import create_user

MANIFEST = "inbox-bench.json"
LIMIT_MS = 50.0
AGENTS = 4
LABELS = ("vip", "order", "refund", "delivery", "complaint", "lead", "follow-up", "spam")
LABEL_WEIGHTS = (10, 30, 8, 20, 6, 15, 10, 1)
# Kept state, share; ``active`` conversations whose window has closed are shown as inactive.
STATES = {"new": 0.20, "pending": 0.12, "active": 0.18, "resolved": 0.50}
REPLIES = (
    "Yes, interested!",
    "What is the price?",
    "Is this available in Pune?",
    "When will my order arrive?",
    "I want a refund for order 4411",
    "Thanks 🙏",
    "Do you deliver on Sunday?",
    "Please call me back",
    "The size does not fit, can I exchange it?",
    "ok",
)
ANSWERS = (
    "Hi! Happy to help.",
    "It ships tomorrow.",
    "The price is ₹1,499 today.",
    "Your refund is on its way.",
    "Yes, we deliver on Sundays.",
)
TEMPLATES = (
    ("shop:spring_sale", "Hi {{1}}, our Spring Sale is on: 20% off everything until Sunday.", "MARKETING"),
    ("shop:back_in_stock", "Good news {{1}}: your favourite is back in stock.", "MARKETING"),
    ("shop:feedback", "Hi {{1}}, how was your order? Reply 1-5.", "UTILITY"),
)
CAMPAIGNS = 30


@dataclass(frozen=True)
class Sizes:
    conversations: int = 100_000
    long_thread: int = 300  # messages from the user in the one long thread (and half as many answers)

    def small(self) -> Sizes:
        return Sizes(conversations=max(50, self.conversations // 100), long_thread=20)


@dataclass
class Filled:
    account_id: str
    passcode: str
    conversations: int = 0
    inbound: int = 0
    messages: int = 0
    labels: int = 0
    conversation_id: int = 0  # the long thread
    campaign_id: int = 0  # a campaign many conversations answered
    assignee_id: int = 0  # an agent holding many conversations
    label: str = "order"
    word: str = "refund"  # a word of the users' messages
    name: str = "asha"  # part of a profile's name
    number: str = "98100012"  # part of a number


@dataclass
class _Ids:
    """The next id of each table written with explicit ids."""

    profile: int = 1
    conversation: int = 1


def _setup(
    db: Database, box: SecretBox, name: str, now: datetime, main: bool
) -> tuple[Filled, list[int], list[int]]:
    """An account, its users (an admin and the agents) and completed campaigns, through the services:
    (what was filled, the agents' user ids, the campaign ids)."""
    with db.session() as session:
        new = create_account(session, box, name, timezone="Asia/Kolkata")
        filled = Filled(new.account_id, new.passcode)
        email = EMAIL if main else f"admin-{new.account_id.lower()}@example.com"
        create_user(session, new.account_id, email=email, role="admin", password=PASSWORD)
        agents = [
            create_user(
                session,
                new.account_id,
                email=f"agent{k + 1}-{new.account_id.lower()}@example.com",
                role="agent",
                password=PASSWORD,
            ).id
            for k in range(AGENTS)
        ]
        templates = [
            create_template(session, new.account_id, name=t, body=body, category=category)
            for t, body, category in TEMPLATES
        ]
        campaign_ids = []
        for c in range(CAMPAIGNS):
            start = now - timedelta(days=30 - c, hours=3)
            spec = {
                "name": f"{['Spring Sale', 'Back in stock', 'Feedback'][c % 3]} {start:%d %b} #{c + 1}",
                "template_id": templates[c % 3].id,
                "variables": ['{{ Profile.Name | default: "friend" }}'],
                "target": {"all": True},
                "system_control_group": False,
                "send_at": start,
            }
            campaign = create_campaign(session, new.account_id, CampaignCreate.model_validate(spec))
            session.execute(
                update(Campaign)
                .where(Campaign.id == campaign.id)
                .values(
                    state="completed",
                    started_at=start,
                    completed_at=start + timedelta(hours=1),
                    created_at=start - timedelta(days=1),
                )
            )
            campaign_ids.append(campaign.id)
    return filled, agents, campaign_ids


@dataclass
class _Rows:
    profiles: list[tuple[Any, ...]]
    conversations: list[tuple[Any, ...]]
    labels: list[tuple[Any, ...]]
    inbound: list[tuple[Any, ...]]
    messages: list[tuple[Any, ...]]
    notes: list[tuple[Any, ...]]


PROFILE_COLUMNS = (
    "id",
    "account_id",
    "identity",
    "phone",
    "whatsapp_opt_in",
    "name_key",
    "properties",
    "seed",
    "created_at",
    "updated_at",
)
CONVERSATION_COLUMNS = (
    "id",
    "account_id",
    "phone",
    "profile_id",
    "state",
    "assignee_id",
    "last_inbound_at",
    "last_agent_at",
    "last_message_at",
    "waiting_since",
    "unread",
    "preview",
    "campaign_id",
    "created_at",
    "changed_at",
)
LABEL_COLUMNS = ("conversation_id", "label", "account_id")
INBOUND_COLUMNS = (
    "account_id",
    "profile_id",
    "from_phone",
    "provider",
    "provider_message_id",
    "kind",
    "text",
    "campaign_id",
    "received_at",
)
MESSAGE_COLUMNS = (
    "account_id",
    "campaign_id",
    "profile_id",
    "occurrence",
    "state",
    "to_phone",
    "params",
    "text",
    "conversation_id",
    "author_id",
    "provider",
    "provider_message_id",
    "attempts",
    "created_at",
    "sent_at",
    "delivered_at",
    "read_at",
    "replied_at",
)
NOTE_COLUMNS = ("account_id", "conversation_id", "author_id", "text", "created_at")


def _rows(
    filled: Filled,
    sizes: Sizes,
    ids: _Ids,
    agents: list[int],
    campaign_ids: list[int],
    now: datetime,
    rnd: random.Random,
    phone_base: int,
) -> _Rows:
    """Every bulk row of one account. Times: a conversation's last message within the last 30 days (a
    third of them within the last day), its user's messages before that, a minute or more apart."""
    rows = _Rows([], [], [], [], [], [])
    account_id = filled.account_id
    states, weights = list(STATES), list(STATES.values())
    long_one = ids.conversation  # the first conversation is the long thread
    for k in range(sizes.conversations):
        pid, cid = ids.profile, ids.conversation
        ids.profile += 1
        ids.conversation += 1
        phone = f"+91{phone_base + k}"
        name = f"{FIRST[k * 7919 % len(FIRST)]} {LAST[k * 104_729 % len(LAST)]}"
        identity = f"cust{pid:08d}"
        created = now - timedelta(days=60 + rnd.random() * 300)
        properties = {"Name": name, PHONE: phone, WHATSAPP: True}
        rows.profiles.append(
            (
                pid,
                account_id,
                identity,
                phone,
                True,
                name_key(name),
                json.dumps(properties),
                profile_seed(account_id, identity),
                _stamp(created),
                _stamp(created),
            )
        )
        state = "pending" if cid == long_one else rnd.choices(states, weights)[0]
        recent = rnd.random() < 0.35
        last_inbound = now - timedelta(hours=rnd.random() * (24 if recent else 24 * 30))
        n_inbound = sizes.long_thread if cid == long_one else 1 + int(rnd.random() ** 2 * 5)
        spacing = timedelta(minutes=1 + rnd.random() * 90)
        first_inbound = last_inbound - spacing * (n_inbound - 1)
        campaign_id = rnd.choice(campaign_ids[-12:]) if cid == long_one or rnd.random() < 0.6 else None
        assignee = None
        if state != "new" or rnd.random() < 0.3:
            assignee = agents[min(len(agents) - 1, int(rnd.random() ** 1.5 * len(agents)))]
        answered = state in ("active", "pending", "resolved")
        last_agent = None
        if answered:
            # an agent answered after the user's last message (active, resolved), or before it (pending)
            gap = timedelta(minutes=2 + rnd.random() * 120)
            last_agent = last_inbound + gap if state != "pending" else last_inbound - gap
        waiting = None
        if state == "new":
            waiting = first_inbound
        elif state == "pending":
            waiting = last_agent + timedelta(minutes=1) if last_agent else last_inbound
            waiting = min(waiting, last_inbound)
        last_message = max(t for t in (last_inbound, last_agent) if t is not None)
        unread = 0 if state in ("active", "resolved") else 1 + int(rnd.random() * min(3, n_inbound))
        texts = [rnd.choice(REPLIES) for _ in range(n_inbound)]
        preview = (
            texts[-1] if last_agent is None or last_inbound >= last_agent else "You: " + rnd.choice(ANSWERS)
        )
        rows.conversations.append(
            (
                cid,
                account_id,
                phone,
                pid,
                state,
                assignee,
                _stamp(last_inbound),
                _stamp(last_agent) if last_agent else None,
                _stamp(last_message),
                _stamp(waiting) if waiting else None,
                unread,
                preview[:200],
                campaign_id,
                _stamp(first_inbound - timedelta(minutes=5)),
                _stamp(last_message),
            )
        )
        if rnd.random() < 0.4:
            for label in set(rnd.choices(LABELS, LABEL_WEIGHTS, k=1 + int(rnd.random() < 0.3))):
                rows.labels.append((cid, label, account_id))
        sent_at = first_inbound - timedelta(minutes=5 + rnd.random() * 600)
        if campaign_id is not None:
            # the campaign message the first message answers: read, replied
            rows.messages.append(
                (
                    account_id,
                    campaign_id,
                    pid,
                    "",
                    "read",
                    phone,
                    json.dumps([name.split()[0]]),  # the template's one value, as rendered
                    None,
                    None,
                    None,
                    "sandbox",
                    f"sbx-{campaign_id}-{pid}",
                    1,
                    _stamp(sent_at - timedelta(seconds=5)),
                    _stamp(sent_at),
                    _stamp(sent_at + timedelta(seconds=3)),
                    _stamp(sent_at + timedelta(minutes=2)),
                    _stamp(first_inbound),
                )
            )
        for i, body in enumerate(texts):
            at = first_inbound + spacing * i
            rows.inbound.append(
                (
                    account_id,
                    pid,
                    phone,
                    "sandbox",
                    f"in-{account_id}-{cid}-{i}",
                    "text",
                    body,
                    campaign_id if i == 0 else None,
                    _stamp(at),
                )
            )
        if last_agent is not None:
            n_answers = sizes.long_thread // 2 if cid == long_one else 1 + int(rnd.random() < 0.4)
            for j in range(n_answers):
                at = last_agent - timedelta(minutes=3 * (n_answers - 1 - j))
                state_out = "read" if j < n_answers - 1 or rnd.random() < 0.7 else "delivered"
                rows.messages.append(
                    (
                        account_id,
                        None,
                        pid,
                        f"reply:{cid}-{j}",
                        state_out,
                        phone,
                        None,
                        rnd.choice(ANSWERS),
                        cid,
                        assignee or agents[0],
                        "sandbox",
                        f"sbx-r-{cid}-{j}",
                        1,
                        _stamp(at),
                        _stamp(at),
                        _stamp(at + timedelta(seconds=2)),
                        _stamp(at + timedelta(minutes=1)) if state_out == "read" else None,
                        None,
                    )
                )
        if rnd.random() < 0.05 or cid == long_one:
            rows.notes.append(
                (
                    account_id,
                    cid,
                    agents[0],
                    "Called the customer; waiting for the courier.",
                    _stamp(last_message),
                )
            )
    filled.conversation_id = long_one
    return rows


def fill(
    url: str,
    data_dir: Path,
    sizes: Sizes,
    *,
    seed: int = 1,
    say: Callable[[str], None] = print,
    analyze: bool = True,
) -> dict[str, Any]:
    """Empty, migrate and fill the database; write and return the manifest. ``analyze=False`` leaves the
    planner's statistics as they were (for a shared test database; see bench/pages_data.py)."""
    started = time.perf_counter()
    rnd = random.Random(seed)
    now = datetime.now(UTC).replace(microsecond=0)
    data_dir.mkdir(parents=True, exist_ok=True)
    box = SecretBox.from_settings(None, data_dir)
    _reset(url)
    db = Database(url)
    db.migrate()
    timings: dict[str, float] = {}

    def lap(label: str, since: float) -> float:
        timings[label] = round(time.perf_counter() - since, 1)
        say(f"{label}: {timings[label]:.1f} s")
        return time.perf_counter()

    at = time.perf_counter()
    accounts = [
        (*_setup(db, box, "inbox shop", now, True), sizes),
        (*_setup(db, box, "other shop", now, False), sizes.small()),
    ]
    at = lap("accounts, users, templates, campaigns (services)", at)
    ids = _Ids()
    made = []
    for n, (filled, agents, campaign_ids, account_sizes) in enumerate(accounts):
        made.append(
            _rows(filled, account_sizes, ids, agents, campaign_ids, now, rnd, 9_810_000_000 + n * 10**7)
        )
        filled.assignee_id = agents[0]
        filled.campaign_id = campaign_ids[-1]
    at = lap("rows made", at)
    bulk = _InboxBulk(db)
    for (filled, _, _, _), rows in zip(accounts, made, strict=True):
        bulk.write(Profile.__table__, PROFILE_COLUMNS, rows.profiles)  # type: ignore[arg-type]
        filled.conversations = bulk.write(Conversation.__table__, CONVERSATION_COLUMNS, rows.conversations)  # type: ignore[arg-type]
        filled.labels = bulk.write(ConversationLabel.__table__, LABEL_COLUMNS, rows.labels)  # type: ignore[arg-type]
        filled.inbound = bulk.write(InboundMessage.__table__, INBOUND_COLUMNS, rows.inbound)  # type: ignore[arg-type]
        filled.messages = bulk.write(Message.__table__, MESSAGE_COLUMNS, rows.messages)  # type: ignore[arg-type]
        bulk.write(ConversationNote.__table__, NOTE_COLUMNS, rows.notes)  # type: ignore[arg-type]
        at = lap(
            f"{filled.account_id}: {filled.conversations:,} conversations, {filled.inbound:,} inbound, "
            f"{filled.messages:,} ledger rows, {filled.labels:,} labels",
            at,
        )
    bulk.finish(say, analyze)
    if db.engine.dialect.name == "postgresql":
        db = Database(url)
        with db.engine.begin() as conn:
            conn.execute(
                text(
                    "SELECT setval(pg_get_serial_sequence('conversations', 'id'), "
                    "(SELECT coalesce(max(id), 0) + 1 FROM conversations), false)"
                )
            )
    db.dispose()
    at = lap("indexes and statistics", at)
    timings["total"] = round(time.perf_counter() - started, 1)
    manifest = {
        "database_url": url,
        "data_dir": str(data_dir),
        "created": now.isoformat(),
        "sizes": asdict(sizes),
        "email": EMAIL,
        "password": PASSWORD,
        "account": asdict(accounts[0][0]),
        "others": [asdict(accounts[1][0])],
        "timings": timings,
    }
    (data_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    say(f"total: {timings['total']:.0f} s; manifest {data_dir / MANIFEST}")
    return manifest


class _InboxBulk(Bulk):
    TABLES = (
        Profile.__table__,
        Message.__table__,
        Conversation.__table__,
        ConversationLabel.__table__,
        InboundMessage.__table__,
        ConversationNote.__table__,
    )  # type: ignore[assignment]


# ------------------------------------------------------------------------------------------------ measure


def queries(account: dict[str, Any]) -> list[tuple[str, Callable[[Any, str], Any]]]:
    """The inbox's service calls, labelled: each takes (a read session, the account id)."""

    def listing(filters: Filters) -> Callable[[Any, str], Any]:
        return lambda session, account_id: list_conversations(session, account_id, filters)

    calls: list[tuple[str, Callable[[Any, str], Any]]] = [("list: default (every state)", listing(Filters()))]
    calls += [(f"list: state={s.value}", listing(Filters(state=s))) for s in State]
    calls += [
        (f"list: label={account['label']}", listing(Filters(label=account["label"]))),
        (f"list: campaign={account['campaign_id']}", listing(Filters(campaign_id=account["campaign_id"]))),
        (f"list: assignee={account['assignee_id']}", listing(Filters(assignee_id=account["assignee_id"]))),
        ("list: assignee=nobody, state=new", listing(Filters(assignee_id=0, state=State.new))),
        (f"list: q={account['word']} (message text)", listing(Filters(q=account["word"]))),
        (f"list: q={account['name']} (name)", listing(Filters(q=account["name"]))),
        (f"list: q={account['number']} (number)", listing(Filters(q=account["number"]))),
        ("counts", lambda session, account_id: counts(session, account_id)),
        (
            "thread (the long one)",
            lambda session, account_id: thread(
                session, get_conversation(session, account_id, account["conversation_id"])
            ),
        ),
    ]
    return calls


def _percentile(times: list[float], p: float) -> float:
    ordered = sorted(times)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def measure(
    manifest: dict[str, Any], runs: int, warmup: int, say: Callable[[str], None] = print
) -> dict[str, list[float]]:
    """Each call ``warmup + runs`` times, one at a time; the timings (ms) of the runs by label."""
    db = Database(manifest["database_url"])
    account = manifest["account"]
    found: dict[str, list[float]] = {}
    try:
        for label, call in queries(account):
            times = []
            size = 0
            for i in range(warmup + runs):
                began = time.perf_counter()
                with db.read() as session:
                    result = call(session, account["account_id"])
                elapsed = (time.perf_counter() - began) * 1000
                if i >= warmup:
                    times.append(elapsed)
                size = len(result)
            found[label] = times
            p95 = _percentile(times, 95)
            verdict = "ok  " if p95 < LIMIT_MS else "SLOW"
            say(
                f"  {verdict}  {label:<42} p50 {statistics.median(times):7.1f}  p95 {p95:7.1f}  "
                f"max {max(times):7.1f} ms  ({size} rows)"
            )
    finally:
        db.dispose()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--database-url", help="sqlite:///… or postgresql+psycopg://… (emptied): fill it")
    parser.add_argument(
        "--data-dir", type=Path, help="secret key and manifest (default: the SQLite file's folder)"
    )
    parser.add_argument("--conversations", type=int, default=Sizes.conversations)
    parser.add_argument(
        "--measure", action="store_true", help="time the inbox's calls (after filling, if filling)"
    )
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    data_dir = args.data_dir
    if data_dir is None:
        if not args.database_url or not args.database_url.startswith("sqlite"):
            parser.error("--data-dir is needed for PostgreSQL and to measure")
        data_dir = Path(args.database_url.split("///", 1)[1]).parent
    started = time.perf_counter()
    if args.database_url:
        manifest = fill(
            args.database_url,
            data_dir,
            Sizes(conversations=args.conversations),
            say=lambda line: print(f"[{time.perf_counter() - started:7.1f} s] {line}", flush=True),
        )
    else:
        manifest = json.loads((data_dir / MANIFEST).read_text())
    if args.measure:
        backend = manifest["database_url"].split(":", 1)[0]
        print(
            f"{backend}: {manifest['account']['conversations']:,} conversations; {args.runs} runs a call "
            f"after {args.warmup} warm-ups; limit p95 < {LIMIT_MS:.0f} ms; "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
        )
        measure(manifest, args.runs, args.warmup)
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
