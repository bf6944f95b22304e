"""The HTTP listener and `GET /metrics`: a real ftpd, real clients (curl, ftplib, raw control
lines), then the metrics as Prometheus reads them."""

import ftplib
import io
import os
import re
import subprocess
import time
import urllib.error
import urllib.request

from helpers import (
    FTPD,
    USERS,
    crc32,
    free_port,
    key,
    pattern,
    raw_control,
    rst_close,
    start_upload,
    final_reply,
    transfer_reply,
    wait_for_disk_size,
    wait_for_settled_size,
)

# No proxy from the environment: the listener is on this machine.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(port: int, path: str = "/metrics", token: str | None = None, auth: str | None = None):
    """One GET; (status, content type, body) whatever the status."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    if auth is not None:
        req.add_header("Authorization", auth)
    try:
        with OPENER.open(req, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$")


def parse(text: str) -> dict[str, float]:
    """Samples by name with their labels as written: `ftpd_uploads_total{state="verified"}`."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        out[m.group(1)] = float(m.group(2))
    return out


def metrics(port: int, token: str | None = None) -> dict[str, float]:
    status, ctype, body = get(port, token=token)
    assert status == 200, (status, body)
    assert ctype.startswith("text/plain; version=0.0.4"), ctype
    return parse(body)


def wait_metrics(port: int, want: dict[str, float], timeout: float = 15) -> dict[str, float]:
    """The metrics once every sample in `want` has its value (counts are read at most a second
    old, and a client's end reaches the server a moment after the client returns)."""
    deadline = time.time() + timeout
    while True:
        m = metrics(port)
        wrong = {k: (m.get(k), v) for k, v in want.items() if m.get(k) != v}
        if not wrong:
            return m
        assert time.time() < deadline, f"metrics (got, wanted): {wrong}"
        time.sleep(0.2)


def uploads(state: str) -> str:
    return f'ftpd_uploads_total{{state="{state}"}}'


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["curl", "-sS", "--connect-timeout", "10", "--max-time", "60", *args],
        capture_output=True, text=True, timeout=70,
    )


def test_metrics_count_uploads_keys_resumes_sessions_and_failed_logins(ftpd_factory, tmp_path):
    port = free_port()
    srv = ftpd_factory(http_listen=f"127.0.0.1:{port}")
    zero = {
        "ftpd_sessions": 0, "ftpd_uploads_running": 0, "ftpd_upload_bytes_total": 0,
        uploads("verified"): 0, uploads("complete"): 0, uploads("mismatch"): 0,
        uploads("interrupted"): 0, "ftpd_key_declarations_total": 0,
        "ftpd_resume_bytes_skipped_total": 0, "ftpd_partial_files": 0, "ftpd_partial_bytes": 0,
        "ftpd_login_failures_total": 0,
    }
    m = wait_metrics(port, zero)
    commits_before = m["ftpd_store_commit_seconds_count"]

    # 1. curl, KEY declared: verified.
    good = pattern(700_000, seed=1)
    src = tmp_path / "good.ts"
    src.write_bytes(good)
    r = curl("-Q", f"SITE KEY {key(crc32(good))}", "-T", str(src), srv.url("alice", ""))
    assert r.returncode == 0, r.stderr
    assert srv.file("alice", "good.ts").read_bytes() == good

    # 2. ftplib, a wrong KEY: mismatch (the bytes are kept for a resume).
    bad = pattern(300_000, seed=2)
    f = srv.ftp()
    f.sendcmd(f"SITE KEY {key(crc32(bad) ^ 1)}")
    reply = transfer_reply(f, "STOR bad.ts", bad)
    assert reply.startswith("451"), reply
    f.quit()

    # 3. ftplib, no KEY, the data connection reset mid-way: interrupted. While it runs, it is a
    # running upload and its session a logged-in one.
    cut = pattern(2_000_000, seed=3)
    f = srv.ftp()
    conn = start_upload(f, "cut.ts")
    conn.sendall(cut[:600_000])
    wait_for_disk_size(srv.file("alice", "cut.ts"), 1)
    wait_metrics(port, {"ftpd_uploads_running": 1, "ftpd_sessions": 1})
    rst_close(conn)
    assert final_reply(f).startswith("4"), "an interrupted upload is answered 4xx"
    stored = wait_for_settled_size(f, "cut.ts")
    assert 0 < stored <= 600_000
    f.quit()
    m = wait_metrics(port, {
        "ftpd_uploads_running": 0,
        "ftpd_partial_files": 2,
        "ftpd_partial_bytes": len(bad) + stored,
        uploads("interrupted"): 1,
    })

    # 4. The resume of the interrupted file: REST + STOR of the rest (no KEY: complete).
    f = srv.ftp()
    assert f.storbinary("STOR cut.ts", io.BytesIO(cut[stored:]), rest=stored).startswith("226")
    f.quit()
    assert srv.file("alice", "cut.ts").read_bytes() == cut

    # 5. A bare KEY through the front (the session then stays logged in), and a failed login.
    s, rd = raw_control(srv.host, srv.port)
    s.sendall(b"USER bob\r\n")
    assert rd.readline().startswith(b"331")
    s.sendall(b"PASS " + USERS["bob"].encode() + b"\r\n")
    assert rd.readline().startswith(b"230")
    s.sendall(b"KEY 0x0BADF00D later.ts\r\n")
    assert rd.readline().startswith(b"2")
    f = ftplib.FTP()
    f.connect(srv.host, srv.port, timeout=30)
    try:
        f.login("alice", "not-the-password")
        raise AssertionError("a wrong password logged in")
    except ftplib.error_perm as e:
        assert str(e).startswith("530"), e
    f.close()

    m = wait_metrics(port, {
        "ftpd_sessions": 1,
        "ftpd_uploads_running": 0,
        "ftpd_upload_bytes_total": len(good) + len(bad) + len(cut),
        uploads("verified"): 1,
        uploads("complete"): 1,
        uploads("mismatch"): 1,
        uploads("interrupted"): 1,
        "ftpd_key_declarations_total": 3,
        "ftpd_resume_bytes_skipped_total": stored,
        "ftpd_partial_files": 1,
        "ftpd_partial_bytes": len(bad),
        "ftpd_login_failures_total": 1,
    })
    # Every upload commits its opening and final records at least.
    assert m["ftpd_store_commit_seconds_count"] >= commits_before + 8
    assert m["ftpd_store_commit_seconds_sum"] > 0
    assert m['ftpd_store_commit_seconds_bucket{le="+Inf"}'] == m["ftpd_store_commit_seconds_count"]

    # A session that ends without QUIT (its connection dropped) stops counting too.
    rd.close()  # the socket closes only with its reader
    rst_close(s)
    wait_metrics(port, {"ftpd_sessions": 0})


def test_without_the_front_a_timed_out_session_stops_counting(ftpd_factory):
    """libunftp sends no `LoggedOut` for a session it closes on its idle timeout; the count
    follows the session itself."""
    port = free_port()
    srv = ftpd_factory(http_listen=f"127.0.0.1:{port}", front="false", idle_timeout="3")
    g = ftplib.FTP()
    g.connect(srv.host, srv.port, timeout=30)
    g.sendcmd("USER bob")
    try:
        reply = g.sendcmd("PASS wrong")
    except ftplib.Error as e:
        reply = str(e)
    assert reply.startswith("530"), reply
    g.close()
    f = srv.ftp()
    wait_metrics(port, {"ftpd_sessions": 1, "ftpd_login_failures_total": 1}, timeout=2)
    wait_metrics(port, {"ftpd_sessions": 0})
    f.close()


def test_every_route_needs_the_token_when_one_is_set(ftpd_factory):
    port = free_port()
    token = "t0ken-" + os.urandom(16).hex()
    # Not loopback: allowed because a token is set. The test talks to it over loopback only.
    srv = ftpd_factory(http_listen=f"0.0.0.0:{port}", http_token=token)
    assert get(port)[0] == 401
    assert get(port, token="wrong")[0] == 401
    assert get(port, token=token + "x")[0] == 401
    assert get(port, auth=f"Basic {token}")[0] == 401
    assert get(port, "/nowhere")[0] == 401, "unknown paths are no way around the token"
    m = metrics(port, token=token)
    assert m["ftpd_sessions"] == 0
    assert get(port, "/nowhere", token=token)[0] == 404
    # The listener stops with the server.
    assert srv.stop() == 0
    status = None
    try:
        status = get(port, token=token)[0]
    except (urllib.error.URLError, ConnectionError):
        pass
    assert status is None, "the HTTP listener outlived the server"


def serve_with(tmp_path, **settings: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTPD_")}
    env.update({
        "FTPD_LISTEN": f"127.0.0.1:{free_port()}",
        "FTPD_ROOT": str(tmp_path / "root"),
        "FTPD_STATE_DIR": str(tmp_path / "state"),
        "FTPD_USERS_FILE": str(tmp_path / "users.json"),
    })
    env.update({f"FTPD_{k.upper()}": v for k, v in settings.items()})
    return subprocess.run([str(FTPD), "serve"], env=env, capture_output=True, text=True, timeout=30)


def test_a_listener_off_loopback_without_a_token_is_refused(tmp_path):
    for addr in ("0.0.0.0", "[::]"):
        r = serve_with(tmp_path, http_listen=f"{addr}:{free_port()}")
        assert r.returncode == 2, (r.returncode, r.stderr)
        assert "http_listen" in r.stderr and "http_token" in r.stderr, r.stderr
    assert not (tmp_path / "state").exists(), "refused before anything started"
    r = serve_with(tmp_path, http_listen="nowhere")
    assert r.returncode == 2 and "http_listen" in r.stderr, r.stderr


def test_a_busy_http_address_stops_start_up_naming_the_setting(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = serve_with(tmp_path, http_listen=f"127.0.0.1:{busy.getsockname()[1]}")
    assert r.returncode != 0
    assert "http_listen" in r.stderr, r.stderr
