"""Checksum records follow DELE and RNFR/RNTO, stay per user, and are not reachable by FTP."""

import ftplib

import pytest

from helpers import crc32, declared_upload, info, key, pattern, retr, stor


def null(f: ftplib.FTP, path: str) -> str:
    return f.sendcmd(f"SITE KEY NULL {path}")


def null_or_550(f: ftplib.FTP, path: str) -> str:
    try:
        return null(f, path)
    except ftplib.error_perm as e:
        return str(e)[:3]


def test_dele_removes_the_record(ftpd):
    data = pattern(50_000, seed=41)
    f = ftpd.ftp()
    declared_upload(f, "rec.ts", data)
    assert null(f, "rec.ts") == f"230 {key(crc32(data))}"
    f.delete("rec.ts")
    assert not ftpd.file("alice", "rec.ts").exists()
    assert null(f, "rec.ts") == "230 0x00"
    # the same name uploaded again without KEY knows nothing of the old declaration
    assert stor(f, "rec.ts", data).startswith("226")
    assert null(f, "rec.ts") == "230 0x00"
    i = info(f, "rec.ts")
    assert (i["declared"], i["state"]) == ("0x00", "complete")
    # also from another session and after a restart
    ftpd.restart()
    assert null(ftpd.ftp(), "rec.ts") == "230 0x00"


def test_dele_of_a_partial_removes_its_record(ftpd):
    data = pattern(80_000, seed=42)
    f = ftpd.ftp()
    f.sendcmd(f"SITE KEY {key(crc32(data))}")
    with pytest.raises(ftplib.error_temp):
        stor(f, "p.ts", data[:30_000])
    assert null(f, "p.ts") == f"230 {key(crc32(data))}"
    f.delete("p.ts")
    # the old partial's prefix must not be trusted for a new file of the same size
    ftpd.file("alice", "p.ts").write_bytes(pattern(30_000, seed=43))
    assert null(f, "p.ts") == "230 0x00"
    assert info(f, "p.ts")["state"] == "untracked"


def test_rename_moves_the_record(ftpd):
    data = pattern(60_000, seed=44)
    f = ftpd.ftp()
    declared_upload(f, "old name.ts", data)
    f.rename("old name.ts", "new name.ts")
    assert null(f, "new name.ts") == f"230 {key(crc32(data))}"
    i = info(f, "new name.ts")
    assert (i["state"], i["received-crc"], i["size"]) == ("verified", key(crc32(data)), str(len(data)))
    assert null_or_550(f, "old name.ts") in ("230 0x00", "550")
    # a new file under the old name starts fresh
    assert stor(f, "old name.ts", b"other").startswith("226")
    assert null(f, "old name.ts") == "230 0x00"
    assert null(f, "new name.ts") == f"230 {key(crc32(data))}"


def test_rename_onto_an_existing_file_replaces_its_record(ftpd):
    a, b = pattern(10_000, seed=45), pattern(20_000, seed=46)
    f = ftpd.ftp()
    declared_upload(f, "a.ts", a)
    declared_upload(f, "b.ts", b)
    f.rename("a.ts", "b.ts")
    assert ftpd.file("alice", "b.ts").read_bytes() == a
    assert null(f, "b.ts") == f"230 {key(crc32(a))}"
    assert info(f, "b.ts")["size"] == str(len(a))
    # an undeclared file renamed onto a declared one leaves no stale declaration
    assert stor(f, "plain.ts", b"plain bytes").startswith("226")
    f.rename("plain.ts", "b.ts")
    assert null(f, "b.ts") == "230 0x00"
    assert info(f, "b.ts")["state"] == "complete"


def test_rename_of_a_directory_moves_the_records_below_it(ftpd):
    files = {
        "d/a.ts": pattern(3000, seed=47),
        "d/sub/b.ts": pattern(4000, seed=48),
        "d/sub/deeper/c d.ts": pattern(5000, seed=49),
        "dd/x.ts": pattern(6000, seed=50),  # shares the prefix "d" but is not below d/
        "d.ts": pattern(7000, seed=51),
    }
    f = ftpd.ftp()
    for d in ("d", "d/sub", "d/sub/deeper", "dd"):
        f.mkd(d)
    for name, data in files.items():
        declared_upload(f, name, data)
    f.rename("d", "e")
    for name, data in files.items():
        if name.startswith("d/"):
            new = "e/" + name[2:]
            assert null(f, new) == f"230 {key(crc32(data))}", new
            assert info(f, new)["state"] == "verified"
            assert null_or_550(f, name) in ("230 0x00", "550")
        else:
            assert null(f, name) == f"230 {key(crc32(data))}", name
    # nested rename, then relative names after CWD
    f.rename("/e/sub", "/moved")
    f.cwd("moved/deeper")
    assert null(f, "c d.ts") == f"230 {key(crc32(files['d/sub/deeper/c d.ts']))}"
    assert null(f, "../b.ts") == f"230 {key(crc32(files['d/sub/b.ts']))}"
    ftpd.restart()
    g = ftpd.ftp()
    assert null(g, "/moved/deeper/c d.ts") == f"230 {key(crc32(files['d/sub/deeper/c d.ts']))}"
    assert null(g, "/e/a.ts") == f"230 {key(crc32(files['d/a.ts']))}"


def test_records_survive_restart_and_sigkill(ftpd):
    data = pattern(40_000, seed=52)
    f = ftpd.ftp()
    declared_upload(f, "k.ts", data)
    f.close()
    ftpd.kill9()
    ftpd.start()
    g = ftpd.ftp()
    assert null(g, "k.ts") == f"230 {key(crc32(data))}"
    assert info(g, "k.ts")["state"] == "verified"


def test_users_do_not_see_each_others_records(ftpd):
    secret = pattern(30_000, seed=53)
    a = ftpd.ftp("alice")
    declared_upload(a, "rec.ts", secret)
    b = ftpd.ftp("bob")
    assert null_or_550(b, "/rec.ts") in ("230 0x00", "550")
    assert null_or_550(b, "rec.ts") in ("230 0x00", "550")
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        b.sendcmd("SITE KEY INFO /rec.ts")
    for path in ("../alice/rec.ts", "/../alice/rec.ts", "../../alice/rec.ts"):
        with pytest.raises(ftplib.error_perm, match=r"^501 KEY: .*escapes"):
            null(b, path)
        with pytest.raises(ftplib.error_perm, match=r"^501"):
            b.sendcmd(f"SITE KEY INFO {path}")
    # bob's own file of the same name has its own record
    declared_upload(b, "rec.ts", b"bob's")
    assert null(b, "rec.ts") == f"230 {key(crc32(b'bob' + bytes([39]) + b's'))}"
    assert null(a, "rec.ts") == f"230 {key(crc32(secret))}"
    # ... and deleting it leaves alice's record alone
    b.delete("rec.ts")
    assert null(a, "rec.ts") == f"230 {key(crc32(secret))}"


def test_users_cannot_read_each_others_files(ftpd):
    secret = pattern(30_000, seed=54)
    a = ftpd.ftp("alice")
    declared_upload(a, "rec.ts", secret)
    b = ftpd.ftp("bob")
    for path in ("../alice/rec.ts", "/../alice/rec.ts", "/alice/rec.ts", "../../root/alice/rec.ts"):
        with pytest.raises(ftplib.Error):
            data = retr(b, path)
            assert data != secret
        with pytest.raises(ftplib.error_perm):
            b.sendcmd(f"SIZE {path}")
    with pytest.raises(ftplib.error_perm):
        b.cwd("../alice")
    assert b.pwd() == "/"
    assert "rec.ts" not in b.nlst()
    # writing there does not reach alice either
    try:
        stor(b, "../alice/rec.ts", b"overwritten")
    except ftplib.Error:
        pass
    assert ftpd.file("alice", "rec.ts").read_bytes() == secret
    assert null(a, "rec.ts") == f"230 {key(crc32(secret))}"


def test_state_directory_is_not_reachable_by_ftp(ftpd):
    f = ftpd.ftp()
    assert stor(f, "mine.ts", b"mine").startswith("226")
    f.mkd("mydir")
    assert (ftpd.state / "records.redb").exists()
    assert sorted(f.nlst()) == ["mine.ts", "mydir"]
    listing = []
    f.retrlines("LIST", listing.append)
    names = sorted(line.split()[-1] for line in listing)
    assert names == ["mine.ts", "mydir"]
    # the root cannot be left
    f.cwd("..")
    assert f.pwd() == "/"
    assert sorted(f.nlst()) == ["mine.ts", "mydir"]
    for path in (
        "records.redb",
        "/records.redb",
        "../state/records.redb",
        "../../state/records.redb",
        "/../../state/records.redb",
        "../../../state/records.redb",
        str(ftpd.state / "records.redb"),
    ):
        with pytest.raises(ftplib.Error):
            retr(f, path)
        with pytest.raises(ftplib.error_perm):
            f.sendcmd(f"SIZE {path}")
        with pytest.raises(ftplib.error_perm):
            f.delete(path)
        reply = null_or_550(f, path)
        assert reply in ("230 0x00", "550") or reply.startswith("501"), reply
    with pytest.raises(ftplib.error_perm):
        f.cwd(str(ftpd.state))
    with pytest.raises(ftplib.error_perm):
        f.rename("../../state/records.redb", "stolen.redb")
    assert (ftpd.state / "records.redb").stat().st_size > 0
    assert not ftpd.file("alice", "stolen.redb").exists()
    # a user file called records.redb is just a file in the user's root
    assert stor(f, "records.redb", b"not the store").startswith("226")
    assert ftpd.file("alice", "records.redb").read_bytes() == b"not the store"
    assert (ftpd.state / "records.redb").read_bytes() != b"not the store"
    assert null(f, "mine.ts") == "230 0x00"  # the store still works
