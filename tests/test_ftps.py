"""Explicit FTPS (`AUTH TLS`) against a real ftpd with a certificate made for the test: curl,
lftp and Python's ftplib upload and download over TLS, `SITE KEY` and bare `KEY` work inside TLS
(the front ends the control channel's TLS and reads its lines), and `ftps_required` refuses
logins on a plain control connection (`530`) and transfers without `PROT P` (`521`).

(`tests/test_hostile_clients.py` checks endless lines inside TLS.)"""

import ftplib
import io
import ssl
import subprocess

import pytest

from helpers import USERS, crc32, info, key, pattern, self_signed_cert


@pytest.fixture
def cert(tmp_path):
    """(certificate, key) for 127.0.0.1; the certificate is also the clients' CA file."""
    return self_signed_cert(tmp_path)


@pytest.fixture
def ftps(ftpd_factory, cert):
    """A server with FTPS available (not required)."""
    return ftpd_factory(ftps_cert=str(cert[0]), ftps_key=str(cert[1]))


@pytest.fixture
def ftps_required(ftpd_factory, cert):
    return ftpd_factory(ftps_cert=str(cert[0]), ftps_key=str(cert[1]), ftps_required="true")


def tls_client(srv, cert, user: str = "alice", prot_p: bool = True) -> ftplib.FTP_TLS:
    """An ftplib FTPS session that verifies the server's certificate, logged in (AUTH TLS
    first), with PROT P unless told otherwise."""
    f = ftplib.FTP_TLS(context=ssl.create_default_context(cafile=str(cert[0])))
    f.connect(srv.host, srv.port, timeout=30)
    f.login(user, USERS[user])
    if prot_p:
        f.prot_p()
    return f


def tls_stor(f: ftplib.FTP_TLS, name: str, data: bytes) -> str:
    """STOR over a PROT P data connection, ended with TLS close_notify; returns the final reply.

    Not `storbinary`: after sending its close_notify ftplib waits for the server's, and
    libunftp closes an upload's data connection without one, so `unwrap` raises although the
    upload succeeded. (A connection closed without close_notify is a cut upload: `426`.)"""
    f.voidcmd("TYPE I")
    conn = f.transfercmd(f"STOR {name}")
    try:
        conn.sendall(data)
        try:
            conn.unwrap()
        except (ssl.SSLError, OSError):
            pass
    finally:
        conn.close()
    return f.voidresp()


def curl(srv, *args: str, path: str = "", timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["curl", "-sS", *args, srv.url(path=path)], capture_output=True, timeout=timeout
    )


# -- FTPS available --------------------------------------------------------------------------------


def test_curl_uploads_and_downloads_over_ftps(ftps, cert, tmp_path):
    src = tmp_path / "up.bin"
    src.write_bytes(pattern(3 << 20, seed=1))
    verify = ("--ssl-reqd", "--cacert", str(cert[0]))
    out = curl(ftps, *verify, "-T", str(src))
    assert out.returncode == 0, out.stderr
    assert ftps.file("alice", "up.bin").read_bytes() == src.read_bytes()
    out = curl(ftps, *verify, path="up.bin")
    assert out.returncode == 0, out.stderr
    assert out.stdout == src.read_bytes()
    # A listing over TLS too.
    out = curl(ftps, *verify, "--list-only")
    assert out.returncode == 0 and b"up.bin" in out.stdout, out
    assert "control channel is TLS" in ftps.log()


def test_lftp_uploads_over_ftps(ftps, cert, tmp_path):
    src = tmp_path / "lftp.bin"
    src.write_bytes(pattern(1 << 20, seed=2))
    script = (
        f"set ftp:ssl-force true; set ftp:ssl-protect-data true; set ssl:ca-file {cert[0]}; "
        f"set net:max-retries 1; open -u alice,{USERS['alice']} ftp://127.0.0.1:{ftps.port}; "
        f"put {src} -o lftp.bin; bye"
    )
    out = subprocess.run(["lftp", "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert ftps.file("alice", "lftp.bin").read_bytes() == src.read_bytes()


def test_site_key_under_tls_declares_and_verifies(ftps, cert):
    data = pattern(700_000, seed=3)
    f = tls_client(ftps, cert)
    try:
        assert f.sendcmd(f"SITE KEY {key(crc32(data))}").startswith("230")
        assert tls_stor(f, "site.bin", data).startswith("226")
        got = info(f, "site.bin")
        assert got["state"] == "verified", got
        assert got["declared"] == got["received-crc"] == key(crc32(data))
        assert f.sendcmd("SITE KEY NULL site.bin") == f"230 {key(crc32(data))}"
        # A download over PROT P (ftplib's own retrbinary: libunftp ends downloads cleanly).
        got_bytes = bytearray()
        assert f.retrbinary("RETR site.bin", got_bytes.extend).startswith("226")
        assert bytes(got_bytes) == data
    finally:
        f.quit()
    assert ftps.file("alice", "site.bin").read_bytes() == data


def test_a_tls_upload_cut_without_close_notify_is_partial(ftps, cert):
    """A TLS data connection that just ends may have been cut by anyone on the path: the bytes
    are kept for resuming, but the upload is not complete."""
    data = pattern(200_000, seed=7)
    f = tls_client(ftps, cert)
    try:
        assert f.sendcmd(f"KEY {key(crc32(data))}").startswith("230")
        f.voidcmd("TYPE I")
        conn = f.transfercmd("STOR cut.bin")
        conn.sendall(data)
        conn.close()  # no close_notify
        with pytest.raises(ftplib.error_temp, match=r"^426"):
            f.voidresp()
        got = info(f, "cut.bin")
        assert got["state"] == "partial", got
    finally:
        f.close()


def test_bare_key_under_tls(ftps, cert):
    """The front ends the control channel's TLS, so it still turns bare KEY into SITE KEY."""
    data = pattern(300_000, seed=4)
    f = tls_client(ftps, cert)
    try:
        assert f.sendcmd(f"KEY {key(crc32(data))}").startswith("230")
        assert tls_stor(f, "bare.bin", data).startswith("226")
        assert f.sendcmd("KEY NULL bare.bin") == f"230 {key(crc32(data))}"
        lines = f.sendcmd("KEY INFO bare.bin").splitlines()
        assert " state=verified" in lines, lines
        # A wrong declaration is caught inside TLS as well.
        assert f.sendcmd("KEY 0x12345678 wrong.bin").startswith("230")
        with pytest.raises(ftplib.error_temp, match=r"^451"):
            tls_stor(f, "wrong.bin", data)
        assert " state=mismatch" in f.sendcmd("KEY INFO wrong.bin").splitlines()
    finally:
        f.quit()


# -- FTPS required ---------------------------------------------------------------------------------


def test_required_refuses_a_plain_login_and_accepts_auth_tls_after_it(ftps_required, cert):
    srv = ftps_required
    plain = ftplib.FTP()
    plain.connect(srv.host, srv.port, timeout=30)
    with pytest.raises(ftplib.error_perm, match=r"^530 .*TLS"):
        plain.login("alice", USERS["alice"])
    # PASS alone is refused the same way; libunftp never sees either.
    with pytest.raises(ftplib.error_perm, match=r"^530 .*TLS"):
        plain.sendcmd(f"PASS {USERS['alice']}")
    plain.close()
    # The same session may still turn to TLS and log in.
    f = ftplib.FTP_TLS(context=ssl.create_default_context(cafile=str(cert[0])))
    f.connect(srv.host, srv.port, timeout=30)
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        ftplib.FTP.login(f, "alice", USERS["alice"])  # without AUTH TLS
    assert f.auth().startswith("234")
    assert f.login("alice", USERS["alice"]).startswith("230")
    f.prot_p()
    assert tls_stor(f, "after.bin", b"after\n").startswith("226")
    f.quit()
    assert srv.file("alice", "after.bin").read_bytes() == b"after\n"


def test_required_plain_refusals_do_not_count_as_failed_logins(ftps_required, cert):
    """No password was checked, so refused plain logins never block the address."""
    srv = ftps_required
    for _ in range(8):  # failed_logins_max is 5
        plain = ftplib.FTP()
        plain.connect(srv.host, srv.port, timeout=30)
        with pytest.raises(ftplib.error_perm, match=r"^530"):
            plain.login("alice", "wrong")
        plain.close()
    tls_client(srv, cert).quit()


def test_required_curl_without_tls_cannot_log_in_and_with_tls_can(ftps_required, cert, tmp_path):
    srv = ftps_required
    src = tmp_path / "c.bin"
    src.write_bytes(pattern(200_000, seed=5))
    out = curl(srv, "-T", str(src))
    assert out.returncode == 67, out  # CURLE_LOGIN_DENIED
    assert b"530" in out.stderr
    assert not srv.file("alice", "c.bin").exists()
    out = curl(srv, "--ssl-reqd", "--cacert", str(cert[0]), "-T", str(src))
    assert out.returncode == 0, out.stderr
    assert srv.file("alice", "c.bin").read_bytes() == src.read_bytes()


def test_required_lftp_without_tls_fails_at_once(ftps_required):
    out = subprocess.run(
        ["lftp", "-c", f"set ftp:ssl-allow no; set net:max-retries 1; "
         f"open -u alice,{USERS['alice']} ftp://127.0.0.1:{ftps_required.port}; ls; bye"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode != 0
    assert "530" in out.stderr, out.stderr


def test_required_transfers_need_prot_p(ftps_required, cert):
    srv = ftps_required
    data = pattern(100_000, seed=6)
    f = tls_client(srv, cert, prot_p=False)  # TLS control channel, plain data
    try:
        with pytest.raises(ftplib.error_perm, match=r"^521 .*PROT P"):
            f.nlst()
        f.sendcmd("REST 1000")
        with pytest.raises(ftplib.error_perm, match=r"^521"):
            f.storbinary("STOR plain.bin", io.BytesIO(data))
        assert not srv.file("alice", "plain.bin").exists()
        assert "transfer refused without PROT P; data connection closed" in srv.log()
        # The session goes on; with PROT P the upload starts from 0, not from the REST above.
        f.prot_p()
        assert tls_stor(f, "plain.bin", data).startswith("226")
        assert srv.file("alice", "plain.bin").read_bytes() == data
        f.prot_c()
        with pytest.raises(ftplib.error_perm, match=r"^521"):
            f.retrbinary("RETR plain.bin", lambda b: None)
    finally:
        f.quit()
    # curl with TLS for the control channel only (PROT C) is refused the download.
    out = curl(srv, "--ftp-ssl-control", "--cacert", str(cert[0]), path="plain.bin")
    assert out.returncode != 0 and b"521" in out.stderr, out


def test_required_without_the_front_libunftp_enforces_it(ftpd_factory, cert):
    """front = false: libunftp's own option, with its own reply code (534)."""
    srv = ftpd_factory(
        ftps_cert=str(cert[0]), ftps_key=str(cert[1]), ftps_required="true", front="false"
    )
    plain = ftplib.FTP()
    plain.connect(srv.host, srv.port, timeout=30)
    with pytest.raises(ftplib.error_perm, match=r"^534"):
        plain.login("alice", USERS["alice"])
    plain.close()
    f = tls_client(srv, cert)
    try:
        assert tls_stor(f, "nofront.bin", b"x" * 1000).startswith("226")
    finally:
        f.quit()
