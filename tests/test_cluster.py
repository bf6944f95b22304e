"""Several ftpd nodes sharing one PostgreSQL store and one file tree.

PostgreSQL comes from the libpq environment (PGHOST, PGPORT, PGUSER, PGPASSWORD) that
`tests/run` sets up with pg_virtualenv: a throwaway cluster on loopback. Each test gets a fresh
database. Without PGHOST the tests are skipped, unless POSTGRES_TESTS=required (as
`tests/run` sets it), where they fail.
"""

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import shutil

from conftest import Ftpd
from helpers import (
    BALANCER,
    crc32,
    pg_conninfo,
    psql,
    pattern,
    start_upload,
    stb_upload,
    wait_for_disk_size,
    wait_for_log,
)


def _pg_required() -> bool:
    return os.environ.get("POSTGRES_TESTS") == "required"


@pytest.fixture
def pg_url():
    """A fresh database on the throwaway cluster, as a libpq key=value string."""
    if not os.environ.get("PGHOST"):
        if _pg_required():
            pytest.fail("POSTGRES_TESTS=required but no PostgreSQL (PGHOST) is set up")
        pytest.skip("no PostgreSQL: run under pg_virtualenv (tests/run does)")
    name = f"ftpd_{uuid.uuid4().hex[:12]}"
    psql(f"CREATE DATABASE {name}")
    yield pg_conninfo(name), name
    psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def node(base: Path, name: str, url: str, root: Path, **settings) -> Ftpd:
    """One node of the cluster: its own ports and state directory, the shared store and root."""
    settings = {
        "store": "postgres",
        "postgres_url": url,
        "node_name": name,
        "root": str(root),
        "lease_seconds": "3",
        "takeover_wait": "1",
        "checkpoint_mib": "1",
        **settings,
    }
    n = Ftpd(base / name, **settings)
    n.root = root
    return n


@pytest.fixture
def cluster(tmp_path, pg_url):
    """Makes nodes on one database and one shared root; stops them all afterwards."""
    url, _ = pg_url
    root = tmp_path / "shared-root"
    nodes: list[Ftpd] = []

    def make(name: str, **settings) -> Ftpd:
        n = node(tmp_path, name, url, root, **settings)
        nodes.append(n)
        return n.start()

    yield make
    for n in nodes:
        if n.proc is not None and n.proc.poll() is None:
            n.proc.send_signal(signal.SIGCONT)
        try:
            n.stop(10)
        except Exception:
            pass
        assert "panicked" not in n.log(), n.log()


def records(n: Ftpd) -> dict:
    """The records as `ftpd uploads list --json` reports them, by path."""
    out = n.cli("uploads", "list", "--json").stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    if len(rows) == 1 and isinstance(rows[0], list):
        rows = rows[0]
    return {r["path"]: r for r in rows}


def snapshot(path: Path) -> tuple:
    st = path.stat()
    return (st.st_size, st.st_mtime_ns, st.st_ino, crc32(path.read_bytes()))


def test_a_paused_node_never_writes_after_the_box_resumed_on_another(cluster, tmp_path):
    a = cluster("node-a")
    b = cluster("node-b")
    data = pattern(6 << 20, seed=11)
    local = tmp_path / "rec.ts"
    local.write_bytes(data)
    target = a.file("alice", "rec.ts")

    # The box uploads to A; A stores 3 MiB (three checkpoints), then stops (SIGSTOP) with
    # another 256 KiB sitting unread in its socket: A's late bytes, should it ever go on.
    f = a.ftp()
    conn = start_upload(f, "rec.ts", declared=crc32(data))
    conn.sendall(data[: 3 << 20])
    wait_for_disk_size(target, 3 << 20)
    a.signal(signal.SIGSTOP)
    conn.sendall(data[3 << 20 : (3 << 20) + (256 << 10)])
    conn.close()
    f.sock.close()

    # The box resumes on B, which must wait for A's claim (3 s) to run out, then takes over.
    t0 = time.monotonic()
    run = stb_upload(b.port, "rec.ts", local, "--retries", "20", "--retry-delay-ms", "500", "--timeout", "20")
    waited = time.monotonic() - t0
    assert run.code == 0, run
    assert target.read_bytes() == data
    rec = records(b)["/rec.ts"]
    assert rec["state"] == "verified", rec
    before = (snapshot(target), rec)

    # A goes on: its unread bytes arrive, but its claim is gone. Nothing of it may reach the
    # file or the record.
    a.signal(signal.SIGCONT)
    wait_for_log(a, "fence", timeout=15)
    time.sleep(1.0)
    assert (snapshot(target), records(b)["/rec.ts"]) == before
    assert target.read_bytes() == data
    # And A serves on.
    g = a.ftp()
    assert g.sendcmd("NOOP").startswith("200")
    g.quit()
    print(f"box resumed on node-b {waited:.1f} s after node-a stopped")


def _verified(lb_host: str, lb_port: int, name: str, size: int) -> bool:
    """Whether the store, asked through the balancer, calls `name` verified at `size` bytes."""
    import ftplib

    from helpers import USERS, info

    try:
        f = ftplib.FTP()
        f.connect(lb_host, lb_port, timeout=10)
        f.login("alice", USERS["alice"])
        try:
            i = info(f, name)
        finally:
            f.close()
    except (OSError, EOFError, ftplib.Error):
        return False
    return i.get("state") == "verified" and i.get("size") == str(size)


def test_three_nodes_behind_haproxy_lose_nothing_while_nodes_are_killed(cluster, tmp_path):
    import random
    import threading

    from helpers import STB_UPLOAD, USERS, HAProxy, Node, disjoint_port_range, free_port, key

    rng = random.Random(16)
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is not installed (tests/run installs it)")
    # Three nodes on 127.0.0.2-4, each with its own passive range, behind HAProxy on
    # 127.0.0.1, which connects to them from 127.0.0.9 with PROXY headers.
    ranges: list[tuple[int, int]] = []
    for _ in range(3):
        disjoint_port_range(ranges)
    nodes = [
        cluster(
            f"node-{i}",
            listen=f"{ip}:{free_port(ip)}",
            passive_ports=f"{lo}-{hi}",
            passive_host="127.0.0.1",
            proxy_from=BALANCER,
            data_idle_timeout="5",
        )
        for i, (ip, (lo, hi)) in enumerate(zip(("127.0.0.2", "127.0.0.3", "127.0.0.4"), ranges), 1)
    ]
    lb = HAProxy(tmp_path, [Node(n.host, n.port, r) for n, r in zip(nodes, ranges)], source=BALANCER)
    boxes = 100
    files = {}
    for i in range(boxes):
        data = pattern(rng.randrange(1 << 20, 4 << 20), seed=100 + i)
        p = tmp_path / f"box{i:03}.ts"
        p.write_bytes(data)
        files[i] = (p, data)
    attempts = [0] * boxes
    done = [False] * boxes
    deadline = time.monotonic() + 240

    def box(i: int) -> None:
        time.sleep(i * 0.08)  # the fleet arrives over 8 s
        local, data = files[i]
        name = local.name
        url = f"ftp://alice:{USERS['alice']}@127.0.0.1:{lb.port}/{name}"
        while time.monotonic() < deadline:
            attempts[i] += 1
            if i % 2:
                # curl: declare the KEY first; after an interruption resume by SIZE with APPE.
                first = attempts[i] == 1
                cmd = ["curl", "-sS", "--limit-rate", "768K", "--connect-timeout", "5", "-m", "60"]
                cmd += ["-Q", f"KEY {key(crc32(data))}"] if first else ["-C", "-"]
                subprocess.run(cmd + ["-T", str(local), url], capture_output=True, timeout=90)
            else:
                subprocess.run(
                    [str(STB_UPLOAD), "--password-stdin", "--retries", "0", "--timeout", "10",
                     f"ftp://alice@127.0.0.1:{lb.port}/{name}", str(local)],
                    input=USERS["alice"] + "\n", capture_output=True, text=True, timeout=90,
                )
            if _verified("127.0.0.1", lb.port, name, len(data)):
                done[i] = True
                return
            time.sleep(0.3)

    kills = []
    with lb:
        threads = [threading.Thread(target=box, args=(i,)) for i in range(boxes)]
        for t in threads:
            t.start()
        # Chaos: a random node is SIGKILLed every 1-2.5 s and restarted half a second later,
        # until every box is done and at least five kills happened.
        while (not all(done) or len(kills) < 5) and time.monotonic() < deadline:
            time.sleep(rng.uniform(1.0, 2.5))
            victim = rng.choice(nodes)
            victim.kill9()
            kills.append((time.monotonic(), victim.env["FTPD_NODE_NAME"]))
            time.sleep(0.5)
            victim.start()
        for t in threads:
            t.join(timeout=max(1, deadline - time.monotonic()))

    assert len(kills) >= 5, kills
    assert all(done), f"boxes not verified: {[i for i in range(boxes) if not done[i]]}"
    # Every file byte-identical; every record closed and describing exactly its file.
    root = nodes[0].root
    for i, (local, data) in files.items():
        assert (root / "alice" / local.name).read_bytes() == data, local.name
    recs = records(nodes[0])
    assert len(recs) == boxes, sorted(recs)
    for path, r in recs.items():
        on_disk = (root / "alice" / path.lstrip("/")).read_bytes()
        assert r["state"] == "verified", r
        assert int(r["size"]) == len(on_disk), r
        assert r["crc"] == key(crc32(on_disk)), r
    print(f"{len(kills)} kills; attempts per box: max {max(attempts)}, total {sum(attempts)}")
