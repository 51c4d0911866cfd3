"""``tidings demo`` opens the dashboard over its data: with ``--serve`` it keeps serving and prints the URL
and a demo admin's sign-in; without, it prints the exact command that serves the same data. Both run as a
user runs them (the installed command in a subprocess), and the dashboard they point to is signed in to."""

from __future__ import annotations

import os
import queue
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

TIDINGS = str(Path(sys.executable).with_name("tidings"))
PROFILES = "30"
SIGN_IN = r"sign in as (\S+) with the password (\S+?)\)?(?:;|$)"


def _lines(process: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """The process's output, line by line as it prints them (None: it ended)."""
    found: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            found.put(line)
        found.put(None)

    threading.Thread(target=read, daemon=True).start()
    return found


def _wait_for(lines: queue.Queue[str | None], pattern: str, seen: list[str]) -> re.Match[str]:
    while True:
        line = lines.get(timeout=300)  # (a guard against a hang, not a measure)
        assert line is not None, "the demo ended before printing it:\n" + "".join(seen)
        seen.append(line)
        found = re.search(pattern, line)
        if found:
            return found


def _open_campaigns(url: str, email: str, password: str) -> str:
    """Sign in to the dashboard at ``url`` and open the campaigns page; its HTML."""
    with httpx.Client(base_url=url, timeout=30) as client:
        token = client.get("/signin").cookies["tidings_csrf"]
        # (the cookies are Secure, which httpx sends over HTTPS only: sent by hand)
        signed_in = client.post(
            "/signin",
            data={"email": email, "password": password, "csrf_token": token},
            headers={"Cookie": f"tidings_csrf={token}"},
        )
        assert signed_in.status_code == 303, signed_in.text
        session = signed_in.cookies["tidings_session"]
        page = client.get("/campaigns", headers={"Cookie": f"tidings_session={session}"})
        assert page.status_code == 200
        return page.text


def _demo_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}


def test_demo_serve_keeps_serving_the_dashboard_over_its_data(tmp_path: Path) -> None:
    command = [TIDINGS, "demo", "--serve", "--profiles", PROFILES, "--data-dir", str(tmp_path / "demo")]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_demo_env()
    )
    try:
        seen: list[str] = []
        found = _wait_for(_lines(process), r"Dashboard: (http://127\.0\.0\.1:\d+)/ \(" + SIGN_IN, seen)
        url, email, password = found.groups()
        assert "Booking confirmations" in _open_campaigns(url, email, password)  # the demo's campaign
    finally:
        process.terminate()
        code = process.wait(timeout=60)
    assert code == 0  # stopped by SIGTERM as by Ctrl-C, after a demo that added up


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_demo_prints_the_command_that_serves_its_data(tmp_path: Path) -> None:
    done = subprocess.run(
        [TIDINGS, "demo", "--profiles", PROFILES, "--data-dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        env=_demo_env(),
        timeout=300,
        check=True,
    )
    printed = done.stdout.splitlines()
    at = next(i for i, line in enumerate(printed) if line.startswith("Open the dashboard"))
    words = shlex.split(printed[at + 1])
    assert words[-2:] == ["tidings", "serve"], printed[at + 1]
    found = re.search(r"then open http://127\.0\.0\.1:8000/ and " + SIGN_IN, printed[at + 2])
    assert found is not None, printed[at + 2]
    email, password = found.groups()

    # the printed command, as it is (on another port than 8000, which this machine may be using)
    env = _demo_env() | dict(word.split("=", 1) for word in words[:-2])
    port = _free_port()
    server = subprocess.Popen(
        [TIDINGS, "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        while True:  # until it listens (the test's own time-out stops a server that never does)
            assert server.poll() is None, "tidings serve ended"
            try:
                httpx.get(f"{url}/healthz")
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert "Booking confirmations" in _open_campaigns(url, email, password)
    finally:
        server.terminate()
        server.wait(timeout=60)
