"""Processes on loopback for the tests that run the real thing and for the benchmarks (``bench/`` uses
them from here, so that the tests stand alone): the fast stand-in provider (``tests.standins.fast_meta``),
``tidings serve --no-worker`` and ``tidings worker``, each a real OS process that SIGKILL can kill."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
TIDINGS = [str(Path(sys.executable).with_name("tidings"))]  # the console script of this environment


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tidings_env(
    database_url: str,
    data_dir: Path,
    secret_key: str,
    *,
    redis_url: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env.update(
        TIDINGS_DATABASE_URL=database_url,
        TIDINGS_DATA_DIR=str(data_dir),
        TIDINGS_SECRET_KEY=secret_key,
        TIDINGS_EXTRA_PROVIDER_HOSTS="127.0.0.1",  # the stand-ins listen on loopback
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH")) if p),
    )
    if redis_url:
        env["TIDINGS_REDIS_URL"] = redis_url
    env.update(extra or {})
    return env


@dataclass
class StandIn:
    process: subprocess.Popen[str]
    url: str
    log: Path

    def stats(self) -> dict[str, int]:
        answer = httpx.get(f"{self.url}/stats", timeout=10).json()
        return {k: int(v) for k, v in answer.items()}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_standin(log: Path, *args: str) -> StandIn:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.standins.fast_meta", "--log", str(log), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("READY "):
        process.kill()
        raise RuntimeError(f"the stand-in did not start: {line!r}")
    return StandIn(process, f"http://127.0.0.1:{line.split()[1]}", log)


def start_server(env: Mapping[str, str], port: int, log: Path, processes: int = 1) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 - kept open for the life of the process
    command = [*TIDINGS, "serve", "--no-worker", "--port", str(port), "--processes", str(processes)]
    process = subprocess.Popen(
        [*command, "--log-level", "warning"],
        cwd=ROOT,
        env=dict(env),
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return process
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the server did not start; see {log}")
        time.sleep(0.1)


def start_worker(env: Mapping[str, str], log: Path, level: str = "warning") -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 - kept open for the life of the process
    return subprocess.Popen(
        [*TIDINGS, "worker", "--log-level", level],
        cwd=ROOT,
        env=dict(env),
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def stop(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def reaped(*processes: subprocess.Popen[bytes]) -> Iterator[None]:
    try:
        yield
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


@dataclass(frozen=True)
class Request:
    at: float
    status: int
    ref: str
    to: str
    message_id: str
    reported: str  # the statuses the stand-in reports for it, e.g. "sent+delivered"


def read_log(path: Path) -> list[Request]:
    requests = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) < 5:
            continue
        requests.append(
            Request(
                float(parts[0]),
                int(parts[1]),
                parts[2],
                parts[3],
                parts[4],
                parts[5] if len(parts) > 5 else "",
            )
        )
    return requests


def per_second(times: list[float]) -> Counter[int]:
    """Requests in each calendar second."""
    return Counter(int(t) for t in times)


def max_in_window(times: list[float], width: float = 1.0) -> int:
    """The most requests in any window [t, t + width), wherever it starts."""
    ordered = sorted(times)
    return max((bisect_left(ordered, t + width) - i for i, t in enumerate(ordered)), default=0)
