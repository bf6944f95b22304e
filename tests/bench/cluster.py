"""Figures for ftpd on several nodes, each measured against its baseline in the same run:

* `KEY NULL` latency and STOR-to-226 time of a 4 KiB upload, PostgreSQL store against redb;
* 1 GiB upload throughput through HAProxy against a direct connection (both PostgreSQL nodes);
* how long a box waits to resume after the node holding its upload is SIGKILLed (three nodes
  behind HAProxy, `lease_seconds` as given).

Needs PostgreSQL from the libpq environment and HAProxy, as the tests do:

    pg_virtualenv python3 tests/bench/cluster.py [--rounds 3] [--gib 1] [--lease 15]
"""

import argparse
import ftplib
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from conftest import Ftpd  # noqa: E402
from helpers import (  # noqa: E402
    BALANCER,
    USERS,
    HAProxy,
    Node,
    crc32,
    free_port,
    disjoint_port_range,
    pg_conninfo,
    psql,
    key,
    pattern,
    wait_for_disk_size,
)


# Passive ranges handed out so far: HAProxy listens on all of them on one address.
RANGES: list[tuple[int, int]] = []


def node(base: Path, ip: str, pgs: dict, **settings) -> Ftpd:
    """A PostgreSQL node on `ip` with its own passive range, behind HAProxy (which connects
    from BALANCER, announced as 127.0.0.1)."""
    lo, hi = disjoint_port_range(RANGES)
    srv = Ftpd(base, **pgs, listen=f"{ip}:{free_port(ip)}", passive_ports=f"{lo}-{hi}",
               passive_host="127.0.0.1", proxy_from=BALANCER, **settings)
    srv.passive = (lo, hi)
    return srv


def login(host: str, port: int) -> ftplib.FTP:
    f = ftplib.FTP()
    f.connect(host, port, timeout=30)
    f.login("alice", USERS["alice"])
    return f


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def small_ops(srv: Ftpd, n: int) -> tuple[list[float], list[float]]:
    """`n` STOR-to-226 times of declared 4 KiB uploads, then `n` `KEY NULL` round trips."""
    f = login(srv.host, srv.port)
    data = pattern(4096, seed=3)
    stor, keynull = [], []
    for i in range(n):
        f.sendcmd(f"SITE KEY {key(crc32(data))}")
        t = time.perf_counter()
        f.storbinary(f"STOR small{i % 20}.bin", io.BytesIO(data))
        stor.append(time.perf_counter() - t)
    for i in range(n):
        t = time.perf_counter()
        f.sendcmd(f"SITE KEY NULL small{i % 20}.bin")
        keynull.append(time.perf_counter() - t)
    f.quit()
    return stor, keynull


def curl_upload(host: str, port: int, src: Path, name: str) -> float:
    t = time.perf_counter()
    subprocess.run(["curl", "-sS", "-T", str(src), f"ftp://alice:{USERS['alice']}@{host}:{port}/{name}"],
                   check=True, capture_output=True)
    return time.perf_counter() - t


def resume_wait(nodes: list[Ftpd], lb: HAProxy, tmp: Path) -> float:
    """A box uploads to node 1 directly; node 1 is SIGKILLed with 8 MiB stored; the box then
    asks through the balancer until a node accepts its resume. Seconds from the kill to the 150."""
    data = pattern(32 << 20, seed=9)
    name = f"kill-{uuid.uuid4().hex[:6]}.ts"
    f = login(nodes[0].host, nodes[0].port)
    f.sendcmd(f"SITE KEY {key(crc32(data))}")
    f.voidcmd("TYPE I")
    conn = f.transfercmd(f"STOR {name}")
    conn.sendall(data[: 8 << 20])
    wait_for_disk_size(nodes[0].root / "alice" / name, 8 << 20)
    nodes[0].kill9()
    killed = time.perf_counter()
    conn.close()
    while True:
        try:
            g = login("127.0.0.1", lb.port)
            size = int(g.sendcmd(f"SIZE {name}").split()[1])
            g.voidcmd("TYPE I")
            c = g.transfercmd(f"STOR {name}", rest=size)
            waited = time.perf_counter() - killed
            c.sendall(data[size:])
            c.close()
            g.voidresp()
            g.quit()
            nodes[0].start()
            return waited
        except (OSError, EOFError, ftplib.Error):
            time.sleep(0.1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ops", type=int, default=200, help="small uploads and KEY NULLs per round")
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--lease", type=int, default=15, help="lease_seconds of the three nodes")
    args = ap.parse_args()
    if not os.environ.get("PGHOST"):
        sys.exit("no PostgreSQL: run under pg_virtualenv")
    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    db = f"bench_{uuid.uuid4().hex[:8]}"
    psql(f"CREATE DATABASE {db}")
    started: list[Ftpd] = []
    lbs: list[HAProxy] = []

    def start(srv: Ftpd) -> Ftpd:
        started.append(srv)
        return srv.start()

    try:
        pgs = {"store": "postgres", "postgres_url": pg_conninfo(db)}
        redb = start(Ftpd(tmp / "redb"))
        pg = start(Ftpd(tmp / "pg", **pgs, node_name="pg"))
        stor = {"redb": [], "postgres": []}
        keyn = {"redb": [], "postgres": []}
        for r in range(args.rounds):
            for label, srv in ([("redb", redb), ("postgres", pg)] if r % 2 == 0 else [("postgres", pg), ("redb", redb)]):
                s, k = small_ops(srv, args.ops)
                stor[label] += s
                keyn[label] += k
        print("4 KiB STOR-to-226 and KEY NULL, ms (p50 / p99), interleaved rounds:")
        for what, rows in (("STOR->226", stor), ("KEY NULL", keyn)):
            a, b = rows["redb"], rows["postgres"]
            print(f"  {what:10} redb {statistics.median(a)*1e3:.2f} / {pct(a, .99)*1e3:.2f}   "
                  f"postgres {statistics.median(b)*1e3:.2f} / {pct(b, .99)*1e3:.2f}   "
                  f"ratio p50 {statistics.median(b)/statistics.median(a):.2f}x")

        # Throughput: one PostgreSQL node reached directly, another through HAProxy.
        # On an address of its own: HAProxy listens on the other node's passive range on 127.0.0.1.
        direct = start(Ftpd(tmp / "direct", **pgs, node_name="direct", listen=f"127.0.0.5:{free_port('127.0.0.5')}"))
        behind = start(node(tmp / "behind", "127.0.0.2", pgs, node_name="behind"))
        lb = HAProxy(tmp, [Node(behind.host, behind.port, behind.passive)], source=BALANCER).start()
        lbs.append(lb)
        src = tmp / "big.bin"
        with open(src, "wb") as out:
            block = os.urandom(1 << 20)
            for _ in range(int(args.gib * 1024)):
                out.write(block)
        mib = src.stat().st_size / (1 << 20)
        rates = {"direct": [], "haproxy": []}
        for r in range(args.rounds):
            order = [("direct", direct.host, direct.port), ("haproxy", "127.0.0.1", lb.port)]
            for label, host, port in order if r % 2 == 0 else order[::-1]:
                rates[label].append(mib / curl_upload(host, port, src, f"big{r}.bin"))
        src.unlink()
        for d in (direct, behind):
            for p in (d.root / "alice").glob("big*.bin"):
                p.unlink()
        d, h = statistics.median(rates["direct"]), statistics.median(rates["haproxy"])
        print(f"{args.gib:g} GiB upload, MiB/s (median of {args.rounds}): direct {d:.0f}, "
              f"through HAProxy {h:.0f}, ratio {h/d:.2f}x")
        lb.stop()
        for srv in (direct, behind):
            srv.stop()

        # Resume after SIGKILL: three nodes behind HAProxy.
        # The box's first connection goes to node 1 directly (its own address); it resumes
        # through HAProxy, which balances over nodes 2 and 3.
        shared = {"lease_seconds": str(args.lease), "root": str(tmp / "shared")}
        nodes = [
            start(node(tmp / f"node{i}", f"127.0.0.{i + 1}", pgs, node_name=f"node{i}", **shared))
            for i in (1, 2, 3)
        ]
        for n in nodes:
            n.root = tmp / "shared"
        lb = HAProxy(tmp, [Node(n.host, n.port, n.passive) for n in nodes[1:]], source=BALANCER).start()
        lbs.append(lb)
        waits = [resume_wait(nodes, lb, tmp) for _ in range(args.rounds)]
        print(f"box waits to resume after its node is SIGKILLed (lease_seconds={args.lease}): "
              f"median {statistics.median(waits):.1f} s, max {max(waits):.1f} s "
              f"({', '.join(f'{w:.1f}' for w in waits)})")
    finally:
        for lb in lbs:
            lb.stop()
        for s in started:
            try:
                s.stop(10)
            except Exception:
                pass
        psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        subprocess.run(["rm", "-rf", str(tmp)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
