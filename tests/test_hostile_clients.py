"""Dying, stalled and hostile clients against a real ftpd: no crossed uploads, no freeze, no
throttle bypass, bounded connections, and mistakes that cost a box a reply, not its session."""

import concurrent.futures
import ftplib
import io
import socket
import subprocess
import time

import pytest

from helpers import USERS, crc32, free_port_range, pattern, raw_control, retr, start_upload


def greeting_within(host: str, port: int, seconds: float) -> bytes | None:
    """The greeting of a new connection, or None if it does not come in time."""
    try:
        with socket.create_connection((host, port), timeout=seconds) as s:
            return s.recv(100)
    except (socket.timeout, OSError):
        return None


def box_upload(host: str, port: int, name: str, data: bytes) -> tuple[str, str]:
    """One box: login, PASV, STOR without a KEY; returns (final reply, name)."""
    f = ftplib.FTP()
    f.connect(host, port, timeout=60)
    try:
        f.login("alice", USERS["alice"])
        reply = f.storbinary(f"STOR {name}", io.BytesIO(data), blocksize=16384)
        return reply, name
    finally:
        try:
            f.quit()
        except (ftplib.Error, OSError):
            f.close()


@pytest.mark.parametrize("throttle", ["0", "5"])
def test_concurrent_boxes_of_one_address_never_get_each_others_bytes(ftpd_factory, throttle):
    """Hundreds of boxes behind one address upload at once without a KEY, so nothing but the
    passive-port bookkeeping keeps their bytes apart: every 226 must hold the box's own file."""
    srv = ftpd_factory(failed_logins_max=throttle)
    boxes = 240
    payloads = {f"box{i:03d}.ts": pattern(48 * 1024 + i * 97, seed=i) for i in range(boxes)}
    with concurrent.futures.ThreadPoolExecutor(max_workers=120) as pool:
        futures = [pool.submit(box_upload, srv.host, srv.port, n, d) for n, d in payloads.items()]
        results = [f.result(timeout=120) for f in futures]
    assert all(r.startswith("226") for r, _ in results), [r for r, _ in results if not r.startswith("226")]
    crossed = [n for n, d in payloads.items() if crc32(srv.file("alice", n).read_bytes()) != crc32(d)]
    assert not crossed, f"{len(crossed)} files hold other bytes: {crossed[:5]}"
    assert "Entry already removed" not in srv.log()


def test_a_quit_during_an_upload_freezes_nobody(ftpd):
    a = ftpd.ftp()
    held = start_upload(a, "hold.bin")
    held.sendall(b"x" * 1000)
    a.sock.sendall(b"QUIT\r\n")
    time.sleep(0.5)
    try:
        assert greeting_within(ftpd.host, ftpd.port, 3) is not None, "no greeting while an upload is held"
        b = ftpd.ftp(timeout=5)
        b.storbinary("STOR other.bin", io.BytesIO(b"y" * 100_000))
        assert b.size("other.bin") == 100_000
        b.quit()
    finally:
        held.close()


def test_a_closed_control_connection_during_an_upload_freezes_nobody(ftpd):
    a = ftpd.ftp()
    held = start_upload(a, "hold.bin")
    held.sendall(b"x" * 1000)
    a.sock.close()
    time.sleep(0.5)
    try:
        b = ftpd.ftp(timeout=5)
        assert b.sendcmd("PASV").startswith("227")
        b.quit()
    finally:
        held.close()


def test_unicode_command_words_are_refused_and_do_not_log_in(ftpd):
    s, r = raw_control(ftpd.host, ftpd.port)
    s.sendall(b"USER alice\r\n")
    assert r.readline().startswith(b"331")
    for i in range(8):
        s.sendall(("PA\u00df wrong%d\r\n" % i).encode())
        assert r.readline() == b"500 Command word must be plain ASCII.\r\n"
    s.sendall(("PA\u017fS " + USERS["alice"] + "\r\n").encode())
    assert r.readline().startswith(b"500")
    s.sendall("\u017fTOR x\r\n".encode())
    assert r.readline().startswith(b"500")
    s.sendall(b"NOOP\r\n")
    # Still not logged in, and the session goes on.
    assert r.readline().startswith(b"200")
    s.sendall(b"PWD\r\n")
    assert r.readline().startswith(b"530")
    s.close()


def test_malformed_rest_is_answered_and_the_session_goes_on(ftpd):
    f = ftpd.ftp()
    f.storbinary("STOR a.bin", io.BytesIO(b"0123456789"))
    for bad in ["REST abc", "REST -5", "REST"]:
        with pytest.raises(ftplib.error_perm, match="^501"):
            f.sendcmd(bad)
        assert f.sendcmd("NOOP").startswith("200")
    # The refused REST left no offset behind: a download starts at 0.
    assert retr(f, "a.bin") == b"0123456789"
    f.quit()


def test_one_known_account_does_not_clear_another_users_failures(ftpd):
    refused = False
    for _ in range(3):
        for g in range(4):
            f = ftplib.FTP()
            f.connect(ftpd.host, ftpd.port, timeout=10)
            try:
                f.login("bob", f"guess{g}")
            except ftplib.error_temp as e:
                assert str(e).startswith("421")
                refused = True
            except ftplib.error_perm as e:
                assert str(e).startswith("530")
            except (EOFError, OSError):
                refused = True
            f.close()
        ftpd.ftp("alice").quit()
    assert refused, "bob's failures were cleared by alice's logins"
    # bob is refused from this address, alice is not.
    ftpd.ftp("alice").quit()


def test_a_silent_connection_is_closed_at_the_login_deadline(ftpd_factory):
    srv = ftpd_factory(login_timeout="2")
    s, r = raw_control(srv.host, srv.port)
    t = time.time()
    assert r.readline() == b"421 Login timed out.\r\n"
    assert time.time() - t < 6
    s.close()
    # A logged-in session is not cut.
    f = srv.ftp()
    time.sleep(3)
    assert f.sendcmd("NOOP").startswith("200")
    f.quit()


def test_connections_per_address_are_capped(ftpd_factory):
    srv = ftpd_factory(max_connections_per_address="3")
    held = [raw_control(srv.host, srv.port) for _ in range(3)]
    with socket.create_connection((srv.host, srv.port), timeout=10) as s:
        assert s.recv(200).startswith(b"421 Too many connections from your address")
    held.pop()[0].close()
    time.sleep(0.3)
    assert greeting_within(srv.host, srv.port, 5).startswith(b"220")
    for s, _ in held:
        s.close()


def test_a_connection_to_a_passive_port_nobody_asked_for_is_closed(ftpd):
    lo, hi = ftpd.passive
    with socket.create_connection((ftpd.host, lo), timeout=5) as s:
        s.settimeout(5)
        assert s.recv(10) == b""


def test_a_download_is_never_taken_for_an_upload(ftpd):
    """A client that speaks first on a download's data connection still gets the file (the
    front used to treat any such connection as an upload and read the file away)."""
    data = pattern(3 << 20, seed=5)
    f = ftpd.ftp()
    f.storbinary("STOR big.bin", io.BytesIO(data))
    f.voidcmd("TYPE I")
    host, port = f.makepasv()
    d = socket.create_connection((host, port), timeout=10)
    d.sendall(b"A")
    f.sendcmd("RETR big.bin")
    got = bytearray()
    while chunk := d.recv(1 << 16):
        got += chunk
    d.close()
    assert f.voidresp().startswith("226")
    assert bytes(got) == data
    f.quit()


def test_a_busy_passive_port_does_not_stop_the_server(ftpd_factory, tmp_path):
    lo, hi = free_port_range()
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", lo + 1))
    blocker.listen()
    try:
        srv = ftpd_factory(passive_ports=f"{lo}-{hi}")
        assert "left out" in srv.log()
        f = srv.ftp()
        for i in range(hi - lo + 3):
            f.storbinary(f"STOR f{i}", io.BytesIO(b"z" * 10))
        f.quit()
    finally:
        blocker.close()


def test_client_sockets_have_keepalive(ftpd_factory):
    srv = ftpd_factory(keepalive="30")
    f = srv.ftp()
    time.sleep(1)  # no retransmission timer left from the login, so ss shows the keepalive one
    out = subprocess.run(
        ["ss", "-tnoH", "state", "established", f"( sport = :{srv.port} )"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "keepalive" in out, out
    f.quit()


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_inside_tls_an_endless_line_is_cut_off(ftpd_factory, tmp_path):
    """Inside TLS a client that streams without a newline must be stopped as outside (the front
    reads lines there too), or libunftp buffers it all."""
    import ssl

    cert, keyf = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=ftpd-test",
         "-days", "1", "-keyout", str(keyf), "-out", str(cert)],
        check=True, capture_output=True,
    )
    srv = ftpd_factory(ftps_cert=str(cert), ftps_key=str(keyf))
    before = rss_kib(srv.proc.pid)
    s, r = raw_control(srv.host, srv.port)
    s.sendall(b"AUTH TLS\r\n")
    assert r.readline().startswith(b"234")
    t = ssl._create_unverified_context().wrap_socket(s)
    chunk = b"A" * (64 * 1024)
    sent = 0
    with pytest.raises(OSError):
        for _ in range(1024):  # 64 MiB at most
            t.sendall(chunk)
            sent += len(chunk)
        t.settimeout(5)
        assert t.recv(100) == b""
        raise ConnectionResetError("closed")
    assert sent < 8 << 20, f"{sent} bytes accepted without a newline"
    assert rss_kib(srv.proc.pid) - before < 32 * 1024
    # An ordinary FTPS session still works, KEY included (over SITE).
    src = tmp_path / "tls.bin"
    src.write_bytes(pattern(100_000, seed=9))
    out = subprocess.run(
        ["curl", "-sS", "--ssl-reqd", "-k", "-Q", f"SITE KEY 0x{crc32(src.read_bytes()):08X}",
         "-T", str(src), f"ftp://alice:{USERS['alice']}@{srv.host}:{srv.port}/"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert srv.file("alice", "tls.bin").read_bytes() == src.read_bytes()
