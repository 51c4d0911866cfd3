"""A fast stand-in for Meta's WhatsApp Cloud API on loopback, for benchmarks and the chaos tests.

The spec-validating stand-ins in tests/standins cost 5-15 ms of CPU a request; this one answers
``POST /<version>/<phone-number-id>/messages`` with a plain asyncio protocol (HTTP/1.1, kept-alive
connections) in a few tens of microseconds, so that the sender, not the stand-in, is what is measured.

It logs every request it receives (arrival time, status answered, our reference, recipient, message
id) to ``--log``, can answer a share of requests with 429 (code 130429, ``Retry-After``) or 500
(code 131000), can answer some late, and can post status webhooks back, in Meta's shape (several
statuses a POST) and signed with ``X-Hub-Signature-256``, carrying our reference in
``biz_opaque_callback_data`` as Meta does::

    python -m tests.standins.fast_meta --port 0 --log /tmp/standin.log --fail 0.1 --slow 0.05 \\
        --webhook http://127.0.0.1:8000/webhooks/meta/TID-… --app-secret s3cret

It prints ``READY <port>`` once it listens, and flushes its log on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import hmac
import json
import os
import random
import signal
import sys
import time
from collections import deque
from typing import Any, TextIO

_REASONS = {200: b"OK", 404: b"Not Found", 429: b"Too Many Requests", 500: b"Internal Server Error"}
TOO_MANY = {
    "error": {
        "message": "(#130429) Rate limit hit",
        "type": "OAuthException",
        "code": 130429,
        "error_data": {"messaging_product": "whatsapp", "details": "Cloud API message throughput reached"},
        "fbtrace_id": "AbCdEf",
    }
}
BROKEN = {"error": {"message": "(#131000) Something went wrong", "type": "OAuthException", "code": 131000}}


class StandIn:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.log: TextIO | None = open(args.log, "a", buffering=1 << 16) if args.log else None  # noqa: SIM115
        self.counter = 0
        self.requests = 0
        self.accepted = 0
        self.statuses: deque[tuple[float, dict[str, Any]]] = deque()
        self.webhooks_posted = 0
        self.posting = 0

    def answer(self, body: bytes, path: str) -> tuple[int, bytes, dict[str, str], float]:
        """(status, body, extra headers, delay) for one request."""
        now = time.time()
        self.requests += 1
        if not path.endswith("/messages"):
            return 404, b'{"error":{"message":"unknown path","code":100}}', {}, 0.0
        try:
            payload = json.loads(body)
            to = str(payload.get("to", ""))
            ref = str(payload.get("biz_opaque_callback_data", ""))
        except ValueError:
            return 400, b'{"error":{"message":"bad json","code":100}}', {}, 0.0
        delay = self.args.delay if self.rng.random() < self.args.slow else 0.0
        roll = self.rng.random()
        if roll < self.args.fail:
            status = 429 if roll < self.args.fail / 2 else 500
            self._log(now, status, ref, to, "-")
            if status == 429:
                return 429, json.dumps(TOO_MANY).encode(), {"Retry-After": str(self.args.retry_after)}, delay
            return 500, json.dumps(BROKEN).encode(), {}, delay
        self.counter += 1
        self.accepted += 1
        wamid = f"wamid.S{self.counter:09d}{self.rng.randrange(1 << 30):09d}"
        reported = self._queue_statuses(now, wamid, to, ref) if self.args.webhook else []
        self._log(now, 200, ref, to, wamid, "+".join(reported) or "-")
        answer = {
            "messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": to}],
            "messages": [{"id": wamid}],
        }
        return 200, json.dumps(answer).encode(), {}, delay

    def _log(self, at: float, status: int, ref: str, to: str, wamid: str, reported: str = "-") -> None:
        if self.log is not None:
            self.log.write(f"{at:.6f} {status} {ref or '-'} {to or '-'} {wamid} {reported}\n")

    def _queue_statuses(self, now: float, wamid: str, to: str, ref: str) -> list[str]:
        reported = []
        for name in self.args.statuses.split(","):
            if name == "delivered" and self.rng.random() >= self.args.delivered:
                continue
            reported.append(name)
            item = {
                "id": wamid,
                "status": name,
                "timestamp": str(int(now)),
                "recipient_id": to,
                "biz_opaque_callback_data": ref,
            }
            self.statuses.append((now + self.rng.uniform(0.02, self.args.status_delay), item))
        return reported

    async def post_webhooks(self) -> None:
        import httpx

        async with httpx.AsyncClient(timeout=30) as http:
            await asyncio.gather(*(self._poster(http) for _ in range(self.args.posters)))

    async def _poster(self, http: Any) -> None:
        import httpx

        secret = self.args.app_secret.encode()
        while True:
            await asyncio.sleep(0.05)
            now = time.time()
            ready = []
            while self.statuses and self.statuses[0][0] <= now and len(ready) < self.args.per_post:
                ready.append(self.statuses.popleft()[1])
            if not ready:
                continue
            self.posting += len(ready)
            envelope = {
                "object": "whatsapp_business_account",
                "entry": [
                    {
                        "id": "WABA",
                        "changes": [
                            {
                                "field": "messages",
                                "value": {
                                    "messaging_product": "whatsapp",
                                    "metadata": {"display_phone_number": "1555", "phone_number_id": "1"},
                                    "statuses": ready,
                                },
                            }
                        ],
                    }
                ],
            }
            raw = json.dumps(envelope).encode()
            signature = "sha256=" + hmac.new(secret, raw, hashlib.sha256).hexdigest()
            headers = {"X-Hub-Signature-256": signature, "Content-Type": "application/json"}
            for attempt in range(1000):  # like Meta: retried until our server takes it
                try:
                    response = await http.post(self.args.webhook, content=raw, headers=headers)
                    if response.status_code < 300:
                        self.webhooks_posted += len(ready)
                        break
                    if response.status_code < 500 and response.status_code != 429:
                        print(
                            f"webhook refused: {response.status_code} {response.text[:200]}",
                            file=sys.stderr,
                        )
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
            self.posting -= len(ready)

    def flush(self) -> None:
        if self.log is not None:
            self.log.flush()


class Protocol(asyncio.Protocol):
    def __init__(self, standin: StandIn) -> None:
        self.standin = standin
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            lines = head.split("\r\n")
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            parts = lines[0].split(" ")
            path = parts[1] if len(parts) > 1 else "/"
            if parts[0] == "GET" and path == "/stats":
                stats = {
                    "requests": self.standin.requests,
                    "accepted": self.standin.accepted,
                    "statuses_pending": len(self.standin.statuses) + self.standin.posting,
                    "statuses_posted": self.standin.webhooks_posted,
                }
                self._write(200, json.dumps(stats).encode(), {})
                continue
            status, payload, headers, delay = self.standin.answer(body, path)
            if delay > 0:
                asyncio.get_running_loop().call_later(delay, self._write, status, payload, headers)
            else:
                self._write(status, payload, headers)

    def _write(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, b'Error').decode()}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
        )
        self.transport.write(head.encode() + body)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log", default=None, help="append one line per request to this file")
    parser.add_argument("--fail", type=float, default=0.0, help="share answered 429 or 500 (half each)")
    parser.add_argument("--retry-after", type=int, default=1, help="Retry-After seconds on a 429")
    parser.add_argument("--slow", type=float, default=0.0, help="share of requests answered late")
    parser.add_argument("--delay", type=float, default=0.3, help="how late, in seconds")
    parser.add_argument("--webhook", default=None, help="post status webhooks to this URL")
    parser.add_argument("--app-secret", default="standin-app-secret")
    parser.add_argument("--statuses", default="sent,delivered", help="statuses to report, in order")
    parser.add_argument("--delivered", type=float, default=0.5, help="share of messages reported delivered")
    parser.add_argument("--status-delay", type=float, default=0.5, help="seconds before a status is posted")
    parser.add_argument("--per-post", type=int, default=50, help="statuses in one webhook POST at most")
    parser.add_argument("--posters", type=int, default=4, help="webhook POSTs in flight at most")
    parser.add_argument("--seed", type=int, default=None)
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    # The stand-in plays a provider on other machines: its clock must not stall when the processes it
    # measures load the CPU, nor for its own garbage collector (a stand-in that pauses logs the requests
    # of its pause as one burst). It keeps little and lives for one run: no collections.
    with contextlib.suppress(OSError):
        os.nice(-10)
    gc.disable()
    standin = StandIn(args)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Protocol(standin), args.host, args.port, backlog=2048)
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    poster = asyncio.create_task(standin.post_webhooks()) if args.webhook else None

    async def flusher() -> None:
        while True:
            await asyncio.sleep(0.2)
            standin.flush()

    flushing = asyncio.create_task(flusher())
    print(f"READY {port}", flush=True)
    await stop.wait()
    server.close()
    flushing.cancel()
    if poster is not None:
        deadline = time.time() + 10
        while (
            standin.statuses or standin.posting
        ) and time.time() < deadline:  # post what is left before leaving
            await asyncio.sleep(0.1)
        poster.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poster
    standin.flush()
    print(f"DONE requests={standin.requests} accepted={standin.accepted}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
