"""Nothing acknowledged is lost: with durability "fsync" the data and its record reach stable
storage before 226 is sent; with durability "none" nothing is synced on the way to 226.

The server runs under strace; the order of the system calls in the trace is the evidence.
"""

import io
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import Ftpd
from helpers import FTPD, crc32, key, pattern, wait_listening

SYSCALLS = "fdatasync,fsync,write,writev,pwrite64,sendto,sendmsg"
CALL = re.compile(r"^(\d+)\s+(?:(\w+)\((.*)|<\.\.\. (\w+) resumed>(.*))$")


def strace_usable() -> str | None:
    """Why strace cannot trace a child here, or None when it can."""
    try:
        r = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "true"], capture_output=True, timeout=30)
    except FileNotFoundError:
        return "strace is not installed (tests/run installs it)"
    if r.returncode != 0:
        return "strace cannot trace processes here (ptrace forbidden?): " + r.stderr.decode(errors="replace")
    return None


class TracedFtpd(Ftpd):
    """An ftpd started under `strace -f`; signals go to ftpd itself, not to strace."""

    def __init__(self, base: Path, **settings: str):
        super().__init__(base, **settings)
        self.trace = base / "trace.txt"
        self.pid: int | None = None

    def start(self) -> "TracedFtpd":
        log = open(self.log_path, "ab")
        out = open(self.out_path, "ab")
        cmd = ["strace", "-f", "-qq", "-yy", "-s", "48", "-e", f"trace={SYSCALLS}", "-o", str(self.trace)]
        self.proc = subprocess.Popen([*cmd, str(FTPD), "serve"], env=self.env, stdout=out, stderr=log)
        wait_listening(self.host, self.port, self.proc, "ftpd under strace", timeout=30, log=self.log)
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        assert len(children) == 1, children
        self.pid = int(children[0])
        return self

    def signal(self, sig: int) -> None:
        assert self.pid is not None
        os.kill(self.pid, sig)

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(10)
            raise


def calls(trace: Path) -> list[tuple[int, int, str, str]]:
    """Every traced call as (line where it starts, line where it returns, name, text)."""
    out = []
    pending: dict[str, tuple[int, str, str]] = {}
    for i, line in enumerate(trace.read_text(errors="replace").splitlines()):
        m = CALL.match(line)
        if not m:
            continue
        pid = m.group(1)
        if m.group(2):
            name, text = m.group(2), m.group(3)
            if text.endswith("<unfinished ...>"):
                pending[pid] = (i, name, text)
            else:
                out.append((i, i, name, text))
        else:
            start, name, text = pending.pop(pid, (i, m.group(4), ""))
            out.append((start, i, name, text + m.group(5)))
    return out


def upload_traced(tmp_path: Path, **settings) -> tuple[list, str, str, bytes]:
    reason = strace_usable()
    if reason:
        pytest.skip(reason)
    srv = TracedFtpd(tmp_path / "srv", **settings)
    srv.start()
    try:
        data = pattern(3 << 20, seed=40)
        f = srv.ftp()
        f.sendcmd(f"SITE KEY {key(crc32(data))}")
        reply = f.storbinary("STOR synced.ts", io.BytesIO(data))
        assert reply.startswith("226"), reply
        f.quit()
        assert srv.file("alice", "synced.ts").read_bytes() == data
    finally:
        srv.stop()
    file_tag = f"<{srv.file('alice', 'synced.ts').resolve()}>"
    control_tag = f":{srv.port}->"  # the server's end of a control connection, as strace -yy shows it
    return calls(srv.trace), file_tag, control_tag, data


def the_226(trace_calls: list, control_tag: str) -> tuple[int, int, str, str]:
    """The first write of the 226 reply: libunftp's own (with the front on, the front relays it
    to the client afterwards)."""
    replies = [c for c in trace_calls if c[2] in ("write", "writev", "sendto", "sendmsg") and "<TCP:" in c[3] and '"226 ' in c[3]]
    assert any(control_tag in c[3] for c in replies), replies  # the client got it
    assert 1 <= len(replies) <= 2, replies
    return min(replies)


def test_data_and_record_are_synced_after_the_last_write_and_before_226(tmp_path):
    trace_calls, file_tag, control_tag, data = upload_traced(tmp_path)
    reply = the_226(trace_calls, control_tag)
    writes = [c for c in trace_calls if c[2] in ("write", "pwrite64", "writev") and file_tag in c[3].split(",")[0]]
    assert sum(int(c[3].rsplit("=", 1)[1]) for c in writes) == len(data), writes
    last_write_end = max(c[1] for c in writes)
    assert last_write_end < reply[0], "the file was written after 226 was sent"
    syncs = [c for c in trace_calls if c[2] in ("fdatasync", "fsync")]
    data_syncs = [c for c in syncs if file_tag in c[3] and last_write_end < c[0] and c[1] < reply[0]]
    assert data_syncs, "no fsync/fdatasync of the file between its last write and the 226 reply"
    record_syncs = [c for c in syncs if "records.redb>" in c[3] and last_write_end < c[0] and c[1] < reply[0]]
    assert record_syncs, "the checksum record was not synced between the last data write and the 226 reply"


def test_durability_none_syncs_nothing_before_226(tmp_path):
    trace_calls, file_tag, control_tag, data = upload_traced(tmp_path, durability="none")
    reply = the_226(trace_calls, control_tag)
    writes = [c for c in trace_calls if c[2] in ("write", "pwrite64", "writev") and file_tag in c[3].split(",")[0]]
    assert sum(int(c[3].rsplit("=", 1)[1]) for c in writes) == len(data), writes
    first_write = min(c[0] for c in writes)
    syncs = [c for c in trace_calls if c[2] in ("fdatasync", "fsync") and first_write < c[1] and c[0] < reply[0]]
    assert not syncs, syncs
