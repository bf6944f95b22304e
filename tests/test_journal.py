"""The upload journal: every upload's end, DELE and rename is one event with a gapless seq,
served by `GET /events` on the HTTP listener (with long-polling) and by `ftpd events`, and a
SIGKILL loses neither an event nor a seq."""

import json
import re
import threading
import time
import urllib.error
import urllib.request

from helpers import (
    MiB,
    crc32,
    cut_upload,
    data_of,
    declared_upload,
    free_port,
    key,
    pattern,
    send_paced,
    start_upload,
    stor,
    transfer_reply,
    upload,
    wait_for_disk_size,
)

TOKEN = "journal-test-token"
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def journal_server(ftpd_factory, **settings):
    return ftpd_factory(http_listen=f"127.0.0.1:{free_port()}", http_token=TOKEN, **settings)


def http_port(srv) -> int:
    return int(srv.env["FTPD_HTTP_LISTEN"].rpartition(":")[2])


def get(srv, query: str, timeout: float = 90):
    """GET /events?query: (status, content type, raw body)."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{http_port(srv)}/events?{query}", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def events(srv, since: int = 0, **params) -> list[dict]:
    query = "&".join([f"since={since}"] + [f"{k}={v}" for k, v in params.items()])
    status, ctype, body = get(srv, query)
    assert status == 200, (status, body)
    assert ctype == "application/x-ndjson"
    return [json.loads(line) for line in body.splitlines()]


def wait_for_event(srv, since: int) -> dict:
    """The next event after `since`, long-polling for it."""
    got = events(srv, since, wait=30, limit=1)
    assert len(got) == 1, got
    return got[0]


def expected(seq, kind, path, size, crc, declared, state, frm=None) -> dict:
    e = {"seq": seq, "kind": kind, "user": "alice", "path": path}
    if frm is not None:
        e["from"] = frm
    e.update(
        size=size,
        crc=None if crc is None else key(crc),
        declared=None if declared is None else key(declared),
        state=state,
    )
    return e


def without_time(e: dict) -> dict:
    assert TIME.match(e["time"]), e
    return {k: v for k, v in e.items() if k != "time"}


def test_uploads_deletes_and_renames_are_journaled_in_order(ftpd_factory):
    srv = journal_server(ftpd_factory)
    verified = pattern(300_000, seed=70)
    plain = pattern(70_000, seed=71)
    bad = pattern(50_000, seed=72)
    cut = pattern(2 * MiB, seed=73)

    f = srv.ftp()
    declared_upload(f, "v.ts", verified)
    assert stor(f, "plain.ts", plain).startswith("226")
    wrong = crc32(bad) ^ 0x5A5A
    f.sendcmd(f"SITE KEY {key(wrong)}")
    assert not transfer_reply(f, "STOR bad.ts", bad).startswith("2")

    # Interrupted: the box's link resets in the middle of the data.
    cut_upload(srv, "cut.ts", cut, 700_000)
    interrupted = wait_for_event(srv, 3)
    stored = srv.file("alice", "cut.ts").read_bytes()
    assert stored == cut[: len(stored)]

    f.delete("bad.ts")
    f.rename("v.ts", "dir-less name.ts")
    f.rename("plain.ts", "dir-less name.ts")  # onto an existing file: its record goes
    f.quit()

    got = events(srv, 0)
    assert [without_time(e) for e in got] == [
        expected(1, "upload", "/v.ts", len(verified), crc32(verified), crc32(verified), "verified"),
        expected(2, "upload", "/plain.ts", len(plain), crc32(plain), None, "complete"),
        expected(3, "upload", "/bad.ts", len(bad), crc32(bad), wrong, "mismatch"),
        expected(4, "upload", "/cut.ts", len(stored), crc32(stored), crc32(cut), "interrupted"),
        expected(5, "delete", "/bad.ts", len(bad), crc32(bad), wrong, "mismatch"),
        expected(6, "rename", "/dir-less name.ts", len(verified), crc32(verified), crc32(verified), "verified", "/v.ts"),
        expected(7, "rename", "/dir-less name.ts", len(plain), crc32(plain), None, "complete", "/plain.ts"),
    ]
    assert got[3] == interrupted
    # Field order as documented.
    assert list(got[5]) == ["seq", "time", "kind", "user", "path", "from", "size", "crc", "declared", "state"]
    assert list(got[0]) == ["seq", "time", "kind", "user", "path", "size", "crc", "declared", "state"]
    times = [e["time"] for e in got]
    assert times == sorted(times)

    # Paging, limits and the errors.
    assert [e["seq"] for e in events(srv, 2, limit=3)] == [3, 4, 5]
    assert events(srv, 7) == []
    assert get(srv, "since=8")[0] == 410, "past the last event: another journal, resync"
    for bad_query in ["", "since=abc", "since=1&limit=0", "since=-3", "since=1&wait=x"]:
        status, ctype, body = get(srv, bad_query)
        assert (status, ctype) == (400, "application/json"), (bad_query, status, body)
        assert json.loads(body)["error"]
    # Without the token: 401.
    req = urllib.request.Request(f"http://127.0.0.1:{http_port(srv)}/events?since=0")
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("no token accepted")
    except urllib.error.HTTPError as e:
        assert e.code == 401

    # The CLI prints the same, through the running server.
    r = srv.cli("events", "--since", "0", "--json")
    assert r.returncode == 0, r.stderr
    assert [json.loads(line) for line in r.stdout.splitlines()] == got
    r = srv.cli("events", "--since", "5")
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == 2, r
    assert re.match(r"^\s+6 \S+Z rename\s+verified\s+alice /v.ts -> /dir-less name.ts size=300000 ", lines[0]), lines

    # Checkpoints are not events; the server's restart keeps the journal as it was.
    assert srv.stop() == 0
    srv.start()
    assert events(srv, 0) == got


def test_a_long_poll_returns_as_soon_as_an_upload_ends(ftpd_factory):
    srv = journal_server(ftpd_factory)
    upload(srv, "first.ts", pattern(10_000, seed=74))
    assert [e["seq"] for e in events(srv, 0)] == [1]

    result = {}

    def poll():
        t0 = time.monotonic()
        result["events"] = events(srv, 1, wait=30)
        result["took"] = time.monotonic() - t0

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(1.0)
    assert poller.is_alive(), "the poll waits while there is nothing new"
    t_upload = time.monotonic()
    data = pattern(20_000, seed=75)
    upload(srv, "second.ts", data)
    ended = time.monotonic()
    poller.join(30)
    assert not poller.is_alive()
    assert [without_time(e) for e in result["events"]] == [
        expected(2, "upload", "/second.ts", len(data), crc32(data), crc32(data), "verified")
    ]
    assert 0.9 < result["took"] < 1.0 + (ended - t_upload) + 2, result["took"]

    # `wait` with nothing coming ends empty after it.
    t0 = time.monotonic()
    assert events(srv, 2, wait=1) == []
    assert 0.9 < time.monotonic() - t0 < 5

    # A long-poll does not hold the shutdown.
    poller = threading.Thread(target=lambda: result.update(late=get(srv, "since=2&wait=60")))
    poller.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    assert srv.stop() == 0
    assert time.monotonic() - t0 < 10
    poller.join(10)
    assert result["late"][0] == 200 and result["late"][2] == ""


def test_cli_errors_are_one_line_with_exit_2(ftpd_factory, ftpd):
    # http_listen off
    r = ftpd.cli("events", "--since", "0", check=False)
    assert r.returncode == 2, r
    assert r.stderr.count("\n") == 1 and "http_listen" in r.stderr, r.stderr
    # the server is not running
    srv = journal_server(ftpd_factory)
    srv.stop()
    r = srv.cli("events", "--since", "0", "--json", check=False)
    assert r.returncode == 2 and r.stdout == "", r
    assert r.stderr.count("\n") == 1 and "running" in r.stderr, r.stderr


def test_sigkill_loses_no_event_and_no_seq(ftpd_factory):
    srv = journal_server(ftpd_factory, checkpoint_mib=1)
    done = [pattern(100_000 + i, seed=80 + i) for i in range(3)]
    for i, d in enumerate(done):
        upload(srv, f"done{i}.ts", d)
    f = srv.ftp()
    f.delete("done0.ts")
    f.quit()
    before = events(srv, 0)
    assert [e["seq"] for e in before] == [1, 2, 3, 4]

    # A big upload under way when the server dies.
    big = data_of(40 * MiB, seed=90)
    g = srv.ftp()
    conn = start_upload(g, "big.ts", crc32(big))
    halt = threading.Event()
    sender = threading.Thread(target=send_paced, args=(conn, big, 8 * MiB), kwargs={"halt": halt}, daemon=True)
    sender.start()
    wait_for_disk_size(srv.file("alice", "big.ts"), 3 * MiB)
    srv.kill9()
    halt.set()
    sender.join(10)
    conn.close()
    g.sock.close()
    on_disk = srv.file("alice", "big.ts").read_bytes()

    srv.start()
    after = events(srv, 0)
    assert after[:4] == before, "no event of a completed upload is lost"
    # Start-up reconciled the upload the crash cut short and journaled its end.
    assert [without_time(e) for e in after[4:]] == [
        expected(5, "upload", "/big.ts", len(on_disk), crc32(on_disk), crc32(big), "interrupted")
    ]
    # The seq goes on without a gap.
    upload(srv, "later.ts", b"later")
    f = srv.ftp()
    f.rename("later.ts", "later2.ts")
    f.quit()
    assert [e["seq"] for e in events(srv, 0)] == [1, 2, 3, 4, 5, 6, 7]
    # A second crash with nothing open journals nothing more.
    srv.kill9()
    srv.start()
    assert [e["seq"] for e in events(srv, 0)] == [1, 2, 3, 4, 5, 6, 7]
