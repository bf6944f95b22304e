"""Plain uploads skip the front's relay: the front parks the client's data connection and the
upload path reads it directly. Everything else (TLS data connections, downloads, ftpd without
the front) goes the ordinary way, and no file content is ever mistaken for the hand-over."""

from __future__ import annotations

import ftplib
import os
import subprocess

import pytest

from helpers import pattern, retr, upload

DIRECT = "upload reads the client's data connection directly"
# The hand-over's marker (ftpd/src/handoff.rs); a file may well start with it.
MARKER = b"\0ftpd>\x01\0"


def test_plain_upload_is_read_from_the_client_connection(ftpd_factory):
    srv = ftpd_factory(log_level="info,ftpd=debug")
    data = pattern(8 << 20, seed=3)
    reply = upload(srv, "direct.bin", data)
    assert reply.startswith("226"), reply
    assert srv.file("alice", "direct.bin").read_bytes() == data
    assert srv.log().count(DIRECT) == 1, srv.log()

    # curl, another client, and a resume (REST + STOR) take the same path.
    part = srv.root / "alice" / "resume.bin"
    part.write_bytes(data[:1000])
    src = srv.base / "src.bin"
    src.write_bytes(data)
    subprocess.run(
        ["curl", "-sS", "--ftp-pasv", "-C", "-", "-T", str(src), srv.url("alice", "resume.bin")],
        check=True,
        timeout=60,
    )
    assert part.read_bytes() == data
    assert srv.log().count(DIRECT) == 2, srv.log()


def test_content_that_starts_like_a_tls_handshake_is_a_plain_upload(ftpd_factory):
    """The front knows the session's command (a plain STOR), so the first byte decides nothing."""
    srv = ftpd_factory(log_level="info,ftpd=debug")
    data = b"\x16\x03\x01" + pattern(1 << 20, seed=4)
    assert upload(srv, "tlsish.bin", data).startswith("226")
    assert srv.file("alice", "tlsish.bin").read_bytes() == data
    assert srv.log().count(DIRECT) == 1, srv.log()


@pytest.mark.parametrize("front", ["true", "false"])
def test_content_that_looks_like_a_ticket_is_stored_as_it_is(ftpd_factory, front):
    srv = ftpd_factory(front=front, log_level="info,ftpd=debug")
    forged = MARKER + os.urandom(16)
    cases = {
        "ticket.bin": forged,
        "ticket-and-more.bin": forged + pattern(300_000, seed=5),
        "marker.bin": MARKER,
        "short.bin": b"x",
        "empty.bin": b"",
        "ticket-sized.bin": bytes(24),
    }
    for name, data in cases.items():
        assert upload(srv, name, data).startswith("226"), name
        assert srv.file("alice", name).read_bytes() == data, name
    # With the front every STOR is handed over, an empty one too.
    expected = len(cases) if front == "true" else 0
    assert srv.log().count(DIRECT) == expected, srv.log()


def test_downloads_and_listings_are_relayed(ftpd_factory):
    srv = ftpd_factory(log_level="info,ftpd=debug")
    data = pattern(3 << 20, seed=6)
    upload(srv, "down.bin", data)
    f = srv.ftp()
    try:
        assert retr(f, "down.bin") == data
        assert "down.bin" in f.nlst()
    finally:
        f.quit()
    assert srv.log().count(DIRECT) == 1, srv.log()


def test_refused_upload_with_data_in_flight_gets_its_reply(ftpd_factory):
    """libunftp refuses the resume before reading: the parked connection is closed, the client
    gets the refusal, and the file is untouched."""
    srv = ftpd_factory()
    data = pattern(4 << 20, seed=7)
    upload(srv, "guarded.bin", data[:1000], declare=False)
    f = srv.ftp()
    try:
        f.voidcmd("TYPE I")
        f.sendcmd("REST 5000")
        conn = f.transfercmd("STOR guarded.bin")
        try:
            conn.sendall(data)
        except OSError:
            pass  # the server may close the data connection while this is still sending
        conn.close()
        with pytest.raises(ftplib.error_perm) as refused:
            f.voidresp()
        assert str(refused.value).startswith("550"), refused.value
    finally:
        f.close()
    assert srv.file("alice", "guarded.bin").read_bytes() == data[:1000]
    g = srv.ftp()
    assert g.sendcmd("NOOP").startswith("200")
    g.quit()
