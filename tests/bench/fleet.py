#!/usr/bin/env python3
"""A thousand boxes at once: a fleet of set-top boxes uploads to ftpd, vsftpd and pure-ftpd in one
run, then a reconnect storm logs a thousand boxes in within one second; the figures are printed
as markdown tables, one row per server and fleet size.

    python3 tests/bench/fleet.py [--boxes 250,500,1000] [--size-mib 4] [--rate-kib 256]
                                 [--chunk-kib 16] [--spread 3] [--storm N] [--storm-window 1] [--accounts K]
                                 [--throttle on,off] [--servers ftpd,vsftpd,pure-ftpd]
                                 [--passive-ports N] [--cold-logins] [--dir /tmp] [--keep]
    python3 tests/bench/fleet.py --boxes 20 --size-mib 1      # a quick check, about 45 s

Needs root (vsftpd, a PAM service file, homes owned by `ftp`), Python 3.11+, a release build
(cargo build --release -p ftpd), vsftpd (apt-get install vsftpd) and db_load (apt-get install
db-util; without it vsftpd falls back to anonymous uploads). pure-ftpd is taken from PATH, else
installed with apt-get, else, since Debian's pure-ftpd conflicts with vsftpd, unpacked from its
.deb (apt-get download pure-ftpd pure-ftpd-common; dpkg -x) into <tmp>/ftpd-bench-pure-ftpd and
run from there. The output says which.

Fleet, for each size N of --boxes and each server, on a freshly started server: N boxes start
at random offsets within --spread seconds (the same offsets for every server). Each box is one
control connection with an account of its own (--accounts K: K accounts shared round-robin):
connect, USER/PASS, TYPE I, PASV, its data connection, STOR of a file of its own (--size-mib;
a header naming the box, then a shared random block rotated by a box-specific amount), sent at
--rate-kib as a home link would (--chunk-kib at a time, 16 KiB by default, each when the link
would have delivered it: 62 ms apart at 256 KiB/s, below ftpd's 1 s quiet-sender flush), the
226, QUIT. Afterwards every file is checked on disk: size and CRC-32. Before the measured phase
every box logs in once and quits (USER, PASS, 230, QUIT; at most WARM_AT_ONCE at a time), as a
box of a fleet has done before (boxes upload every day; the reconnect after an outage is a
returning box's): ftpd's credential cache then holds every account, so the CPU per GiB is the
data path's. --cold-logins leaves that out: each box's login in the phase is then the first of
its account to that server process, as after ftpd restarts, and a cold PBKDF2 login costs ftpd
about 5.4 CPU-s per GiB of these 4 MiB uploads. The other servers get the same warm-up, which
changes nothing for them. The fleet table's header line says which it was. The client is one asyncio
event loop on raw streams (no threads); a sampler in a process of its own reads the server's
process tree from /proc. The chunk size matters to the forking servers: in 64 KiB bursts every
250 ms pure-ftpd and vsftpd used 0.07-0.15 CPU-s/GiB, in 16 KiB pieces every 62 ms 0.2-2.4
(ftpd about the same either way); 1,000 boxes cost the client 20-25% of a core in 64 KiB
bursts and 35-55% in 16 KiB pieces.

Storm, for each server on a freshly started server: --storm boxes (default: the largest fleet)
connect at random offsets within --storm-window seconds: USER, PASS, the 230, QUIT. ftpd gets
the storm twice: "cold" (no account has logged in to that process before) and "warm" (right
after, the same accounts again: what a credential cache saves).

Printed per server and fleet size: failed uploads (no 226, wrong size or CRC on disk, any
connection error; a failed login counts here too) and failed logins (no 230); peak memory: for
ftpd its RSS (sampled every 0.1 s, and the kernel's VmHWM) and for every server the PSS summed
over its whole process tree (/proc/PID/smaps_rollup), with the number of processes at that
peak; server CPU seconds per GiB stored: every process the server ran during the phase, exited
ones too, from a cgroup the server is put in at its start (cgroup v1 cpuacct, else v2; the
/proc samples of the tree, each process sampled while it lives, where no cgroup can be made:
they miss each process's time after its last sample, its exit among it, which for a forking
server's thousands of sessions undercounts); login latency (connect to 230) p50 and max;
STOR to 226, p50 and max (the nominal send time is size / rate); the client's own CPU. Per storm:
boxes logged in, how many within 2 s, login latency p50 and max, and for ftpd (one process) its
CPU seconds, in all and per login (a forking server's short login sessions mostly end between
two samples, so it gets none). Then the targets at the largest fleet, each "met" or "NOT met":
no failure; ftpd's peak RSS at or below pure-ftpd's PSS; ftpd's CPU per GiB at or below
pure-ftpd's; every box of the (warm) reconnect storm in within 2 s (ftpd's cold storm is printed
beside it, without a verdict: a first login is one PBKDF2 check, about 21 ms of CPU, so 1,000 of
them take at least 10 s on 2 cores). Below that: every failure's step and reason, and per phase
the sampling intervals, the sampler's own CPU and the kernel's (machine-wide) count of
connections dropped from full accept queues.

Accounts are made the way each server's operator would, with the hash each stores:
- ftpd: `ftpd user add` (PBKDF2-HMAC-SHA256, its default 100,000 rounds) into a users file;
  ftpd runs on its defaults except paths, ports, log_level = warn (the other servers log
  nothing either) and the connection caps (max_connections, max_connections_per_address),
  raised to twice the largest number of boxes when the defaults are lower; once with the
  login throttle on (its defaults) and once with failed_logins_max = 0 (--throttle).
- vsftpd: virtual users through PAM (pam_userdb with a Berkeley DB of sha512-crypt hashes),
  each chrooted to its own home, acting as the local user `ftp`; max_clients and max_per_ip
  raised.
- pure-ftpd: virtual users in a puredb made with `pure-pw mkdb` from a passwd file holding
  sha512-crypt hashes. pure-pw's own hashes (argon2id, t=1023, m=8 MiB in Debian's 1.0.50)
  take about 3.6 s of CPU each on a 2-core VM, so a thousand logins would take an hour; a
  crypt hash is what pure-pw itself writes on systems without libsodium. -c and -C are raised;
  pure-ftpd caps its clients at half its passive range, so it gets 2 x clients + 2 ports.
Every box connects from 127.0.0.1: all three servers' per-address caps can be raised.

Passive ports (free ones, outside the kernel's ephemeral range): ftpd gets its shipped range's
size, 101 ports (50000-50100); vsftpd and pure-ftpd get 2 x clients + 2, clients being the
largest fleet or storm: pure-ftpd caps its clients at half its range, and vsftpd binds a port of
its own for each PASV, busy until that transfer ends, and gives up after 9 busy ones (with 101
ports, 589 of 1,000 boxes got `500 OOPS: vsf_sysutil_bind`). --passive-ports N gives every
server at least N.

Limits: the script raises its open-files limit to the hard limit (the servers inherit it); 1,000
boxes need about 2,000 descriptors in the client and, by docs/operations.md's count (five per
session, three more per running upload), 8,000 in ftpd. Every step has a timeout (120 s to log
in, 60 s for any other reply or a stalled send), every phase an overall bound, and every server
is stopped (with its sessions) when its phase ends, also on Ctrl-C.

Caveats: everything shares 2 cores, so the client's CPU (printed) is taken from the servers; on
loopback the sender's system time includes the receiving side's TCP work. A forking server's
session that exits between two samples loses the CPU it spent since the last one (the sampling
interval is printed; it grows when thousands of processes make a sample slow, so that the
sampler never takes more than about a fifth of a core). Server CPU includes password checks.
"""

import argparse
import asyncio
import contextlib
import hashlib
import json
import multiprocessing
import os
import random
import re
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from servers import (  # first: puts tests/ on sys.path
    Ftpd,
    PureFtpd,
    Server,
    Vsftpd,
    VsftpdVirtual,
    proc_table,
    pure_ftpd_binaries,
    ftpd_binary,
    sha512_crypt,
)

from helpers import KiB, MiB, free_port_range  # noqa: E402

HOST = "127.0.0.1"
FTPD_PASSIVE = 101  # ftpd's shipped passive_ports, 50000-50100
LOGIN_TIMEOUT = 120.0  # connect to 230
STEP_TIMEOUT = 60.0  # any other reply; a send that cannot go on
SAMPLE_EVERY = 0.1  # seconds between samples of the server's tree, at the least
WARM_AT_ONCE = 50  # the logins before a fleet phase: in flight at once


# -- accounts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    user: str
    password: str


def make_accounts(n: int) -> list[Account]:
    return [Account(f"box{i:04d}", secrets.token_urlsafe(12)) for i in range(n)]


def ftpd_users_file(path: Path, accounts: list[Account]) -> None:
    """The accounts in an ftpd users file, added as an operator adds them (`ftpd user add`,
    the default PBKDF2 rounds)."""
    env = dict(os.environ, FTPD_USERS_FILE=str(path))
    for a in accounts:
        subprocess.run(
            [str(ftpd_binary()), "user", "add", a.user, "--password-stdin"],
            input=a.password + "\n",
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )


def check_costs(users_file: Path) -> str:
    """What one password check costs on one core, timed here: ftpd's PBKDF2 with the rounds
    its users file holds, and a sha512-crypt hash."""
    iters = json.loads(users_file.read_text())[0]["pbkdf2_iter"]
    t0 = time.process_time()
    hashlib.pbkdf2_hmac("sha256", b"password", b"0123456789abcdef", iters)
    pbkdf2 = time.process_time() - t0
    t0 = time.process_time()
    for _ in range(10):
        sha512_crypt("password")
    crypt = (time.process_time() - t0) / 10
    return (
        f"one password check on one core, timed here: ftpd PBKDF2-HMAC-SHA256 x {iters:,} "
        f"{pbkdf2 * 1e3:.1f} ms; sha512-crypt (5,000 rounds; vsftpd, pure-ftpd) {crypt * 1e3:.1f} ms"
    )


# -- what the boxes send -------------------------------------------------------------------------


class Payload:
    """Every box's file, from one random block: a header naming the box, then the block
    rotated by a box-specific amount. Sent as views of the block, never built whole."""

    def __init__(self, size: int, seed: int = 1):
        self.size = size
        block = random.Random(seed).randbytes(size)
        self.doubled = memoryview(block + block)
        self.crcs: dict[int, int] = {}

    def parts(self, box: int) -> tuple[bytes, memoryview]:
        head = (b"box %06d\n" % box)[: self.size]
        k = (box * 40_961) % self.size
        return head, self.doubled[k : k + self.size - len(head)]

    def pieces(self, box: int, chunk: int):
        head, body = self.parts(box)
        first = max(0, chunk - len(head))
        yield head + bytes(body[:first])
        for off in range(first, len(body), chunk):
            yield body[off : off + chunk]

    def crc(self, box: int) -> int:
        if box not in self.crcs:
            head, body = self.parts(box)
            self.crcs[box] = zlib.crc32(body, zlib.crc32(head))
        return self.crcs[box]


# -- the asyncio client --------------------------------------------------------------------------


class BoxError(Exception):
    def __init__(self, step: str, what: str):
        super().__init__(f"{step}: {what}")
        self.step, self.what = step, what


@dataclass
class Box:
    """One box's run and what became of it."""

    box: int
    user: str
    password: str
    name: str = ""
    login: float | None = None  # connect to 230, seconds
    upload: float | None = None  # STOR to 226
    send: float | None = None  # first byte to last
    got_226: bool = False
    ok: bool = False
    step: str | None = None
    error: str | None = None


def short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


async def reply(reader: asyncio.StreamReader, step: str, expect: set[int], timeout: float) -> tuple[int, str]:
    """The next reply, all its lines; a code outside `expect` raises."""
    lines: list[str] = []
    try:
        async with asyncio.timeout(max(timeout, 0.001)):
            while True:
                raw = await reader.readline()
                if not raw:
                    raise BoxError(step, "connection closed by the server")
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                lines.append(line)
                if line[:3] == lines[0][:3] and line[3:4] != "-":
                    break
    except TimeoutError:
        raise BoxError(step, f"no reply within {timeout:.0f} s") from None
    except (OSError, ValueError) as e:
        raise BoxError(step, f"connection error ({getattr(e, 'strerror', None) or e})") from None
    code = int(lines[0][:3]) if lines[0][:3].isdigit() else 0
    text = " | ".join(lines)
    if code not in expect:
        raise BoxError(step, f"'{short(text)}'")
    return code, text


async def command(reader, writer, line: str, step: str, expect: set[int], timeout: float = STEP_TIMEOUT):
    writer.write(line.encode() + b"\r\n")
    return await reply(reader, step, expect, timeout)


async def connect(host: str, port: int, step: str, timeout: float):
    try:
        async with asyncio.timeout(max(timeout, 0.001)):
            return await asyncio.open_connection(host, port)
    except TimeoutError:
        raise BoxError(step, f"no TCP connection within {timeout:.0f} s") from None
    except OSError as e:
        raise BoxError(step, e.strerror or str(e)) from None


async def login(port: int, user: str, password: str):
    """A control connection up to its 230, within LOGIN_TIMEOUT."""
    deadline = time.monotonic() + LOGIN_TIMEOUT
    reader, writer = await connect(HOST, port, "connect", LOGIN_TIMEOUT)
    try:
        await reply(reader, "greeting", {220}, deadline - time.monotonic())
        code, _ = await command(reader, writer, f"USER {user}", "USER", {230, 331}, deadline - time.monotonic())
        if code == 331:
            await command(reader, writer, f"PASS {password}", "PASS", {230}, deadline - time.monotonic())
    except BaseException:
        writer.close()
        raise
    return reader, writer


async def quit_quietly(reader, writer) -> None:
    try:
        await command(reader, writer, "QUIT", "QUIT", {221}, 5)
    except BoxError:
        pass


def pasv_address(text: str) -> tuple[str, int]:
    m = re.search(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", text)
    if not m:
        raise BoxError("PASV", f"cannot parse '{short(text)}'")
    n = [int(x) for x in m.groups()]
    return ".".join(map(str, n[:4])), n[4] * 256 + n[5]


async def send_paced(writer, pieces, rate: float) -> None:
    """Each piece when a link of `rate` bytes/s would have delivered it."""
    loop = asyncio.get_running_loop()
    start, sent = loop.time(), 0
    for piece in pieces:
        wait = start + (sent + len(piece)) / rate - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        writer.write(piece)
        try:
            async with asyncio.timeout(STEP_TIMEOUT):
                await writer.drain()
        except TimeoutError:
            raise BoxError("data send", f"stalled at byte {sent}") from None
        except OSError as e:
            raise BoxError("data send", f"{e.strerror or e} at byte {sent}") from None
        sent += len(piece)


async def upload_box(b: Box, port: int, stor: str, payload: Payload, rate: float, chunk: int, start_at: float) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, start_at - loop.time()))
    t0 = time.monotonic()
    writer = data = None
    try:
        reader, writer = await login(port, b.user, b.password)
        b.login = time.monotonic() - t0
        await command(reader, writer, "TYPE I", "TYPE I", {200})
        _, text = await command(reader, writer, "PASV", "PASV", {227})
        _, data = await connect(*pasv_address(text), "data connect", STEP_TIMEOUT)
        await command(reader, writer, f"STOR {stor}", "STOR", {125, 150})
        t1 = time.monotonic()
        await send_paced(data, payload.pieces(b.box, chunk), rate)
        b.send = time.monotonic() - t1
        data.close()
        data = None
        await reply(reader, "226", {226}, 2 * STEP_TIMEOUT)
        b.upload, b.got_226 = time.monotonic() - t1, True
        await quit_quietly(reader, writer)
    except BoxError as e:
        b.step, b.error = e.step, e.what
    except Exception as e:  # noqa: BLE001 - a box's failure is a figure, never a crash
        b.step, b.error = "client", repr(e)
    finally:
        for w in (data, writer):
            if w is not None:
                w.close()


async def storm_box(b: Box, port: int, start_at: float) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, start_at - loop.time()))
    t0 = time.monotonic()
    writer = None
    try:
        reader, writer = await login(port, b.user, b.password)
        b.login = time.monotonic() - t0
        b.ok = True
        await quit_quietly(reader, writer)
    except BoxError as e:
        b.step, b.error = e.step, e.what
    except Exception as e:  # noqa: BLE001
        b.step, b.error = "client", repr(e)
    finally:
        if writer is not None:
            writer.close()


async def warm_logins(port: int, boxes: list[Box]) -> list[str]:
    """Before a fleet phase (unless --cold-logins): every box logs in once and quits, WARM_AT_ONCE at a time; returns the
    failures ("user: step: reason")."""
    gate = asyncio.Semaphore(WARM_AT_ONCE)
    failed: list[str] = []

    async def one(b: Box) -> None:
        async with gate:
            writer = None
            try:
                reader, writer = await login(port, b.user, b.password)
                await quit_quietly(reader, writer)
            except BoxError as e:
                failed.append(f"{b.user}: {e.step}: {e.what}")
            except Exception as e:  # noqa: BLE001
                failed.append(f"{b.user}: client: {e!r}")
            finally:
                if writer is not None:
                    writer.close()

    await asyncio.gather(*(one(b) for b in boxes))
    return failed


async def run_all(coros: list, bound: float) -> None:
    """Runs the boxes; any still running after `bound` seconds is cancelled (its Box keeps
    what it got so far and says so)."""
    tasks = [asyncio.create_task(c) for c in coros]
    _, pending = await asyncio.wait(tasks, timeout=bound)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def offsets(n: int, window: float, seed: str) -> list[float]:
    """Start offsets for n boxes within `window` seconds, the same for every server."""
    rng = random.Random(seed)
    return [rng.uniform(0, window) for _ in range(n)]


# -- measuring the server ------------------------------------------------------------------------


def sample_tree(server: Server, conn) -> None:
    """Runs in a process of its own, so that reading /proc for thousands of processes never
    holds the client's event loop, until `conn` says stop; then sends back peaks, CPU seconds
    and the sampling intervals. Every SAMPLE_EVERY seconds it reads each process's CPU time
    and the server's RSS, and its tree's PSS; when thousands of processes make that slow it
    reads CPU times less often (so that their scan takes at most a sixth of a core) and PSS
    less often still (a fifteenth), a forking server's tree being steady while boxes upload."""
    first: dict[int, float] | None = None
    last: dict[int, float] = {}
    peak = {"rss": 0, "pss": 0, "procs": 0, "pss_procs": 0}
    gaps: dict[str, list[float]] = {"cpu": [], "pss": []}
    next_pss = 0.0
    while True:
        t = time.monotonic()
        try:
            table = proc_table()
            cpu = server.tree_cpu(table)
            peak["rss"] = max(peak["rss"], server.rss_kib())
        except (OSError, ValueError):
            break  # the server has gone
        first = dict(cpu) if first is None else first
        last.update(cpu)
        peak["procs"] = max(peak["procs"], len(cpu))
        cpu_gap = max(SAMPLE_EVERY, 6 * (time.monotonic() - t))
        gaps["cpu"].append(cpu_gap)
        if t >= next_pss:
            t_pss = time.monotonic()
            pss, procs = server.tree_pss_kib(table)
            if pss > peak["pss"]:
                peak["pss"], peak["pss_procs"] = pss, procs
            pss_gap = max(SAMPLE_EVERY, 15 * (time.monotonic() - t_pss))
            gaps["pss"].append(pss_gap)
            next_pss = t + pss_gap
        if conn.poll(max(0.0, t + cpu_gap - time.monotonic())):
            break
    try:
        peak["rss"] = max(peak["rss"], server.rss_kib("VmHWM"))
    except (OSError, ValueError):
        pass
    own = resource.getrusage(resource.RUSAGE_SELF)
    conn.send(
        {
            **peak,
            "cpu": sum(v - (first or {}).get(p, 0.0) for p, v in last.items()),
            "cpu_every": statistics.median(gaps["cpu"]) if gaps["cpu"] else float("nan"),
            "pss_every": statistics.median(gaps["pss"]) if gaps["pss"] else float("nan"),
            "sampler_cpu": own.ru_utime + own.ru_stime,
        }
    )


def listen_overflows() -> dict[str, int]:
    """The kernel's count (machine-wide) of connections a listener's full accept queue
    dropped, and of SYN cookies sent meanwhile (a client whose handshake ends on a cookie while
    the queue is still full thinks it is connected, and waits for a greeting that never comes)."""
    lines = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines() if line.startswith("TcpExt:")]
    values = dict(zip(lines[0][1:], map(int, lines[1][1:]))) if len(lines) == 2 else {}
    return {k: values.get(k, 0) for k in ("ListenOverflows", "SyncookiesSent")}


class CpuGroup:
    """The server's processes in a cgroup of their own, so that the CPU time of every process
    it runs is counted, exited ones included: the /proc samples miss what a process uses after
    its last sample (its exit among it), which for a forking server's thousands of sessions
    is not small. cgroup v1's cpuacct where mounted, else cgroup v2; None where neither can be
    made (not root, no cgroupfs): the samples are used then, and the output says so."""

    ROOTS = (Path("/sys/fs/cgroup/cpuacct"), Path("/sys/fs/cgroup"))

    def __init__(self, path: Path, v1: bool):
        self.path, self.v1 = path, v1

    @classmethod
    def make(cls, server: Server, name: str) -> "CpuGroup | None":
        assert server.proc is not None
        for root in cls.ROOTS:
            v1 = (root / "cpuacct.usage").exists()
            if not v1 and not (root / "cgroup.controllers").exists():
                continue
            path = root / f"ftpd-bench-{os.getpid()}-{name}"
            try:
                path.mkdir(exist_ok=True)
                for pid in [server.proc.pid, *sorted(server.tree_cpu())]:
                    try:
                        (path / "cgroup.procs").write_text(f"{pid}\n")
                    except ProcessLookupError:
                        pass
                group = cls(path, v1)
                group.seconds()
                return group
            except OSError:
                with contextlib.suppress(OSError):
                    path.rmdir()
        return None

    def seconds(self) -> float:
        if self.v1:
            return int((self.path / "cpuacct.usage").read_text()) / 1e9
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines())
        return int(stat["usage_usec"]) / 1e6

    def remove(self) -> None:
        """Once the server has stopped (a cgroup with processes left cannot be removed)."""
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)


class Meter:
    """The sampler process for one phase; stop() returns what it measured."""

    def __init__(self, server: Server, group: CpuGroup | None = None):
        ctx = multiprocessing.get_context("fork")
        self.server, self.group = server, group
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=sample_tree, args=(server, child), daemon=True)
        self.proc.start()
        self.cpu0, self.net0 = client_cpu(), listen_overflows()
        self.group0 = group.seconds() if group else 0.0
        time.sleep(SAMPLE_EVERY)  # a first sample before the boxes start

    def stop(self) -> dict:
        self.conn.send("stop")
        out = self.conn.recv() if self.conn.poll(60) else {}
        self.proc.join(10)
        out["client_cpu"] = client_cpu() - self.cpu0
        out["net"] = {k: v - self.net0[k] for k, v in listen_overflows().items()}
        if self.group:
            # Sessions that got their last reply may still be exiting: their exit counts too.
            deadline = time.monotonic() + 5
            while len(self.server.tree_cpu()) > 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            out["cpu_sampled"] = out.get("cpu")
            out["cpu"] = self.group.seconds() - self.group0
            out["cpu_from"] = "cgroup"
        return out


def client_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- the servers ---------------------------------------------------------------------------------


@dataclass
class Kind:
    """One server configuration of the run: how to start it and what to tell about it."""

    label: str
    start: object  # Path -> a started Server
    how: str  # accounts, limits, where it came from
    storms: tuple[str, ...] = ("",)
    virtual: bool = True  # False: anonymous uploads (vsftpd without db_load)


def credentials(kind: Kind, server: Server, b: Box) -> tuple[str, str]:
    return (b.user, b.password) if kind.virtual else (server.user, server.password)


def ftpd_kind(ctx, throttle: str, clients: int) -> Kind:
    settings = {}
    defaults = {"max_connections": 4096, "max_connections_per_address": 1024}
    for key, default in defaults.items():
        if default < 2 * clients:
            settings[key] = str(2 * clients)
    if throttle == "off":
        settings["failed_logins_max"] = "0"
    count = ctx.args.passive_ports or FTPD_PASSIVE

    def start(base: Path) -> Ftpd:
        base.mkdir(parents=True, exist_ok=True)
        shutil.copy(ctx.users_file, base / "users.json")  # so Ftpd adds no account of its own
        lo, hi = free_port_range(count)
        return Ftpd(base, passive_ports=f"{lo}-{hi}", **settings).start()

    label = "ftpd" if throttle == "on" else "ftpd, failed_logins_max=0"
    shown = ", ".join(f"{k}={v}" for k, v in settings.items()) or "no caps changed"
    how = (
        f"`ftpd user add` accounts (PBKDF2); defaults except paths, ports, log_level=warn, {shown}; "
        f"{count} passive ports"
    )
    return Kind(label, start, how, storms=("cold", "warm"))


def vsftpd_kind(ctx, clients: int) -> Kind | str:
    exe = shutil.which("vsftpd") or ("/usr/sbin/vsftpd" if Path("/usr/sbin/vsftpd").exists() else None)
    note = "installed"
    if not exe:
        if not apt_install("vsftpd"):
            return "vsftpd: not installed, and apt-get install vsftpd failed"
        exe, note = shutil.which("vsftpd") or "/usr/sbin/vsftpd", "installed now with apt-get"
    virtual = bool(shutil.which("db_load") or apt_install("db-util"))
    limits = [f"max_clients={2 * clients}", f"max_per_ip={2 * clients}"]
    count = max(ctx.args.passive_ports, 2 * clients + 2)

    def start(base: Path) -> Vsftpd:
        srv = VsftpdVirtual(base, ctx.hashed) if virtual else Vsftpd(base)
        srv.extra = limits
        srv.passive = free_port_range(count)
        return srv.start()

    who = "virtual users (PAM pam_userdb, sha512-crypt)"
    if not virtual:
        who = "ANONYMOUS uploads (no db_load for virtual users)"
    how = f"{exe} ({note}); {who}; {', '.join(limits)}; {count} passive ports"
    return Kind("vsftpd", start, how, virtual=virtual)


def pure_kind(ctx, clients: int) -> Kind | str:
    try:
        exe, pure_pw, note = pure_ftpd_binaries(Path(tempfile.gettempdir()) / "ftpd-bench-pure-ftpd")
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        return f"pure-ftpd: not available ({e})"

    def start(base: Path) -> PureFtpd:
        srv = PureFtpd(base, ctx.hashed, clients, (exe, pure_pw))
        if ctx.args.passive_ports > 2 * clients + 2:
            srv.passive = free_port_range(ctx.args.passive_ports)
        return srv.start()

    how = (
        f"{exe} ({note}); virtual users (puredb, sha512-crypt); -c {clients} -C {clients}; "
        f"{max(ctx.args.passive_ports, 2 * clients + 2)} passive ports"
    )
    return Kind("pure-ftpd", start, how)


def apt_install(package: str) -> bool:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "--no-remove", package]
    return subprocess.run(cmd, capture_output=True, env=env).returncode == 0


# -- phases --------------------------------------------------------------------------------------


def fleet_phase(kind: Kind, n: int, ctx) -> dict:
    """N boxes upload to a freshly started server; every file is checked afterwards."""
    args, payload = ctx.args, ctx.payload
    base = ctx.base / f"{slug(kind.label)}-{n}"
    srv = kind.start(base)
    group = CpuGroup.make(srv, f"{slug(kind.label)}-{n}")
    boxes = []
    for i in range(n):
        acct = ctx.accounts[i % len(ctx.accounts)]
        b = Box(i, acct.user, acct.password, name=f"fleet-{n}-box{i:04d}.ts")
        b.user, b.password = credentials(kind, srv, b)
        boxes.append(b)
    stor = (lambda name: f"{srv.upload_dir}/{name}") if srv.upload_dir else (lambda name: name)
    rate = args.rate_kib * KiB
    bound = args.spread + LOGIN_TIMEOUT + 3 * payload.size / rate + 4 * STEP_TIMEOUT
    starts = offsets(n, args.spread, f"fleet-{n}")

    async def go():
        at = asyncio.get_running_loop().time()
        chunk = int(args.chunk_kib * KiB)
        coros = [upload_box(b, srv.port, stor(b.name), payload, rate, chunk, at + s) for b, s in zip(boxes, starts)]
        await run_all(coros, bound)

    warm: dict = {}
    try:
        if args.warm_logins:
            w0 = time.monotonic()
            failed = asyncio.run(warm_logins(srv.port, boxes))
            warm = {"warm": {"n": n, "failed": failed, "secs": time.monotonic() - w0}}
        meter = Meter(srv, group)
        t0 = time.monotonic()
        try:
            asyncio.run(go())
        finally:
            wall = time.monotonic() - t0
            measured = meter.stop()
    finally:
        srv.stop()
        if group:
            group.remove()
    stored = verify(boxes, srv, payload)
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
        os.sync()
    return {"kind": kind.label, "n": n, "boxes": boxes, "wall": wall, "stored": stored, **warm, **measured}


def verify(boxes: list[Box], srv: Server, payload: Payload) -> int:
    """Checks each file that got its 226: size and CRC-32 on disk. Returns the bytes verified."""
    total = 0
    for b in boxes:
        if not b.got_226:
            b.step = b.step or "client"
            b.error = b.error or "did not finish in time"
            continue
        path = srv.user_file(b.user, b.name)
        try:
            data = path.read_bytes()
        except OSError as e:
            b.step, b.error = "disk", f"cannot read the file ({e.strerror})"
            continue
        if len(data) != payload.size:
            b.step, b.error = "disk", f"{len(data)} bytes, want {payload.size}"
        elif zlib.crc32(data) != payload.crc(b.box):
            b.step, b.error = "disk", "CRC-32 differs"
        else:
            b.ok = True
            total += len(data)
    return total


def storm_phase(kind: Kind, ctx) -> list[dict]:
    """--storm boxes log in within --storm-window seconds and quit; ftpd twice (cold, warm)."""
    args = ctx.args
    base = ctx.base / f"{slug(kind.label)}-storm"
    srv = kind.start(base)
    rows = []
    try:
        for run in kind.storms:
            boxes = []
            for i in range(args.storm):
                acct = ctx.accounts[i % len(ctx.accounts)]
                b = Box(i, acct.user, acct.password)
                b.user, b.password = credentials(kind, srv, b)
                boxes.append(b)
            starts = offsets(args.storm, args.storm_window, f"storm-{run}")

            async def go():
                at = asyncio.get_running_loop().time()
                await run_all([storm_box(b, srv.port, at + s) for b, s in zip(boxes, starts)], LOGIN_TIMEOUT + 30)

            meter = Meter(srv)
            try:
                asyncio.run(go())
            finally:
                measured = meter.stop()
            rows.append({"kind": kind.label, "run": run, "boxes": boxes, **measured})
            time.sleep(1)
    finally:
        srv.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    return rows


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


# -- report --------------------------------------------------------------------------------------


def fmt_s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} s"


def fmt_mib(kib: int | None) -> str:
    return "-" if not kib else f"{kib / 1024:.1f} MiB"


def p50_max(values: list[float]) -> tuple[float | None, float | None]:
    return (statistics.median(values), max(values)) if values else (None, None)


def fleet_table(rows: list[dict], args) -> list[str]:
    nominal = args.size_mib * MiB / (args.rate_kib * KiB)
    out = [
        f"Fleet: {args.size_mib:g} MiB per box at {args.rate_kib:g} KiB/s in {args.chunk_kib:g} KiB pieces "
        f"(nominal send {nominal:.1f} s), "
        f"boxes starting within {args.spread:g} s, all from {HOST}; "
        + (
            "returning boxes (every box logged in once before the phase, not measured)"
            if args.warm_logins
            else "cold logins (--cold-logins: the first login of each account to this server is in the figures)"
        ),
        "",
        "| server | boxes | failed uploads | failed logins | peak RSS | peak PSS (tree) | procs | CPU-s/GiB "
        "| login p50 | login max | STOR→226 p50 | STOR→226 max | client CPU |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        boxes = r["boxes"]
        failed = sum(not b.ok for b in boxes)
        no_login = sum(b.login is None for b in boxes)
        lp50, lmax = p50_max([b.login for b in boxes if b.login is not None])
        up50, upmax = p50_max([b.upload for b in boxes if b.upload is not None])
        gib = r["stored"] / (1 << 30)
        cpu = f"{r['cpu'] / gib:.2f}" if gib and "cpu" in r else "-"
        rss = fmt_mib(r.get("rss")) if r["kind"].startswith("ftpd") else "-"
        client = f"{r['client_cpu']:.1f} s ({100 * r['client_cpu'] / r['wall']:.0f}%)"
        out.append(
            f"| {r['kind']} | {r['n']} | {failed} | {no_login} | {rss} | {fmt_mib(r.get('pss'))} "
            f"| {r.get('pss_procs', '-')} | {cpu} | {fmt_s(lp50)} | {fmt_s(lmax)} | {fmt_s(up50)} "
            f"| {fmt_s(upmax)} | {client} |"
        )
    return out


def storm_table(rows: list[dict], args) -> list[str]:
    out = [
        f"Reconnect storm: {args.storm} boxes connect within {args.storm_window:g} s: USER, PASS, 230, QUIT",
        "",
        "| server | run | logged in | within 2 s | login p50 | login max | server CPU-s | CPU ms per login |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        times = [b.login for b in r["boxes"] if b.ok]
        p50, mx = p50_max(times)
        within = sum(t <= 2.0 for t in times)
        n = len(r["boxes"])
        # A forking server's login sessions mostly end between two samples: no figure.
        single = "cpu" in r and r.get("procs") == 1
        cpu = f"{r['cpu']:.1f}" if single else "-"
        per = f"{1e3 * r['cpu'] / len(times):.1f}" if single and times else "-"
        out.append(
            f"| {r['kind']} | {r['run'] or '-'} | {len(times)}/{n} | {within}/{n} | {fmt_s(p50)} | {fmt_s(mx)} "
            f"| {cpu} | {per} |"
        )
    return out


def target_lines(fleet: list[dict], storm: list[dict]) -> list[str]:
    """The targets, checked at the largest fleet: no failure; ftpd's peak RSS at or below
    pure-ftpd's PSS and its CPU per GiB at or below pure-ftpd's (each ftpd run against the
    pure-ftpd run of the same size); every box of a storm in within 2 s."""
    if not fleet:
        return []
    n = max(r["n"] for r in fleet)
    at_n = [r for r in fleet if r["n"] == n]
    pure = next((r for r in at_n if r["kind"] == "pure-ftpd"), None)
    verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    out = [f"Targets at {n} boxes (ftpd against pure-ftpd in this run):"]
    for r in (r for r in at_n if r["kind"].startswith("ftpd")):
        failed = sum(not b.ok for b in r["boxes"])
        out.append(f"- {r['kind']}: failed uploads or logins {failed}: {verdict(failed == 0)}")
        gib = r["stored"] / (1 << 30)
        if pure is None or not gib or not pure["stored"]:
            out.append(f"- {r['kind']}: no pure-ftpd run of {n} boxes to compare with")
            continue
        rss, pss = r.get("rss"), pure.get("pss")
        if rss and pss:
            out.append(
                f"- {r['kind']}: peak RSS {fmt_mib(rss)} against pure-ftpd's PSS {fmt_mib(pss)}: {verdict(rss <= pss)}"
            )
        if "cpu" in r and "cpu" in pure:
            mine, theirs = r["cpu"] / gib, pure["cpu"] / (pure["stored"] / (1 << 30))
            out.append(
                f"- {r['kind']}: {mine:.2f} CPU-s/GiB against pure-ftpd's {theirs:.2f}: {verdict(mine <= theirs)}"
            )
    for r in storm:
        times = [b.login for b in r["boxes"] if b.ok]
        within = sum(t <= 2.0 for t in times)
        total = len(r["boxes"])
        if r["run"] == "cold":
            # Not the reconnect storm: no account has logged in to this process before, so each
            # login is a full password check (PBKDF2 for ftpd), bounded by the cores.
            out.append(
                f"- storm, {r['kind']} cold (first logins to a fresh process, not a returning fleet): "
                f"{within}/{total} logged in within 2 s"
            )
            continue
        if not r["kind"].startswith("ftpd"):
            out.append(f"- storm, {r['kind']} (for comparison): {within}/{total} logged in within 2 s")
            continue
        name = f"{r['kind']} {r['run']}" if r["run"] else r["kind"]
        out.append(f"- storm, {name}: {within}/{total} logged in within 2 s: {verdict(within == total)}")
    return out


def failure_lines(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        bad = Counter(f"{b.step}: {b.error}" for b in r["boxes"] if b.step)
        if bad:
            where = f"{r['kind']}, {r['n']} boxes" if "n" in r else f"{r['kind']} storm {r['run']}".rstrip()
            reasons = "; ".join(f"{k} x{v}" for k, v in bad.most_common(4))
            more = f"; and {len(bad) - 4} other reasons" if len(bad) > 4 else ""
            out.append(f"- {where}: {reasons}{more}")
    if any("greeting: no reply" in line for line in out):
        out.append(
            "- (greeting: no reply: the kernel completed the handshake with a SYN cookie while the "
            "server's accept queue was full, and dropped it: see the accept-queue overflows below)"
        )
    return out


def sampling_lines(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        where = f"{r['kind']}, {r['n']} boxes" if "n" in r else f"{r['kind']} storm {r['run']}".rstrip()
        extra = f"; {r['stored'] / (1 << 30):.2f} GiB verified in a {r['wall']:.0f} s phase" if "n" in r else ""
        if "warm" in r:
            w = r["warm"]
            extra += f"; warm-up {w['n'] - len(w['failed'])}/{w['n']} logins in {w['secs']:.0f} s"
            if w["failed"]:
                extra += f" (first failure: {w['failed'][0]})"
        if r.get("cpu_from") == "cgroup":
            sampled = r.get("cpu_sampled")
            extra += "; CPU from its cgroup" + (f" ({sampled:.2f} s in the /proc samples)" if sampled is not None else "")
        elif "n" in r:
            extra += "; CPU from the /proc samples (no cgroup could be made: a forking server's figure is low)"
        net = r.get("net", {})
        nan = float("nan")
        out.append(
            f"- {where}: CPU times every {r.get('cpu_every', nan):.2f} s, PSS every {r.get('pss_every', nan):.2f} s "
            f"(sampler {r.get('sampler_cpu', nan):.1f} CPU-s){extra}; accept-queue overflows "
            f"{net.get('ListenOverflows', '?')}, SYN cookies {net.get('SyncookiesSent', '?')}"
        )
    return out


# -- main ----------------------------------------------------------------------------------------


class Context:
    """What every phase shares."""

    def __init__(self, args, base: Path):
        self.args, self.base = args, base
        self.accounts: list[Account] = []
        self.hashed: list[tuple[str, str]] = []
        self.users_file = base / "ftpd-users.json"
        self.payload = Payload(int(args.size_mib * MiB))


def raise_nofile(need: int) -> str:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, need)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    got = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    warn = "" if got >= need else f" (WARNING: about {need} wanted)"
    return f"open-files limit {got} (client and servers){warn}"


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--boxes", default="250,500,1000", help="fleet sizes, comma-separated")
    ap.add_argument("--size-mib", type=float, default=4.0, help="each box's file")
    ap.add_argument("--rate-kib", type=float, default=256.0, help="each box's pace, KiB/s")
    ap.add_argument("--chunk-kib", type=float, default=16.0, help="bytes a box sends at a time, KiB")
    ap.add_argument("--spread", type=float, default=3.0, help="seconds within which the boxes start")
    ap.add_argument("--storm", type=int, default=0, help="boxes in the reconnect storm (default: the largest fleet)")
    ap.add_argument("--storm-window", type=float, default=1.0, help="seconds within which the storm connects")
    ap.add_argument("--accounts", type=int, default=0, help="accounts shared round-robin (default: one per box)")
    ap.add_argument("--throttle", default="on,off", help="ftpd runs: login throttle on (defaults), off")
    ap.add_argument("--servers", default="ftpd,vsftpd,pure-ftpd")
    ap.add_argument("--passive-ports", type=int, default=0, help="at least this many passive ports for every server")
    ap.add_argument(
        "--cold-logins",
        action="store_true",
        help="leave out the unmeasured login of every box before each fleet phase: first logins",
    )
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where the servers keep their files")
    ap.add_argument("--keep", action="store_true", help="keep the servers' files")
    args = ap.parse_args()
    args.warm_logins = not args.cold_logins
    args.sizes = [int(x) for x in args.boxes.split(",") if x.strip()]
    args.throttles = [t.strip() for t in args.throttle.split(",") if t.strip()]
    args.server_names = [s.strip() for s in args.servers.split(",") if s.strip()]
    args.storm = args.storm or max(args.sizes)
    if bad := [t for t in args.throttles if t not in ("on", "off")]:
        ap.error(f"--throttle: on or off, not {bad}")
    if bad := [s for s in args.server_names if s not in ("ftpd", "vsftpd", "pure-ftpd")]:
        ap.error(f"--servers: ftpd, vsftpd, pure-ftpd, not {bad}")
    return args


def kinds_of(ctx, clients: int) -> tuple[list[Kind], list[str]]:
    kinds, notes = [], []
    for name in ctx.args.server_names:
        if name == "ftpd":
            kinds += [ftpd_kind(ctx, t, clients) for t in ctx.args.throttles]
            continue
        k = vsftpd_kind(ctx, clients) if name == "vsftpd" else pure_kind(ctx, clients)
        (kinds.append if isinstance(k, Kind) else notes.append)(k)
    return kinds, notes


def setup_accounts(ctx) -> str:
    args = ctx.args
    n = args.accounts or max(max(args.sizes), args.storm)
    t0 = time.monotonic()
    ctx.accounts = make_accounts(n)
    ftpd_users_file(ctx.users_file, ctx.accounts)
    t1 = time.monotonic()
    ctx.hashed = [(a.user, sha512_crypt(a.password)) for a in ctx.accounts]
    t2 = time.monotonic()
    share = "one per box" if not args.accounts else "shared round-robin by the boxes"
    return f"{n} accounts ({share}); ftpd user add took {t1 - t0:.0f} s, sha512-crypt hashes {t2 - t1:.0f} s"


def main() -> int:
    args = parse_args()
    if not ftpd_binary().is_file():
        print(f"{ftpd_binary()} not found: cargo build --release -p ftpd", file=sys.stderr)
        return 2
    clients = max(max(args.sizes), args.storm)
    limit = raise_nofile(3 * clients + 2000)
    base = Path(tempfile.mkdtemp(prefix="ftpd-fleet-", dir=args.dir))
    os.chmod(base, 0o755)  # vsftpd's and pure-ftpd's users (ftp) walk down to their homes
    ctx = Context(args, base)
    started = time.monotonic()
    try:
        print(setup_accounts(ctx))
        print(check_costs(ctx.users_file))
        kinds, notes = kinds_of(ctx, clients)
        version = subprocess.run([str(ftpd_binary()), "--version"], capture_output=True, text=True).stdout.strip()
        print(f"{limit}; files in {base}")
        built = time.strftime("%Y-%m-%d %H:%M", time.localtime(ftpd_binary().stat().st_mtime))
        print(f"- ftpd: {ftpd_binary()} ({version}, built {built})")
        for k in kinds:
            print(f"- {k.label}: {k.how}")
        for note in notes:
            print(f"- NOT RUN: {note}")
        fleet_rows, storm_rows = [], []
        for i, n in enumerate(args.sizes):
            for k in kinds[i % len(kinds) :] + kinds[: i % len(kinds)]:
                print(f"fleet {n:5} boxes  {k.label:28} ", end="", flush=True)
                try:
                    r = fleet_phase(k, n, ctx)
                except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
                    print(f"could not run: {e}")
                    notes.append(f"{k.label}, {n} boxes: could not run ({e})")
                    continue
                fleet_rows.append(r)
                ok = sum(b.ok for b in r["boxes"])
                print(f"{ok}/{n} verified, {r['wall']:.0f} s")
        for k in kinds:
            print(f"storm {args.storm:5} boxes  {k.label:28} ", end="", flush=True)
            try:
                rows = storm_phase(k, ctx)
            except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
                print(f"could not run: {e}")
                notes.append(f"{k.label} storm: could not run ({e})")
                continue
            storm_rows += rows
            print(", ".join(f"{r['run'] or 'run'}: {sum(b.ok for b in r['boxes'])}/{args.storm}" for r in rows))
        order = {k.label: j for j, k in enumerate(kinds)}
        fleet_rows.sort(key=lambda r: (r["n"], order[r["kind"]]))
        print()
        print("\n".join(fleet_table(fleet_rows, args)))
        print()
        print("\n".join(storm_table(storm_rows, args)))
        print()
        print("\n".join(target_lines(fleet_rows, storm_rows)))
        fails = failure_lines(fleet_rows + storm_rows)
        print("\nFailures:\n" + "\n".join(fails) if fails else "\nFailures: none")
        if notes:
            print("\nNot run:\n" + "\n".join(f"- {note}" for note in notes))
        print("\nSampling:")
        print("\n".join(sampling_lines(fleet_rows + storm_rows)))
        print(f"\n({time.monotonic() - started:.0f} s in all)")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped")
        return 130
    finally:
        if args.keep:
            print(f"servers' files kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
