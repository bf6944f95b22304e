#!/usr/bin/env python3
"""Hostile load: honest boxes upload while, one scenario at a time, an attack runs; each
scenario's figures are printed against the same honest uploads with no attack, measured in the
same run.

    python3 tests/bench/hostile.py [--rounds 2] [--boxes 20] [--attack-size 3000]
                                   [--binary target/release/ftpd] [--only SCENARIO[,SCENARIO]]
                                   [--mib 2] [--rate-kib 1024] [--attack-from 127.0.0.2]
                                   [--set KEY=VALUE ...] [--dir /tmp] [--keep]

Needs a release build (cargo build --release -p ftpd) and nothing else: no pytest, no FTP tools.

Honest boxes (--boxes, from 127.0.0.1) start one after another over 4 seconds; each is a real
session: connect, USER/PASS, TYPE I, `SITE KEY 0x<CRC-32>`, PASV, STOR of --mib MiB paced to
--rate-kib KiB/s, and its 226. Each box's time is taken from before its TCP connect to the 226.
After the 226 the box checks `SITE KEY INFO` (declared KEY, size, state `verified`) and the
file on disk byte for byte (each box's bytes differ, so a crossed upload shows).

Scenarios (--attack-size N; attackers connect from --attack-from, 127.0.0.2 by default, another
loopback address, so the per-address caps keep them apart from the honest boxes; pass
--attack-from 127.0.0.1 to model attackers behind the boxes' own carrier NAT):
  baseline         no attack.
  idle-data        N idle TCP connections on the passive ports (spread over them), no session
                   behind them, nothing sent. One the server half-closes (FIN) is held on, as
                   a hostile client would; one it resets is replaced (at most 4N connects in
                   all, 1500 a second).
  prelogin         N control connections that never say a word, piling up; one the server
                   closes (421, login_timeout) is replaced within the same bounds.
  pass-flood       N pipelined lines on 8 connections, reconnecting when closed: `USER <the
                   boxes' user>`, then PASS-like lines with wrong passwords. Four connections
                   mix `PASS`, `PA\\u00df`, `PA\\u017fS` and `PA\\u00dfS` (Unicode words that
                   upper-case to PASS or PASSS); four more, from the next address (127.0.0.3
                   by default), send only the Unicode words, so that an address blocked for
                   its ASCII failures does not hide them. At the end, `PA\\u017fS <right
                   password>` from each address shows whether the login throttle is bypassed.
  quit-mid-upload  max(4, N/50) logged-in clients that start a STOR, send 64 KiB and then
                   keep the data connection open and silent; half send QUIT, half close their
                   control connection. A quarter of them before the honest boxes, the rest
                   while they run.

Every scenario gets a freshly started server (so peak RSS is the kernel's high-water mark of that
scenario), sampled every 0.1 s for RSS and open descriptors (/proc/PID/status, /proc/PID/fd).
After the attack's sockets are closed, one more small upload shows whether the server recovered.

For each scenario the summary prints: honest uploads that succeeded, median and worst time
from connect to 226 and their ratios against the baseline (target: within 2x), peak RSS and peak
descriptors (against the caps printed with them), server CPU seconds, every failure grouped by
step and reason (target: none), what the attack achieved as the attacker saw it, and the checks:
the caps (the most control connections the attacker held admitted with a 220 against
max_connections_per_address), the deadlines (how long the server kept a socket to the
attacker's address open, from /proc/net/tcp and the server's /proc/PID/fd, against
login_timeout (prelogin, pass-flood) or data_idle_timeout (idle-data, quit-mid-upload); the
attack lasts long enough to see it), and for pass-flood the bypass. Exit status: 0 when every target holds, 1 when one does not, 2 when the
server cannot be started.

Settings the server runs with (printed at the start; --set KEY=VALUE overrides any FTPD_ key,
e.g. --set max_connections_per_address=1024): short timeouts for a fast run (login_timeout=5,
data_idle_timeout=5, keepalive=10), max_connections=1000, max_connections_per_address=200,
failed_logins_max=5, failed_logins_per_address=50, shutdown_grace=2, log_level=warn; the rest
are ftpd's defaults. The account uses ftpd's default PBKDF2 rounds, as in the field.

Everything runs on loopback, each operation has a timeout (10 s, a box 20 s in all), every
loop is bounded in count and time, and the script stops its servers and closes its sockets
itself (also on Ctrl-C or SIGTERM). It raises its open-files limit (inherited by the server)
with resource.setrlimit. A default run takes two to four minutes on two cores.
"""

import argparse
import errno
import os
import random
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))  # helpers.py, shared with the end-to-end tests
from helpers import free_port, free_port_range, stop_process  # noqa: E402

USER, PASSWORD = "bench", "bench-password"
HONEST_IP = "127.0.0.1"
SERVER_IP = "127.0.0.1"
PASSIVE_COUNT = 101  # as many as the shipped 50000-50100
SCENARIOS = ["idle-data", "prelogin", "pass-flood", "quit-mid-upload"]
SPREAD = 4.0  # seconds over which the honest boxes start
OP_TIMEOUT = 10.0  # one FTP operation of an honest box
BOX_TIMEOUT = 20.0  # a whole honest box, connect to KEY INFO
SLACK = 3.0  # beyond a configured deadline before it counts as not enforced
SETTINGS = {
    "max_connections": "1000",
    "max_connections_per_address": "200",
    "login_timeout": "5",
    "data_idle_timeout": "5",
    "keepalive": "10",
    "failed_logins_max": "5",
    "failed_logins_per_address": "50",
    "shutdown_grace": "2",
    "takeover_wait": "5",
    "log_level": "warn",
}
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


# -- ports and sockets ---------------------------------------------------------------------------


def new_socket(src_ip: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    except OSError:
        pass
    s.bind((src_ip, 0))
    return s


def quietly_close(s) -> None:
    try:
        if s is not None:
            s.close()
    except OSError:
        pass


def short(text: str, n: int = 70) -> str:
    text = text.replace("\r", "").replace("\n", " | ")
    return text if len(text) <= n else text[: n - 3] + "..."


# -- the server ----------------------------------------------------------------------------------


class Server:
    """One ftpd process with its own root, state and log; the users file is shared."""

    def __init__(self, binary: Path, base: Path, users_file: Path, settings: dict):
        self.binary, self.base = binary, base
        base.mkdir(parents=True, exist_ok=True)
        self.root = base / "root"
        self.port = free_port()
        self.passive = free_port_range(PASSIVE_COUNT)
        self.env = dict(os.environ)
        self.env.update(
            {
                "FTPD_LISTEN": f"{SERVER_IP}:{self.port}",
                "FTPD_PASSIVE_PORTS": "%d-%d" % self.passive,
                "FTPD_ROOT": str(self.root),
                "FTPD_STATE_DIR": str(base / "state"),
                "FTPD_USERS_FILE": str(users_file),
            }
        )
        self.env.update({f"FTPD_{k.upper()}": v for k, v in settings.items()})
        self.log_path = base / "ftpd.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Server":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.binary), "serve"], env=self.env, stdout=subprocess.DEVNULL, stderr=log
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ftpd exited with {self.proc.returncode}: {short(self.log(), 400)}")
            try:
                with socket.create_connection((SERVER_IP, self.port), timeout=1) as s:
                    s.settimeout(2)
                    if s.recv(100).startswith(b"220"):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("ftpd did not greet within 20 s")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self, field: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return 0

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def nofile_limit(self) -> str:
        for line in Path(f"/proc/{self.proc.pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return line.split()[3]
        return "?"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def file(self, name: str) -> Path:
        return self.root / USER / name

    def stop(self) -> None:
        stop_process(self.proc)


def tcp_key(sock: socket.socket) -> str:
    """A socket's local address as /proc/net/tcp writes a peer's: the server's view of it."""
    ip, port = sock.getsockname()[:2]
    return "%08X:%04X" % (int.from_bytes(socket.inet_aton(ip), "little"), port)


class Sampler(threading.Thread):
    """Peak RSS and descriptors of the server every 0.1 s until stopped; every 0.5 s also the
    TCP sockets the server holds (owns a descriptor for) whose peer is one of the attacker's
    sockets, and how long the oldest of them has been held."""

    def __init__(self, srv: Server, attack=None):
        super().__init__(daemon=True)
        self.srv, self.halt, self.attack = srv, threading.Event(), attack
        self.peak_rss = self.peak_fds = self.peak_held = 0
        self.oldest = 0.0
        self.first_seen: dict = {}

    def sample(self) -> None:
        try:
            self.peak_rss = max(self.peak_rss, self.srv.status("VmRSS"))
            self.peak_fds = max(self.peak_fds, self.srv.fds())
        except (OSError, ValueError):
            pass

    def held(self) -> None:
        pid = self.srv.proc.pid
        inodes = set()
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
            held, peers = set(), set(self.attack.keys)
            with open("/proc/net/tcp") as f:
                next(f)
                for line in f:
                    p = line.split()
                    if p[2] in peers and p[9] in inodes:
                        held.add(p[9])
        except OSError:
            return
        now = time.monotonic()
        for i in held:
            self.first_seen.setdefault(i, now)
        for i in [i for i in self.first_seen if i not in held]:
            del self.first_seen[i]
        self.peak_held = max(self.peak_held, len(held))
        if held:
            self.oldest = max(self.oldest, now - min(self.first_seen[i] for i in held))

    def run(self) -> None:
        n = 0
        while not self.halt.wait(0.1):
            self.sample()
            n += 1
            if self.attack and n % 5 == 0:
                self.held()

    def stop(self) -> None:
        self.halt.set()
        self.join(5)
        self.sample()


# -- an FTP control connection with a deadline on every step -------------------------------------


class StepError(Exception):
    def __init__(self, step: str, what: str):
        super().__init__(f"{step}: {what}")
        self.step, self.what = step, what


class Control:
    def __init__(self, addr, src_ip: str, deadline: float, op_timeout: float, on_connect=None):
        self.deadline, self.op_timeout, self.src_ip = deadline, op_timeout, src_ip
        self.on_connect = on_connect
        self.buf = b""
        self.sock = self.connect(addr, "connect")

    def timeout(self, step: str) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise StepError(step, "time is up for this client")
        return min(self.op_timeout, left)

    def connect(self, addr, step: str) -> socket.socket:
        t = self.timeout(step)
        s = new_socket(self.src_ip)
        s.settimeout(t)
        try:
            s.connect(addr)
        except socket.timeout:
            s.close()
            raise StepError(step, f"no TCP connection after {t:.0f} s") from None
        except OSError as e:
            s.close()
            raise StepError(step, e.strerror or str(e)) from None
        if self.on_connect:
            self.on_connect(s)
        return s

    def reply(self, step: str, expect=None) -> tuple[int, str]:
        t = self.timeout(step)
        end = time.monotonic() + t
        lines: list[str] = []
        while True:
            while b"\n" not in self.buf:
                left = end - time.monotonic()
                if left <= 0:
                    raise StepError(step, f"no reply within {t:.0f} s")
                self.sock.settimeout(left)
                try:
                    chunk = self.sock.recv(65536)
                except socket.timeout:
                    raise StepError(step, f"no reply within {t:.0f} s") from None
                except OSError as e:
                    raise StepError(step, f"connection error ({e.strerror or e})") from None
                if not chunk:
                    after = f" after '{short(lines[-1], 40)}'" if lines else ""
                    raise StepError(step, "connection closed by the server" + after)
                self.buf += chunk
            raw, _, self.buf = self.buf.partition(b"\n")
            line = raw.rstrip(b"\r").decode("utf-8", "replace")
            lines.append(line)
            first = lines[0][:3]
            if line[:3] == first and (len(line) == 3 or line[3:4] == " "):
                break
        code = int(first) if first.isdigit() else 0
        text = "\n".join(lines)
        if expect and code not in expect:
            raise StepError(step, f"'{short(text, 60)}'")
        return code, text

    def send(self, line: str, step: str) -> None:
        self.sock.settimeout(self.timeout(step))
        try:
            self.sock.sendall(line.encode() + b"\r\n")
        except (socket.timeout, OSError) as e:
            raise StepError(step, f"cannot send ({e})") from None

    def cmd(self, line: str, step: str, expect=None) -> tuple[int, str]:
        self.send(line, step)
        return self.reply(step, expect)

    def login(self) -> None:
        self.reply("greeting", {220})
        self.cmd(f"USER {USER}", "USER", {331})
        self.cmd(f"PASS {PASSWORD}", "PASS", {230})
        self.cmd("TYPE I", "TYPE I", {200})

    def pasv(self) -> socket.socket:
        _, text = self.cmd("PASV", "PASV", {227})
        m = re.search(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", text)
        if not m:
            raise StepError("PASV", f"cannot parse '{short(text)}'")
        n = [int(x) for x in m.groups()]
        return self.connect((".".join(map(str, n[:4])), n[4] * 256 + n[5]), "data connect")

    def close(self) -> None:
        quietly_close(self.sock)


# -- honest boxes --------------------------------------------------------------------------------


def box_data(i: int, size: int, block: bytes) -> bytes:
    """A box's file: its number, then the shared random block rotated by a box-specific amount."""
    head = b"box %05d\n" % i
    k = (i * 40_961) % len(block)
    body = block[k:] + block[:k]
    while len(body) < size:
        body += body
    return head + body[: size - len(head)]


def info_fields(text: str) -> dict:
    out = {}
    for line in text.splitlines()[1:-1]:
        k, _, v = line.strip().partition("=")
        out[k] = v
    return out


def honest_upload(srv: Server, name: str, data: bytes, rate: float, box_timeout: float = BOX_TIMEOUT) -> dict:
    """One box: connect to 226 timed; then KEY INFO and the bytes on disk checked."""
    t0 = time.monotonic()
    res = {"name": name, "ok": False, "seconds": None, "error": None, "step": None}
    ctl = data_sock = None
    try:
        ctl = Control((SERVER_IP, srv.port), HONEST_IP, t0 + box_timeout, OP_TIMEOUT)
        ctl.login()
        key = "0x%08X" % zlib.crc32(data)
        ctl.cmd(f"SITE KEY {key}", "SITE KEY", {200, 230})
        data_sock = ctl.pasv()
        ctl.cmd(f"STOR {name}", "STOR", {125, 150})
        start, view, chunk = time.monotonic(), memoryview(data), 64 * 1024
        for off in range(0, len(data), chunk):
            if rate:
                wait = start + off / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            data_sock.settimeout(ctl.timeout("data send"))
            try:
                data_sock.sendall(view[off : off + chunk])
            except socket.timeout:
                raise StepError("data send", f"stalled at byte {off}") from None
            except OSError as e:
                raise StepError("data send", f"{e.strerror or e} at byte {off}") from None
        data_sock.close()
        data_sock = None
        ctl.reply("226", {226})
        res["seconds"] = time.monotonic() - t0
        fields = info_fields(ctl.cmd(f"SITE KEY INFO {name}", "KEY INFO", {213})[1])
        want = {"declared": key, "size": str(len(data)), "state": "verified"}
        bad = {k: fields.get(k) for k, v in want.items() if fields.get(k) != v}
        if bad:
            raise StepError("KEY INFO", "; ".join(f"{k}={v} (want {want[k]})" for k, v in bad.items()))
        try:
            ctl.cmd("QUIT", "QUIT")
        except StepError:
            pass
        try:
            stored = srv.file(name).read_bytes()
        except OSError as e:
            raise StepError("disk", f"cannot read the file ({e.strerror})") from None
        if stored != data:
            at = next((i for i, (a, b) in enumerate(zip(stored, data)) if a != b), min(len(stored), len(data)))
            raise StepError("disk", f"{len(stored)} bytes on disk, first difference at byte {at}")
        res["ok"] = True
    except StepError as e:
        res["error"], res["step"] = e.what, e.step
    except Exception as e:  # noqa: BLE001 - a box's failure is a figure, never a crash
        res["error"], res["step"] = repr(e), "client"
    finally:
        quietly_close(data_sock)
        if ctl:
            ctl.close()
    return res


def honest_phase(srv: Server, args, names: list[str], datas: list[bytes]) -> list[dict]:
    results: list = [None] * len(names)
    t0 = time.monotonic()

    def box(i: int) -> None:
        time.sleep(max(0.0, t0 + i * SPREAD / len(names) - time.monotonic()))
        results[i] = honest_upload(srv, names[i], datas[i], args.rate_kib * 1024)

    threads = [threading.Thread(target=box, args=(i,), daemon=True) for i in range(len(names))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.1, t0 + SPREAD + BOX_TIMEOUT + 10 - time.monotonic()))
    for i, r in enumerate(results):
        if r is None:
            results[i] = {"name": names[i], "ok": False, "seconds": None, "step": "client", "error": "did not finish"}
    return results


# -- attacks -------------------------------------------------------------------------------------


def next_address(ip: str) -> str:
    a, b, c, d = map(int, ip.split("."))
    return f"{a}.{b}.{c}.{d % 254 + 1}"


class Attack(threading.Thread):
    """Runs in its own thread until halted; `ready` is set once it is in full swing."""

    title = "?"
    deadline_key: str | None = None  # the setting that should bound how long the server holds its sockets

    def __init__(self, srv: Server, args, settings: dict):
        super().__init__(daemon=True)
        self.srv, self.args, self.settings = srv, args, settings
        self.sources = [args.attack_from]
        self.halt, self.ready = threading.Event(), threading.Event()
        self.error: str | None = None
        self.started = time.monotonic()
        self.socks: list = []
        self.keys: list[str] = []  # every attack socket's address, as the server sees its peer

    def register(self, sock: socket.socket) -> None:
        try:
            self.keys.append(tcp_key(sock))
        except OSError:
            pass

    def run(self) -> None:
        try:
            self.attack()
        except Exception as e:  # noqa: BLE001 - reported, never raised
            self.error = repr(e)
        finally:
            self.ready.set()

    def attack(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.halt.set()
        self.join(20)

    def close(self) -> None:
        for s in list(self.socks):
            quietly_close(s)
        self.socks.clear()

    def lines(self) -> list[str]:
        return []

    def caps(self) -> str:
        return ""

    def checks(self, sampler: Sampler) -> list[tuple[bool, str]]:
        out = []
        if self.error:
            out.append((False, f"the attack itself failed: {self.error}"))
        if self.deadline_key:
            limit = float(self.settings[self.deadline_key])
            ran = time.monotonic() - self.started
            if ran < limit + SLACK:
                out.append((True, f"{self.deadline_key} not observable in a {ran:.0f} s attack"))
            else:
                ok = sampler.oldest <= limit + SLACK
                out.append(
                    (
                        ok,
                        f"the server held an attacker's socket for up to {sampler.oldest:.1f} s against "
                        f"{self.deadline_key} = {limit:.0f} s" + ("" if ok else ": deadline not enforced"),
                    )
                )
        return out


class IdleFlood(Attack):
    """Holds up to N connections to `targets` without sending a byte. A connection the server
    resets is replaced; one it half-closes (FIN) is held on (the server may still hold its end),
    or with `replace_on_eof` closed and replaced. At most 4N connects in all, 1500 a second; a
    connect pending for 3 s is given up."""

    RATE, PENDING = 1500.0, 3.0

    def __init__(self, srv, args, settings, targets, greeted: bool, replace_on_eof: bool):
        super().__init__(srv, args, settings)
        self.targets, self.greeted, self.replace_on_eof = targets, greeted, replace_on_eof
        self.n = args.attack_size
        self.opens = self.refused = self.timeouts = self.resets = self.eofs = self.errors = 0
        self.peak_open = self.peak_admitted = 0
        self.codes: Counter = Counter()

    def attack(self) -> None:
        poller = select.poll()
        socks: dict = {}  # fd -> [sock, opened, established, first reply code, eof]
        tokens, last, next_scan = 0.0, time.monotonic(), 0.0
        warm_end, hard_end = time.monotonic() + 15, time.monotonic() + 300
        k = 0

        def drop(fd: int) -> None:
            entry = socks.pop(fd)
            if not entry[4]:
                poller.unregister(fd)
            quietly_close(entry[0])

        try:
            while not self.halt.is_set() and time.monotonic() < hard_end:
                now = time.monotonic()
                tokens = min(self.RATE / 10, tokens + (now - last) * self.RATE)
                last = now
                while len(socks) < self.n and self.opens < 4 * self.n and tokens >= 1:
                    tokens -= 1
                    self.opens += 1
                    target, src = self.targets[k % len(self.targets)], self.sources[k % len(self.sources)]
                    k += 1
                    try:
                        s = new_socket(src)
                    except OSError:
                        self.errors += 1
                        continue
                    s.setblocking(False)
                    if s.connect_ex(target) not in (0, errno.EINPROGRESS):
                        self.errors += 1
                        s.close()
                        continue
                    socks[s.fileno()] = [s, now, None, None, False]
                    poller.register(s.fileno(), select.POLLOUT)
                for fd, ev in poller.poll(50):
                    entry = socks.get(fd)
                    if entry is None or entry[4]:
                        continue
                    s = entry[0]
                    if entry[2] is None:
                        if ev & select.POLLOUT and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                            entry[2] = time.monotonic()
                            self.register(s)
                            poller.modify(fd, select.POLLIN)
                        else:
                            self.refused += 1
                            drop(fd)
                        continue
                    try:
                        got = s.recv(4096)
                    except BlockingIOError:
                        continue
                    except OSError:
                        self.resets += 1
                        drop(fd)
                        continue
                    if got:
                        if entry[3] is None:
                            entry[3] = got[:3].decode("ascii", "replace")
                            self.codes[entry[3]] += 1
                        continue
                    self.eofs += 1
                    if self.replace_on_eof:
                        drop(fd)
                    else:
                        entry[4] = True
                        poller.unregister(fd)
                now = time.monotonic()
                if now >= next_scan:
                    next_scan = now + 0.25
                    held = admitted = 0
                    for fd, (s, opened, est, code, eof) in list(socks.items()):
                        if est is None:
                            if now - opened > self.PENDING:
                                self.timeouts += 1
                                drop(fd)
                            continue
                        held += 1
                        admitted += code == "220" and not eof
                    self.peak_open = max(self.peak_open, held)
                    self.peak_admitted = max(self.peak_admitted, admitted)
                    if not self.ready.is_set() and (len(socks) >= self.n or self.opens >= 4 * self.n or now > warm_end):
                        self.ready.set()
        finally:
            self.socks = [e[0] for e in socks.values()]

    def lines(self) -> list[str]:
        codes = ", ".join(f"{c} x{n}" for c, n in self.codes.most_common()) or "none"
        eof = "closed by the attacker and replaced" if self.replace_on_eof else "held on by the attacker"
        out = [
            f"attacker: {self.opens} connects ({self.refused} refused, {self.timeouts} not accepted within "
            f"{self.PENDING:.0f} s, {self.errors} local errors); the server reset {self.resets} and "
            f"sent FIN on {self.eofs} ({eof}); the attacker held at most {self.peak_open} open at once",
            f"first bytes the attacker got: {codes}",
        ]
        if self.greeted:
            out.append(f"at most {self.peak_admitted} held at once after a 220 greeting (admitted by the server)")
        return out


class IdleData(IdleFlood):
    title = "idle TCP connections on the passive ports, no session behind them"
    deadline_key = "data_idle_timeout"

    def __init__(self, srv, args, settings):
        lo, hi = srv.passive
        targets = [(SERVER_IP, p) for p in range(lo, hi + 1)]
        super().__init__(srv, args, settings, targets, greeted=False, replace_on_eof=False)

    def caps(self) -> str:
        s = self.settings
        return (
            f"{PASSIVE_COUNT} passive ports, data_idle_timeout={s['data_idle_timeout']} s, "
            f"keepalive={s['keepalive']} s, "
            f"max_connections={s['max_connections']}, max_connections_per_address={s['max_connections_per_address']}"
        )


class Prelogin(IdleFlood):
    title = "silent control connections piling up before login"
    deadline_key = "login_timeout"

    def __init__(self, srv, args, settings):
        super().__init__(srv, args, settings, [(SERVER_IP, srv.port)], greeted=True, replace_on_eof=True)

    def caps(self) -> str:
        s = self.settings
        return (
            f"max_connections={s['max_connections']}, max_connections_per_address="
            f"{s['max_connections_per_address']}, login_timeout={s['login_timeout']} s"
        )

    def checks(self, sampler: Sampler) -> list[tuple[bool, str]]:
        out = super().checks(sampler)
        cap = int(self.settings["max_connections_per_address"]) * len(set(self.sources))
        cap = min(cap, int(self.settings["max_connections"]))
        ok = self.peak_admitted <= cap
        out.append(
            (ok, f"the attacker held {self.peak_admitted} admitted (greeted) connections at once against a cap of {cap}"
             + ("" if ok else ": cap not enforced"))
        )
        return out


class PassFlood(Attack):
    """Pipelined USER + PASS-like lines on 8 connections, reconnecting when closed: four send
    ASCII PASS and Unicode words mixed, from the attack address; four send only Unicode words,
    from the next address (so an address blocked for the ASCII lines does not hide them)."""

    title = "pipelined PASS floods, ASCII and Unicode command words"
    deadline_key = "login_timeout"
    CONNS, BURST = 8, 100
    MIXED = ["PASS", "PA\u00df", "PA\u017fS", "PA\u00dfS"]
    UNICODE = ["PA\u00df", "PA\u017fS", "PA\u00dfS"]

    def __init__(self, srv, args, settings):
        super().__init__(srv, args, settings)
        self.sources = [args.attack_from, next_address(args.attack_from)]
        self.budget = args.attack_size
        self.lock = threading.Lock()
        self.by = {
            src: {"sent": 0, "pass": 0, "connects": 0, "fails": 0, "closed": 0, "codes": Counter(), "bypass": "-"}
            for src in self.sources
        }
        self.bypassed: list[str] = []

    def take(self, n: int) -> int:
        with self.lock:
            n = min(n, self.budget)
            self.budget -= n
            return n

    def burst(self, n: int, words: list[str], st: dict) -> bytes:
        out = []
        for _ in range(n):
            st["sent"] += 1
            if st["sent"] % 10 == 1:
                out.append(f"USER {USER}")
            else:
                out.append(f"{words[st['sent'] % len(words)]} wrong{st['sent']}")
                st["pass"] += 1
        return ("\r\n".join(out) + "\r\n").encode()

    def one(self, k: int) -> None:
        src = self.sources[k % 2]
        words, st = (self.MIXED if k % 2 == 0 else self.UNICODE), self.by[src]
        while not self.halt.is_set():
            try:
                s = new_socket(src)
                s.settimeout(5)
                s.connect((SERVER_IP, self.srv.port))
            except OSError:
                st["fails"] += 1
                if self.halt.wait(0.2):
                    return
                continue
            self.socks.append(s)
            self.register(s)
            st["connects"] += 1
            buf, open_ = b"", True
            while open_ and not self.halt.is_set():
                n = self.take(self.BURST)
                if n:
                    try:
                        s.settimeout(5)
                        s.sendall(self.burst(n, words, st))
                    except OSError:
                        open_ = False
                        break
                end = time.monotonic() + 0.5
                while time.monotonic() < end and not self.halt.is_set():
                    s.settimeout(max(0.01, end - time.monotonic()))
                    try:
                        got = s.recv(65536)
                    except socket.timeout:
                        break
                    except OSError:
                        got = b""
                    if not got:
                        open_ = False
                        break
                    buf += got
                    *done, buf = buf.split(b"\n")
                    for line in done:
                        if line[3:4] in (b" ", b"\r") and line[:3].isdigit():
                            st["codes"][line[:3].decode()] += 1
            if not open_:
                st["closed"] += 1
            quietly_close(s)
            if self.budget <= 0 and self.halt.wait(0.5):
                return

    def attack(self) -> None:
        threads = [threading.Thread(target=self.one, args=(k,), daemon=True) for k in range(self.CONNS)]
        for t in threads:
            t.start()
        self.halt.wait(1.0)  # the first bursts are out
        self.ready.set()
        for t in threads:
            t.join(max(0.1, 300 - (time.monotonic() - self.started)))

    def stop(self) -> None:
        self.halt.set()
        self.join(20)
        # After all this, can the attacker log in with a Unicode PASS and the right password?
        for src in self.sources:
            ctl = None
            try:
                ctl = Control((SERVER_IP, self.srv.port), src, time.monotonic() + 10, 10, self.register)
                ctl.reply("greeting")
                code, text = ctl.cmd(f"USER {USER}", "USER")
                if code == 331:
                    code, text = ctl.cmd(f"PA\u017fS {PASSWORD}", "PA\u017fS")
                self.by[src]["bypass"] = f"'{short(text, 50)}'"
                if code == 230:
                    self.bypassed.append(src)
            except StepError as e:
                self.by[src]["bypass"] = str(e)
            finally:
                if ctl:
                    ctl.close()

    def caps(self) -> str:
        s = self.settings
        return (
            f"failed_logins_max={s.get('failed_logins_max', '5')} per user and address, "
            f"failed_logins_per_address={s['failed_logins_per_address']}, "
            f"password_threads={s.get('password_threads', '0 (one per core)')}"
        )

    def lines(self) -> list[str]:
        out = []
        for src, words in zip(self.sources, ("ASCII + Unicode", "Unicode only")):
            st = self.by[src]
            codes = ", ".join(f"{c} x{n}" for c, n in sorted(st["codes"].items())) or "none"
            out += [
                f"from {src} ({words}): {st['sent']} lines ({st['pass']} PASS-like) on {st['connects']} connections "
                f"({st['fails']} connects failed, {st['closed']} closed by the server); replies: {codes}",
                f"  then USER + PA\u017fS <right password>: {st['bypass']}",
            ]
        return out

    def checks(self, sampler: Sampler) -> list[tuple[bool, str]]:
        out = super().checks(sampler)
        for src in self.bypassed:
            out.append((False, f"PA\u017fS + the right password logged in from {src} after the flood: bypassed"))
        for src, st in self.by.items():
            if st["codes"].get("230"):
                out.append((False, f"{st['codes']['230']} flood lines from {src} were answered 230"))
        return out


class QuitMidUpload(Attack):
    """Logged-in clients that start a STOR, send 64 KiB, keep the data connection open and
    silent, and QUIT (even ones) or close the control connection (odd ones). A quarter start
    together before the honest boxes, the rest one after another while they run."""

    title = "clients that QUIT or hang up mid-upload, data connection left open and silent"
    deadline_key = "data_idle_timeout"

    def __init__(self, srv, args, settings):
        super().__init__(srv, args, settings)
        self.n = max(4, args.attack_size // 50)
        self.outcomes: Counter = Counter()
        self.data: list = []  # [sock, closed by the server]
        self.ctl: list = []  # [sock, buffer or None once closed] of clients that sent QUIT
        self.codes: Counter = Counter()

    def watch(self) -> None:
        for entry in list(self.data):
            if not entry[1]:
                try:
                    entry[1] = not entry[0].recv(4096)
                except BlockingIOError:
                    pass
                except OSError:
                    entry[1] = True
        for entry in list(self.ctl):
            if entry[1] is None:
                continue
            try:
                got = entry[0].recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                got = b""
            if not got:
                entry[1] = None
                self.codes["(closed)"] += 1
                continue
            entry[1] += got
            *done, entry[1] = entry[1].split(b"\n")
            for line in done:
                if line[:3].isdigit() and line[3:4] in (b" ", b"\r"):
                    self.codes[line[:3].decode()] += 1

    def dying(self, k: int) -> None:
        ctl = None
        try:
            ctl = Control(
                (SERVER_IP, self.srv.port), self.sources[k % len(self.sources)], time.monotonic() + 20, 5, self.register
            )
            ctl.login()
            d = ctl.pasv()
            self.socks.append(d)
            ctl.cmd(f"STOR dying-{k}.ts", "STOR", {125, 150})
            d.settimeout(5)
            try:
                d.sendall(bytes(range(256)) * 256)  # 64 KiB, then silence
            except OSError as e:
                raise StepError("data send", str(e)) from None
            d.setblocking(False)
            self.data.append([d, False])
            if k % 2 == 0:
                ctl.send("QUIT", "QUIT")
                ctl.sock.setblocking(False)
                self.socks.append(ctl.sock)
                self.ctl.append([ctl.sock, ctl.buf])
                self.outcomes["sent QUIT mid-upload"] += 1
                ctl = None
            else:
                self.outcomes["closed the control connection mid-upload"] += 1
        except StepError as e:
            self.outcomes[f"did not get that far ({e.step}: {short(e.what, 40)})"] += 1
        finally:
            if ctl:
                ctl.close()

    def attack(self) -> None:
        pre = max(2, self.n // 4)
        start = [0.0] * pre + [1.0 + SPREAD * i / max(1, self.n - pre) for i in range(self.n - pre)]
        threads: list[threading.Thread] = []
        while not self.halt.is_set():
            now = time.monotonic() - self.started
            while len(threads) < self.n and start[len(threads)] <= now:
                t = threading.Thread(target=self.dying, args=(len(threads),), daemon=True)
                t.start()
                threads.append(t)
            if not self.ready.is_set() and (
                all(not t.is_alive() for t in threads[:pre]) or now > 12
            ):
                self.ready.set()
            self.watch()
            self.halt.wait(0.1)
        for t in threads:
            t.join(max(0.1, self.started + 30 - time.monotonic()))
        self.watch()

    def caps(self) -> str:
        s = self.settings
        return (
            f"data_idle_timeout={s['data_idle_timeout']} s, keepalive={s['keepalive']} s, "
            f"upload buffer {s.get('upload_buffer_kib', '128')} KiB per upload "
            f"(a fast sender's two up to {s.get('upload_buffer_max_kib', '4096')} KiB each), "
            f"max_connections_per_address={s['max_connections_per_address']}"
        )

    def lines(self) -> list[str]:
        closed = sum(1 for e in self.data if e[1])
        codes = ", ".join(f"{c} x{n}" for c, n in sorted(self.codes.items())) or "none"
        return [
            f"attacker: {self.n} dying clients: " + "; ".join(f"{n} {what}" for what, n in self.outcomes.most_common()),
            f"stalled data connections the server closed (FIN or reset) by the end: {closed} of {len(self.data)}",
            f"after QUIT, replies on those control connections: {codes}",
        ]


ATTACKS = {"idle-data": IdleData, "prelogin": Prelogin, "pass-flood": PassFlood, "quit-mid-upload": QuitMidUpload}


# -- one scenario --------------------------------------------------------------------------------


def run_scenario(name: str, rnd: int, args, ctx: dict) -> dict:
    base = ctx["base"] / f"r{rnd}-{name}"
    srv = Server(args.binary, base, ctx["users"], ctx["settings"])
    out = {"name": name, "boxes": [], "notes": [], "checks": [], "recovery": None, "title": "no attack"}
    t_start = time.monotonic()
    srv.start()
    ctx.setdefault("nofile", srv.nofile_limit())
    time.sleep(0.3)
    out["idle_fds"], cpu0 = srv.fds(), srv.cpu()
    attack = ATTACKS[name](srv, args, ctx["settings"]) if name != "baseline" else None
    sampler = Sampler(srv, attack)
    sampler.start()
    try:
        if attack:
            attack.start()
            attack.ready.wait(30)
        names = [f"r{rnd}-{name}-box{i:03d}.ts" for i in range(args.boxes)]
        out["boxes"] = honest_phase(srv, args, names, ctx["datas"])
        if attack:
            # Let the attack outlive the deadline it should meet, when that is short enough.
            limit = float(ctx["settings"][attack.deadline_key]) if attack.deadline_key else 0
            if 0 < limit <= 20:
                attack.halt.wait(max(0.0, attack.started + limit + SLACK + 2 - time.monotonic()))
            attack.stop()
            out["notes"], out["caps"], out["title"] = attack.lines(), attack.caps(), attack.title
        sampler.stop()
        if attack:
            out["checks"] = attack.checks(sampler)
            out["held"], out["oldest"] = sampler.peak_held, sampler.oldest
            attack.close()
        out["peak_rss"] = max(sampler.peak_rss, srv.status("VmHWM")) if srv.alive() else sampler.peak_rss
        out["peak_fds"] = sampler.peak_fds
        out["cpu"] = srv.cpu() - cpu0 if srv.alive() else float("nan")
        # Recovery: once the attacker has gone, does a fresh upload get through?
        t0, probe = time.monotonic(), None
        while srv.alive() and time.monotonic() - t0 < 15:
            probe = honest_upload(srv, f"r{rnd}-{name}-after.ts", ctx["datas"][0][: 64 * 1024], 0, box_timeout=8)
            if probe["ok"]:
                break
            time.sleep(0.5)
        if probe is None:
            out["recovery"] = "server not running"
        elif probe["ok"]:
            out["recovery"] = f"yes, a fresh upload succeeded {time.monotonic() - t0:.1f} s after the attacker left"
        else:
            out["recovery"] = f"NO within 15 s ({probe['step']}: {probe['error']})"
        time.sleep(1)
        out["end_fds"] = srv.fds() if srv.alive() else None
        out["alive"] = srv.alive()
        out["exit"] = None if srv.alive() else srv.proc.returncode
    finally:
        if attack:
            attack.halt.set()
            attack.close()
        sampler.halt.set()
        srv.stop()
        log = srv.log()
        out["panics"] = [line for line in log.splitlines() if "panicked" in line]
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    out["wall"] = time.monotonic() - t_start
    return out


# -- report --------------------------------------------------------------------------------------


def fmt_s(v) -> str:
    return "    -   " if v is None else f"{v:6.2f} s"


def mib(kib) -> str:
    return f"{kib / 1024:7.1f} MiB"


def summarize(results: dict, order: list[str], args) -> int:
    def stats(rs):
        boxes = [b for r in rs for b in r["boxes"]]
        times = sorted(b["seconds"] for b in boxes if b["ok"])
        return {
            "n": len(boxes),
            "ok": sum(b["ok"] for b in boxes),
            "median": statistics.median(times) if times else None,
            "worst": times[-1] if times else None,
            "rss": max(r.get("peak_rss", 0) for r in rs),
            "fds": max(r.get("peak_fds", 0) for r in rs),
            "idle_fds": max(r.get("idle_fds", 0) for r in rs),
            "cpu": statistics.median(r.get("cpu", float("nan")) for r in rs),
        }

    base = stats(results["baseline"])
    missed = 0
    print("\n== Summary: honest uploads, connect to 226, every round; ratios against the baseline ==")
    print(
        f"{'scenario':16} {'ok':>7} {'median':>8} {'worst':>8} {'x median':>9} {'x worst':>8}"
        f" {'peak RSS':>11} {'peak fds':>9} {'CPU':>7}"
    )
    for name in order:
        s = stats(results[name])
        rm = s["median"] / base["median"] if s["median"] and base["median"] else None
        rw = s["worst"] / base["worst"] if s["worst"] and base["worst"] else None
        print(
            f"{name:16} {s['ok']:>3}/{s['n']:<3} {fmt_s(s['median'])} {fmt_s(s['worst'])}"
            f" {'-' if rm is None else f'{rm:.2f}x':>9} {'-' if rw is None else f'{rw:.2f}x':>8}"
            f" {mib(s['rss'])} {s['fds']:>9} {s['cpu']:6.1f}s"
        )
        s["rm"], s["rw"] = rm, rw
        results[name + "/stats"] = s

    print("\n== Details ==")
    for name in order:
        rs, s = results[name], results[name + "/stats"]
        title = rs[0]["title"]
        print(f"\n{name}: {title}")
        if name != "baseline":
            print(f"  caps: {rs[0].get('caps', '')}; server open-files limit {results['nofile']}")
        print(
            f"  server: {s['idle_fds']} fds idle at start, peak {s['fds']} fds, peak RSS {mib(s['rss']).strip()}, "
            f"{s['cpu']:.1f} CPU-s (median of rounds)"
        )
        for i, r in enumerate(rs):
            tag = f"  round {i + 1}: " if len(rs) > 1 else "  "
            for line in r["notes"]:
                print(f"{tag}{line}")
                tag = " " * len(tag)
            if "held" in r:
                extra = r.get("peak_fds", 0) - r.get("idle_fds", 0)
                per = f", {extra / r['held']:.1f} fds above idle per such socket" if r["held"] > 10 * args.boxes else ""
                print(
                    f"{tag}server side: at most {r['held']} sockets to the attacker held open at once "
                    f"(longest {r['oldest']:.1f} s){per}"
                )
                tag = " " * len(tag)
            end = "server exited with %s" % r["exit"] if not r.get("alive", True) else f"{r.get('end_fds')} fds"
            if name == "baseline":
                print(f"{tag}at the end: {end}; a further upload: {r['recovery'].split(',')[0]}")
            else:
                print(f"{tag}after the attack: {end}; recovered: {r['recovery']}")
        checks: list[tuple[bool, str]] = []
        if s["ok"] < s["n"]:
            failures = Counter(f"{b['step']}: {b['error']}" for r in rs for b in r["boxes"] if not b["ok"])
            checks.append((False, f"{s['n'] - s['ok']} of {s['n']} honest uploads failed:"))
            for what, n in failures.most_common(6):
                checks.append((False, f"    {n} x {what}"))
            if len(failures) > 6:
                checks.append((False, f"    ... and {len(failures) - 6} other reasons"))
        elif name != "baseline":
            checks.append((True, f"all {s['n']} honest uploads succeeded, bytes on disk and KEY INFO verified"))
        if name != "baseline":
            for label, ratio in (("median", s["rm"]), ("worst", s["rw"])):
                if ratio is not None:
                    checks.append((ratio <= 2.0, f"{label} time {ratio:.2f}x the baseline's (target 2x)"))
            # The same check from every round, once: the first round that missed it, if any.
            groups: dict = {}
            for r in rs:
                for ok, text in r["checks"]:
                    groups.setdefault(re.sub(r"[0-9.]+", "#", text.split(":")[0]), []).append((ok, text))
            for items in groups.values():
                bad = [t for ok, t in items if not ok]
                if not bad:
                    checks.append((True, items[0][1]))
                else:
                    many = f" (in {len(bad)} of {len(rs)} rounds)" if len(rs) > 1 else ""
                    checks.append((False, bad[0] + many))
        for r in rs:
            if not r.get("alive", True):
                checks.append((False, f"the server exited (status {r['exit']})"))
            if r["recovery"] and r["recovery"].startswith("NO"):
                checks.append((False, "the server did not recover after the attack"))
            if r["panics"]:
                checks.append((False, f"{len(r['panics'])} panics in the log, first: {short(r['panics'][0], 90)}"))
        for ok, text in checks:
            print(f"  {'ok  ' if ok else 'MISS'} {text}")
            missed += not ok and not text.startswith("    ")
    print()
    if missed:
        print(f"{missed} target(s) missed (MISS above).")
    else:
        print("Every target met.")
    return 1 if missed else 0


# -- main ----------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--boxes", type=int, default=20)
    ap.add_argument("--attack-size", type=int, default=3000)
    ap.add_argument("--binary", type=Path, default=REPO / "target" / "release" / "ftpd")
    ap.add_argument("--only", default="", help="comma-separated scenarios: " + ", ".join(SCENARIOS))
    ap.add_argument("--mib", type=float, default=2.0, help="size of each honest upload")
    ap.add_argument("--rate-kib", type=float, default=1024, help="pace of each honest upload")
    ap.add_argument("--attack-from", default="127.0.0.2", help="attackers' source address (loopback)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an ftpd setting")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where the servers keep their files")
    ap.add_argument("--keep", action="store_true", help="keep the servers' directories and logs")
    args = ap.parse_args()

    only = [s.strip() for s in args.only.split(",") if s.strip()] or SCENARIOS
    unknown = [s for s in only if s not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    if not args.attack_from.startswith("127."):
        ap.error("--attack-from must be a loopback address (127.x.x.x)")
    if not args.binary.is_file():
        print(f"{args.binary} not found: cargo build --release -p ftpd, or pass --binary", file=sys.stderr)
        return 2
    settings = dict(SETTINGS)
    for kv in args.set:
        k, sep, v = kv.partition("=")
        if not sep:
            ap.error(f"--set {kv}: expected KEY=VALUE")
        settings[k.strip().lower().removeprefix("ftpd_")] = v.strip()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.attack_size * 8 + 4096
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    def on_term(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    base = Path(tempfile.mkdtemp(prefix="ftpd-hostile-", dir=args.dir))
    size = int(args.mib * (1 << 20))
    block = random.Random(1).randbytes(min(size, 1 << 20) or 1)
    ctx = {
        "base": base,
        "users": base / "users.json",
        "settings": settings,
        "datas": [box_data(i, size, block) for i in range(args.boxes)],
    }
    order = ["baseline", *only]
    results: dict = {name: [] for name in order}
    started = time.monotonic()
    try:
        env = dict(os.environ, FTPD_USERS_FILE=str(ctx["users"]))
        env.update({f"FTPD_{k.upper()}": v for k, v in settings.items()})
        add = subprocess.run(
            [str(args.binary), "user", "add", USER, "--password-stdin"],
            input=PASSWORD + "\n", env=env, capture_output=True, text=True, timeout=60,
        )
        if add.returncode:
            print(f"ftpd user add failed: {add.stderr.strip()}", file=sys.stderr)
            return 2
        built = time.strftime("%Y-%m-%d %H:%M", time.localtime(args.binary.stat().st_mtime))
        print(f"ftpd: {args.binary} (built {built})")
        print(
            f"{args.rounds} round(s); {args.boxes} honest boxes from {HONEST_IP}, each {args.mib:g} MiB at "
            f"{args.rate_kib:g} KiB/s, starting over {SPREAD:g} s; attack size {args.attack_size}, from "
            f"{args.attack_from}; {PASSIVE_COUNT} passive ports"
        )
        print("settings: " + " ".join(f"FTPD_{k.upper()}={v}" for k, v in settings.items()))
        for rnd in range(args.rounds):
            k = rnd % len(order)
            for name in order[k:] + order[:k]:
                print(f"round {rnd + 1}/{args.rounds}: {name:16} ", end="", flush=True)
                try:
                    r = run_scenario(name, rnd + 1, args, ctx)
                except RuntimeError as e:
                    print(f"cannot run: {e}")
                    return 2
                results[name].append(r)
                results["nofile"] = ctx.get("nofile", "?")
                ok = sum(b["ok"] for b in r["boxes"])
                times = [b["seconds"] for b in r["boxes"] if b["ok"]]
                med = f"median {statistics.median(times):.2f} s" if times else "no upload succeeded"
                print(
                    f"{ok}/{len(r['boxes'])} ok, {med}, peak {r.get('peak_fds', 0)} fds, "
                    f"{r.get('peak_rss', 0) / 1024:.0f} MiB ({r['wall']:.0f} s)"
                )
        status = summarize(results, order, args)
        print(f"({time.monotonic() - started:.0f} s in all)")
        return status
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped, sockets closed")
        return 130
    finally:
        if args.keep:
            print(f"servers' files and logs kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
