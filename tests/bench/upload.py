#!/usr/bin/env python3
"""Upload benchmark: a file sent with curl to ftpd, vsftpd and a plain libunftp server, rounds
interleaved, printing throughput and server CPU seconds as ratios against the baselines
measured in the same run. Also KEY INFO latency on a 4 GiB partial file against a 4 KiB one,
the time from STOR to 226 for a 4 KiB file, and RSS per idle logged-in session (ftpd against
plain libunftp), counted after a first login whose one-time cost is printed apart.

    python3 tests/bench/upload.py [--size-mib 1024] [--rounds 3] [--dir /tmp] [--sessions 200]
                                  [--skip-latency] [--baseline-ftpd PATH]

--baseline-ftpd runs another ftpd build (say, the last commit's, copied aside before rebuilding)
beside the one under test, on its defaults, in the same interleaved rounds: before and after in
one run.

Needs release builds: cargo build --release -p ftpd --bins --example plain_libunftp; and vsftpd.
"""

import argparse
import ftplib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from io import BytesIO
from pathlib import Path

from servers import CLK_TCK, CpuMeter, Ftpd, PlainLibunftp, Vsftpd  # first: puts tests/ on sys.path

from helpers import crc32, final_reply, key, rst_close  # noqa: E402


def make_file(path: Path, mib: int) -> None:
    if path.exists() and path.stat().st_size == mib << 20:
        return
    block = bytes(range(256)) * 4096  # 1 MiB, incompressible enough for a disk
    with open(path, "wb") as f:
        for i in range(mib):
            f.write(block[i % 256 :] + block[: i % 256])


def system_busy() -> float:
    """Busy CPU seconds of the whole machine (every process and kernel thread), from /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq = map(int, Path("/proc/stat").read_text().split()[1:8])
    return (user + nice + system + irq + softirq) / CLK_TCK


SETTLE = 1.5  # seconds


def fresh_target(server, name: str) -> Path:
    """The server's path for `name`, removed, with earlier writes flushed so they cost nothing.
    The pause lets the disk finish discarding the blocks of files removed just before (a
    filesystem mounted with `discard` trims them after the sync): otherwise the upload measured
    next pays for the previous server's file."""
    target = server.file(name)
    if target.exists():
        target.unlink()
    os.sync()
    time.sleep(SETTLE)
    return target


def curl_upload(server, src: Path, name: str, target: Path) -> None:
    subprocess.run(["curl", "-sS", "--fail", "-T", str(src), server.url(name)], check=True)
    assert target.stat().st_size == src.stat().st_size, f"{server.name}: short file"


def upload(server, src: Path, name: str) -> tuple[float, float]:
    """Wall seconds of the curl upload and CPU seconds of the server's process tree."""
    target = fresh_target(server, name)
    meter = CpuMeter(server)
    t0 = time.perf_counter()
    curl_upload(server, src, name, target)
    wall = time.perf_counter() - t0
    return wall, meter.stop()


def upload_to_disk(server, src: Path, name: str) -> tuple[float, float]:
    """Wall seconds until the upload is on disk (curl, then sync(2)) and busy CPU seconds of the
    whole machine in that window: a server that leaves its writeback to the kernel's flusher
    threads pays for it here, as ftpd, which fsyncs before 226, pays in its own process."""
    target = fresh_target(server, name)
    busy0, t0 = system_busy(), time.perf_counter()
    curl_upload(server, src, name, target)
    os.sync()
    return time.perf_counter() - t0, system_busy() - busy0


def rotated(servers: list, r: int) -> list:
    """The servers in round `r`'s order: each round starts one further along, so no server
    always runs right after the same one (what ran just before moves a write's cost here)."""
    k = r % len(servers)
    return servers[k:] + servers[:k]


def per_gib(rows: dict, size_mib: int) -> dict:
    """Median MiB/s and median CPU seconds per GiB of each server's (wall, cpu) rounds."""
    return {
        name: (size_mib / statistics.median(w for w, _ in rs), statistics.median(c for _, c in rs) * 1024 / size_mib)
        for name, rs in rows.items()
    }


def key_info_latency(ftpd: Ftpd, n: int = 300) -> dict:
    """Median KEY INFO round trip on a 4 GiB partial file and on a 4 KiB one."""
    f = ftplib.FTP()
    f.connect("127.0.0.1", ftpd.port)
    f.login(ftpd.user, ftpd.password)
    f.voidcmd("TYPE I")
    small = bytes(4096)
    f.sendcmd(f"SITE KEY {key(crc32(small))}")
    f.storbinary("STOR small.ts", BytesIO(small))
    # 4 GiB partial: send 4 GiB, then reset the data connection (a link that died).
    f.sendcmd("SITE KEY 0x12345678")
    conn = f.transfercmd("STOR big.ts")
    block = bytes(1 << 20)
    for _ in range(4096):
        conn.sendall(block)
    rst_close(conn)
    final_reply(f)
    time.sleep(1)
    out = {}
    for name in ("small.ts", "big.ts"):
        f.sendcmd(f"SITE KEY INFO {name}")
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            resp = f.sendcmd(f"SITE KEY INFO {name}")
            times.append(time.perf_counter() - t0)
        out[name] = (statistics.median(times), resp)
    f.quit()
    return out


def small_upload_latency(server, n: int = 50) -> float:
    """Median seconds from STOR to its 226 for a 4 KiB file on one logged-in session: what
    every upload pays besides its bytes, for a box that sends many short files."""
    f = login(server)
    f.voidcmd("TYPE I")
    data = bytes(4096)
    d = f"{server.upload_dir}/" if server.upload_dir else ""
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        f.storbinary(f"STOR {d}small{i}.bin", BytesIO(data))
        times.append(time.perf_counter() - t0)
    f.quit()
    return statistics.median(times)


def login(server) -> ftplib.FTP:
    f = ftplib.FTP()
    f.connect("127.0.0.1", server.port, timeout=60)
    f.login(server.user, server.password)
    return f


def idle_session_rss(server, sessions: int) -> tuple[float, float]:
    """Server RSS in KiB: what the first login costs once (worker threads' allocator arenas,
    the blocking pool's first thread, lazily built state), then per idle logged-in control
    connection. The first session is opened and closed before counting, so that one-time cost
    is not spread over the sessions."""
    time.sleep(0.5)
    start = server.rss_kib()
    login(server).close()
    time.sleep(0.5)
    before = server.rss_kib()
    conns = [login(server) for _ in range(sessions)]
    time.sleep(1)
    after = server.rss_kib()
    for f in conns:
        f.close()
    return before - start, (after - before) / sessions


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where servers store files")
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument(
        "--baseline-ftpd",
        type=Path,
        help="another ftpd build (say, the last commit's) run beside this one, on its defaults: before and after in one run",
    )
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="ftpd-bench-", dir=args.dir))
    src = Path(tempfile.gettempdir()) / f"ftpd-bench-{args.size_mib}m.bin"
    make_file(src, args.size_mib)
    servers = [
        Vsftpd(base / "vsftpd").start(),
        PlainLibunftp(base / "libunftp").start(),
        Ftpd(base / "ftpd").start(),
        Ftpd(base / "ftpd-nofsync", durability="none").start(),
        Ftpd(base / "ftpd-cached", direct_io="false").start(),
    ]
    servers[3].name = "ftpd (durability=none)"
    servers[4].name = "ftpd (direct_io=false)"
    if args.baseline_ftpd:
        servers.append(Ftpd(base / "ftpd-baseline", binary=args.baseline_ftpd.resolve()).start())
        servers[-1].name = "ftpd (baseline build)"
    try:
        results = {s.name: [] for s in servers}
        on_disk = {s.name: [] for s in servers}
        for r in range(args.rounds):
            for s in rotated(servers, r):
                results[s.name].append(upload(s, src, f"bench{r}.bin"))
                (s.file(f"bench{r}.bin")).unlink()
                on_disk[s.name].append(upload_to_disk(s, src, f"disk{r}.bin"))
                (s.file(f"disk{r}.bin")).unlink()
        print(f"\nUpload of {args.size_mib} MiB with curl, {args.rounds} interleaved rounds, files in {args.dir}")
        print(f"{'server':26} {'MiB/s':>8} {'CPU-s/GiB':>10} {'thr/vsftpd':>11} {'cpu/vsftpd':>11} {'thr/libunftp':>13}")
        med = per_gib(results, args.size_mib)
        for name, (thr, cpu) in med.items():
            v, p = med["vsftpd"], med["libunftp"]
            print(f"{name:26} {thr:8.0f} {cpu:10.2f} {thr / v[0]:10.2f}x {cpu / v[1]:10.2f}x {thr / p[0]:12.2f}x")

        print("\nThe same uploads followed by sync(2): until the bytes are on disk, whole-machine CPU")
        print("(client, server, kernel flusher threads), so every server pays for its writeback")
        print(f"{'server':26} {'MiB/s':>8} {'CPU-s/GiB':>10} {'thr/vsftpd':>11} {'cpu/vsftpd':>11}")
        dmed = per_gib(on_disk, args.size_mib)
        for name, (thr, cpu) in dmed.items():
            v = dmed["vsftpd"]
            print(f"{name:26} {thr:8.0f} {cpu:10.2f} {thr / v[0]:10.2f}x {cpu / v[1]:10.2f}x")

        print("\nSTOR of a 4 KiB file to its 226, median of 50 on one session (PASV, TYPE I):")
        small = {s.name: small_upload_latency(s) for s in servers}
        for name, t in small.items():
            print(f"  {name:26} {t * 1e3:7.2f} ms   {t / small['vsftpd']:6.2f}x vsftpd")

        if not args.skip_latency:
            lat = key_info_latency(servers[3])
            s, b = lat["small.ts"][0], lat["big.ts"][0]
            print("\nKEY INFO median round trip (300 queries each):")
            print(f"  4 KiB file: {s * 1e6:8.0f} us")
            print(f"  4 GiB partial: {b * 1e6:8.0f} us   ratio {b / s:.2f}x")
            print("  " + lat["big.ts"][1].replace("\n", "\n  "))

        # Fresh servers: one that has just moved a gigabyte keeps freed memory mapped and
        # would seem to need none for new sessions.
        print(f"\nRSS per idle logged-in session, {args.sessions} sessions, freshly started servers:")
        fresh = [PlainLibunftp(base / "libunftp-rss").start(), Ftpd(base / "ftpd-rss").start()]
        servers.extend(fresh)
        (plain_first, plain), (ours_first, ours) = (idle_session_rss(s, args.sessions) for s in fresh)
        print(f"  libunftp: {plain:6.1f} KiB   ftpd: {ours:6.1f} KiB   ratio {ours / plain:.2f}x")
        print(f"  (first login, once: libunftp {plain_first} KiB, ftpd {ours_first} KiB)")
    finally:
        for s in servers:
            s.stop()
        subprocess.run(["rm", "-rf", str(base)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
