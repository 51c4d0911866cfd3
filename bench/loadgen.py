"""A lean HTTP/1.1 load generator for the benchmarks: requests are built (and signed) before the clock
starts, then written as raw bytes over kept-alive connections, many in flight, each answer read with a
minimal parser. A general-purpose client (httpx, aiohttp) spends more CPU a request than the server under
test does, and on two cores it would measure itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping


def http_request(host: str, port: int, path: str, body: bytes, headers: Mapping[str, str]) -> bytes:
    """One POST, serialized."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)


async def blast(host: str, port: int, requests: Iterable[bytes], connections: int) -> float:
    """Send every request (each answered 200, else ``AssertionError``); returns the seconds it took."""
    queue = iter(requests)
    opened = [await asyncio.open_connection(host, port) for _ in range(connections)]

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for request in queue:
            writer.write(request)
            status, body = await _answer(reader)
            assert status == 200, f"{status}: {body[:300]!r}"

    began = time.perf_counter()
    await asyncio.gather(*(run(reader, writer) for reader, writer in opened))
    elapsed = time.perf_counter() - began
    for _, writer in opened:
        writer.close()
    return elapsed
