"""Ordinary clients (curl, lftp, Python's ftplib) against ftpd, with and without KEY."""

import ftplib
import hashlib
import io
import re
import subprocess

import pytest

from helpers import USERS, crc32, info, key, kill_once_stored, pattern, retr, wait_for_settled_size


def curl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["curl", "-sS", "--connect-timeout", "10", "--max-time", str(timeout), *args],
        capture_output=True,
        text=True,
        timeout=timeout + 10,
    )


def lftp(srv, commands: str, cwd, user: str = "alice", timeout: float = 60) -> subprocess.CompletedProcess:
    settings = "set ftp:passive-mode on; set net:max-retries 1; set net:timeout 10; set cmd:fail-exit yes; "
    return subprocess.run(
        ["lftp", "-u", f"{user},{USERS[user]}", "-p", str(srv.port), "127.0.0.1", "-e", settings + commands + "; bye"],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def key_null(srv, path: str) -> str:
    f = srv.ftp()
    try:
        return f.sendcmd(f"SITE KEY NULL {path}")
    finally:
        f.close()


# -- curl --------------------------------------------------------------------------------------


def test_curl_upload_with_key_query_and_download(ftpd, tmp_path):
    data = pattern(2_500_000, seed=61)
    src = tmp_path / "rec.ts"
    src.write_bytes(data)
    r = curl("-Q", f"SITE KEY {key(crc32(data))}", "-T", str(src), ftpd.url("alice", ""))
    assert r.returncode == 0, r.stderr
    assert ftpd.file("alice", "rec.ts").read_bytes() == data
    # the query's reply line, as curl -v shows it
    r = curl("-v", "-Q", "SITE KEY NULL rec.ts", "--list-only", ftpd.url("alice", ""))
    assert r.returncode == 0, r.stderr
    assert f"< 230 {key(crc32(data))}\r\n" in r.stderr.replace("\r\n", "\n").replace("\n", "\r\n")
    assert r.stdout.split() == ["rec.ts"]
    r = curl("-v", "-Q", "SITE KEY INFO rec.ts", "--list-only", ftpd.url("alice", ""))
    assert "< 213-KEY INFO /rec.ts" in r.stderr and "state=verified" in r.stderr, r.stderr
    out = tmp_path / "back.ts"
    r = curl("-o", str(out), ftpd.url("alice", "rec.ts"))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data


def test_curl_wrong_key_fails_the_upload(ftpd, tmp_path):
    data = pattern(500_000, seed=62)
    src = tmp_path / "rec.ts"
    src.write_bytes(data)
    r = curl("-Q", f"SITE KEY {key(crc32(data) ^ 1)}", "-T", str(src), ftpd.url("alice", ""))
    assert r.returncode != 0
    assert ftpd.file("alice", "rec.ts").read_bytes() == data
    assert info(ftpd.ftp(), "rec.ts")["state"] == "mismatch"


def test_curl_resume_after_a_prefix_upload_uses_size_and_appe(ftpd, tmp_path):
    data = pattern(3_000_000, seed=63)
    part, full = tmp_path / "part.ts", tmp_path / "rec.ts"
    part.write_bytes(data[:1_111_111])
    full.write_bytes(data)
    k = key(crc32(data))
    r = curl("-Q", f"SITE KEY {k}", "-T", str(part), ftpd.url("alice", "rec.ts"))
    assert r.returncode != 0  # declared the whole file, sent a prefix: not acknowledged
    assert ftpd.file("alice", "rec.ts").stat().st_size == 1_111_111
    r = curl("-v", "-Q", f"SITE KEY {k}", "-C", "-", "-T", str(full), ftpd.url("alice", "rec.ts"))
    assert r.returncode == 0, r.stderr
    assert "> SIZE rec.ts" in r.stderr and "> APPE rec.ts" in r.stderr, r.stderr
    assert ftpd.file("alice", "rec.ts").read_bytes() == data
    assert key_null(ftpd, "rec.ts") == f"230 {k}"
    assert info(ftpd.ftp(), "rec.ts")["state"] == "verified"


def test_curl_resume_without_key_after_the_client_was_killed(ftpd, tmp_path):
    data = pattern(4_000_000, seed=64)
    src = tmp_path / "rec.ts"
    src.write_bytes(data)
    p = subprocess.Popen(
        ["curl", "-sS", "--limit-rate", "1M", "-T", str(src), ftpd.url("alice", "rec.ts")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    dest = ftpd.file("alice", "rec.ts")
    kill_once_stored(p, dest, 1_000_000, timeout=15)
    f = ftpd.ftp()
    size = wait_for_settled_size(f, "rec.ts")
    f.close()
    assert 0 < size < len(data)
    r = curl("-C", "-", "-T", str(src), ftpd.url("alice", "rec.ts"))
    assert r.returncode == 0, r.stderr
    assert dest.read_bytes() == data
    i = info(ftpd.ftp(), "rec.ts")
    assert (i["state"], i["received-crc"]) == ("complete", key(crc32(data)))


def test_curl_resume_with_a_different_key_is_refused(ftpd, tmp_path):
    old = pattern(1_000_000, seed=65)
    new = pattern(2_000_000, seed=66)
    src_old, src_new = tmp_path / "old.ts", tmp_path / "new.ts"
    src_old.write_bytes(old[:400_000])
    src_new.write_bytes(new)
    curl("-Q", f"SITE KEY {key(crc32(old))}", "-T", str(src_old), ftpd.url("alice", "rec.ts"))
    assert ftpd.file("alice", "rec.ts").read_bytes() == old[:400_000]
    r = curl("-Q", f"SITE KEY {key(crc32(new))}", "-C", "-", "-T", str(src_new), ftpd.url("alice", "rec.ts"))
    assert r.returncode != 0
    assert ftpd.file("alice", "rec.ts").read_bytes() == old[:400_000]
    assert key_null(ftpd, "rec.ts") == f"230 {key(crc32(old))}"


def test_curl_list_only_and_quote(ftpd, tmp_path):
    for name in ("a.ts", "b c.ts"):
        (tmp_path / name).write_bytes(name.encode())
        assert curl("-T", str(tmp_path / name), ftpd.url("alice", name.replace(" ", "%20"))).returncode == 0
    r = curl("--list-only", ftpd.url("alice", ""))
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["a.ts", "b c.ts"]
    r = curl("-Q", "SITE KEY zz", "--list-only", ftpd.url("alice", ""))
    assert r.returncode != 0  # a 5xx to a -Q command fails the transfer
    r = curl("-Q", "DELE a.ts", "--list-only", ftpd.url("alice", ""))
    assert r.returncode == 0 and r.stdout.splitlines() == ["b c.ts"]


# -- lftp --------------------------------------------------------------------------------------


def test_lftp_put_resume_get_ls_mv_rm_and_quote(ftpd, tmp_path):
    data = pattern(3_000_000, seed=67)
    k = key(crc32(data))
    (tmp_path / "part.ts").write_bytes(data[:1_234_567])
    (tmp_path / "rec.ts").write_bytes(data)
    r = lftp(
        ftpd,
        f"put part.ts -o rec.ts; quote SITE KEY {k}; put -c rec.ts; get rec.ts -o back.ts; ls; "
        "quote SITE KEY NULL rec.ts; mv rec.ts moved.ts; quote SITE KEY NULL moved.ts; "
        "quote SITE KEY INFO moved.ts; rm moved.ts; quote SITE KEY NULL moved.ts",
        tmp_path,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "back.ts").read_bytes() == data
    out = r.stdout.splitlines()
    assert any(re.search(r"\s3000000\s.*\brec\.ts$", line) for line in out), out
    # REST + STOR onto an undeclared prefix with this session's KEY: verified
    assert out.count(f"230 {k}") == 2, out
    assert "state=verified" in [line.strip() for line in out], out
    assert out[-1] == "230 0x00", out  # after rm
    assert not ftpd.file("alice", "moved.ts").exists()


def test_lftp_put_continue_after_the_client_was_killed(ftpd, tmp_path):
    data = pattern(4_000_000, seed=68)
    k = key(crc32(data))
    (tmp_path / "rec.ts").write_bytes(data)
    settings = "set ftp:passive-mode on; set net:limit-rate 1000000; "
    p = subprocess.Popen(
        ["lftp", "-u", "alice,alice-pw", "-p", str(ftpd.port), "127.0.0.1", "-e", settings + f"quote SITE KEY {k}; put rec.ts; bye"],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    dest = ftpd.file("alice", "rec.ts")
    kill_once_stored(p, dest, 1_000_000, timeout=15)
    f = ftpd.ftp()
    size = wait_for_settled_size(f, "rec.ts")
    assert 0 < size < len(data)
    assert f.sendcmd("SITE KEY NULL rec.ts") == f"230 {k}"
    i = info(f, "rec.ts")
    assert i["received-crc"] == key(crc32(data[:size]))  # prefix proof before resuming
    f.close()
    r = lftp(ftpd, f"quote SITE KEY {k}; put -c rec.ts", tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert dest.read_bytes() == data
    assert info(ftpd.ftp(), "rec.ts")["state"] == "verified"


def test_lftp_resume_with_a_different_key_is_refused(ftpd, tmp_path):
    old = pattern(1_000_000, seed=69)
    # Little to send after the offset: it fits in the socket buffers, so lftp reads the refusal
    # instead of failing on a closed data connection and retrying in a new session (which would
    # no longer carry this session's KEY).
    new = pattern(302_000, seed=70)
    f = ftpd.ftp()
    f.sendcmd(f"SITE KEY {key(crc32(old))}")
    with pytest.raises(ftplib.error_temp):
        f.storbinary("STOR rec.ts", io.BytesIO(old[:300_000]))
    f.close()
    (tmp_path / "rec.ts").write_bytes(new)
    r = lftp(ftpd, f"quote SITE KEY {key(crc32(new))}; put -c rec.ts", tmp_path)
    assert r.returncode != 0
    # The resume is refused. lftp may then fall back, in the same session, to a plain STOR from
    # 0 (its `rest-stor` fallback), which no longer carries the session's KEY: the old partial's
    # KEY stays declared and that upload ends in mismatch. Either way nothing is glued: the file
    # is the old partial or lftp's whole new file, never old bytes followed by new ones.
    got = crc32(ftpd.file("alice", "rec.ts").read_bytes())
    assert got in (crc32(old[:300_000]), crc32(new)), hex(got)
    assert got != crc32(old[:300_000] + new[300_000:])
    assert key_null(ftpd, "rec.ts") == f"230 {key(crc32(old))}"


# -- Python's ftplib ---------------------------------------------------------------------------


def test_ftplib_directory_and_file_operations(ftpd):
    data = pattern(700_000, seed=71)
    f = ftpd.ftp()
    assert f.sendcmd("MKD dir one").startswith("257")  # libunftp does not quote the name
    assert ftpd.file("alice", "dir one").is_dir()
    f.cwd("dir one")
    assert f.pwd() == "/dir one"
    f.sendcmd(f"SITE KEY {key(crc32(data))}")
    assert f.storbinary("STOR x.ts", io.BytesIO(data)).startswith("226")
    f.storlines("STOR notes.txt", io.BytesIO(b"line one\nline two\n"))
    assert sorted(f.nlst()) == ["notes.txt", "x.ts"]
    listing = []
    f.retrlines("LIST", listing.append)
    assert len(listing) == 2 and any(str(len(data)) in line and line.endswith("x.ts") for line in listing), listing
    assert retr(f, "x.ts") == data
    assert f.size("x.ts") == len(data)
    assert re.fullmatch(r"213 \d{14}", f.sendcmd("MDTM x.ts"))
    f.rename("x.ts", "y.ts")
    assert f.sendcmd("SITE KEY NULL y.ts") == f"230 {key(crc32(data))}"
    f.cwd("/")
    f.rename("dir one", "dir two")
    assert f.nlst("dir two") and sorted(n.split("/")[-1] for n in f.nlst("dir two")) == ["notes.txt", "y.ts"]
    with pytest.raises(ftplib.error_perm):
        f.rmd("dir two")  # not empty
    f.delete("dir two/y.ts")
    f.delete("dir two/notes.txt")
    f.rmd("dir two")
    assert f.nlst() == []
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        f.delete("missing.ts")
    with pytest.raises(ftplib.error_perm):
        f.retrbinary("RETR missing.ts", lambda b: None)
    f.quit()


def test_ftplib_interrupted_download_resumes_with_rest(ftpd):
    data = pattern(2_000_000, seed=72)
    f = ftpd.ftp()
    f.storbinary("STOR d.ts", io.BytesIO(data))
    f.voidcmd("TYPE I")
    conn = f.transfercmd("RETR d.ts")
    first = conn.recv(100_000)
    conn.close()
    f.close()
    g = ftpd.ftp()
    assert first + retr(g, "d.ts", rest=len(first)) == data


def test_site_hash_crc32_and_site_md5_match(ftpd):
    data = pattern(1_000_001, seed=73)
    f = ftpd.ftp()
    f.storbinary("STOR h.ts", io.BytesIO(data))
    reply = f.sendcmd("SITE HASH -a CRC32 h.ts")
    m = re.fullmatch(r"213 CRC32 ([0-9a-fA-F]{1,8}) (\S+)", reply)
    assert m, reply
    assert int(m.group(1), 16) == crc32(data)
    assert m.group(2).endswith("h.ts")
    reply = f.sendcmd("SITE MD5 h.ts")
    assert hashlib.md5(data).hexdigest().lower() in reply.lower(), reply
    # the CRC of SITE HASH and of KEY INFO are the same value
    assert info(f, "h.ts")["received-crc"] == key(int(m.group(1), 16))


def test_site_hash_takes_relative_paths_from_the_working_directory(ftpd):
    inner, outer = pattern(5000, seed=74), pattern(6000, seed=75)
    f = ftpd.ftp()
    f.storbinary("STOR y.ts", io.BytesIO(outer))
    f.mkd("d")
    f.storbinary("STOR d/x.ts", io.BytesIO(inner))
    f.cwd("d")
    for path, data in (("x.ts", inner), ("/d/x.ts", inner), ("../y.ts", outer), ("./../d/x.ts", inner)):
        reply = f.sendcmd(f"SITE HASH -a CRC32 {path}")
        m = re.fullmatch(r"213 CRC32 ([0-9a-f]{8}) .*", reply)
        assert m and int(m.group(1), 16) == crc32(data), (path, reply)
    with pytest.raises(ftplib.error_perm):
        f.sendcmd("SITE HASH -a CRC32 ../../y.ts")  # outside the root
