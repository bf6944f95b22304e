#!/usr/bin/env python3
"""Webhook delivery lag under load: small uploads at a steady rate (default 100/s for 10 s,
spread over several ftplib sessions) to a real ftpd whose `webhook_url` is a receiver on
loopback that answers 200 at once. Lag = time the receiver got the event - the event's `time`
(when its record was committed, millisecond resolution). Prints p50/p99/max, and checks that
every event arrived in seq order without gaps.

    python3 tests/bench/webhook_lag.py [--rate 100] [--seconds 10] [--sessions 5] [--durability fsync]

Needs the release build: cargo build --release -p ftpd.
"""

import argparse
import datetime
import ftplib
import io
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

from servers import Ftpd

from helpers import WebhookReceiver


def event_lags(recv: WebhookReceiver) -> list[tuple[int, float, float]]:
    """(seq, event time, received) of each accepted request."""
    out = []
    for seq, body, received in recv.accepted():
        t = datetime.datetime.fromisoformat(json.loads(body)["time"].replace("Z", "+00:00")).timestamp()
        out.append((seq, t, received))
    return out


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=100, help="uploads per second, all sessions together")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--sessions", type=int, default=5)
    ap.add_argument("--size", type=int, default=1024, help="bytes per upload")
    ap.add_argument("--durability", default="fsync", choices=["fsync", "none"])
    ap.add_argument("--dir", default=None, help="where the server's files go (default: a temp dir)")
    a = ap.parse_args()

    recv = WebhookReceiver()
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        srv = Ftpd(Path(tmp) / "ftpd", webhook_url=recv.url, durability=a.durability, log_level="warn").start()
        data = b"x" * a.size
        count = int(a.rate * a.seconds)
        errors: list[str] = []
        done = [0]
        lock = threading.Lock()
        t_start = time.time()

        def session(k: int) -> None:
            f = ftplib.FTP()
            f.connect("127.0.0.1", srv.port, timeout=30)
            f.login(srv.user, srv.password)
            n = 0
            i = k
            while i < count:
                # Paced: upload number i is due at t_start + i / rate.
                due = t_start + i / a.rate
                delay = due - time.time()
                if delay > 0:
                    time.sleep(delay)
                try:
                    f.storbinary(f"STOR s{k}_{n}.bin", io.BytesIO(data))
                    n += 1
                except ftplib.Error as e:
                    errors.append(str(e))
                i += a.sessions
            f.quit()
            with lock:
                done[0] += n

        threads = [threading.Thread(target=session, args=(k,)) for k in range(a.sessions)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.time() - t_start
        deadline = time.time() + 60
        while True:
            n = len(recv.delivered())
            if n >= done[0] or time.time() > deadline:
                break
            time.sleep(0.05)
        drained = time.time() - t_start
        srv.stop()
    recv.close()

    got = event_lags(recv)
    seqs = [s for s, _, _ in got]
    first_seen = []
    seen = set()
    for s in seqs:
        if s not in seen:
            seen.add(s)
            first_seen.append(s)
    assert first_seen == sorted(first_seen), "out of order"
    assert sorted(seen) == list(range(1, len(seen) + 1)), "gaps"
    lags = [(r - t) * 1000 for _, t, r in got]
    print(
        f"uploads: {done[0]} in {elapsed:.1f} s ({done[0] / elapsed:.0f}/s, {a.sessions} sessions, "
        f"{a.size} B each, durability={a.durability}), errors: {len(errors)}"
    )
    print(f"webhooks: {len(seen)} events delivered ({len(got) - len(seen)} duplicates), all in seq order, no gaps; "
          f"last delivered {drained - elapsed:.2f} s after the last upload ended")
    print(
        f"lag (receive time - event time), ms: p50 {pct(lags, 50):.1f}  p99 {pct(lags, 99):.1f}  "
        f"max {max(lags):.1f}  mean {statistics.mean(lags):.1f}"
    )


if __name__ == "__main__":
    main()
