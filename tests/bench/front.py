#!/usr/bin/env python3
"""What the front costs: upload throughput and server CPU of a file sent with curl through the
front against libunftp listening directly (ftpd with front = true / false, rounds interleaved),
RSS per idle logged-in session for N sessions, and the round trips and time of the seed's
resume decision (connect to first data byte of the resumed STOR) as the client sees them.

    python3 tests/bench/front.py [--size-mib 1024] [--rounds 3] [--sessions 500]

Needs a release build: cargo build --release -p ftpd. Both servers use durability = "none", so
the disk does not hide the front's cost.
"""

import argparse
import ftplib
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from servers import Ftpd  # first: puts tests/ on sys.path
from upload import idle_session_rss, make_file, per_gib, rotated, upload

from helpers import crc32, final_reply, key, rst_close  # noqa: E402


def resume_decision(srv: Ftpd, runs: int = 20) -> tuple[int, float]:
    """Round trips and median seconds from connect to the first byte of a resumed STOR."""
    data = bytes(range(256)) * 4096
    crc = key(crc32(data))
    f = ftplib.FTP(timeout=30)
    f.connect("127.0.0.1", srv.port)
    f.login(srv.user, srv.password)
    f.sendcmd(f"KEY {crc}")
    f.voidcmd("TYPE I")
    conn = f.transfercmd("STOR rec.ts")
    conn.sendall(data[:300_000])
    conn.close()
    final_reply(f)
    f.quit()
    times, trips = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        g = ftplib.FTP(timeout=30)
        g.connect("127.0.0.1", srv.port)  # 1: connect + greeting
        g.login(srv.user, srv.password)  # 2, 3: USER, PASS
        size = int(g.sendcmd("SIZE rec.ts").split()[1])  # 4
        assert g.sendcmd("KEY NULL") == f"230 {crc}"  # 5
        g.voidcmd("TYPE I")  # 6
        g.sendcmd(f"REST {size}")  # 7
        conn = g.transfercmd("STOR rec.ts")  # 8, 9: PASV, STOR (+ data connect)
        conn.sendall(data[size : size + 1])
        times.append(time.perf_counter() - t0)
        trips = 9
        rst_close(conn)
        final_reply(g)
        g.close()
        time.sleep(0.05)
    return trips, statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sessions", type=int, default=500)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))

    base = Path(tempfile.mkdtemp(prefix="ftpd-front-bench-"))
    src = Path(tempfile.gettempdir()) / f"ftpd-bench-{args.size_mib}m.bin"
    make_file(src, args.size_mib)
    on = Ftpd(base / "on", durability="none", front="true", failed_logins_max="0")
    off = Ftpd(base / "off", durability="none", front="false", failed_logins_max="0")
    on.name, off.name = "front on", "front off"
    servers = [off.start(), on.start()]
    try:
        res = {s.name: [] for s in servers}
        for r in range(args.rounds):
            for s in rotated(servers, r):
                res[s.name].append(upload(s, src, f"b{r}.bin"))
                s.file(f"b{r}.bin").unlink()
        med = per_gib(res, args.size_mib)
        print(f"\nUpload of {args.size_mib} MiB with curl, {args.rounds} interleaved rounds (durability none)")
        for n, (thr, cpu) in med.items():
            print(f"  {n:10} {thr:8.0f} MiB/s   {cpu:6.2f} CPU-s/GiB")
        (t_on, c_on), (t_off, c_off) = med["front on"], med["front off"]
        print(f"  front on / off: throughput {t_on / t_off:.2f}x, CPU {c_on / c_off:.2f}x")

        # Freshly started servers, three times, medians: a server that has just moved a
        # gigabyte reuses freed memory for new sessions and would seem to need less.
        print(f"\nRSS per idle logged-in session, {args.sessions} sessions, fresh servers (median of 3):")
        rss = {"front off": [], "front on": []}
        for r in range(3):
            for name, front in (("front off", "false"), ("front on", "true")):
                s = Ftpd(base / f"rss-{front}-{r}", durability="none", front=front, failed_logins_max="0")
                try:
                    rss[name].append(idle_session_rss(s.start(), args.sessions)[1])
                finally:
                    s.stop()
        r_off, r_on = statistics.median(rss["front off"]), statistics.median(rss["front on"])
        print(f"  front off: {r_off:6.1f} KiB   front on: {r_on:6.1f} KiB   ratio {r_on / r_off:.2f}x")

        print("\nSeed resume decision, connect to first data byte of the resumed STOR (median of 20):")
        for s in servers:
            if s is off:
                print(f"  {s.name:10} (bare KEY needs the front; measured with SITE KEY)")
            trips, t = resume_decision_site(s) if s is off else resume_decision(s)
            print(f"  {s.name:10} {trips} round trips, {t * 1e3:6.2f} ms")
    finally:
        for s in servers:
            s.stop()
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    return 0


def resume_decision_site(srv: Ftpd) -> tuple[int, float]:
    """The same dialogue with SITE KEY, for a server without the front."""
    orig = ftplib.FTP.sendcmd

    def sendcmd(self, cmd):
        if cmd.startswith("KEY"):
            cmd = "SITE " + cmd
        return orig(self, cmd)

    ftplib.FTP.sendcmd = sendcmd
    try:
        return resume_decision(srv)
    finally:
        ftplib.FTP.sendcmd = orig


if __name__ == "__main__":
    sys.exit(main())
