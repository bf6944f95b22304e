#!/usr/bin/env python3
"""stb-upload figures: release binary size (as built and stripped), peak RSS while sending a
1 GiB and a 64 MiB file to a real ftpd, and throughput against curl uploading the same file to
the same server, rounds interleaved.

    python3 tests/bench/client.py [--size-mib 1024] [--small-mib 64] [--rounds 3] [--dir /dev/shm]

Needs release builds: cargo build --release -p ftpd -p stb-client; curl and GNU time. The server runs
with durability = "none" and, by default, its files on /dev/shm, so that the disk does not
dominate the figures (it would otherwise: page-cache writeback throttles the server).
"""

import argparse
import ftplib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

from servers import RELEASE, Ftpd

STB_UPLOAD = RELEASE / "stb-upload"
TIME = shutil.which("time", path="/usr/bin:/bin") or "/usr/bin/time"  # GNU time (Debian package `time`)


def make_file(path: Path, mib: int) -> None:
    if path.exists() and path.stat().st_size == mib << 20:
        return
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(mib):
            f.write(block[i % 4096 :] + block[: i % 4096])


def crc_of(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc & 0xFFFFFFFF


def delete(server: Ftpd, name: str) -> None:
    """DELE through FTP, so that the file's record goes too."""
    f = ftplib.FTP()
    f.connect("127.0.0.1", server.port)
    f.login(server.user, server.password)
    try:
        f.delete(name)
    except ftplib.error_perm:
        pass
    f.quit()


def run_measured(argv: list[str], env: dict | None = None) -> tuple[float, int, float, str]:
    """Runs a client under GNU time; returns wall seconds, peak RSS (KiB), CPU seconds and
    stdout. (wait4's ru_maxrss of a child forked by Python would count the Python process's
    own resident set, which the child inherits at fork; time's is a few hundred KiB.)"""
    with tempfile.NamedTemporaryFile("r") as rusage:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [TIME, "-f", "%M %U %S", "-o", rusage.name, *argv], capture_output=True, text=True, env=env
        )
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[0]} exited with {proc.returncode}: {proc.stderr}{proc.stdout}")
        rss, user, sys_ = rusage.read().split()[-3:]
    return wall, int(rss), float(user) + float(sys_), proc.stdout


def stb_upload(
    server: Ftpd, src: Path, name: str, extra: list[str] = (), decision: str = "fresh"
) -> tuple[float, int, float, dict]:
    if decision == "fresh":
        delete(server, name)
    env = dict(os.environ, STB_PASSWORD=server.password)
    url = f"ftp://{server.user}@127.0.0.1:{server.port}/{name}"
    wall, rss, cpu, out = run_measured([str(STB_UPLOAD), "--json", *extra, url, str(src)], env)
    result = json.loads(out)
    assert result["ok"] and result["decision"] == decision and result["verified"], result
    assert server.file(name).stat().st_size == src.stat().st_size
    return wall, rss, cpu, result


def curl(server: Ftpd, src: Path, name: str) -> tuple[float, int, float]:
    delete(server, name)
    url = f"ftp://{server.user}:{server.password}@127.0.0.1:{server.port}/{name}"
    wall, rss, cpu, _ = run_measured(["curl", "-sS", "--fail", "-T", str(src), url])
    assert server.file(name).stat().st_size == src.stat().st_size
    return wall, rss, cpu


def stripped_size(binary: Path) -> int | None:
    strip = shutil.which("strip")
    if not strip:
        return None
    with tempfile.TemporaryDirectory() as d:
        copy = Path(d) / binary.name
        shutil.copy(binary, copy)
        subprocess.run([strip, str(copy)], check=True)
        return copy.stat().st_size


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--small-mib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    shm = Path("/dev/shm")
    default_dir = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else tempfile.gettempdir()
    ap.add_argument("--dir", default=default_dir, help="where the server stores files (tmpfs: the disk out of the way)")
    args = ap.parse_args()

    size = STB_UPLOAD.stat().st_size
    stripped = stripped_size(STB_UPLOAD)
    print(f"stb-upload release binary: {size} bytes ({size / 2**20:.2f} MiB)", end="")
    print(f", stripped {stripped} bytes ({stripped / 2**20:.2f} MiB)" if stripped else ", strip not found")

    tmp = Path(tempfile.gettempdir())
    big = tmp / f"stb-bench-{args.size_mib}m.bin"
    small = tmp / f"stb-bench-{args.small_mib}m.bin"
    make_file(big, args.size_mib)
    make_file(small, args.small_mib)
    base = Path(tempfile.mkdtemp(prefix="stb-bench-", dir=args.dir))
    server = Ftpd(base / "ftpd", durability="none").start()
    try:
        print("\nPeak RSS of stb-upload (ru_maxrss through GNU time), ftpd with durability=none, default 128 KiB buffer:")
        for src in (small, big):
            _, rss, _, r = stb_upload(server, src, "rss.bin")
            assert r["crc"] == "0x%08X" % crc_of(src), r
            print(f"  {src.stat().st_size >> 20:5d} MiB file: {rss:6d} KiB")
            delete(server, "rss.bin")
        _, rss, _, _ = stb_upload(server, big, "rss.bin", ["--buffer-kib", "1024"])
        print(f"  {args.size_mib:5d} MiB file, --buffer-kib 1024: {rss:6d} KiB")
        delete(server, "rss.bin")

        rows = {"stb-upload": [], "curl": []}
        nothing_to_send = []
        for r in range(args.rounds):
            w, rss, cpu, _ = stb_upload(server, big, "thr.bin")
            rows["stb-upload"].append((w, rss, cpu))
            # Again, the server holding the verified file: the local CRC pass and the dialogue.
            nothing_to_send.append(stb_upload(server, big, "thr.bin", decision="complete")[0])
            w, rss, cpu = curl(server, big, "thr.bin")
            rows["curl"].append((w, rss, cpu))
        delete(server, "thr.bin")
        print(
            f"\nUpload of {args.size_mib} MiB to the same ftpd (durability=none, files in {args.dir}), "
            f"{args.rounds} interleaved rounds:"
        )
        print(f"  {'client':12} {'MiB/s per round':>32} {'median':>8} {'client CPU-s':>13} {'peak RSS KiB':>13}")
        med = {}
        for name, rs in rows.items():
            per = [args.size_mib / w for w, _, _ in rs]
            med[name] = statistics.median(per)
            cpu = statistics.median(c for _, _, c in rs)
            rss = max(m for _, m, _ in rs)
            print(f"  {name:12} {' '.join(f'{x:7.0f}' for x in per):>32} {med[name]:8.0f} {cpu:13.2f} {rss:13d}")
        print(f"  throughput ratio stb-upload / curl (medians): {med['stb-upload'] / med['curl']:.3f}x (target >= 0.95x)")
        print(
            f"  stb-upload with nothing to send (its CRC pass over the local file, which the KEY "
            f"declaration needs before STOR, and the dialogue): median {statistics.median(nothing_to_send):.3f} s"
        )
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
