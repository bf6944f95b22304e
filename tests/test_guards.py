"""Verified completion, the mismatch reply, and the resume guards (REST / APPE)."""

import ftplib
import socket

import pytest

from helpers import appe, crc32, info, key, pattern, refused, retr, start_upload, stor, upload


def test_matching_upload_is_verified_and_logged(ftpd):
    data = pattern(2_000_000, seed=21)
    f = ftpd.ftp()
    f.sendcmd(f"SITE KEY {key(crc32(data))}")
    assert stor(f, "v.ts", data).startswith("226")
    assert ftpd.file("alice", "v.ts").read_bytes() == data
    i = info(f, "v.ts")
    assert (i["state"], i["declared"], i["received-crc"], i["size"]) == (
        "verified",
        key(crc32(data)),
        key(crc32(data)),
        str(len(data)),
    )
    assert "state=verified" in ftpd.log()


def test_wrong_declared_crc_gets_a_failure_reply_and_keeps_the_bytes(ftpd):
    data = pattern(1_500_000, seed=22)
    wrong = crc32(data) ^ 0x00010000
    f = ftpd.ftp()
    f.sendcmd(f"SITE KEY {key(wrong)}")
    with pytest.raises(ftplib.Error) as e:
        stor(f, "m.ts", data)
    assert str(e.value).startswith("451"), e.value
    assert ftpd.file("alice", "m.ts").read_bytes() == data
    i = info(f, "m.ts")
    assert (i["state"], i["declared"], i["received-crc"], i["size"]) == (
        "mismatch",
        key(wrong),
        key(crc32(data)),
        str(len(data)),
    )
    assert f.sendcmd("SITE KEY NULL m.ts") == f"230 {key(wrong)}"
    assert "failed verification" in ftpd.log()
    # the session is still usable: upload again with the right KEY, from the top
    f.sendcmd(f"SITE KEY {key(crc32(data))}")
    assert stor(f, "m.ts", data).startswith("226")
    assert info(f, "m.ts")["state"] == "verified"
    assert ftpd.file("alice", "m.ts").read_bytes() == data


def test_mismatch_then_dele_and_upload_again_on_a_new_connection(ftpd):
    old = pattern(300_000, seed=23)
    new = pattern(400_000, seed=24)
    f = ftpd.ftp()
    f.sendcmd(f"SITE KEY {key(crc32(new))}")
    with pytest.raises(ftplib.error_temp, match=r"^451"):
        stor(f, "r.ts", old)  # wrong content for the declared KEY
    f.close()
    g = ftpd.ftp()
    assert g.sendcmd("SITE KEY NULL r.ts") == f"230 {key(crc32(new))}"
    g.delete("r.ts")
    g.sendcmd(f"SITE KEY {key(crc32(new))}")
    assert stor(g, "r.ts", new).startswith("226")
    assert ftpd.file("alice", "r.ts").read_bytes() == new
    assert info(g, "r.ts")["state"] == "verified"


def test_truncated_upload_with_a_cleanly_closed_data_connection_fails_then_resumes(ftpd):
    data = pattern(2_500_000, seed=25)
    cut = 1_000_003
    f = ftpd.ftp()
    conn = start_upload(f, "t.ts", crc32(data))
    conn.sendall(data[:cut])
    conn.shutdown(socket.SHUT_WR)  # a clean FIN: to plain FTP this is a complete upload
    conn.close()
    with pytest.raises(ftplib.Error) as e:
        f.voidresp()
    assert not str(e.value).startswith("226") and str(e.value)[0] in "45", e.value
    on_disk = ftpd.file("alice", "t.ts").read_bytes()
    assert on_disk == data[:cut]
    i = info(f, "t.ts")
    assert i["state"] != "verified"
    assert i["size"] == str(cut) and i["received-crc"] == key(crc32(data[:cut]))
    f.quit()
    # a new session resumes from there with the same KEY
    g = ftpd.ftp()
    size = int(g.sendcmd("SIZE t.ts").split()[1])
    assert size == cut
    assert g.sendcmd("SITE KEY NULL") == f"230 {key(crc32(data))}"
    g.sendcmd(f"SITE KEY {key(crc32(data))}")
    assert stor(g, "t.ts", data[size:], rest=size).startswith("226")
    assert ftpd.file("alice", "t.ts").read_bytes() == data
    assert info(g, "t.ts")["state"] == "verified"


def test_resume_without_redeclaring_inherits_the_stored_key(ftpd):
    data = pattern(900_000, seed=26)
    cut = 400_000
    f = ftpd.ftp()
    f.sendcmd(f"SITE KEY {key(crc32(data))}")
    with pytest.raises(ftplib.error_temp):
        stor(f, "i.ts", data[:cut])
    f.quit()
    g = ftpd.ftp()
    assert stor(g, "i.ts", data[cut:], rest=cut).startswith("226")
    assert info(g, "i.ts")["state"] == "verified"
    assert ftpd.file("alice", "i.ts").read_bytes() == data


def test_rest_beyond_the_end_is_refused_and_leaves_no_hole(ftpd):
    data = pattern(100_000, seed=27)
    upload(ftpd, "h.ts", data)
    before = info(ftpd.ftp(), "h.ts")
    for declare in (False, True):
        g = ftpd.ftp()
        refused(g, "STOR h.ts", b"tail" * 100, rest=len(data) + 1000, declared=crc32(data) if declare else None)
        g.close()
        assert ftpd.file("alice", "h.ts").read_bytes() == data
        after = info(ftpd.ftp(), "h.ts")
        assert {k: after[k] for k in ("declared", "size", "received-crc", "state")} == {
            k: before[k] for k in ("declared", "size", "received-crc", "state")
        }
    log = ftpd.log()
    assert "RestBeyondEnd" in log or "beyond the stored size" in log


def test_rest_onto_a_missing_file_is_refused_and_creates_nothing(ftpd):
    f = ftpd.ftp()
    refused(f, "STOR none.ts", b"x" * 10, rest=500)
    f.close()
    assert not ftpd.file("alice", "none.ts").exists()
    g = ftpd.ftp()
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        g.sendcmd("SIZE none.ts")


def test_rest_and_stor_with_a_different_key_is_refused(ftpd):
    old = pattern(600_000, seed=28)
    other = pattern(900_000, seed=29)
    upload(ftpd, "k.ts", old)
    g = ftpd.ftp()
    refused(g, "STOR k.ts", other[300_000:], rest=300_000, declared=crc32(other))
    assert ftpd.file("alice", "k.ts").read_bytes() == old
    h = ftpd.ftp()
    assert h.sendcmd("SITE KEY NULL k.ts") == f"230 {key(crc32(old))}"
    assert info(h, "k.ts")["state"] == "verified"
    log = ftpd.log()
    assert "KeyConflict" in log or "resume refused" in log


def test_rest_with_a_different_key_declared_for_the_path_is_refused(ftpd):
    old = pattern(200_000, seed=30)
    upload(ftpd, "dir k.ts", old)
    g = ftpd.ftp()
    g.sendcmd("SITE KEY 0xDEADBEEF dir k.ts")
    refused(g, "STOR dir k.ts", b"y" * 1000, rest=100_000)
    assert ftpd.file("alice", "dir k.ts").read_bytes() == old


def test_appe_with_a_different_key_is_refused(ftpd):
    data = pattern(700_000, seed=31)
    other = pattern(700_000, seed=32)
    f = ftpd.ftp()
    f.sendcmd(f"SITE KEY {key(crc32(data))}")
    with pytest.raises(ftplib.error_temp):
        stor(f, "a.ts", data[:250_000])  # a partial: bytes kept, declared data's KEY
    f.quit()
    g = ftpd.ftp()
    refused(g, "APPE a.ts", other[250_000:], declared=crc32(other))
    assert ftpd.file("alice", "a.ts").read_bytes() == data[:250_000]
    g.quit()
    # the right KEY may append
    h = ftpd.ftp()
    h.sendcmd(f"SITE KEY {key(crc32(data))}")
    assert appe(h, "a.ts", data[250_000:]).startswith("226")
    assert ftpd.file("alice", "a.ts").read_bytes() == data
    assert info(h, "a.ts")["state"] == "verified"


def test_declaring_onto_an_undeclared_partial_is_allowed_and_verified(ftpd):
    data = pattern(500_000, seed=33)
    f = ftpd.ftp()
    assert stor(f, "u.ts", data[:123_456]).startswith("226")  # no KEY: complete as far as FTP knows
    f.sendcmd(f"SITE KEY {key(crc32(data))}")
    assert stor(f, "u.ts", data[123_456:], rest=123_456).startswith("226")
    assert ftpd.file("alice", "u.ts").read_bytes() == data
    i = info(f, "u.ts")
    assert (i["state"], i["declared"]) == ("verified", key(crc32(data)))


def test_rest_below_the_size_truncates_and_the_record_follows(ftpd):
    data = pattern(800_000, seed=34)
    upload(ftpd, "b.ts", data, declare=False)
    f = ftpd.ftp()
    tail = pattern(50_000, seed=35)
    assert stor(f, "b.ts", tail, rest=300_000).startswith("226")
    want = data[:300_000] + tail
    assert ftpd.file("alice", "b.ts").read_bytes() == want
    i = info(f, "b.ts")
    assert i["size"] == str(len(want))
    assert i["received-crc"] == key(crc32(want))
    assert i["state"] == "complete"
    # REST + an empty STOR only cuts
    assert stor(f, "b.ts", b"", rest=1000).startswith("226")
    assert ftpd.file("alice", "b.ts").read_bytes() == data[:1000]
    i = info(f, "b.ts")
    assert (i["size"], i["received-crc"]) == ("1000", key(crc32(data[:1000])))


def test_rest_below_the_size_of_a_verified_file_with_its_key_verifies_again(ftpd):
    data = pattern(600_000, seed=36)
    upload(ftpd, "w.ts", data)
    f = ftpd.ftp()
    f.sendcmd(f"SITE KEY {key(crc32(data))}")
    assert stor(f, "w.ts", data[200_000:], rest=200_000).startswith("226")
    assert ftpd.file("alice", "w.ts").read_bytes() == data
    assert info(f, "w.ts")["state"] == "verified"
    # with other bytes after the cut, the stored KEY no longer matches: failure, bytes kept
    junk = pattern(10_000, seed=37)
    with pytest.raises(ftplib.error_temp, match=r"^451"):
        stor(f, "w.ts", junk, rest=200_000)
    assert ftpd.file("alice", "w.ts").read_bytes() == data[:200_000] + junk
    i = info(f, "w.ts")
    assert i["state"] == "mismatch"
    assert i["received-crc"] == key(crc32(data[:200_000] + junk))


def test_plain_clients_without_key_can_rest_and_appe(ftpd):
    data = pattern(1_000_000, seed=38)
    f = ftpd.ftp()
    assert stor(f, "p.ts", data[:100_000]).startswith("226")
    assert appe(f, "p.ts", data[100_000:400_000]).startswith("226")
    assert stor(f, "p.ts", data[400_000:], rest=400_000).startswith("226")
    assert ftpd.file("alice", "p.ts").read_bytes() == data
    i = info(f, "p.ts")
    assert (i["state"], i["declared"], i["received-crc"]) == ("complete", "0x00", key(crc32(data)))
    # APPE creates a missing file; RETR with REST reads from the offset
    assert appe(f, "new.ts", b"fresh").startswith("226")
    assert ftpd.file("alice", "new.ts").read_bytes() == b"fresh"
    assert retr(f, "p.ts", rest=999_000) == data[999_000:]
    # a file placed on disk behind the server's back can be resumed too
    ftpd.file("alice", "disk.ts").write_bytes(data[:5000])
    assert stor(f, "disk.ts", data[5000:], rest=5000).startswith("226")
    assert ftpd.file("alice", "disk.ts").read_bytes() == data
    assert info(f, "disk.ts")["received-crc"] == key(crc32(data))
