"""Stalled uploads, zero-byte partials and renames: an upload whose sender goes silent stops,
records what it stored and is answered 426; a declared KEY survives a partial of 0 bytes; a
rename onto itself keeps the record; the rename target and uploads under a renamed directory
are never shared by two writers."""

import ftplib
import io
import socket
import time

import pytest

from helpers import KiB, MiB, crc32, declared_upload, info, key, pattern, start_upload, stb_upload, wait_for_disk_size


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """Sends what the server still takes: a connection it closed refuses the rest."""
    try:
        sock.sendall(data)
    except OSError:
        pass


# --- uploads whose sender goes silent -------------------------------------------------------


@pytest.mark.parametrize("front", ["true", "false"])
@pytest.mark.parametrize("sent", [0, 300 * KiB + 17])
def test_a_stalled_upload_stops_records_what_it_stored_and_answers_426(ftpd_factory, front, sent):
    idle = 2
    srv = ftpd_factory(data_idle_timeout=idle, front=front)
    data = pattern(MiB, seed=70)
    f = srv.ftp()
    d = start_upload(f, "stall.ts", crc32(data))
    d.sendall(data[:sent])
    t0 = time.monotonic()
    # The sender goes silent with its data connection open (a box that lost power).
    f.sock.settimeout(idle + 20)
    with pytest.raises(ftplib.error_temp, match="^426"):
        f.getresp()
    took = time.monotonic() - t0
    assert idle - 0.5 <= took < idle + 8, f"426 after {took:.1f}s"
    d.close()
    assert "upload stalled" in srv.log(), srv.log()

    # What reached the server is stored and recorded, as for any interrupted upload.
    i = info(f, "stall.ts")
    assert (i["size"], i["received-crc"], i["declared"], i["state"]) == (
        str(sent),
        key(crc32(data[:sent])),
        key(crc32(data)),
        "partial",
    )
    f.quit()

    # The box comes back and resumes with the seed dialogue, without a new KEY.
    g = srv.ftp()
    assert int(g.sendcmd("SIZE stall.ts").split()[1]) == sent
    assert g.sendcmd("SITE KEY NULL") == f"230 {key(crc32(data))}"
    g.voidcmd("TYPE I")
    assert g.storbinary("STOR stall.ts", io.BytesIO(data[sent:]), rest=sent).startswith("226")
    i = info(g, "stall.ts")
    assert (i["size"], i["state"]) == (str(len(data)), "verified")
    assert srv.file("alice", "stall.ts").read_bytes() == data
    g.quit()


def test_a_slow_sender_that_keeps_sending_is_not_cut(ftpd_factory):
    """The deadline is on silence, not on the length of the transfer."""
    idle = 2
    srv = ftpd_factory(data_idle_timeout=idle)
    data = pattern(6 * KiB, seed=71)
    f = srv.ftp()
    d = start_upload(f, "slow.ts", crc32(data))
    t0 = time.monotonic()
    for i in range(6):
        d.sendall(data[i * KiB : (i + 1) * KiB])
        time.sleep(idle * 0.6)
    d.close()
    assert f.voidresp().startswith("226")
    assert time.monotonic() - t0 > 2 * idle
    assert info(f, "slow.ts")["state"] == "verified"
    f.quit()


# --- a zero-byte partial keeps its KEY ------------------------------------------------------


def leave_empty_partial(srv, name: str, declared: int) -> None:
    """`KEY F`, then a STOR whose data connection closes before any byte."""
    f = srv.ftp()
    d = start_upload(f, name, declared)
    d.close()
    with pytest.raises(ftplib.error_temp, match="^451"):
        f.voidresp()
    i = info(f, name)
    assert (i["size"], i["declared"], i["state"]) == ("0", key(declared), "mismatch")
    f.quit()


def test_a_zero_byte_partial_keeps_its_key_and_resumes_to_verified(ftpd):
    data = pattern(100_000, seed=72)
    leave_empty_partial(ftpd, "zero.ts", crc32(data))
    g = ftpd.ftp()
    assert g.sendcmd("SIZE zero.ts") == "213 0"
    assert g.sendcmd("SITE KEY NULL") == f"230 {key(crc32(data))}"
    g.voidcmd("TYPE I")
    assert g.storbinary("STOR zero.ts", io.BytesIO(data), rest=0).startswith("226")
    i = info(g, "zero.ts")
    assert (i["declared"], i["state"], i["size"]) == (key(crc32(data)), "verified", str(len(data)))
    g.quit()


def test_a_resume_from_zero_onto_an_unfinished_partial_keeps_its_key(ftpd):
    data = pattern(80_000, seed=73)
    f = ftpd.ftp()
    f.sendcmd(f"SITE KEY {key(crc32(data))}")
    with pytest.raises(ftplib.error_temp, match="^451"):
        f.storbinary("STOR p.ts", io.BytesIO(data[:30_000]))
    f.quit()
    g = ftpd.ftp()
    g.voidcmd("TYPE I")
    # Started over from 0 without a new KEY: still the declared file, so wrong bytes fail.
    with pytest.raises(ftplib.error_temp, match="^451"):
        g.storbinary("STOR p.ts", io.BytesIO(data[:50_000]), rest=0)
    assert info(g, "p.ts")["declared"] == key(crc32(data))
    assert g.storbinary("STOR p.ts", io.BytesIO(data), rest=0).startswith("226")
    assert info(g, "p.ts")["state"] == "verified"
    g.quit()


def test_a_finished_file_stored_again_without_key_is_a_new_undeclared_file(ftpd):
    data = pattern(20_000, seed=74)
    f = ftpd.ftp()
    declared_upload(f, "done.ts", data)
    assert f.storbinary("STOR done.ts", io.BytesIO(b"other bytes")).startswith("226")
    i = info(f, "done.ts")
    assert (i["declared"], i["state"]) == ("0x00", "complete")
    f.quit()


def test_stb_upload_resumes_a_zero_byte_partial_to_verified(ftpd, tmp_path):
    data = pattern(200_000, seed=75)
    local = tmp_path / "rec.ts"
    local.write_bytes(data)
    leave_empty_partial(ftpd, "rec.ts", crc32(data))
    run = stb_upload(ftpd.port, "rec.ts", local, timeout=120)
    assert run.code == 0, run
    result = run.result
    assert (result["decision"], result["resumed_from"], result["verified"]) == ("resume", 0, True), result
    f = ftpd.ftp()
    i = info(f, "rec.ts")
    assert (i["declared"], i["state"]) == (key(crc32(data)), "verified")
    assert ftpd.file("alice", "rec.ts").read_bytes() == data
    f.quit()


# --- renames -------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["same.ts", "./same.ts", "/same.ts"])
def test_a_rename_onto_itself_keeps_the_record(ftpd, spelling):
    data = pattern(40_000, seed=76)
    f = ftpd.ftp()
    declared_upload(f, "same.ts", data)
    assert f.sendcmd("RNFR same.ts").startswith("350")
    assert f.sendcmd(f"RNTO {spelling}").startswith("250")
    assert f.sendcmd("SITE KEY NULL same.ts") == f"230 {key(crc32(data))}"
    assert info(f, "same.ts")["state"] == "verified"
    assert ftpd.file("alice", "same.ts").read_bytes() == data
    f.quit()


def test_a_directory_renamed_onto_itself_keeps_the_records_below_it(ftpd):
    data = pattern(30_000, seed=77)
    f = ftpd.ftp()
    f.mkd("d")
    declared_upload(f, "d/x.ts", data)
    f.rename("d", "./d/")
    assert f.sendcmd("SITE KEY NULL d/x.ts") == f"230 {key(crc32(data))}"
    f.quit()


def test_a_rename_onto_a_file_being_written_takes_that_upload_over(ftpd_factory):
    srv = ftpd_factory(takeover_wait=8)
    big = pattern(4 * MiB, seed=78)
    small = pattern(50_000, seed=79)
    a = srv.ftp()
    a_data = start_upload(a, "target.ts", crc32(big))
    a_data.sendall(big[: MiB + 4321])
    wait_for_disk_size(srv.file("alice", "target.ts"), MiB)

    b = srv.ftp()
    declared_upload(b, "src.ts", small)
    t0 = time.monotonic()
    b.rename("src.ts", "target.ts")
    assert time.monotonic() - t0 < 4

    # A's upload was stopped before its file was replaced; what it sends now goes nowhere.
    send_quietly(a_data, big[MiB + 4321 :])
    a_data.close()
    with pytest.raises(ftplib.error_temp, match="^426"):
        a.getresp()
    a.close()
    time.sleep(0.3)

    assert srv.file("alice", "target.ts").read_bytes() == small
    assert b.sendcmd("SITE KEY NULL target.ts") == f"230 {key(crc32(small))}"
    i = info(b, "target.ts")
    assert (i["state"], i["size"]) == ("verified", str(len(small)))
    b.quit()


def test_a_directory_with_a_running_upload_below_it_is_not_renamed(ftpd_factory):
    srv = ftpd_factory(takeover_wait=8)
    data = pattern(3 * MiB, seed=80)
    a = srv.ftp()
    a.mkd("d")
    a_data = start_upload(a, "d/x.ts", crc32(data))
    a_data.sendall(data[:MiB])
    wait_for_disk_size(srv.file("alice", "d/x.ts"), MiB // 2)

    b = srv.ftp()
    assert b.sendcmd("RNFR d").startswith("350")
    with pytest.raises(ftplib.error_temp, match="^450"):
        b.sendcmd("RNTO e")
    assert srv.file("alice", "d/x.ts").exists() and not srv.file("alice", "e").exists()
    assert "rename refused" in srv.log() and "upload(s) below it are running" in srv.log()
    # Nor onto it, nor any directory above it.
    b.mkd("f")
    assert b.sendcmd("RNFR f").startswith("350")
    with pytest.raises(ftplib.error_temp, match="^450"):
        b.sendcmd("RNTO d")

    # The upload carries on undisturbed, ends verified, and then the rename works.
    a_data.sendall(data[MiB:])
    a_data.close()
    assert a.voidresp().startswith("226")
    a.quit()
    assert info(b, "d/x.ts")["state"] == "verified"
    b.rename("d", "e")
    assert b.sendcmd("SITE KEY NULL e/x.ts") == f"230 {key(crc32(data))}"
    assert info(b, "e/x.ts")["state"] == "verified"
    b.quit()
