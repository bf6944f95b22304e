"""Bare KEY through the front, from a client on another host: a network namespace with its own
address on a veth pair. Passing on loopback alone proves nothing (libunftp closes data
connections whose peer differs from the control connection's)."""

import ftplib
import io
import os
import random
import socket
import subprocess
import sys
import textwrap

import pytest

from helpers import USERS, crc32, free_port, key, pattern, raw_control, replies_until_closed


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@pytest.fixture
def remote_host():
    """A namespace `box` at 10.X.Y.2 reaching this host at 10.X.Y.1; removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tag = "%05d" % random.randrange(100000)
    ns, host_if, box_if = f"ftpdbox{tag}", f"fh{tag}", f"fb{tag}"
    net = f"10.{random.randrange(200, 250)}.{random.randrange(1, 250)}"
    made = _ip("netns", "add", ns, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {made.stderr.strip()}")
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", box_if)
        _ip("link", "set", box_if, "netns", ns)
        _ip("addr", "add", f"{net}.1/24", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("netns", "exec", ns, "ip", "addr", "add", f"{net}.2/24", "dev", box_if)
        _ip("netns", "exec", ns, "ip", "link", "set", box_if, "up")
        _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns, f"{net}.1", f"{net}.2"
    finally:
        _ip("link", "del", host_if, check=False)
        _ip("netns", "del", ns, check=False)


def in_box(ns: str, script: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


SEED_DIALOGUE = """
    import ftplib, io, socket, sys, zlib
    host, port, user, pw, size, cut = sys.argv[1:] if len(sys.argv) > 1 else ({args})
    port, size, cut = int(port), int(size), int(cut)
    data = bytes((i * 7 + i // 251) & 0xFF for i in range(size))
    crc = "0x%08X" % (zlib.crc32(data) & 0xFFFFFFFF)
    f = ftplib.FTP(); f.connect(host, port, timeout=30); f.login(user, pw)
    print("declare", f.sendcmd("KEY " + crc))
    f.voidcmd("TYPE I")
    conn = f.transfercmd("STOR rec.ts")
    conn.sendall(data[:cut])
    conn.close()
    print("first", f.voidresp() if False else "cut")
    f.close()
    g = ftplib.FTP(); g.connect(host, port, timeout=30); g.login(user, pw)
    import time
    last = -1
    for _ in range(50):
        s = int(g.sendcmd("SIZE rec.ts").split()[1])
        if s == last: break
        last = s; time.sleep(0.2)
    print("size", s)
    answer = g.sendcmd("KEY NULL")
    print("query", answer)
    assert answer == "230 " + crc, answer
    g.voidcmd("TYPE I")
    print("resume", g.storbinary("STOR rec.ts", io.BytesIO(data[s:]), rest=s))
    print("info", g.sendcmd("KEY INFO").replace("\\r\\n", "|").replace("\\n", "|"))
    g.quit()
"""


def test_seed_dialogue_with_bare_key_from_another_host(ftpd_factory, remote_host):
    ns, host_ip, box_ip = remote_host
    srv = ftpd_factory(front="true", listen=f"{host_ip}:0".replace(":0", f":{free_port(host_ip)}"))
    size, cut = 3 << 20, 1_000_000
    args = f'"{host_ip}", "{srv.port}", "alice", "{USERS["alice"]}", "{size}", "{cut}"'
    r = in_box(ns, SEED_DIALOGUE.format(args=args))
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "declare 230 KEY 0x" in out
    assert "resume 226" in out
    assert "state=verified" in out
    data = bytes((i * 7 + i // 251) & 0xFF for i in range(size))
    assert srv.file("alice", "rec.ts").read_bytes() == data
    # libunftp and the front log the box's real address, not the front's loopback one.
    assert box_ip in srv.log()


def test_standard_clients_from_another_host_through_the_front(ftpd_factory, remote_host, tmp_path):
    ns, host_ip, _ = remote_host
    srv = ftpd_factory(front="true", listen=f"{host_ip}:{free_port(host_ip)}")
    src = tmp_path / "src.bin"
    data = pattern(2 << 20, seed=7)
    src.write_bytes(data)
    url = f"ftp://alice:{USERS['alice']}@{host_ip}:{srv.port}/"
    run = lambda *cmd: subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=60)
    r = run("curl", "-sS", "-Q", f"KEY {key(crc32(data))}", "-T", str(src), url + "c.bin")
    assert r.returncode == 0, r.stderr
    assert srv.file("alice", "c.bin").read_bytes() == data
    r = run("curl", "-sS", "-v", "-Q", "KEY NULL c.bin", url)
    assert f"< 230 {key(crc32(data))}" in r.stderr, r.stderr
    half = tmp_path / "half.bin"
    half.write_bytes(data[: len(data) // 2])
    srv_ftp = srv.ftp()
    srv_ftp.storbinary("STOR l.bin", io.BytesIO(data[: len(data) // 3]))
    srv_ftp.quit()
    r = run(
        "lftp",
        "-u",
        f"alice,{USERS['alice']}",
        "-p",
        str(srv.port),
        host_ip,
        "-e",
        f"set ftp:passive-mode on; set net:max-retries 1; put -c {src} -o l.bin; get c.bin -o {tmp_path}/back.bin; bye",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert srv.file("alice", "l.bin").read_bytes() == data
    assert (tmp_path / "back.bin").read_bytes() == data


def test_failed_logins_throttle_the_real_address_not_everyone(ftpd_factory, remote_host):
    ns, host_ip, _ = remote_host
    srv = ftpd_factory(front="true", listen=f"0.0.0.0:{free_port('0.0.0.0')}", failed_logins_max="3")
    script = f"""
        import ftplib
        codes = []
        for i in range(6):
            f = ftplib.FTP()
            try:
                f.connect("{host_ip}", {srv.port}, timeout=10)
                f.login("alice", "wrong")
            except ftplib.all_errors as e:
                codes.append(str(e)[:3])
            finally:
                f.close()
        f = ftplib.FTP()
        try:
            f.connect("{host_ip}", {srv.port}, timeout=10)
            f.login("alice", "{USERS['alice']}")
            codes.append("ok")
        except ftplib.all_errors as e:
            codes.append(str(e)[:3])
        print(",".join(codes))
    """
    r = in_box(ns, script)
    codes = r.stdout.strip().split(",")
    assert codes[:3] == ["530", "530", "530"], r.stdout + r.stderr
    assert "421" in codes[3:], codes
    assert codes[-1] != "ok", "the right password from a blocked address must be refused too"
    # Another address (loopback) is not locked out by the attacker in the box.
    f = ftplib.FTP()
    f.connect("127.0.0.1", srv.port, timeout=10)
    assert f.login("alice", USERS["alice"]).startswith("230")
    f.quit()


def test_a_proxy_header_from_a_client_is_just_a_bad_command(ftpd_factory):
    srv = ftpd_factory(front="true")
    s, f = raw_control("127.0.0.1", srv.port)
    with s:
        s.sendall(b"PROXY TCP4 6.6.6.6 127.0.0.1 1234 21\r\n")
        reply = f.readline()
        assert reply[:1] == b"5", reply
        s.sendall(f"USER alice\r\nPASS {USERS['alice']}\r\n".encode())
        assert f.readline().startswith(b"331")
        assert f.readline().startswith(b"230")
    assert "6.6.6.6" not in srv.log()


def test_overlong_line_and_vanishing_half_line_are_cut_off(ftpd_factory):
    srv = ftpd_factory(front="true")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as s:
        s.recv(200)
        try:
            s.sendall(b"A" * (1 << 20))
        except (BrokenPipeError, ConnectionResetError):
            pass
        got = replies_until_closed(s, 20)
        assert b"500" in got, got
    # Half a line, then silence: the server still answers everyone else.
    idle = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
    idle.recv(200)
    idle.sendall(b"USER ali")
    f = srv.ftp()
    assert f.sendcmd("KEY NULL nothing") == "230 0x00"
    f.quit()
    idle.close()
    assert srv.proc.poll() is None
