"""The restart offset does not outlive a refused transfer.

libunftp keeps the `REST` offset until a transfer succeeds, so after a refused resume the next
`STOR` or `RETR` of the same session would start at the old offset. The front sends `REST 0`
ahead of every transfer that does not follow a `REST` and leaves its reply out.
"""

import re
import socket

from helpers import crc32, final_reply, info, key, pattern, refused, retr, stor, upload


def test_retr_after_refused_rest_beyond_the_end_returns_the_whole_file(ftpd):
    data = pattern(300_000, seed=71)
    upload(ftpd, "a.ts", data)
    f = ftpd.ftp()
    refused(f, "STOR a.ts", b"tail" * 100, rest=len(data) + 1000)
    assert retr(f, "a.ts") == data
    # And the session goes on answering in step.
    assert f.sendcmd("NOOP").startswith("200")
    assert int(f.sendcmd("SIZE a.ts").split()[1]) == len(data)
    f.quit()


def test_retr_after_resume_refused_for_a_different_key_returns_the_whole_file(ftpd):
    data = pattern(400_000, seed=72)
    other = pattern(500_000, seed=73)
    upload(ftpd, "b.ts", data)
    f = ftpd.ftp()
    refused(f, "STOR b.ts", other[200_000:], rest=200_000, declared=crc32(other))
    assert retr(f, "b.ts") == data
    f.quit()
    assert ftpd.file("alice", "b.ts").read_bytes() == data


def test_stor_from_zero_after_refused_resume_and_dele_in_the_same_session(ftpd):
    old = pattern(600_000, seed=74)
    new = pattern(700_000, seed=75)
    upload(ftpd, "c.ts", old)
    f = ftpd.ftp()
    refused(f, "STOR c.ts", new[300_000:], rest=300_000, declared=crc32(new))
    assert f.sendcmd("DELE c.ts").startswith("250")
    f.sendcmd(f"SITE KEY {key(crc32(new))}")
    assert stor(f, "c.ts", new).startswith("226")
    assert ftpd.file("alice", "c.ts").read_bytes() == new
    assert f.sendcmd("SITE KEY NULL c.ts") == f"230 {key(crc32(new))}"
    assert info(f, "c.ts")["state"] == "verified"
    f.quit()


def test_resume_with_rest_still_works_for_stor_and_retr(ftpd):
    data = pattern(900_000, seed=76)
    cut = 345_678
    f = ftpd.ftp()
    f.sendcmd(f"SITE KEY {key(crc32(data))}")
    conn = f.transfercmd("STOR d.ts")
    conn.sendall(data[:cut])
    conn.close()
    final_reply(f)
    f.close()
    g = ftpd.ftp()
    size = int(g.sendcmd("SIZE d.ts").split()[1])
    assert 0 < size <= cut
    assert g.sendcmd("SITE KEY NULL d.ts").startswith("230")
    # REST before PASV (as ftplib's caller may do) and REST right before STOR both resume.
    g.voidcmd("TYPE I")
    g.sendcmd(f"REST {size}")
    assert stor(g, "d.ts", data[size:]).startswith("226")
    assert ftpd.file("alice", "d.ts").read_bytes() == data
    assert retr(g, "d.ts", rest=500_000) == data[500_000:]
    assert retr(g, "d.ts") == data
    assert g.sendcmd("SITE KEY NULL d.ts") == f"230 {key(crc32(data))}"
    g.quit()


def test_pipelined_commands_before_a_transfer_keep_their_replies(ftpd):
    data = pattern(100_000, seed=77)
    upload(ftpd, "e.ts", data)
    f = ftpd.ftp()
    refused(f, "STOR e.ts", b"x" * 10, rest=len(data) + 1)
    f.voidcmd("TYPE I")
    pasv = f.sendcmd("PASV")
    nums = [int(n) for n in re.search(r"\((.*)\)", pasv).group(1).split(",")]
    dc = socket.create_connection((".".join(map(str, nums[:4])), nums[4] * 256 + nums[5]))
    f.sock.sendall(b"NOOP\r\nSIZE e.ts\r\nRETR e.ts\r\nNOOP\r\n")
    assert f.getresp().startswith("200")
    assert f.getresp() == f"213 {len(data)}"
    assert f.getresp().startswith("150")
    got = bytearray()
    while chunk := dc.recv(65536):
        got.extend(chunk)
    dc.close()
    # The NOOP after RETR may be answered before or after the transfer ends.
    last = sorted([f.getresp()[:3], f.getresp()[:3]])
    assert last == ["200", "226"]
    assert bytes(got) == data
    f.quit()


def test_without_the_front_libunftp_keeps_the_refused_offset(ftpd_factory):
    """What the front works around: libunftp straight, the RETR after a refused resume starts at
    the refused offset."""
    srv = ftpd_factory(front="false")
    data = pattern(300_000, seed=78)
    other = pattern(400_000, seed=79)
    upload(srv, "f.ts", data)
    f = srv.ftp()
    refused(f, "STOR f.ts", other[100_000:], rest=100_000, declared=crc32(other))
    assert retr(f, "f.ts") == data[100_000:]
    f.quit()
