"""Expiry of old partial and mismatched files (`partial_expiry_hours`), and `ftpd uploads list`
(through the running server's HTTP listener, or from the store when the server is stopped)."""

import ftplib
import json
import time
import urllib.request

import pytest

from helpers import (
    MiB,
    crc32,
    cut_upload,
    declared_upload,
    free_port,
    info,
    key,
    pattern,
    stor,
    transfer_reply,
    upload,
)

TOKEN = "expiry-test-token"
FIELDS = ["user", "path", "state", "size", "declared", "crc", "updated"]


def http_server(ftpd_factory, **settings):
    return ftpd_factory(http_listen=f"127.0.0.1:{free_port()}", http_token=TOKEN, **settings)


def events(srv) -> list[dict]:
    port = int(srv.env["FTPD_HTTP_LISTEN"].rpartition(":")[2])
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/events?since=0", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return [json.loads(line) for line in r.read().decode().splitlines()]


def make_files(srv) -> dict:
    """A partial (upload cut by a reset), a mismatch, a verified, a complete, an untracked file,
    a mismatch changed behind the server's back, and a verified file of bob's. Returns what
    each holds."""
    cut = pattern(2 * MiB, seed=101)
    bad = pattern(50_000, seed=102)
    bad2 = pattern(40_000, seed=103)
    verified = pattern(300_000, seed=104)
    plain = pattern(70_000, seed=105)

    f = srv.ftp()
    declared_upload(f, "v.ts", verified)
    assert stor(f, "plain.ts", plain).startswith("226")
    for name, data in [("bad.ts", bad), ("changed.ts", bad2)]:
        f.sendcmd(f"SITE KEY {key(crc32(data) ^ 0x5A5A)}")
        assert not transfer_reply(f, f"STOR {name}", data).startswith("2")

    # Interrupted: the box's link resets in the middle of the data.
    cut_upload(srv, "cut.ts", cut, 700_000)
    deadline = time.time() + 10
    while info(f, "cut.ts")["state"] != "partial":
        assert time.time() < deadline, info(f, "cut.ts")
        time.sleep(0.1)

    srv.file("alice", "outside.ts").write_bytes(b"placed behind the server's back")
    with open(srv.file("alice", "changed.ts"), "ab") as h:
        h.write(b"appended outside FTP")

    states = {name: info(f, name)["state"] for name in ["cut.ts", "bad.ts", "v.ts", "plain.ts", "outside.ts"]}
    assert states == {
        "cut.ts": "partial",
        "bad.ts": "mismatch",
        "v.ts": "verified",
        "plain.ts": "complete",
        "outside.ts": "untracked",
    }
    assert info(f, "changed.ts")["state"] == "untracked", "its record no longer describes it"
    f.quit()
    b = srv.ftp("bob")
    declared_upload(b, "bob.ts", b"bob's file")
    b.quit()
    return {"stored_cut": srv.file("alice", "cut.ts").stat().st_size, "bad": bad, "verified": verified, "plain": plain}


def listing(srv, *args: str) -> list[dict]:
    r = srv.cli("uploads", "list", "--json", *args, check=False)
    assert r.returncode == 0, r
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    for row in rows:
        assert list(row) == FIELDS, row
    return rows


def names(rows: list[dict]) -> list[tuple[str, str, str]]:
    return [(r["user"], r["path"], r["state"]) for r in rows]


ALL = [
    ("alice", "/bad.ts", "mismatch"),
    ("alice", "/changed.ts", "mismatch"),
    ("alice", "/cut.ts", "partial"),
    ("alice", "/plain.ts", "complete"),
    ("alice", "/v.ts", "verified"),
    ("bob", "/bob.ts", "verified"),
]


def check_listings(srv, made: dict) -> list[dict]:
    rows = listing(srv)
    assert names(rows) == ALL
    by_path = {r["path"]: r for r in rows}
    v = by_path["/v.ts"]
    assert (v["size"], v["crc"], v["declared"]) == (
        len(made["verified"]),
        key(crc32(made["verified"])),
        key(crc32(made["verified"])),
    )
    assert by_path["/plain.ts"]["declared"] is None
    assert by_path["/cut.ts"]["size"] == made["stored_cut"]
    assert by_path["/bad.ts"]["crc"] != by_path["/bad.ts"]["declared"]
    assert all(r["updated"].endswith("Z") for r in rows)

    assert names(listing(srv, "--state", "partial")) == [("alice", "/cut.ts", "partial")]
    assert names(listing(srv, "--state", "mismatch")) == [
        ("alice", "/bad.ts", "mismatch"),
        ("alice", "/changed.ts", "mismatch"),
    ]
    assert names(listing(srv, "--user", "bob")) == [("bob", "/bob.ts", "verified")]
    assert names(listing(srv, "--user", "bob", "--state", "complete")) == []
    assert listing(srv, "--user", "nobody") == []

    # Readable lines: user, path, state, size, declared, crc, updated.
    r = srv.cli("uploads", "list", "--state", "complete")
    line = r.stdout.splitlines()
    assert len(line) == 1, r.stdout
    assert line[0].startswith(f"alice /plain.ts complete size={len(made['plain'])} declared=- crc="), line
    assert " updated=" in line[0]

    # Bad words: one line, exit 2.
    for args in (["--state", "untracked"], ["--user", "../x"]):
        r = srv.cli("uploads", "list", *args, check=False)
        assert r.returncode == 2 and r.stdout == "", r
    r = srv.cli("uploads", "list", "--user", "../x", check=False)
    assert r.stderr.count("\n") == 1, r.stderr
    return rows


def test_uploads_list_through_the_server_and_from_the_stopped_store(ftpd_factory):
    srv = http_server(ftpd_factory, partial_expiry_hours="0")
    made = make_files(srv)
    # While it runs the store is locked: this listing can only have come through HTTP.
    running = check_listings(srv, made)

    # A wrong token: the server refuses, and the CLI says so.
    srv.env["FTPD_HTTP_TOKEN"] = "wrong-token"
    r = srv.cli("uploads", "list", check=False)
    assert r.returncode == 2 and r.stdout == "", r
    assert r.stderr.count("\n") == 1 and "http_token" in r.stderr, r.stderr
    srv.env["FTPD_HTTP_TOKEN"] = TOKEN

    assert srv.stop() == 0
    stopped = check_listings(srv, made)
    assert stopped == running, "the same store either way"


def test_uploads_list_says_when_the_store_is_held_and_http_is_off(ftpd):
    upload(ftpd, "a.ts", b"a file")
    r = ftpd.cli("uploads", "list", check=False)
    assert r.returncode == 2 and r.stdout == "", r
    assert r.stderr.count("\n") == 1 and "in use" in r.stderr and "http_listen" in r.stderr, r.stderr
    ftpd.stop()
    r = ftpd.cli("uploads", "list", "--json", check=False)
    assert r.returncode == 0, r
    assert [(j["path"], j["state"]) for j in map(json.loads, r.stdout.splitlines())] == [("/a.ts", "verified")]


def test_old_partial_and_mismatched_files_expire_with_their_records(ftpd_factory):
    # Made with the expiry off; then the server runs with an expiry of 1.8 s, which also
    # sweeps every second (a tenth of it, at least 1 s): the records age in real time.
    srv = http_server(ftpd_factory, partial_expiry_hours="0")
    made = make_files(srv)
    before = events(srv)
    assert srv.stop() == 0
    srv.env["FTPD_PARTIAL_EXPIRY_HOURS"] = "0.0005"
    srv.start()

    deadline = time.time() + 30
    while srv.file("alice", "cut.ts").exists() or srv.file("alice", "bad.ts").exists():
        assert time.time() < deadline, srv.log()
        time.sleep(0.2)
    # Both went with their records, journaled as `expire`.
    deadline = time.time() + 10
    while len([e for e in events(srv) if e["kind"] == "expire"]) < 2:
        assert time.time() < deadline, events(srv)
        time.sleep(0.2)
    # A few more sweeps: nothing else goes.
    time.sleep(3)
    got = events(srv)
    assert got[: len(before)] == before
    expired = got[len(before) :]
    assert [(e["kind"], e["path"], e["state"]) for e in expired] == [
        ("expire", "/bad.ts", "mismatch"),
        ("expire", "/cut.ts", "interrupted"),
    ], expired
    assert expired[0]["size"] == len(made["bad"]) and expired[0]["crc"] == key(crc32(made["bad"]))
    assert expired[1]["size"] == made["stored_cut"]

    f = srv.ftp()
    for name in ["cut.ts", "bad.ts"]:
        with pytest.raises(ftplib.error_perm, match=r"^550 "):
            info(f, name)
    assert info(f, "v.ts")["state"] == "verified"
    assert info(f, "plain.ts")["state"] == "complete"
    assert info(f, "outside.ts")["state"] == "untracked"
    assert info(f, "changed.ts")["state"] == "untracked"
    f.quit()
    for name in ["v.ts", "plain.ts", "outside.ts", "changed.ts"]:
        assert srv.file("alice", name).exists(), name
    assert srv.file("bob", "bob.ts").exists()
    assert names(listing(srv)) == [
        ("alice", "/changed.ts", "mismatch"),  # changed behind the server's back: left alone
        ("alice", "/plain.ts", "complete"),
        ("alice", "/v.ts", "verified"),
        ("bob", "/bob.ts", "verified"),
    ]
    log = srv.log()
    assert log.count("expiry: removed an unfinished file") == 2, log
