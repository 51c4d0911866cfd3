"""Dashboard pages rendered server-side (issue 11): each page of the dashboard requested N times in a row
over the data set of bench/pages_data.py, by a signed-in admin; p50, p95 and max per page. Fails (exit
code 1) when a page does not answer 200 or its p95 is 150 ms or more.

    .venv/bin/python -m bench.pages --data-dir /work/bigdata/sqlite
    .venv/bin/python -m bench.pages --data-dir /work/bigdata/pg --api

It starts ``tidings serve --no-worker`` on loopback against the manifest's database (``<data dir>/
pages-bench.json``, written by bench/pages_data.py; no worker, so that nothing the data set leaves queued
is sent), signs in through the dashboard (GET /signin, POST /signin with the hidden ``csrf_token``), then
requests each page ``--runs`` times after ``--warmup`` requests, one at a time. A time is the client's,
from sending the request to reading the whole body over loopback: an upper bound of the server's. The ids
in the paths (a completed campaign with the most ledger rows, a past-behaviour segment, the profile with
the most events, a name prefix) come from the manifest. ``--api`` measures the API calls the pages rely on
as well, with the account's passcode; ``--path`` measures only the paths given. ``--inbox`` measures the
inbox's pages instead, over the data set of bench/inbox_data.py (``<data dir>/inbox-bench.json``: 100,000
conversations): the list's default tab, each state's tab, its filters, and a long thread.

    .venv/bin/python -m bench.pages --data-dir /work/bigdata/inbox --inbox
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx

from bench.inbox_data import MANIFEST as INBOX_MANIFEST
from bench.pages_data import MANIFEST
from tests.cluster import free_port, start_server, stop, tidings_env

LIMIT_MS = 150.0
SESSION_COOKIE = "tidings_session"

# Every page of the dashboard, with the ids of the data set in braces.
PAGES = (
    "/campaigns",
    "/campaigns?q=spring&status=completed",
    "/campaigns/new",
    "/campaigns/{campaign_id}",
    "/campaigns/{campaign_id}/messages",
    "/segments",
    "/segments/{segment_id}",
    "/profiles",
    "/profiles?q={name_prefix}",
    "/profiles/{identity}",
    "/settings/whatsapp",
    "/settings/whatsapp/templates",
    "/settings/account",
    "/settings/users",
    "/settings/api-keys",
)
# The inbox's pages (issue 12), with the ids of bench/inbox_data.py's data set in braces.
INBOX = (
    "/inbox",
    "/inbox?state=new",
    "/inbox?state=pending",
    "/inbox?state=active",
    "/inbox?state=inactive",
    "/inbox?state=resolved",
    "/inbox?label={label}",
    "/inbox?campaign={campaign_id}",
    "/inbox?assignee={assignee_id}",
    "/inbox?assignee=none&state=new",
    "/inbox?q={word}",
    "/inbox?q={name}",
    "/inbox/{conversation_id}",
)
# The API calls the pages rely on (method, path, JSON body), asked with the account's passcode.
PAST_BEHAVIOUR = {
    "and": [
        {"did": {"event": "Charged", "count": {"at_least": 2}, "in_the_last": {"days": 30}}},
        {"did_not": {"event": "Refund"}},
    ]
}
API = (
    ("GET", "/api/v1/campaigns", None),
    ("GET", "/api/v1/campaigns/{campaign_id}/stats", None),
    ("GET", "/api/v1/segments", None),
    ("POST", "/api/v1/segments/estimate", {"definition": PAST_BEHAVIOUR}),
    ("GET", "/api/v1/profiles", None),
    ("GET", "/api/v1/profiles/{identity}", None),
    ("GET", "/api/v1/profiles/{identity}/events", None),
)


@dataclass
class Result:
    label: str
    status: int = 0
    times_ms: list[float] = field(default_factory=list)
    problem: str = ""
    cut: bool = False  # stopped early: enough requests were over the limit to put the p95 over it

    def percentile(self, p: float) -> float:
        """Nearest rank: the smallest time that ``p`` percent of the requests did not exceed."""
        ordered = sorted(self.times_ms)
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    @property
    def ok(self) -> bool:
        return not self.problem and not self.cut and self.status == 200 and self.percentile(95) < LIMIT_MS

    def line(self) -> str:
        if self.problem:
            return f"  FAIL  {self.label}: {self.problem}"
        p50, p95, top = statistics.median(self.times_ms), self.percentile(95), max(self.times_ms)
        verdict = "ok  " if self.ok else "FAIL"
        note = (
            ""
            if self.status == 200
            else f"  (HTTP {self.status}{' — no such page yet' if self.status == 404 else ''})"
        )
        slow = "  (p95 over the limit)" if self.status == 200 and not self.ok else ""
        if self.cut:
            slow = f"  (p95 over the limit after {len(self.times_ms)} requests: stopped there)"
        return f"  {verdict}  {self.label:<52} p50 {p50:7.1f}  p95 {p95:7.1f}  max {top:7.1f} ms{note}{slow}"


class _Csrf(HTMLParser):
    """The value of the first ``<input name="csrf_token">``."""

    def __init__(self) -> None:
        super().__init__()
        self.token: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "input" and values.get("name") == "csrf_token" and self.token is None:
            self.token = values.get("value") or ""


def sign_in(http: httpx.Client, email: str, password: str) -> str:
    """Sign in through the dashboard's form; '' when signed in, else what went wrong. The cookies are
    Secure, which a browser keeps for loopback but httpx sends over HTTPS only: they are copied into the
    client's jar as plain ones."""
    form = http.get("/signin")
    if form.status_code != 200:
        missing = " (no sign-in page yet)" if form.status_code == 404 else ""
        return f"GET /signin answered {form.status_code}{missing}"
    parser = _Csrf()
    parser.feed(form.text)
    if parser.token is None:
        return "the sign-in page has no csrf_token input"
    http.cookies = httpx.Cookies(dict(form.cookies))
    answer = http.post("/signin", data={"email": email, "password": password, "csrf_token": parser.token})
    if SESSION_COOKIE not in answer.cookies:
        return f"POST /signin answered {answer.status_code} without a {SESSION_COOKIE} cookie"
    http.cookies = httpx.Cookies({SESSION_COOKIE: answer.cookies[SESSION_COOKIE]})
    return ""


def measure(
    http: httpx.Client,
    label: str,
    method: str,
    path: str,
    runs: int,
    warmup: int,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> Result:
    result = Result(label)
    # p95 (nearest rank) is over the limit as soon as this many requests are: no need to go on
    decisive = runs - math.ceil(0.95 * runs) + 1
    for i in range(warmup + runs):
        started = time.perf_counter()
        try:
            answer = http.request(method, path, json=body, headers=headers)
            answer.read()
        except httpx.HTTPError as exc:
            result.problem = f"{type(exc).__name__}: {exc}"
            return result
        elapsed = (time.perf_counter() - started) * 1000
        result.status = answer.status_code
        if i >= warmup or answer.status_code != 200:
            result.times_ms.append(elapsed)
        if answer.status_code != 200:  # its status says enough
            break
        if sum(t >= LIMIT_MS for t in result.times_ms) >= decisive:
            result.cut = True
            break
    return result


@contextmanager
def serving(manifest: dict[str, Any], workdir: Path) -> Iterator[str]:
    """``tidings serve --no-worker`` on loopback against the manifest's database; yields its URL."""
    data_dir = Path(manifest["data_dir"])
    key = (data_dir / "secret.key").read_text().strip()
    port = free_port()
    log = workdir / "server.log"
    server = start_server(tidings_env(manifest["database_url"], data_dir, key), port, log)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(server)


def run(
    manifest: dict[str, Any],
    base_url: str,
    *,
    runs: int,
    warmup: int,
    pages: bool = True,
    api: bool = False,
    paths: list[str] | None = None,
    inbox: bool = False,
    say: Any = print,
) -> list[Result]:
    account = manifest["account"]
    ids = dict(account)  # the ids the paths name in braces
    passcode = {"X-CleverTap-Account-Id": account["account_id"], "X-CleverTap-Passcode": account["passcode"]}
    results: list[Result] = []
    with httpx.Client(base_url=base_url, timeout=60, follow_redirects=False) as http:
        if paths:
            for path in paths:
                headers = passcode if path.startswith("/api/") else None
                results.append(measure(http, path, "GET", path.format(**ids), runs, warmup, headers=headers))
                say(results[-1].line())
            return results
        if pages:
            problem = sign_in(http, manifest["email"], manifest["password"])
            say(f"sign-in as {manifest['email']}: {problem or 'ok'}")
            if problem:
                results.append(Result("sign-in", problem=problem))
            for path in INBOX if inbox else PAGES:
                results.append(measure(http, path, "GET", path.format(**ids), runs, warmup))
                say(results[-1].line())
        if api:
            http.cookies.clear()
            for method, path, body in API:
                label = f"{method} {path}"
                results.append(measure(http, label, method, path.format(**ids), runs, warmup, body, passcode))
                say(results[-1].line())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--data-dir", type=Path, required=True, help=f"where bench.pages_data wrote {MANIFEST}"
    )
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--api", action="store_true", help="also the API calls the pages rely on")
    parser.add_argument("--no-pages", action="store_true", help="only the API calls")
    parser.add_argument("--path", action="append", help="measure only these paths (repeatable)")
    parser.add_argument("--base-url", help="a server already running over the same database")
    parser.add_argument("--json", type=Path, help="write the timings here")
    parser.add_argument("--inbox", action="store_true", help=f"the inbox's pages, over {INBOX_MANIFEST}")
    args = parser.parse_args()
    manifest = json.loads((args.data_dir / (INBOX_MANIFEST if args.inbox else MANIFEST)).read_text())
    sizes = manifest["sizes"]
    backend = manifest["database_url"].split(":", 1)[0]
    if args.inbox:
        data = f"{sizes['conversations']:,} conversations"
    else:
        data = f"{sizes['profiles']:,} profiles, {sizes['events']:,} events, {sizes['campaigns']:,} campaigns"
    print(
        f"{backend}: {data}; {args.runs} requests a page after {args.warmup} warm-ups; "
        f"limit p95 < {LIMIT_MS:.0f} ms; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    options = {
        "runs": args.runs,
        "warmup": args.warmup,
        "pages": not args.no_pages,
        "api": args.api,
        "paths": args.path,
        "inbox": args.inbox,
    }
    if args.base_url:
        results = run(manifest, args.base_url, **options)
    else:
        with (
            tempfile.TemporaryDirectory(prefix="tidings-pages-") as folder,
            serving(manifest, Path(folder)) as url,
        ):
            results = run(manifest, url, **options)
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "label": r.label,
                        "status": r.status,
                        "problem": r.problem,
                        "times_ms": [round(t, 2) for t in r.times_ms],
                    }
                    for r in results
                ],
                indent=1,
            )
        )
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    failed = [r for r in results if not r.ok]
    print(
        f"{len(results) - len(failed)} of {len(results)} within the limit"
        + (f"; failed: {', '.join(r.label for r in failed)}" if failed else "")
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
