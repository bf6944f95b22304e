"""Every form of the KEY command through `SITE KEY`, its replies and its errors."""

import ftplib
import re
import time
from datetime import datetime

import pytest

from helpers import (
    crc32,
    info,
    key,
    pattern,
    raw_control,
    raw_dialogue,
    rst_close,
    start_upload,
    stor,
    wait_for_settled_size,
)


def forge_crc(prefix: bytes, target: int) -> bytes:
    """`prefix` plus four bytes chosen so that the whole has CRC `target`.

    CRC-32 is affine over GF(2) in the last four bytes, so the bytes solve a 32x32 linear
    system: column i is what flipping bit i of the suffix does to the CRC.
    """
    base = crc32(prefix + bytes(4))
    cols = []
    for i in range(32):
        suffix = (1 << i).to_bytes(4, "little")
        cols.append(crc32(prefix + suffix) ^ base)
    want = target ^ base
    # Gaussian elimination on rows = CRC bits; each row is (mask of suffix bits, result bit).
    rows = []
    for bit in range(32):
        mask = sum(((cols[i] >> bit) & 1) << i for i in range(32))
        rows.append([mask, (want >> bit) & 1])
    x = 0
    pivots = []
    r = 0
    for col in range(32):
        pivot = next((k for k in range(r, 32) if rows[k][0] >> col & 1), None)
        assert pivot is not None, "CRC suffix system is singular"
        rows[r], rows[pivot] = rows[pivot], rows[r]
        for k in range(32):
            if k != r and rows[k][0] >> col & 1:
                rows[k][0] ^= rows[r][0]
                rows[k][1] ^= rows[r][1]
        pivots.append(col)
        r += 1
    for k, col in enumerate(pivots):
        x |= rows[k][1] << col
    out = prefix + x.to_bytes(4, "little")
    assert crc32(out) == target
    return out


# -- declaring ---------------------------------------------------------------------------------


def test_declare_reply_names_the_value_and_the_upload_is_verified(ftpd):
    data = pattern(200_000, seed=11)
    f = ftpd.ftp()
    reply = f.sendcmd(f"SITE KEY {key(crc32(data))}")
    assert reply.startswith("230 ") and key(crc32(data)) in reply, reply
    assert stor(f, "a.ts", data).startswith("226")
    assert f.sendcmd("SITE KEY NULL") == f"230 {key(crc32(data))}"
    assert info(f, "a.ts")["state"] == "verified"


@pytest.mark.parametrize(
    "spelling",
    [
        lambda v: "0x%08X" % v,
        lambda v: "0x%08x" % v,
        lambda v: "0X%08x" % v,
        lambda v: "%08X" % v,
        lambda v: "%x" % v,  # no leading zeros
    ],
    ids=["canonical", "lower", "upper-X", "no-prefix", "short"],
)
def test_declare_accepts_every_spelling_and_answers_canonically(ftpd, spelling):
    # A CRC with a leading zero nibble makes the "short" spelling really shorter than 8 digits.
    data = forge_crc(b"leading zero", 0x0123ABCD)
    f = ftpd.ftp()
    assert f.sendcmd(f"SITE KEY {spelling(crc32(data))}").startswith("230 ")
    assert stor(f, "s.ts", data).startswith("226")
    assert f.sendcmd("SITE KEY NULL s.ts") == "230 0x0123ABCD"
    assert info(f, "s.ts")["declared"] == "0x0123ABCD"


def test_declare_for_a_named_file_applies_to_that_file_only(ftpd):
    a, b = pattern(5000, seed=1), pattern(6000, seed=2)
    f = ftpd.ftp()
    reply = f.sendcmd(f"SITE KEY {key(crc32(a))} a.ts")
    assert reply.startswith("230 ") and "/a.ts" in reply, reply
    # Another file uploaded first is not covered by the declaration for a.ts.
    assert stor(f, "b.ts", b).startswith("226")
    assert f.sendcmd("SITE KEY NULL b.ts") == "230 0x00"
    assert info(f, "b.ts")["state"] == "complete"
    assert stor(f, "a.ts", a).startswith("226")
    assert f.sendcmd("SITE KEY NULL a.ts") == f"230 {key(crc32(a))}"
    assert info(f, "a.ts")["state"] == "verified"


def test_a_bare_declaration_is_used_by_one_upload_only(ftpd):
    a, b = pattern(3000, seed=3), pattern(3000, seed=4)
    f = ftpd.ftp()
    f.sendcmd(f"SITE KEY {key(crc32(a))}")
    assert stor(f, "a.ts", a).startswith("226")
    assert stor(f, "b.ts", b).startswith("226")
    assert f.sendcmd("SITE KEY NULL a.ts") == f"230 {key(crc32(a))}"
    assert f.sendcmd("SITE KEY NULL b.ts") == "230 0x00"
    assert info(f, "b.ts")["state"] == "complete"


def test_paths_with_spaces_relative_after_cwd_and_absolute(ftpd):
    data = pattern(40_000, seed=5)
    k = key(crc32(data))
    f = ftpd.ftp()
    f.sendcmd("MKD my dir")
    f.cwd("my dir")
    reply = f.sendcmd(f"SITE KEY {k} rec one.ts")
    assert "/my dir/rec one.ts" in reply, reply
    assert stor(f, "rec one.ts", data).startswith("226")
    assert ftpd.file("alice", "my dir/rec one.ts").read_bytes() == data
    # relative to the working directory, absolute from the user's root, and with dot segments
    assert f.sendcmd("SITE KEY NULL rec one.ts") == f"230 {k}"
    assert f.sendcmd("SITE KEY NULL /my dir/rec one.ts") == f"230 {k}"
    assert f.sendcmd("SITE KEY NULL ./../my dir/./rec one.ts") == f"230 {k}"
    f.cwd("/")
    assert f.sendcmd("SITE KEY NULL my dir/rec one.ts") == f"230 {k}"
    assert f.sendcmd("SITE KEY NULL rec one.ts") == "230 0x00"  # not in the root
    assert info(f, "my dir/rec one.ts")["state"] == "verified"
    resp = f.sendcmd("SITE KEY INFO /my dir/rec one.ts")
    assert resp.splitlines()[0] == "213-KEY INFO /my dir/rec one.ts"


@pytest.mark.parametrize("word", ["NULL", "null", "Null"])
def test_query_keyword_is_case_insensitive(ftpd, word):
    data = pattern(1000, seed=6)
    f = ftpd.ftp()
    f.sendcmd(f"SITE KEY {key(crc32(data))}")
    stor(f, "q.ts", data)
    assert f.sendcmd(f"SITE KEY {word} q.ts") == f"230 {key(crc32(data))}"
    assert f.sendcmd(f"SITE KEY {word}") == f"230 {key(crc32(data))}"


@pytest.mark.parametrize("word", ["INFO", "info", "Info"])
def test_info_keyword_is_case_insensitive(ftpd, word):
    data = pattern(1000, seed=7)
    f = ftpd.ftp()
    f.sendcmd(f"SITE KEY {key(crc32(data))}")
    stor(f, "i.ts", data)
    for cmd in (f"SITE KEY {word} i.ts", f"SITE KEY {word}"):
        lines = f.sendcmd(cmd).splitlines()
        assert lines[0] == "213-KEY INFO /i.ts" and lines[-1] == "213 End", lines
        assert f" declared={key(crc32(data))}" in lines


# -- the current file --------------------------------------------------------------------------


def test_query_without_path_follows_the_most_recently_named_file(ftpd):
    a, b = pattern(2000, seed=8), pattern(2500, seed=9)
    f = ftpd.ftp()
    assert f.sendcmd("SITE KEY NULL") == "230 0x00"  # nothing named yet
    f.sendcmd(f"SITE KEY {key(crc32(a))}")
    stor(f, "a.ts", a)
    f.sendcmd(f"SITE KEY {key(crc32(b))}")
    stor(f, "b.ts", b)
    assert f.sendcmd("SITE KEY NULL") == f"230 {key(crc32(b))}"  # STOR names a file
    f.sendcmd("SIZE a.ts")
    assert f.sendcmd("SITE KEY NULL") == f"230 {key(crc32(a))}"  # SIZE does
    f.sendcmd("MDTM b.ts")
    assert f.sendcmd("SITE KEY NULL") == f"230 {key(crc32(b))}"  # MDTM does
    f.sendcmd("SITE KEY NULL a.ts")
    assert f.sendcmd("SITE KEY NULL") == f"230 {key(crc32(a))}"  # a KEY with a path does
    assert info(f)["size"] == str(len(a))
    # a new session starts with no current file
    g = ftpd.ftp()
    assert g.sendcmd("SITE KEY NULL") == "230 0x00"
    with pytest.raises(ftplib.error_perm, match=r"^501 "):
        g.sendcmd("SITE KEY INFO")


def test_size_of_an_absent_file_then_query_answers_unknown(ftpd):
    f = ftpd.ftp()
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        f.sendcmd("SIZE nothing.ts")
    assert f.sendcmd("SITE KEY NULL") == "230 0x00"
    assert f.sendcmd("SITE KEY NULL nothing.ts") == "230 0x00"
    with pytest.raises(ftplib.error_perm, match=r"^550 "):
        f.sendcmd("SITE KEY INFO nothing.ts")


# -- unknown, zero and undeclared --------------------------------------------------------------


def test_file_uploaded_without_key_is_complete_and_undeclared(ftpd):
    data = pattern(12_345, seed=10)
    f = ftpd.ftp()
    stor(f, "plain.ts", data)
    assert f.sendcmd("SITE KEY NULL plain.ts") == "230 0x00"
    i = info(f, "plain.ts")
    assert i["declared"] == "0x00"
    assert i["state"] == "complete"
    assert i["size"] == str(len(data))
    assert i["received-crc"] == key(crc32(data))


def test_empty_file_declared_zero_answers_eight_zero_digits(ftpd):
    f = ftpd.ftp()
    assert crc32(b"") == 0
    f.sendcmd("SITE KEY 0x0")
    assert stor(f, "empty.ts", b"").startswith("226")
    assert ftpd.file("alice", "empty.ts").read_bytes() == b""
    # declared 0 is not "unknown": the long form tells them apart
    assert f.sendcmd("SITE KEY NULL empty.ts") == "230 0x00000000"
    i = info(f, "empty.ts")
    assert (i["declared"], i["size"], i["received-crc"], i["state"]) == ("0x00000000", "0", "0x00000000", "verified")


def test_non_empty_file_with_crc_zero(ftpd):
    data = forge_crc(pattern(100_000, seed=12), 0)
    f = ftpd.ftp()
    f.sendcmd("SITE KEY 0x00000000")
    assert stor(f, "zero.ts", data).startswith("226")
    assert f.sendcmd("SITE KEY NULL zero.ts") == "230 0x00000000"
    assert info(f, "zero.ts")["state"] == "verified"
    # the same bytes without a declaration: unknown
    stor(f, "zero2.ts", data)
    assert f.sendcmd("SITE KEY NULL zero2.ts") == "230 0x00"
    assert info(f, "zero2.ts")["received-crc"] == "0x00000000"


def test_file_placed_behind_the_servers_back_is_untracked(ftpd):
    data = pattern(777, seed=13)
    ftpd.file("alice", "outside.ts").parent.mkdir(parents=True, exist_ok=True)
    ftpd.file("alice", "outside.ts").write_bytes(data)
    f = ftpd.ftp()
    assert f.sendcmd("SITE KEY NULL outside.ts") == "230 0x00"
    i = info(f, "outside.ts")
    assert i["state"] == "untracked"
    assert i["size"] == str(len(data))
    assert i["received-crc"] == "unknown"
    assert i["declared"] == "0x00"


def test_record_of_a_file_changed_behind_the_servers_back_is_not_trusted(ftpd):
    data = pattern(5000, seed=14)
    f = ftpd.ftp()
    f.sendcmd(f"SITE KEY {key(crc32(data))}")
    stor(f, "c.ts", data)
    with open(ftpd.file("alice", "c.ts"), "ab") as h:
        h.write(b"more")
    assert f.sendcmd("SITE KEY NULL c.ts") == "230 0x00"
    i = info(f, "c.ts")
    assert i["state"] == "untracked" and i["size"] == str(len(data) + 4)


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, reason",
    [
        ("0xZZ", "not hexadecimal"),
        ("hello", "not hexadecimal"),
        ("-1", "not hexadecimal"),
        ("0x123456789", "more than 8"),
        ("123456789", "more than 8"),
        ("0x", "missing"),
        ("", "missing"),
        ("   ", "missing"),
        ("0xZZ a.ts", "not hexadecimal"),
        ("NULL ../..", "escapes"),
        ("NULL ../../etc/passwd", "escapes"),
        ("INFO ../..", "escapes"),
        ("0x1234 ../..", "escapes"),
        ("NULL /", "root"),
    ],
)
def test_malformed_arguments_get_501_with_a_reason(ftpd, args, reason):
    f = ftpd.ftp()
    with pytest.raises(ftplib.error_perm) as e:
        f.sendcmd("SITE KEY" if args == "" else f"SITE KEY {args}")
    msg = str(e.value)
    assert msg.startswith("501 KEY: "), msg
    assert reason in msg.lower(), msg
    # the session stays usable and nothing was declared
    assert f.sendcmd("SITE KEY NULL") == "230 0x00"
    stor(f, "after.ts", b"x")
    assert info(f, "after.ts")["state"] == "complete"


def test_escape_from_a_subdirectory_is_refused(ftpd):
    f = ftpd.ftp()
    f.sendcmd("MKD d")
    f.cwd("d")
    assert f.sendcmd("SITE KEY NULL ../x.ts") == "230 0x00"  # still inside the root
    for args in ("NULL ../../x.ts", "INFO ../../bob/x.ts", "0x1 ../../../x.ts"):
        with pytest.raises(ftplib.error_perm, match=r"^501 KEY: .*escapes"):
            f.sendcmd(f"SITE KEY {args}")


def test_info_of_a_directory_or_missing_file_is_550(ftpd):
    f = ftpd.ftp()
    f.sendcmd("MKD dir")
    for cmd in ("SITE KEY INFO dir", "SITE KEY INFO missing.ts"):
        with pytest.raises(ftplib.error_perm, match=r"^550 "):
            f.sendcmd(cmd)


def test_paths_that_cannot_name_a_file_answer_like_a_missing_file(ftpd):
    """A path through a regular file or a name too long to exist: SIZE says 550, so KEY NULL
    says unknown and INFO 550, never a "try again later" 4xx that a box would retry forever."""
    f = ftpd.ftp()
    stor(f, "a.ts", b"abc")
    for path in ("a.ts/x", "a.ts/x/y", "n" * 300, "d/" + "n" * 300):
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            f.sendcmd(f"SIZE {path}")
        assert f.sendcmd(f"SITE KEY NULL {path}") == "230 0x00"
        with pytest.raises(ftplib.error_perm, match=r"^550 KEY: "):
            f.sendcmd(f"SITE KEY INFO {path}")
    # an upload there is refused as a bad name, not as a transient local error
    with pytest.raises(ftplib.error_perm, match=r"^553"):
        stor(f, "a.ts/x", b"abc")
    assert "KEY failed" not in ftpd.log()


def test_before_login_every_form_is_530(ftpd):
    replies = raw_dialogue(
        ftpd.port,
        [b"SITE KEY NULL\r\n", b"SITE KEY NULL a.ts\r\n", b"SITE KEY 0x12345678\r\n", b"SITE KEY INFO a.ts\r\n"],
    )
    for r in replies:
        assert r.startswith(b"530 "), replies
    # after USER but before PASS too
    s, f = raw_control("127.0.0.1", ftpd.port)
    s.sendall(b"USER alice\r\n")
    assert f.readline().startswith(b"331")
    s.sendall(b"SITE KEY NULL\r\n")
    assert f.readline().startswith(b"530 ")
    s.close()
    g = ftplib.FTP()
    g.connect("127.0.0.1", ftpd.port, timeout=10)
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        g.sendcmd("SITE KEY NULL")
    g.close()


def test_query_reply_line_carries_nothing_after_the_value(ftpd):
    data = pattern(4096, seed=15)
    f = ftpd.ftp()
    f.sendcmd(f"SITE KEY {key(crc32(data))}")
    stor(f, "raw.ts", data)
    f.sendcmd("SITE KEY 0x0")
    stor(f, "zero.ts", b"")
    stor(f, "plain.ts", b"plain")
    replies = raw_dialogue(
        ftpd.port,
        [
            b"SITE KEY NULL raw.ts\r\n",
            b"SITE KEY NULL /raw.ts\r\n",
            b"SITE KEY NULL\r\n",  # current file = raw.ts
            b"SITE KEY NULL zero.ts\r\n",
            b"SITE KEY NULL plain.ts\r\n",
            b"SITE KEY NULL never.ts\r\n",
        ],
        login=("alice", "alice-pw"),
    )
    want = key(crc32(data)).encode()
    assert replies == [
        b"230 " + want + b"\r\n",
        b"230 " + want + b"\r\n",
        b"230 " + want + b"\r\n",
        b"230 0x00000000\r\n",
        b"230 0x00\r\n",
        b"230 0x00\r\n",
    ]
    for r in replies:
        assert re.fullmatch(rb"230 0x([0-9A-F]{8}|00)\r\n", r)


# -- INFO --------------------------------------------------------------------------------------


def test_info_is_a_well_formed_multiline_reply(ftpd):
    data = pattern(300_000, seed=16)
    f = ftpd.ftp()
    f.sendcmd(f"SITE KEY {key(crc32(data))}")
    before = time.time()
    stor(f, "m.ts", data)
    raw = raw_dialogue(ftpd.port, [b"SITE KEY INFO m.ts\r\n"], login=("alice", "alice-pw"))
    assert raw == [b"213-KEY INFO /m.ts\r\n"]
    lines = f.sendcmd("SITE KEY INFO m.ts").splitlines()
    assert lines[0] == "213-KEY INFO /m.ts"
    assert lines[-1] == "213 End"
    body = lines[1:-1]
    assert [line.split("=")[0] for line in body] == [" declared", " size", " received-crc", " state", " updated"]
    i = info(f, "m.ts")
    assert i["declared"] == key(crc32(data))
    assert i["size"] == str(len(data))
    assert i["received-crc"] == key(crc32(data))
    assert i["state"] == "verified"
    updated = datetime.fromisoformat(i["updated"].replace("Z", "+00:00"))
    assert updated.tzinfo is not None
    assert before - 2 <= updated.timestamp() <= time.time() + 2
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", i["updated"])


def test_info_after_an_interrupted_upload_proves_the_prefix(ftpd_factory):
    srv = ftpd_factory(upload_buffer_kib=64, upload_buffer_max_kib=64)
    data = pattern(3 << 20, seed=17)
    cut = 1_234_567
    f = srv.ftp()
    conn = start_upload(f, "part.ts", crc32(data))
    conn.sendall(data[:cut])
    g = srv.ftp()
    # while the upload runs, INFO shows the live progress
    deadline = time.time() + 10
    while int(info(g, "part.ts")["size"]) < 1 << 20 and time.time() < deadline:
        time.sleep(0.05)
    live = info(g, "part.ts")
    assert live["state"] == "partial"
    assert live["received-crc"] == key(crc32(data[: int(live["size"])]))
    rst_close(conn)
    rst_close(f.sock)

    size = wait_for_settled_size(g, "part.ts")
    i = info(g, "part.ts")
    on_disk = srv.file("alice", "part.ts").read_bytes()
    assert 1 << 20 <= size <= cut
    assert int(i["size"]) == size == len(on_disk)
    assert i["received-crc"] == key(crc32(on_disk))
    # the client's own first `size` bytes have that CRC: it may resume
    assert i["received-crc"] == key(crc32(data[:size]))
    assert i["declared"] == key(crc32(data))
    assert i["state"] == "partial"
    # a different file of the same length does not pass the prefix check
    assert i["received-crc"] != key(crc32(pattern(3 << 20, seed=18)[:size]))
