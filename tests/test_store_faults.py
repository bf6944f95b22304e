"""Faults the server must live through without a restart: a full disk under the uploads and the
checksum store, and a storm of password checks next to sessions that are moving data.

The full-disk test needs a small filesystem of its own: it mounts a tmpfs and a loop-mounted
ext4 image in turn, which takes root; where that is impossible it is skipped and says why.
"""

import ftplib
import os
import shutil
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path

import pytest

from helpers import STB_UPLOAD, KiB, MiB, crc32, info, key, pattern, stb_upload, transfer_reply


# -- a small filesystem -------------------------------------------------------------------


def _mount(kind: str, mnt: Path, image: Path, size_mib: int) -> None:
    """Mounts a `kind` filesystem ("tmpfs" or "ext4", loop-mounted) of `size_mib` at `mnt`;
    raises OSError with the reason when this machine cannot."""
    if kind == "tmpfs":
        cmds = [["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", "tmpfs", str(mnt)]]
    else:
        if not shutil.which("mkfs.ext4"):
            raise OSError("no mkfs.ext4")
        with open(image, "wb") as f:
            f.truncate(size_mib * MiB)
        # -m 0: no blocks reserved for root (ftpd runs as root here, and would use them).
        cmds = [["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], ["mount", "-o", "loop", str(image), str(mnt)]]
    for cmd in cmds:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise OSError(f"{' '.join(cmd[:3])}: {r.stderr.strip() or r.returncode}")


@pytest.fixture(params=["tmpfs", "ext4"])
def small_disk(request, tmp_path):
    """An 8 MiB filesystem for root and state_dir together, unmounted after the server stops
    (request it before `ftpd_factory`, so it is torn down after it)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    try:
        _mount(request.param, mnt, tmp_path / "disk.img", 8)
    except OSError as e:
        pytest.skip(f"this machine cannot mount a small {request.param}: {e}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path, leave: int = 0) -> None:
    """Writes `path` until the filesystem has at most `leave` bytes free (all of it: ENOSPC)."""
    with open(path, "ab", buffering=0) as f:
        while True:
            room = free_bytes(path.parent) - leave
            if room <= 0:
                return
            try:
                f.write(b"\xa5" * min(room, 256 * KiB))
            except OSError:
                return


def assert_consistent(f: ftplib.FTP, path: str, data: bytes) -> dict:
    """KEY INFO never claims bytes the file does not hold: a tracked state has the file's size
    and the CRC of exactly the first `size` bytes of `data`."""
    i = info(f, path)
    size = int(f.sendcmd(f"SIZE {path}").split()[1])
    if i["state"] != "untracked":
        assert int(i["size"]) == size, (path, i, size)
        assert i["received-crc"] == key(crc32(data[:size])), (path, i, size)
    return i


def test_full_disk_answers_452_and_the_same_server_recovers(small_disk, ftpd_factory, tmp_path):
    if not STB_UPLOAD.exists():
        pytest.skip(f"{STB_UPLOAD} not built (cargo build --release -p stb-client)")
    disk = small_disk
    srv = ftpd_factory(root=disk / "ftp", state_dir=disk / "state", upload_buffer_kib=256)
    f = srv.ftp()

    # Written before the fill: a verified recording.
    before = pattern(512 * KiB, seed=1)
    f.sendcmd(f"SITE KEY {key(crc32(before))}")
    assert transfer_reply(f, "STOR before.ts", before).startswith("226")
    info_before = info(f, "before.ts")
    assert info_before["state"] == "verified", info_before

    # Files the box will upload to later, there before the disk fills (their names cost the
    # directory no new blocks then, so the records are what needs room).
    home = disk / "ftp" / "alice"
    names = [f"small-{i:04d}-" + "n" * 180 + ".ts" for i in range(400)]
    for name in names:
        (home / name).touch()

    # Something outside FTP takes the disk (logs, another service) and leaves 1.5 MiB; the
    # box's 4 MiB recording does not fit.
    fill(disk / "filler", leave=1536 * KiB)
    rec = pattern(4 * MiB, seed=2)
    f.sendcmd(f"SITE KEY {key(crc32(rec))}")
    reply = transfer_reply(f, "STOR rec.ts", rec)
    assert reply[:3] in ("452", "552"), reply
    assert_consistent(f, "rec.ts", rec)

    # Now nothing is left. Small uploads go on arriving; every one that fails must say why
    # (452/552), never "local error" (451), including those the checksum store refuses.
    fill(disk / "filler2")
    replies = []
    for name in names:
        r = transfer_reply(f, f"STOR {name}", b"")
        replies.append(r)
        if sum(not x.startswith("226") for x in replies) >= 12:
            break
    failed = [r for r in replies if not r.startswith("226")]
    assert failed, "the full disk never reached the checksum store"
    assert all(r[:3] in ("452", "552") for r in failed), failed
    # Queries answer what they did, or "try again later" (451) while the store is closed.
    try:
        assert info(f, "before.ts") == info_before
        assert_consistent(f, "rec.ts", rec)
    except ftplib.error_temp as e:
        assert str(e).startswith("451"), e

    # Space comes back; the same process serves again without a restart.
    os.unlink(disk / "filler2")
    os.unlink(disk / "filler")
    after = pattern(256 * KiB, seed=3)
    deadline = time.time() + 20
    while True:
        f.sendcmd(f"SITE KEY {key(crc32(after))}")
        reply = transfer_reply(f, "STOR after.ts", after)
        if reply.startswith("226") or time.time() > deadline:
            break
        assert reply[:3] in ("452", "552"), reply  # until the store is reopened (backoff)
        time.sleep(0.3)
    assert reply.startswith("226"), reply
    assert info(f, "after.ts")["state"] == "verified"
    assert info(f, "before.ts") == info_before
    assert_consistent(f, "rec.ts", rec)
    f.quit()

    # The box comes back for its recording and finishes it.
    local = tmp_path / "rec.ts"
    local.write_bytes(rec)
    result = stb_upload(srv.port, "rec.ts", local, timeout=120).result
    assert result["ok"] and result["verified"] is True, result
    assert result["decision"] == "resume" and result["resumed_from"] > 0, result
    assert (home / "rec.ts").read_bytes() == rec
    f = srv.ftp()
    assert info(f, "rec.ts")["state"] == "verified"
    assert info(f, "before.ts") == info_before
    f.quit()
    assert srv.proc.poll() is None, "no restart"


# -- password checks next to moving sessions ----------------------------------------------


def noop_times(f: ftplib.FTP, count: int, gap: float = 0.01, budget: float = 10) -> list[float]:
    """Round trips of up to `count` NOOPs, for at most about `budget` seconds."""
    times = []
    deadline = time.perf_counter() + budget
    while len(times) < count and time.perf_counter() < deadline:
        t = time.perf_counter()
        f.voidcmd("NOOP")
        times.append(time.perf_counter() - t)
        time.sleep(gap)
    return times


class WrongPasswords(threading.Thread):
    """One connection after another trying wrong passwords for `user` until stopped."""

    def __init__(self, host: str, port: int, user: str, stop: threading.Event):
        super().__init__(daemon=True)
        self.host, self.port, self.user, self.stop = host, port, user, stop
        self.sent = self.answered = 0
        self.sock: socket.socket | None = None

    def halt(self) -> None:
        """Stops, and cuts the connection that waits for its answer."""
        self.stop.set()
        sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with socket.create_connection((self.host, self.port), timeout=10) as s:
                    self.sock = s
                    rf = s.makefile("rb")
                    rf.readline()
                    while not self.stop.is_set():
                        s.sendall(f"USER {self.user}\r\n".encode())
                        if not rf.readline().startswith(b"331"):
                            break
                        s.sendall(b"PASS wrong\r\n")
                        self.sent += 1
                        line = rf.readline()
                        self.answered += 1
                        if not line.startswith(b"530"):
                            break
            except OSError:
                time.sleep(0.05)


def test_password_checks_do_not_stall_other_sessions(ftpd_factory):
    """Wrong passwords from many connections keep the password threads busy; NOOPs and an
    upload on a logged-in session go on at their usual pace."""
    srv = ftpd_factory(failed_logins_max=0, failed_logins_per_address=0, password_threads=1)
    # A password as costly as a real one (ftpd user add's default is 100,000 rounds; more here,
    # so that each check is long next to a NOOP on any machine).
    srv.cli("user", "add", "victim", "--password-stdin", "--iterations", "400000", input="victim-pw\n")
    f = srv.ftp()
    data = pattern(4 * MiB, seed=5)

    def upload_time() -> float:
        t = time.perf_counter()
        assert transfer_reply(f, "STOR moving.ts", data).startswith("226")
        return time.perf_counter() - t

    quiet = noop_times(f, 60)
    quiet_upload = upload_time()

    stop = threading.Event()
    storm = [WrongPasswords(srv.host, srv.port, "victim", stop) for _ in range(40)]
    for t in storm:
        t.start()
    try:
        time.sleep(1.5)
        busy = noop_times(f, 100)
        busy_upload = upload_time()
        sent = sum(t.sent for t in storm)
        answered = sum(t.answered for t in storm)
    finally:
        for t in storm:
            t.halt()
        for t in storm:
            t.join(15)
    f.quit()

    q50, b50 = statistics.median(quiet), statistics.median(busy)
    b90 = sorted(busy)[int(len(busy) * 0.9)]
    summary = (
        f"NOOP median {q50 * 1e3:.1f} ms quiet, {b50 * 1e3:.1f} ms with {len(storm)} connections sending wrong "
        f"passwords ({sent} sent, {answered} answered; "
        f"p90 {b90 * 1e3:.1f} ms, max {max(busy) * 1e3:.1f} ms); 4 MiB upload {quiet_upload * 1e3:.0f} ms "
        f"quiet, {busy_upload * 1e3:.0f} ms during"
    )
    print(summary)
    # Every connection has a check queued or running: the password thread never idles.
    assert sent >= len(storm), "the storm never got going: " + summary
    assert b50 < max(0.02, 4 * q50), summary
    assert b90 < 0.1, summary
    assert busy_upload < max(1.0, 4 * quiet_upload), summary
