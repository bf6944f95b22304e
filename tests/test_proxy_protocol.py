"""ftpd behind a balancer: PROXY protocol headers (`proxy_from`) on the control and passive ports.

The balancer here is 127.0.0.9: the tests' own sockets connect from it when they play the
balancer. Every other connection comes from 127.0.0.1, which `proxy_from` does not list, so the
same servers also show that nothing changes for other peers (the readiness check included).
The last test puts a real HAProxy in front of two nodes that share one file tree.
"""

import ftplib
import io
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from helpers import (
    BALANCER,
    PROXY_V2_SIGNATURE,
    USERS,
    HAProxy,
    Node,
    data_of,
    disjoint_port_range,
    free_port,
    proxy_v1,
    proxy_v2,
    raw_control,
    replies_until_closed,
    wait_for_log,
)


def from_balancer(port: int, data: bytes, timeout: float = 10) -> socket.socket:
    """A connection from the balancer's address that starts with `data` (a header, and maybe
    what the client sent right behind it)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(BALANCER, 0))
    s.sendall(data)
    return s


def login_lines(user: str = "alice", password: str | None = None) -> bytes:
    return b"USER %s\r\nPASS %s\r\n" % (user.encode(), (password or USERS[user]).encode())


def test_a_proxy_line_from_an_unlisted_peer_is_an_ordinary_command(ftpd):
    line = b"PROXY TCP4 203.0.113.7 127.0.0.1 1234 2121\r\n"
    s, r = raw_control("127.0.0.1", ftpd.port)
    s.sendall(line)
    # Before login libunftp answers every unknown command with 530.
    assert r.readline().startswith(b"530")
    s.sendall(login_lines())
    assert r.readline().startswith(b"331")
    assert r.readline().startswith(b"230")
    s.sendall(line)
    after_login = r.readline()
    assert after_login.startswith(b"500"), after_login
    s.sendall(b"NOOP\r\n")
    assert r.readline().startswith(b"200")
    s.close()
    assert "203.0.113.7" not in ftpd.log()


def test_the_shipped_haproxy_config_is_valid():
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (tests/run installs it)")
    cfg = Path(__file__).resolve().parent.parent / "conf" / "haproxy.cfg"
    check = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_v2_signature_from_an_unlisted_peer_is_only_bytes(ftpd):
    s, r = raw_control("127.0.0.1", ftpd.port)
    s.sendall(proxy_v2("203.0.113.7") + login_lines())
    replies = replies_until_closed(s).decode(errors="replace").splitlines()
    s.close()
    # Two empty lines, a NUL line, then the `QUIT\n` the signature carries for servers that do
    # not speak the protocol: ordinary errors, and the session ends with 221 (the binary line
    # behind the QUIT may still get the front's own 500 before the connection closes).
    codes = [line[:3] for line in replies]
    assert "221" in codes, replies
    assert all(c.startswith("5") for c in codes if c != "221"), replies
    f = ftpd.ftp()
    f.voidcmd("NOOP")
    f.quit()
    assert "203.0.113.7" not in ftpd.log()


def test_the_throttle_counts_the_claimed_address(ftpd_factory):
    srv = ftpd_factory(proxy_from=BALANCER, failed_logins_per_address="3", failed_logins_max="10")
    for attempt in range(3):
        s = from_balancer(srv.port, proxy_v1("203.0.113.7", 1000 + attempt) + login_lines(password="wrong"))
        got = replies_until_closed(s) if attempt == 2 else b""
        if attempt < 2:
            r = s.makefile("rb")
            assert r.readline().startswith(b"220")
            assert r.readline().startswith(b"331")
            assert r.readline().startswith(b"530")
        else:
            assert b"\r\n530 " in got and got.endswith(b"421 Too many failed logins from your address, try again later.\r\n"), got
        s.close()
    # The claimed address is refused on connect; another one behind the same balancer is not.
    s = from_balancer(srv.port, proxy_v1("203.0.113.7", 2000))
    assert replies_until_closed(s).startswith(b"421 Too many failed logins"), "claimed address not refused"
    s.close()
    s = from_balancer(srv.port, proxy_v2("203.0.113.8", 2001) + login_lines() + b"NOOP\r\n")
    r = s.makefile("rb")
    for code in (b"220", b"331", b"230", b"200"):
        line = r.readline()
        assert line.startswith(code), (code, line)
    s.close()
    # A direct connection from an unlisted address is its own client, without a header.
    f = srv.ftp()
    f.voidcmd("NOOP")
    f.quit()
    log = srv.log()
    assert "login failed client=203.0.113.7:1000" in log, log
    assert "client=203.0.113.7:2000" in log and "too many failed logins" in log, log
    assert "login succeeded client=203.0.113.8:2001" in log, log
    assert f"client={BALANCER}" not in log, log


def test_connection_limits_count_the_claimed_address(ftpd_factory):
    srv = ftpd_factory(proxy_from=BALANCER, max_connections_per_address="2")
    # Two from 203.0.113.8 fit, a third does not, while 203.0.113.9 still gets in.
    held = []
    for port in (1, 2):
        s = from_balancer(srv.port, proxy_v1("203.0.113.8", port))
        assert s.makefile("rb").readline().startswith(b"220")
        held.append(s)
    s = from_balancer(srv.port, proxy_v1("203.0.113.8", 3))
    assert replies_until_closed(s).startswith(b"421 Too many connections from your address")
    s.close()
    s = from_balancer(srv.port, proxy_v2("203.0.113.9", 4))
    assert s.makefile("rb").readline().startswith(b"220")
    held.append(s)
    for s in held:
        s.close()
    log = srv.log()
    assert "client=203.0.113.8:3" in log and "connection limit reached" in log, log


def test_passive_connections_match_the_claimed_address(ftpd_factory):
    srv = ftpd_factory(proxy_from=BALANCER)
    # Without passive_host the address announced is the one the client connected to: the
    # balancer's, as the header names it.
    s = from_balancer(srv.port, proxy_v1("203.0.113.20", 3000, "198.51.100.1", 21) + login_lines() + b"TYPE I\r\nPASV\r\n")
    r = s.makefile("rb")
    for code in (b"220", b"331", b"230", b"200"):
        assert r.readline().startswith(code)
    pasv = r.readline().decode()
    host, port = ftplib.parse227(pasv)
    assert host == "198.51.100.1", pasv
    # A data connection claiming another client matches no promise and is closed.
    stranger = from_balancer(port, proxy_v1("203.0.113.21", 3001, "198.51.100.1", port))
    assert replies_until_closed(stranger) == b""
    stranger.close()
    # The right client's upload bytes come in the same segment as the header: none is lost.
    payload = data_of(300_000, 7)
    data = from_balancer(port, proxy_v1("203.0.113.20", 3002, "198.51.100.1", port) + payload)
    s.sendall(b"STOR via-balancer.bin\r\n")
    assert r.readline().startswith(b"150")
    data.shutdown(socket.SHUT_WR)
    assert r.readline().startswith(b"226")
    data.close()
    s.close()
    assert srv.file("alice", "via-balancer.bin").read_bytes() == payload


def test_a_balancer_connection_without_a_usable_header_is_closed_silently(ftpd_factory):
    srv = ftpd_factory(proxy_from=BALANCER)
    bad = {
        "a command": login_lines(),
        "binary bytes": bytes(range(256)),
        "a malformed v1 header": b"PROXY TCP4 203.0.113.300 127.0.0.1 1 21\r\nUSER alice\r\n",
        "an oversized v2 header": PROXY_V2_SIGNATURE + bytes([0x21, 0x11]) + (4000).to_bytes(2, "big"),
        "nothing at all": b"",
    }
    opened = srv.log().count("control connection opened")
    for what, data in bad.items():
        s = from_balancer(srv.port, data)
        t0 = time.monotonic()
        assert replies_until_closed(s) == b"", what
        s.close()
        assert time.monotonic() - t0 < 8, what
    wait_for_log(srv, "no usable PROXY header", count=len(bad))
    # Nothing reached libunftp.
    assert srv.log().count("control connection opened") == opened
    # A passive port closes such a connection the same way.
    s = from_balancer(srv.passive[0], b"garbage\r\n")
    assert replies_until_closed(s) == b""
    s.close()
    wait_for_log(srv, "no usable PROXY header", count=len(bad) + 1)
    # The server stays healthy, for the balancer and for direct clients.
    s = from_balancer(srv.port, proxy_v2(None) + b"QUIT\r\n")
    got = replies_until_closed(s)
    assert got.startswith(b"220") and b"\r\n221" in got, got
    s.close()
    f = srv.ftp()
    f.voidcmd("NOOP")
    f.quit()


@pytest.fixture
def two_nodes_behind_haproxy(ftpd_factory, tmp_path):
    """Two ftpd nodes on 127.0.0.2 and 127.0.0.3 sharing one file tree, each with its own
    passive range, behind HAProxy on 127.0.0.1 (which connects to them from the balancer's
    address). Yields the HAProxy, the nodes and their ranges."""
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (tests/run installs it)")
    shared = tmp_path / "shared-root"
    ranges: list[tuple[int, int]] = []
    for _ in range(2):
        disjoint_port_range(ranges)
    nodes = []
    for ip, (lo, hi) in zip(("127.0.0.2", "127.0.0.3"), ranges):
        nodes.append(
            ftpd_factory(
                listen=f"{ip}:{free_port(ip)}",
                passive_ports=f"{lo}-{hi}",
                passive_host="127.0.0.1",
                proxy_from=BALANCER,
                root=str(shared),
            )
        )
    spec = [Node(n.host, n.port, r) for n, r in zip(nodes, ranges)]
    with HAProxy(tmp_path, spec, source=BALANCER) as haproxy:
        yield haproxy, nodes, ranges
        assert " is DOWN" not in haproxy.log(), haproxy.log()
    assert haproxy.proc is not None and haproxy.proc.poll() is not None


def node_of(pasv_reply: str, ranges: list[tuple[int, int]]) -> int:
    """Which node a session is on, from the port its PASV announced (and the announced address
    must be the balancer's)."""
    host, port = ftplib.parse227(pasv_reply)
    assert host == "127.0.0.1", pasv_reply
    return next(i for i, (lo, hi) in enumerate(ranges) if lo <= port <= hi)


def test_two_nodes_behind_haproxy(two_nodes_behind_haproxy, tmp_path):
    haproxy, nodes, ranges = two_nodes_behind_haproxy
    # Sessions stay open while the next ones start, so leastconn sends them to the other node:
    # one session on each.
    by_node: dict[int, ftplib.FTP] = {}
    extra = []
    for _ in range(6):
        f = ftplib.FTP(source_address=("127.0.0.5", 0))
        f.connect("127.0.0.1", haproxy.port, timeout=30)
        f.login("alice", USERS["alice"])
        node = node_of(f.sendcmd("PASV"), ranges)
        if node in by_node:
            extra.append(f)
        else:
            by_node[node] = f
        if len(by_node) == 2:
            break
    assert sorted(by_node) == [0, 1], "both nodes serve a session"
    for f in extra:
        f.quit()
    sessions = [by_node[0], by_node[1]]
    blobs = {"a.bin": data_of(2 << 20, 1), "b.bin": data_of(3 << 20 | 123, 2)}
    for f, (name, data) in zip(sessions, blobs.items()):
        assert f.storbinary(f"STOR {name}", io.BytesIO(data)).startswith("226")
    # Each session reads what the other node stored: one file tree.
    for f, name in zip(sessions, reversed(list(blobs))):
        got = bytearray()
        assert f.retrbinary(f"RETR {name}", got.extend).startswith("226")
        assert bytes(got) == blobs[name]
    for f in sessions:
        f.quit()

    # curl, from another address: upload with PASV (the announced address is used as is),
    # download with EPSV.
    blobs["c.bin"] = data_of(1 << 20, 3)
    (tmp_path / "c.up").write_bytes(blobs["c.bin"])
    url = f"ftp://alice:{USERS['alice']}@127.0.0.1:{haproxy.port}/c.bin"
    curl = ["curl", "-sS", "--max-time", "60", "--interface", "127.0.0.6"]
    subprocess.run([*curl, "--disable-epsv", "-T", str(tmp_path / "c.up"), url], check=True, timeout=90)
    subprocess.run([*curl, "-o", str(tmp_path / "c.down"), url], check=True, timeout=90)
    assert (tmp_path / "c.down").read_bytes() == blobs["c.bin"]

    shared = tmp_path / "shared-root" / "alice"
    for name, data in blobs.items():
        assert (shared / name).read_bytes() == data, name
    for node in nodes:
        # Sessions under the client's address from the PROXY header; HAProxy's health checks
        # (v2 LOCAL, every 2 s) under the balancer's own, answered 220 and then 221.
        assert "login succeeded client=127.0.0.5:" in node.log(), node.log()
        wait_for_log(node, f"control connection opened client={BALANCER}:")
    assert any("login succeeded client=127.0.0.6:" in n.log() for n in nodes), [n.log() for n in nodes]
