"""The ``tidings`` command: serve, worker, demo, account, user, api-key, db."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tidings.config import Settings
from tidings.db import Database
from tidings.errors import ApiError
from tidings.secrets import SecretBox

app = typer.Typer(help="Tidings: a self-hosted WhatsApp engagement platform.", no_args_is_help=True)
account_app = typer.Typer(help="Accounts and their API credentials.", no_args_is_help=True)
db_app = typer.Typer(help="The database.", no_args_is_help=True)
app.add_typer(account_app, name="account")
templates_app = typer.Typer(help="WhatsApp templates.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(templates_app, name="templates")
user_app = typer.Typer(help="People who sign in to the dashboard.", no_args_is_help=True)
app.add_typer(user_app, name="user")
api_key_app = typer.Typer(help="API keys for programs.", no_args_is_help=True)
app.add_typer(api_key_app, name="api-key")
sandbox_app = typer.Typer(help="The built-in sandbox provider.", no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")
console = Console()


def _setup_logging(level: str) -> None:
    from tidings.metrics import setup_logging

    setup_logging(level, Settings().log_format)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    no_worker: Annotated[
        bool, typer.Option("--no-worker", help="Serve HTTP only; run workers apart.")
    ] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
    processes: Annotated[
        int,
        typer.Option(min=1, help="Web processes sharing the port (each with a worker unless --no-worker)."),
    ] = 1,
) -> None:
    """Migrate the database, then serve the API and webhooks (and run the worker unless --no-worker)."""
    import uvicorn

    from tidings.app import asgi_app, create_app

    _setup_logging(log_level)
    settings = Settings()
    if processes > 1 and not no_worker and not settings.redis_url:
        # Each process's worker would pace every sender on its own: N times the sender's rate.
        typer.echo(
            f"tidings serve --processes {processes} runs a worker in each process, and without "
            "TIDINGS_REDIS_URL each would pace every sender on its own: together they would send "
            f"{processes} times the sender's rate limit. Set TIDINGS_REDIS_URL (the processes then share "
            "each sender's pace), or serve with --no-worker and run one `tidings worker`.",
            err=True,
        )
        raise typer.Exit(2)
    db = Database(settings.database_url)
    db.migrate()
    if processes == 1:
        app_ = asgi_app(create_app(settings, db, run_worker=not no_worker))
        uvicorn.run(app_, host=host, port=port, log_level=log_level, server_header=False)
        return
    db.dispose()
    # Each process builds its own app (uvicorn starts them fresh and hands them the listening socket).
    os.environ["TIDINGS_SERVE_WORKER"] = "0" if no_worker else "1"
    os.environ["TIDINGS_SERVE_LOG_LEVEL"] = log_level
    uvicorn.run(
        "tidings.app:app_from_env",
        factory=True,
        workers=processes,
        host=host,
        port=port,
        log_level=log_level,
        server_header=False,  # no "server: uvicorn" banner
    )


@app.command()
def worker(
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve Prometheus metrics on this port (default TIDINGS_METRICS_PORT; 0: off)."),
    ] = None,
) -> None:
    """Run the scheduler and the dispatcher without the web server (any number of them)."""
    from tidings.worker import Worker

    _setup_logging(log_level)
    settings = Settings()
    db = Database(settings.database_url)
    db.migrate()
    box = SecretBox.from_settings(settings.secret_key, settings.data_dir)
    port = settings.metrics_port if metrics_port is None else metrics_port
    if port:
        from prometheus_client import start_http_server

        from tidings.metrics import watch_ledger

        watch_ledger(db)
        start_http_server(port, addr="127.0.0.1")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await Worker(db, settings, box).run(stop)

    try:
        import uvloop  # a faster event loop: sends wake up closer to their rate-limit slots
    except ImportError:  # not on Windows
        asyncio.run(main())
    else:
        uvloop.run(main())


@account_app.command("create")
def account_create(
    name: Annotated[str, typer.Option(help="The account's name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print {account_id, passcode} as JSON.")] = False,
) -> None:
    """Create an account; its passcode is shown only now."""
    from tidings.accounts.service import create_account

    settings = Settings()
    db = Database(settings.database_url)
    db.migrate()
    box = SecretBox.from_settings(settings.secret_key, settings.data_dir)
    with db.session() as session:
        new = create_account(session, box, name)
    if as_json:
        print(json.dumps({"account_id": new.account_id, "passcode": new.passcode}))
    else:
        console.print(f"account id: [bold]{new.account_id}[/]\npasscode:   [bold]{new.passcode}[/]")


def _context() -> tuple[Settings, Database, SecretBox]:
    settings = Settings()
    db = Database(settings.database_url)
    db.migrate()
    return settings, db, SecretBox.from_settings(settings.secret_key, settings.data_dir)


def _refused(exc: ApiError) -> typer.Exit:
    typer.echo(f"{exc.code}: {exc.message}", err=True)
    return typer.Exit(2)


@user_app.command("create")
def user_create(
    email: Annotated[str, typer.Option(help="The user's e-mail (signs in with it).")],
    role: Annotated[str, typer.Option(help="admin, marketer or agent.")],
    account: Annotated[str, typer.Option(help="Account id.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
) -> None:
    """Create a user (the first admin, say); the password is asked for, or read from standard input."""
    from tidings.users.service import create_user

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    _, db, _ = _context()
    try:
        with db.session() as session:
            user = create_user(session, account, email=email, role=role, password=password)
            console.print(f"user [bold]{user.email}[/] ({user.role}) created in account {account}")
    except ApiError as exc:
        raise _refused(exc) from None


@api_key_app.command("create")
def api_key_create(
    account: Annotated[str, typer.Option(help="Account id.")],
    role: Annotated[str, typer.Option(help="admin, marketer or agent.")],
    name: Annotated[str, typer.Option(help="What the key is for.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print {id, secret} as JSON.")] = False,
) -> None:
    """Create an API key; its secret is shown only now."""
    from tidings.users.service import create_api_key

    _, db, _ = _context()
    try:
        with db.session() as session:
            new = create_api_key(session, account, name=name, role=role)
            key_id = new.key.id
    except ApiError as exc:
        raise _refused(exc) from None
    if as_json:
        print(json.dumps({"id": key_id, "secret": new.secret}))
    else:
        console.print(f"API key {key_id} ({role}): [bold]{new.secret}[/]")
        console.print("send it as the header  Authorization: Bearer <key>  (shown only now)")


@app.command("send-test")
def send_test(
    account: Annotated[str, typer.Option(help="Account id.")],
    to: Annotated[str, typer.Option(help="Recipient, E.164 (+ and country code).")],
    template: Annotated[str | None, typer.Option(help="<namespace>:<name> of an approved template.")] = None,
    param: Annotated[
        list[str] | None, typer.Option(help="Template value for {{1}}, {{2}}, … (repeat).")
    ] = None,
    language: Annotated[str, typer.Option(help="Template language.")] = "en",
    text: Annotated[str | None, typer.Option(help="Free text (only inside the 24-hour window).")] = None,
) -> None:
    """Send one test message with the account's WhatsApp provider and show what the provider answered."""
    from tidings.accounts.testsend import send_test_message

    settings, db, box = _context()
    result = asyncio.run(
        send_test_message(
            db,
            box,
            settings,
            account,
            to=to,
            text=text,
            template=template,
            language=language,
            params=param or [],
        )
    )
    console.print_json(json.dumps(result))
    raise typer.Exit(0 if result["outcome"] == "accepted" else 1)


@sandbox_app.command("say")
def sandbox_say(
    account: Annotated[str, typer.Option(help="Account id (its provider must be the sandbox).")],
    from_phone: Annotated[str, typer.Option("--from", help="The sandbox user's number, E.164.")],
    text: Annotated[
        str, typer.Argument(help="What the user writes (a button's label, a caption, an emoji).")
    ],
    kind: Annotated[
        str, typer.Option(help="text, button, reply, image, document, location, reaction, …")
    ] = "text",
    context: Annotated[str | None, typer.Option(help="Provider id of the message it answers.")] = None,
) -> None:
    """Write to the business as a sandbox user, through the running server's inbound webhook
    (``TIDINGS_PUBLIC_URL``): the message lands in the inbox as a real user's would."""
    from tidings.accounts.sandbox_user import sandbox_user_writes

    settings, db, box = _context()
    try:
        found = asyncio.run(
            sandbox_user_writes(
                db,
                box,
                settings.public_url,
                account,
                from_phone=from_phone,
                text=text,
                kind=kind,
                context=context,
            )
        )
    except ApiError as exc:
        raise _refused(exc) from None
    console.print(f"sent as {from_phone}: {found}")


@templates_app.command("sync")
def templates_sync(account: Annotated[str, typer.Option(help="Account id.")]) -> None:
    """Fetch the account's templates from its provider and create or update them."""
    from tidings.templates.sync import sync_templates

    settings, db, box = _context()
    console.print_json(json.dumps(asyncio.run(sync_templates(db, box, settings, account))))


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the migrations (serve, worker and demo do it themselves)."""
    from tidings.secrets import private_folder

    settings = Settings()
    Database(settings.database_url).migrate()
    if settings.data_dir.exists():
        private_folder(settings.data_dir)  # as serve and worker leave it: readable by its owner only
    console.print("database is at the latest revision")


@app.command()
def demo(
    profiles: Annotated[int, typer.Option(help="How many profiles to upload.")] = 1000,
    data_dir: Annotated[Path | None, typer.Option(help="Data folder (default: a new temporary one).")] = None,
    database_url: Annotated[
        str | None, typer.Option(help="Database (default: SQLite in the data folder).")
    ] = None,
    seed: Annotated[str, typer.Option(help="Sandbox seed, for a repeatable run.")] = "demo",
    serve: Annotated[
        bool, typer.Option("--serve", help="Then keep serving the dashboard over the demo's data (Ctrl-C).")
    ] = False,
    port: Annotated[int, typer.Option(help="The server's port on 127.0.0.1 (0: a free one).")] = 0,
) -> None:
    """The whole story on a fresh data folder: account, profiles, template, campaign, sandbox, stats; then
    a dashboard admin, and the dashboard over that data (--serve), or the command that serves it."""
    import tempfile

    from tidings.demo import run_demo

    folder = data_dir or Path(tempfile.mkdtemp(prefix="tidings-demo-"))
    base = Settings()
    settings = base.model_copy(
        update={
            "data_dir": folder,
            "database_url": database_url or f"sqlite:///{folder / 'tidings.db'}",
            "secret_key": None,
            "sandbox": base.sandbox.model_copy(update={"seed": seed}),
        }
    )
    ok = run_demo(settings, profiles=profiles, console=console, serve=serve, port=port)
    raise typer.Exit(0 if ok else 1)
