"""stb-upload end to end: the real client against a real ftpd, directly or through the
fault-injecting relay (tests/relay.py) that cuts data connections and forwards PASV."""

import ftplib
import io
import json
import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from helpers import STB_UPLOAD, USERS, crc32, data_of, free_port, info, key, stb_upload
from relay import Relay


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def leave_partial(ftpd, name: str, declared: int | None, data: bytes, user: str = "alice") -> None:
    """Uploads `data` under `name` with ftplib, declaring `declared` first (None: no KEY), and
    lets the transfer end however the server sees fit (451 when the bytes do not match)."""
    f = ftpd.ftp(user)
    if declared is not None:
        assert f.sendcmd(f"SITE KEY {key(declared)}").startswith("230 ")
    try:
        f.storbinary(f"STOR {name}", io.BytesIO(data))
    except ftplib.error_temp as e:
        assert str(e).startswith("451"), e
    f.quit()


def assert_identical(ftpd, name: str, data: bytes, context: object = "") -> None:
    on_disk = ftpd.file("alice", name).read_bytes()
    if on_disk != data:
        first = next((i for i, (a, b) in enumerate(zip(on_disk, data)) if a != b), min(len(on_disk), len(data)))
        pytest.fail(
            f"{name}: server file ({len(on_disk)} bytes) differs from the source ({len(data)} bytes) "
            f"from offset {first}; {context}"
        )


# -- plain uploads ------------------------------------------------------------------------


def test_fresh_upload_is_verified_and_identical(ftpd, tmp_path):
    data = data_of(3 * 1024 * 1024 + 12345, seed=1)
    local = write(tmp_path / "rec.ts", data)
    run = stb_upload(ftpd.port, "rec.ts", local)
    assert run.code == 0, run
    r = run.result
    assert r["decision"] == "fresh" and r["reason"] is None, r
    assert r["verified"] is True and r["attempts"] == 1, r
    assert r["resumed_from"] == 0 and r["bytes_sent"] == len(data) == r["bytes_sent_total"] == r["size"], r
    assert r["crc"] == key(crc32(data)) and r["remote_path"] == "rec.ts" and r["error"] is None, r
    assert_identical(ftpd, "rec.ts", data)
    f = ftpd.ftp()
    i = info(f, "rec.ts")
    f.quit()
    assert i["state"] == "verified", i
    assert i["declared"] == key(crc32(data)) and i["received-crc"] == key(crc32(data)), i
    assert int(i["size"]) == len(data), i

    # Again: the server holds the verified file, nothing to send.
    again = stb_upload(ftpd.port, "rec.ts", local)
    assert again.code == 0, again
    assert again.result["decision"] == "complete" and again.result["bytes_sent"] == 0, again
    assert again.result["resumed_from"] == len(data) and again.result["verified"] is True, again
    assert_identical(ftpd, "rec.ts", data)


def test_empty_file(ftpd, tmp_path):
    local = write(tmp_path / "empty.ts", b"")
    run = stb_upload(ftpd.port, "empty.ts", local)
    assert run.code == 0, run
    assert run.result["decision"] == "fresh" and run.result["size"] == 0 and run.result["bytes_sent"] == 0, run
    assert run.result["crc"] == "0x00000000", run
    assert ftpd.file("alice", "empty.ts").exists()
    assert_identical(ftpd, "empty.ts", b"")
    f = ftpd.ftp()
    i = info(f, "empty.ts")
    f.quit()
    assert i["size"] == "0" and i["state"] in ("verified", "complete"), i

    # CRC 0 reads back as "unknown": the client uploads again rather than trust it.
    again = stb_upload(ftpd.port, "empty.ts", local)
    assert again.code == 0, again
    assert again.result["decision"] == "reupload" and again.result["reason"] == "local-crc-zero", again
    assert_identical(ftpd, "empty.ts", b"")


def test_name_with_spaces(ftpd, tmp_path):
    data = data_of(200_000, seed=2)
    local = write(tmp_path / "local name.ts", data)
    run = stb_upload(ftpd.port, "my%20recording%2001.ts", local)
    assert run.code == 0, run
    assert run.result["remote_path"] == "my recording 01.ts", run
    assert run.result["decision"] == "fresh" and run.result["verified"] is True, run
    assert_identical(ftpd, "my recording 01.ts", data)
    f = ftpd.ftp()
    assert info(f, "my recording 01.ts")["state"] == "verified"
    f.quit()

    # A URL path ending in / takes the local file's name, spaces included.
    run = stb_upload(ftpd.port, "", local)
    assert run.code == 0, run
    assert run.result["remote_path"] == "local name.ts", run
    assert_identical(ftpd, "local name.ts", data)


# -- cuts through the relay ---------------------------------------------------------------


def random_size(rnd: random.Random) -> int:
    roll = rnd.random()
    if roll < 0.1:
        return rnd.randrange(8 << 20, (64 << 20) + 1)
    if roll < 0.35:
        return rnd.randrange(64 << 10, 4 << 20)
    return rnd.randrange(0, 64 << 10)


def random_cut(rnd: random.Random, size: int, buffer: int) -> int:
    roll = rnd.random()
    if roll < 0.08:
        return 0
    if roll < 0.16:
        return size
    if roll < 0.3 and size > buffer:
        # On a buffer boundary, or one byte either side.
        return max(0, min(size, rnd.randrange(1, size // buffer + 1) * buffer + rnd.choice((-1, 0, 1))))
    return rnd.randrange(0, size + 1)


def test_randomised_cuts_resume_to_identical_files(ftpd_factory, tmp_path):
    seed = int(os.environ.get("STB_CUT_SEED", random.SystemRandom().randrange(1 << 32)))
    print(f"randomised cuts: seed {seed} (rerun with STB_CUT_SEED={seed})")
    rnd = random.Random(seed)
    ftpd = ftpd_factory(durability="none")
    cases = []
    # Always the edges: the empty file, one byte, and the largest file.
    for i in range(50):
        size = {0: 0, 1: 1, 2: 64 << 20}.get(i) or random_size(rnd)
        buffer_kib = rnd.choice((1, 4, 64, 128, 1024))
        cut = random_cut(rnd, size, buffer_kib * 1024)
        cases.append((i, size, cut, rnd.choice(("rst", "fin")), buffer_kib, rnd.randrange(1 << 30)))
    started = time.monotonic()
    for i, size, cut, mode, buffer_kib, data_seed in cases:
        data = data_of(size, data_seed)
        name = f"cut-{i:02d}.ts"
        local = write(tmp_path / name, data)
        context = f"seed {seed}, case {i}: size {size}, cut at {cut} ({mode}), buffer {buffer_kib} KiB"
        t0 = time.monotonic()
        with Relay(ftpd.port, cut_after=cut, cut_mode=mode, cut_connections=1) as relay:
            run = stb_upload(
                relay.port, name, local, "--retries", "5", "--retry-delay-ms", "50", "--buffer-kib", str(buffer_kib)
            )
            context += f"\n{run}\nrelay:\n" + "\n".join(relay.log)
            data_conns = list(relay.data)
        r = run.result
        assert run.code == 0, context
        assert r["verified"] is True and r["size"] == size and r["crc"] == key(crc32(data)), context
        assert_identical(ftpd, name, data, context)
        assert data_conns and data_conns[0].cut, context
        if cut < size:
            # The server cannot hold the whole file after the first attempt.
            assert r["attempts"] >= 2, context
        if r["attempts"] >= 2:
            # The last attempt resent at most what the cut kept from the server, plus one buffer.
            assert r["bytes_sent"] <= size - cut + buffer_kib * 1024, context
        assert r["bytes_sent"] == size - r["resumed_from"], context
        if mode == "fin" and cut < size:
            # A clean end of stream after `cut` bytes: the server keeps exactly those bytes
            # (the 451 of the failed verification does not lose them) and the client resumes there.
            assert r["decision"] in ("resume", "fresh") and r["resumed_from"] == cut, context
        assert r["bytes_sent_total"] >= size, context
        os.unlink(local)
        ftpd.file("alice", name).unlink()
        print(f"case {i}: size {size} cut {cut} {mode} buf {buffer_kib}: {r['decision']} from {r['resumed_from']}, attempts {r['attempts']}, {time.monotonic() - t0:.2f}s")
    elapsed = time.monotonic() - started
    print(f"50 cuts in {elapsed:.1f} s, {sum(c[1] for c in cases) / 2**20:.1f} MiB of files")


def test_partial_of_another_file_is_replaced_not_extended(ftpd, tmp_path):
    data = data_of(2_000_000, seed=3)
    other = data_of(3_000_000, seed=4)
    # Another recording under the same name: its own KEY, only its first 700 000 bytes.
    leave_partial(ftpd, "rec.ts", crc32(other), other[:700_000])
    f = ftpd.ftp()
    before = info(f, "rec.ts")
    f.quit()
    assert before["declared"] == key(crc32(other)) and before["size"] == "700000", before
    local = write(tmp_path / "rec.ts", data)
    run = stb_upload(ftpd.port, "rec.ts", local)
    assert run.code == 0, run
    assert run.result["decision"] == "reupload" and run.result["reason"] == "key-differs", run
    assert run.result["resumed_from"] == 0 and run.result["bytes_sent"] == len(data), run
    assert run.result["verified"] is True, run
    assert_identical(ftpd, "rec.ts", data)


def test_partial_without_key_is_replaced(ftpd, tmp_path):
    """A same-named file some plain FTP client left, longer than the local file."""
    data = data_of(500_000, seed=5)
    leave_partial(ftpd, "rec.ts", None, data + b"tail of something else")
    local = write(tmp_path / "rec.ts", data)
    run = stb_upload(ftpd.port, "rec.ts", local)
    assert run.code == 0, run
    assert run.result["decision"] == "reupload" and run.result["reason"] == "key-unknown", run
    assert_identical(ftpd, "rec.ts", data)


def test_partial_damaged_through_ftp_is_replaced(ftpd, tmp_path):
    """The right prefix under the right KEY, then bytes of it rewritten by a plain FTP resume
    (REST below the size + STOR, no KEY): the declared KEY still matches, the prefix proof
    does not."""
    data = data_of(1_500_000, seed=6)
    prefix = 900_000
    leave_partial(ftpd, "rec.ts", crc32(data), data[:prefix])
    damaged = bytearray(data[:prefix])
    damaged[400_000:400_100] = bytes(b ^ 0xFF for b in damaged[400_000:400_100])
    f = ftpd.ftp()
    f.voidcmd("TYPE I")
    try:
        f.storbinary("STOR rec.ts", io.BytesIO(bytes(damaged[400_000:])), rest=400_000)
    except ftplib.error_temp as e:
        assert str(e).startswith("451"), e
    i = info(f, "rec.ts")
    f.quit()
    assert ftpd.file("alice", "rec.ts").read_bytes() == bytes(damaged)
    assert i["declared"] == key(crc32(data)) and int(i["size"]) == prefix, i
    assert i["received-crc"] == key(crc32(bytes(damaged))), i

    local = write(tmp_path / "rec.ts", data)
    run = stb_upload(ftpd.port, "rec.ts", local)
    assert run.code == 0, run
    assert run.result["decision"] == "reupload" and run.result["reason"] == "prefix-mismatch", run
    assert run.result["verified"] is True, run
    assert_identical(ftpd, "rec.ts", data)


def test_partial_damaged_on_disk_is_not_resumed(ftpd, tmp_path):
    """The right prefix under the right KEY, then bytes of it changed on the server's disk
    behind its back, the size kept: resuming would glue the rest onto damaged bytes."""
    data = data_of(1_500_000, seed=7)
    prefix = 900_000
    leave_partial(ftpd, "rec.ts", crc32(data), data[:prefix])
    path = ftpd.file("alice", "rec.ts")
    assert path.stat().st_size == prefix
    time.sleep(1.1)  # a later modification time than anything the server wrote
    with open(path, "r+b") as fh:
        fh.seek(300_000)
        fh.write(b"\0" * 100)
    assert path.stat().st_size == prefix

    local = write(tmp_path / "rec.ts", data)
    run = stb_upload(ftpd.port, "rec.ts", local)
    f = ftpd.ftp()
    after = info(f, "rec.ts")
    f.quit()
    assert run.code == 0, run
    assert_identical(ftpd, "rec.ts", data, f"{run}\nKEY INFO afterwards: {after}")
    assert run.result["decision"] == "reupload", run


# -- servers without KEY ------------------------------------------------------------------


def test_bare_key_refused_uploads_from_zero(ftpd_factory, tmp_path):
    """front off: bare KEY is an unknown command (500), so the client treats the server as one
    without KEY."""
    ftpd = ftpd_factory(front="false")
    data = data_of(1_200_000, seed=8)
    local = write(tmp_path / "rec.ts", data)

    fresh = stb_upload(ftpd.port, "fresh.ts", local, "--bare-key", "-v")
    assert fresh.code == 0, fresh
    assert "500" in fresh.stderr, fresh
    assert fresh.result["decision"] == "fresh" and fresh.result["verified"] is False, fresh
    assert_identical(ftpd, "fresh.ts", data)

    # The right prefix, with the right KEY: without KEY the client cannot know, so from zero.
    leave_partial(ftpd, "rec.ts", crc32(data), data[:500_000])
    run = stb_upload(ftpd.port, "rec.ts", local, "--bare-key")
    assert run.code == 0, run
    assert run.result["decision"] == "reupload" and run.result["reason"] == "no-key-support", run
    assert run.result["resumed_from"] == 0 and run.result["bytes_sent"] == len(data), run
    assert run.result["verified"] is False, run
    assert_identical(ftpd, "rec.ts", data)


def test_bare_key_refused_with_trust_rest_resumes_by_size(ftpd_factory, tmp_path):
    ftpd = ftpd_factory(front="false")
    data = data_of(1_200_000, seed=9)
    leave_partial(ftpd, "rec.ts", crc32(data), data[:500_000])
    local = write(tmp_path / "rec.ts", data)
    run = stb_upload(ftpd.port, "rec.ts", local, "--bare-key", "--trust-rest")
    assert run.code == 0, run
    assert run.result["decision"] == "resume", run
    assert run.result["resumed_from"] == 500_000 and run.result["bytes_sent"] == len(data) - 500_000, run
    assert_identical(ftpd, "rec.ts", data)
    f = ftpd.ftp()
    # The server still verified the whole file against the KEY the first attempt declared.
    assert info(f, "rec.ts")["state"] == "verified"
    f.quit()


# -- exit codes ---------------------------------------------------------------------------


def test_exit_code_login_refused(ftpd, tmp_path):
    local = write(tmp_path / "rec.ts", b"x" * 1000)
    run = stb_upload(ftpd.port, "rec.ts", local, "--retries", "3", "--retry-delay-ms", "10", password="wrong")
    assert run.code == 3, run
    assert run.result["attempts"] == 1 and "login refused" in run.result["error"], run
    assert not ftpd.file("alice", "rec.ts").exists()


def test_exit_code_server_down(tmp_path):
    local = write(tmp_path / "rec.ts", b"x" * 1000)
    port = free_port()
    run = stb_upload(port, "rec.ts", local, "--retries", "1", "--retry-delay-ms", "10")
    assert run.code == 4, run
    assert run.result["attempts"] == 2 and run.result["decision"] is None, run
    assert "connect" in run.result["error"], run


@pytest.mark.parametrize(
    "url",
    [
        "http://alice@127.0.0.1:21/rec.ts",
        "ftp://alice:secret@127.0.0.1:21/rec.ts",
        "ftp://alice@127.0.0.1:notaport/rec.ts",
        "ftp://127.0.0.1:21/rec.ts",
    ],
)
def test_exit_code_bad_url(tmp_path, url):
    local = write(tmp_path / "rec.ts", b"x")
    proc = subprocess.run(
        [str(STB_UPLOAD), "--json", url, str(local)],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, STB_PASSWORD="x"),
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert json.loads(proc.stdout)["exit_code"] == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_exit_code_missing_local_file(ftpd, tmp_path):
    run = stb_upload(ftpd.port, "rec.ts", tmp_path / "nope.ts")
    assert run.code == 2, run
    assert "nope.ts" in run.result["error"], run
    assert not ftpd.file("alice", "rec.ts").exists()


# -- a crashing server --------------------------------------------------------------------


def test_server_killed_mid_upload_then_restarted(ftpd, tmp_path):
    data = data_of(64 << 20, seed=10)
    local = write(tmp_path / "rec.ts", data)
    with Relay(ftpd.port, rate=24 << 20) as relay:
        proc = subprocess.Popen(
            [
                str(STB_UPLOAD),
                "--json",
                "--password-stdin",
                "--retries",
                "8",
                "--retry-delay-ms",
                "200",
                "--timeout",
                "20",
                f"ftp://alice@127.0.0.1:{relay.port}/rec.ts",
                str(local),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        proc.stdin.write(USERS["alice"] + "\n")
        proc.stdin.close()
        proc.stdin = None
        deadline = time.time() + 30
        while not (relay.data and relay.data[0].up >= 16 << 20):
            assert time.time() < deadline and proc.poll() is None, relay.log
            time.sleep(0.01)
        ftpd.kill9()
        killed_at = relay.data[0].up
        time.sleep(0.3)
        ftpd.start()
        out, err = proc.communicate(timeout=120)
        log = "\n".join(relay.log)
    result = json.loads(out)
    print(f"killed after {killed_at} bytes had passed; resumed from {result.get('resumed_from')}")
    context = f"exit {proc.returncode}, {result}\nstderr:\n{err}\nrelay:\n{log}"
    assert proc.returncode == 0, context
    assert result["attempts"] >= 2 and result["verified"] is True, context
    # The record and the bytes of the running upload survived the crash: resumed, not redone.
    assert result["decision"] == "resume" and 0 < result["resumed_from"] <= killed_at, context
    assert_identical(ftpd, "rec.ts", data, context)
    f = ftpd.ftp()
    assert info(f, "rec.ts")["state"] == "verified"
    f.quit()
