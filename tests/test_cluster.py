"""Several ftpd nodes sharing one PostgreSQL store and one file tree.

PostgreSQL comes from the libpq environment (PGHOST, PGPORT, PGUSER, PGPASSWORD) that
`tests/run` sets up with pg_virtualenv: a throwaway cluster on loopback. Each test gets a fresh
database. Without PGHOST the tests are skipped, unless FTPD_TEST_POSTGRES=required (as
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

from conftest import Ftpd
from helpers import (
    crc32,
    final_reply,
    pattern,
    start_upload,
    stb_upload,
    wait_for_disk_size,
    wait_for_log,
)


def _pg_required() -> bool:
    return os.environ.get("FTPD_TEST_POSTGRES") == "required"


def _psql(sql: str, db: str = "postgres") -> str:
    return subprocess.run(
        ["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


@pytest.fixture
def pg_url():
    """A fresh database on the throwaway cluster, as a libpq key=value string."""
    if not os.environ.get("PGHOST"):
        if _pg_required():
            pytest.fail("FTPD_TEST_POSTGRES=required but no PostgreSQL (PGHOST) is set up")
        pytest.skip("no PostgreSQL: run under pg_virtualenv (tests/run does)")
    name = f"ftpd_{uuid.uuid4().hex[:12]}"
    _psql(f"CREATE DATABASE {name}")
    env = os.environ
    parts = {
        "host": env.get("PGHOST", "localhost"),
        "port": env.get("PGPORT", "5432"),
        "user": env.get("PGUSER", "postgres"),
        "password": env.get("PGPASSWORD", ""),
        "dbname": name,
    }
    yield " ".join(f"{k}={v}" for k, v in parts.items() if v), name
    _psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


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
    return Ftpd(base / name, **settings)


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
