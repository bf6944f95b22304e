"""The seed's upload dialogue, through SITE KEY, with Python's ftplib."""

import io
import socket

from helpers import crc32, key, pattern, start_upload, wait_for_settled_size


def test_first_attempt_declares_uploads_and_verifies(ftpd):
    data = pattern(3 << 20, seed=1)
    f = ftpd.ftp()
    assert f.sendcmd(f"SITE KEY {key(crc32(data))}").startswith("230 ")
    assert f.storbinary("STOR rec.ts", io.BytesIO(data)).startswith("226")
    assert ftpd.file("alice", "rec.ts").read_bytes() == data
    assert f.sendcmd("SITE KEY NULL") == f"230 {key(crc32(data))}"
    f.quit()


def test_link_drop_then_resume_with_rest_and_stor(ftpd):
    data = pattern(4 << 20, seed=2)
    cut = 1_500_000
    # First attempt: declare, then send only `cut` bytes and drop the link.
    f = ftpd.ftp()
    conn = start_upload(f, "rec.ts", crc32(data))
    conn.sendall(data[:cut])
    conn.shutdown(socket.SHUT_RDWR)
    conn.close()
    f.sock.close()

    # After the drop: same name exists -> ask for its CRC -> same -> REST + STOR the rest.
    g = ftpd.ftp()
    size = wait_for_settled_size(g, "rec.ts")
    assert 0 < size <= cut
    assert g.sendcmd("SITE KEY NULL") == f"230 {key(crc32(data))}"
    g.voidcmd("TYPE I")
    assert g.storbinary("STOR rec.ts", io.BytesIO(data[size:]), rest=size).startswith("226")
    assert ftpd.file("alice", "rec.ts").read_bytes() == data
    g.quit()


def test_query_after_a_different_file_has_the_name_uploads_again(ftpd):
    old = pattern(1 << 20, seed=3)
    new = pattern(2 << 20, seed=4)
    f = ftpd.ftp()
    f.sendcmd(f"SITE KEY {key(crc32(old))}")
    f.storbinary("STOR rec.ts", io.BytesIO(old))
    size = int(f.sendcmd("SIZE rec.ts").split()[1])
    assert size == len(old)
    answer = f.sendcmd("SITE KEY NULL")
    assert answer == f"230 {key(crc32(old))}" and answer != f"230 {key(crc32(new))}"
    f.sendcmd("DELE rec.ts")
    f.sendcmd(f"SITE KEY {key(crc32(new))}")
    assert f.storbinary("STOR rec.ts", io.BytesIO(new)).startswith("226")
    assert ftpd.file("alice", "rec.ts").read_bytes() == new
    assert f.sendcmd("SITE KEY NULL") == f"230 {key(crc32(new))}"
    f.quit()
