"""``tidings demo``: the whole product loop on the embedded defaults, through the real HTTP API."""

from __future__ import annotations

import logging
import os
import random
import shlex
import signal
import threading
import time
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tidings.accounts.service import create_account
from tidings.app import asgi_app, create_app
from tidings.config import Settings
from tidings.conversations.service import counts as conversation_counts
from tidings.db import Database
from tidings.secrets import SecretBox
from tidings.server import bind, serving
from tidings.users.service import create_user, new_password

FIRST = ["Asha", "Ravi", "Meera", "John", "Fatima", "Li", "Carlos", "Ana", "Tom", "Priya", "Omar", "Sara"]
CITIES = ["Pune", "Mumbai", "Delhi", "Bengaluru", "Chennai"]
DEMO_ADMIN = "admin@demo.test"
BODY = (
    "Hello {{1}}, Congratulations on your ticket booking. Here is your ticket number: {{2}}. "
    "Show this message at the gate."
)


def demo_records(count: int, rng: random.Random) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Profiles (most opted in, some not, some without a phone, a few with bad numbers) and events."""
    now = int(time.time())
    profiles, events = [], []
    for i in range(count):
        identity = f"user-{i:05d}"
        data: dict[str, Any] = {
            "Name": rng.choice(FIRST) if rng.random() > 0.05 else "",
            "City": rng.choice(CITIES),
            "MSG-whatsapp": rng.random() < 0.9,
        }
        roll = rng.random()
        if roll < 0.01:
            data["Phone"] = f"+91{rng.randint(100, 999)}"  # not a phone number: refused with 516
        elif roll > 0.02:
            data["Phone"] = f"+9198{rng.randint(10_000_000, 99_999_999)}"
        if rng.random() < 0.97:
            data["ticket_no"] = f"TKT-{rng.randint(100_000, 999_999)}"
        profiles.append({"identity": identity, "ts": now, "type": "profile", "profileData": data})
        if rng.random() < 0.5:
            events.append(
                {
                    "identity": identity,
                    "ts": now - rng.randint(60, 7 * 86400),
                    "type": "event",
                    "evtName": "Ticket Booked",
                    "evtData": {"Amount": rng.randint(200, 2000), "Show": "$D_" + str(now + 86400)},
                }
            )
    return profiles, events


def _stats_table(stats: dict[str, Any]) -> Table:
    table = Table(title="Campaign stats: tickets:booking_confirmation")
    for column in ("Sent", "Errors", "Delivered", "Read", "Control group", "Replied"):
        table.add_column(column, justify="right")
    table.add_row(
        *(str(stats[k]) for k in ("sent", "errors", "delivered", "read", "control_group", "replied"))
    )
    return table


def _serve_command(settings: Settings) -> str:
    """The command that serves the dashboard over the demo's data folder (and its database)."""
    words = [f"TIDINGS_DATA_DIR={shlex.quote(str(settings.data_dir))}"]
    if settings.database_url != f"sqlite:///{settings.data_dir / 'tidings.db'}":
        words.append(f"TIDINGS_DATABASE_URL={shlex.quote(settings.database_url)}")
    if os.environ.get("TIDINGS_SECRET_KEY"):  # the demo's secrets are sealed with the folder's own key
        words.append("TIDINGS_SECRET_KEY=")
    return " ".join([*words, "tidings", "serve"])


def _until_stopped() -> None:
    """Block until Ctrl-C or SIGTERM."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_demo(
    settings: Settings, *, profiles: int, console: Console, serve: bool = False, port: int = 0
) -> bool:
    """The demo's story; then a dashboard admin (its e-mail and a password printed), and either the
    dashboard served at once over the demo's data until Ctrl-C (``serve``), or the command that serves it."""
    # The demo's output is the story and the table; the worker's operational warnings (event-loop lag on a
    # busy 2-core machine) are for `tidings serve` and `tidings worker` logs.
    logging.getLogger("tidings.worker").setLevel(logging.ERROR)
    rng = random.Random(settings.sandbox.seed or "demo")
    db = Database(settings.database_url)
    db.migrate()
    sock = bind("127.0.0.1", port)
    port = sock.getsockname()[1]
    settings = settings.model_copy(update={"public_url": f"http://127.0.0.1:{port}"})
    app = create_app(settings, db, run_worker=True)
    box = SecretBox.from_settings(settings.secret_key, settings.data_dir)
    console.print(f"[bold]Tidings demo[/] — data in {settings.data_dir}, server on {settings.public_url}")
    started = time.monotonic()
    with serving(asgi_app(app), sock) as url, httpx.Client(base_url=url, timeout=30) as http:
        with db.session() as session:
            account = create_account(session, box, "Demo Tickets")
        console.print(f"account {account.account_id} created (sandbox provider)")
        ct = {"X-CleverTap-Account-Id": account.account_id, "X-CleverTap-Passcode": account.passcode}
        auth = (account.account_id, account.passcode)

        profile_records, event_records = demo_records(profiles, rng)
        processed, refused = 0, []
        for records in (profile_records, event_records):
            for start in range(0, len(records), 1000):
                answer = http.post("/1/upload", json={"d": records[start : start + 1000]}, headers=ct)
                answer.raise_for_status()
                processed += answer.json()["processed"]
                refused += answer.json()["unprocessed"]
        console.print(
            f"uploaded {len(profile_records)} profiles and {len(event_records)} events through /1/upload: "
            f"{processed} processed, {len(refused)} refused"
            + (f" (codes {sorted({r['code'] for r in refused})})" if refused else "")
        )

        template = http.post(
            "/api/v1/templates",
            auth=auth,
            json={
                "name": "tickets:booking_confirmation",
                "language": "en",
                "category": "UTILITY",
                "body": BODY,
            },
        )
        template.raise_for_status()
        campaign = http.post(
            "/api/v1/campaigns",
            auth=auth,
            json={
                "name": "Booking confirmations",
                "template_id": template.json()["id"],
                "variables": ['{{ Profile.Name | default: "there" }}', "{{ Profile.ticket_no }}"],
                "target": {"all": True},
                "control_group_pct": 10,
            },
        )
        campaign.raise_for_status()
        campaign_id = campaign.json()["id"]
        console.print(f"one-time campaign {campaign_id} created with a 10 % control group")

        worker = app.state.worker
        stats: dict[str, Any] = {}
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("sending", total=None, info="")
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                stats = http.get(f"/api/v1/campaigns/{campaign_id}/stats", auth=auth).json()
                state = http.get(f"/api/v1/campaigns/{campaign_id}", auth=auth).json()["state"]
                done = stats["audience"] - stats["pending"]
                progress.update(
                    task,
                    total=stats["audience"] or None,
                    completed=done,
                    info=f"sent {stats['sent']} · delivered {stats['delivered']} · read {stats['read']} · "
                    f"replied {stats['replied']}",
                )
                if state == "completed" and worker.sandbox_pending == 0:
                    break
                time.sleep(0.25)
            stats = http.get(f"/api/v1/campaigns/{campaign_id}/stats", auth=auth).json()

        console.print(_stats_table(stats))
        reasons = ", ".join(f"{k}: {v}" for k, v in stats["errors_by_reason"].items()) or "none"
        console.print(
            f"audience {stats['audience']} = sent {stats['sent']} + errors {stats['errors']} "
            f"+ control group {stats['control_group']}; errors by reason: {reasons}"
        )
        with db.read() as session:
            inbox = conversation_counts(session, account.account_id)
        waiting = ", ".join(f"{state} {n['total']}" for state, n in inbox.items() if n["total"])
        console.print(f"inbox: the users' replies are conversations ({waiting or 'none'})")
        console.print(f"finished in {time.monotonic() - started:.1f} s")
        password = new_password()
        with db.session() as session:
            create_user(session, account.account_id, email=DEMO_ADMIN, role="admin", password=password)
        sign_in = f"sign in as {DEMO_ADMIN} with the password {password}"
        if serve:
            console.print(f"Dashboard: {url}/ ({sign_in}); Ctrl-C stops it.", soft_wrap=True, highlight=False)
            _until_stopped()
    if not serve:
        console.print(
            "Open the dashboard over the demo's data (or run `tidings demo --serve` next time):",
            soft_wrap=True,
        )
        console.print(f"  {_serve_command(settings)}", soft_wrap=True, highlight=False, markup=False)
        console.print(f"  then open http://127.0.0.1:8000/ and {sign_in}", soft_wrap=True, highlight=False)
    db.dispose()
    return (
        stats["sent"] + stats["errors"] + stats["control_group"] == stats["audience"]
        and stats["pending"] == 0
    )
