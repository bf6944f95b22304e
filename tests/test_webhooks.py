"""Completion webhooks (`webhook_url`): every journal event is POSTed to a real HTTP receiver on
loopback, in seq order, at least once, through refusals, a SIGKILL of ftpd and a receiver that
hangs; uploads never wait for it."""

import json
import subprocess
import time

from conftest import Ftpd
from helpers import FTPD, WebhookReceiver as Receiver, free_port, pattern, self_signed_cert, upload
from test_journal import TOKEN, events


def check_in_order(recv: Receiver, last: int) -> dict[int, bytes]:
    """Every seq 1..last arrived, without gaps, first arrivals in seq order (an earlier event
    is always acknowledged before a later one is sent)."""
    got = recv.delivered()
    assert sorted(got) == list(range(1, last + 1)), sorted(got)
    first = []
    for seq, _, _ in recv.accepted():
        if seq not in first:
            first.append(seq)
    assert first == sorted(first), first
    for seq, body in got.items():
        assert json.loads(body)["seq"] == seq
    return got


def webhook_server(ftpd_factory, recv: Receiver):
    return ftpd_factory(webhook_url=recv.url, http_listen=f"127.0.0.1:{free_port()}", http_token=TOKEN)


def test_every_event_in_seq_order_through_refusals_and_a_sigkill(ftpd_factory):
    recv = Receiver(refuse=3)
    try:
        srv = webhook_server(ftpd_factory, recv)
        for i in range(3):
            upload(srv, f"a{i}.ts", pattern(1000 + i, seed=i))
        src = srv.base / "curl.ts"
        src.write_bytes(pattern(5000, seed=9))
        subprocess.run(["curl", "-sS", "-T", str(src), srv.url(path="c.ts")], check=True, timeout=30)
        f = srv.ftp()
        f.delete("a0.ts")
        f.rename("a1.ts", "b1.ts")
        f.quit()
        got = recv.wait_delivered(6)
        check_in_order(recv, 6)
        # The bodies are the /events lines, byte for byte.
        lines = [json.dumps(e, separators=(",", ":")).encode() for e in events(srv)]
        assert [json.loads(got[s]) for s in range(1, 7)] == [json.loads(x) for x in lines]
        kinds = [json.loads(got[s])["kind"] for s in range(1, 7)]
        assert kinds == ["upload"] * 4 + ["delete", "rename"]
        assert json.loads(got[6])["from"] == "/a1.ts"
        with recv.lock:
            assert [m for m, *_ in recv.requests[:3]] == ["down"] * 3, "the first 3 were refused"
        assert "webhooks: delivery failed; retrying" in srv.log()

        # The receiver goes down; two more events; ftpd is killed while they are refused.
        recv.set("down")
        upload(srv, "d7.ts", pattern(700))
        upload(srv, "d8.ts", pattern(800))
        deadline = time.time() + 10
        while not recv.tried(7):
            assert time.time() < deadline, "seq 7 never tried"
            time.sleep(0.05)
        cursor = srv.state / "webhook.seq"
        assert cursor.read_text() == "6\n"
        srv.kill9()
        assert cursor.read_text() == "6\n"
        n_before = len(recv.accepted())

        srv.start()
        time.sleep(1.0)  # refused for a while after the restart
        assert len(recv.accepted()) == n_before
        recv.set("up")
        recv.wait_delivered(8)
        got = check_in_order(recv, 8)
        assert [seq for seq, _, _ in recv.accepted()[n_before:]][:2] == [7, 8], "resumes after 6"
        assert [json.loads(got[s])["path"] for s in (7, 8)] == ["/d7.ts", "/d8.ts"]
        deadline = time.time() + 10
        while cursor.read_text() != "8\n":
            assert time.time() < deadline, cursor.read_text()
            time.sleep(0.05)
    finally:
        recv.close()


def test_a_receiver_that_hangs_never_slows_an_upload(ftpd_factory):
    recv = Receiver(mode="hang")
    try:
        srv = webhook_server(ftpd_factory, recv)
        upload(srv, "first.ts", pattern(1000))
        deadline = time.time() + 10
        while not recv.tried(1):
            assert time.time() < deadline, "seq 1 never sent"
            time.sleep(0.05)
        # The POST of seq 1 hangs; uploads still end at once.
        for i in range(5):
            t0 = time.time()
            reply = upload(srv, f"next{i}.ts", pattern(200_000, seed=i))
            took = time.time() - t0
            assert reply.startswith("226") and took < 3, (reply, took)
        with recv.lock:
            assert all(s == 1 for _, s, _, _ in recv.requests), "nothing after 1 while 1 hangs"
        # Released, the events are all delivered, in order (seq 1 again after its timeout).
        recv.set("up")
        recv.released.set()
        recv.wait_delivered(6, timeout=40)
        check_in_order(recv, 6)
        assert "no answer within" in srv.log()
    finally:
        recv.close()


def test_a_bad_webhook_url_stops_start_up_naming_it(tmp_path):
    srv = Ftpd(tmp_path / "bad")
    srv.env["FTPD_WEBHOOK_URL"] = "ftp://127.0.0.1/hook"
    r = subprocess.run([str(FTPD), "serve"], env=srv.env, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "webhook_url" in r.stderr, r.stderr


def test_https_with_a_ca_file_from_ssl_cert_file(ftpd_factory, tmp_path, monkeypatch):
    import ssl

    # A CA and a server certificate it signed (rustls refuses a CA certificate as the server's).
    ca, ca_key = self_signed_cert(tmp_path, "ca")
    cert, keyf, csr = tmp_path / "hook-cert.pem", tmp_path / "hook-key.pem", tmp_path / "hook.csr"
    ext = tmp_path / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    for cmd in (
        ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", keyf, "-out", csr],
        ["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "1",
         "-extfile", ext, "-out", cert],
    ):
        subprocess.run([str(c) for c in cmd], check=True, capture_output=True, timeout=60)
    recv = Receiver()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, keyf)
    recv.server.socket = ctx.wrap_socket(recv.server.socket, server_side=True)
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
        srv = ftpd_factory(webhook_url=recv.url.replace("http://", "https://"))
        upload(srv, "tls.ts", pattern(1000))
        got = recv.wait_delivered(1)
        assert json.loads(got[1])["path"] == "/tls.ts"
    finally:
        recv.close()
