"""Rate-limit accuracy: a campaign sent through the fast stand-in with the sender's rate limit set, measured
on the stand-in's own clock: the achieved rate, and the most requests in any one second (calendar
seconds, and any window of one second wherever it starts).

    .venv/bin/python -m bench.ratelimit --rate 80 --rate 1000 --seconds 15
    TIDINGS_REDIS_URL=redis://127.0.0.1:6379/15 .venv/bin/python -m bench.ratelimit --rate 1000 --workers 2 \\
        --database-url postgresql+psycopg://postgres@127.0.0.1/tidings_f
"""

from __future__ import annotations

import argparse
import tempfile
from bisect import bisect_left
from pathlib import Path

from bench.throughput import end_to_end
from tests.cluster import max_in_window, per_second, read_log, start_standin


def measure(database_url: str | None, rate: float, seconds: float, workers: int) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix="tidings-rate-"))
    url = database_url or f"sqlite:///{workdir / 'bench.db'}"
    standin = start_standin(workdir / "standin.log")
    n = int(rate * seconds)
    try:
        # Measured on the stand-in's clock: the end of the run needs no precision, polls are kept rare.
        end_to_end(url, workdir, standin.url, n, workers, rate=rate, poll=0.5)
    finally:
        standin.stop()
    times = sorted(r.at for r in read_log(workdir / "standin.log"))
    assert len(times) == n, f"{len(times)} requests for {n} messages"
    seconds_seen = per_second(times)
    # Past the first and last two seconds: a new pacer starts 5 % slower for a second (ratelimit.py).
    a, b = times[0] + 2, times[-1] - 2
    return {
        "messages": n,
        "achieved": (n - 1) / (times[-1] - times[0]),
        "steady": (bisect_left(times, b) - bisect_left(times, a)) / (b - a),
        "busiest_second": max(seconds_seen.values()),
        "busiest_window": max_in_window(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, action="append", help="messages a second (repeatable)")
    parser.add_argument("--seconds", type=float, default=15.0, help="how long each run sends")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temporary folder")
    args = parser.parse_args()
    for rate in args.rate or [80.0, 1000.0]:
        got = measure(args.database_url, rate, args.seconds, args.workers)
        print(
            f"limit {rate:g}/s, {args.workers} worker(s): {got['messages']:.0f} messages, achieved "
            f"{got['achieved']:.1f}/s ({100 * got['achieved'] / rate:.1f} % of the limit; "
            f"{100 * got['steady'] / rate:.1f} % past the first and last 2 s), busiest calendar "
            f"second {got['busiest_second']:.0f}, busiest 1-s window {got['busiest_window']:.0f}"
        )


if __name__ == "__main__":
    main()
