"""Shared fixtures for the end-to-end tests: a real `ftpd` process on free loopback ports.

Every test gets its own server with a temporary root, state directory and users file. The
binary is `target/release/ftpd` (override with FTPD_BIN); `tests/run` builds it first.
"""

import ftplib
import os
import random
import signal
import socket
import subprocess
import time
import zlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FTPD = Path(os.environ.get("FTPD_BIN", REPO / "target" / "release" / "ftpd"))
STB_UPLOAD = Path(os.environ.get("STB_UPLOAD_BIN", REPO / "target" / "release" / "stb-upload"))

USERS = {"alice": "alice-pw", "bob": "bob-pw"}


def crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def key(value: int) -> str:
    """A KEY value as the protocol writes it."""
    return "0x%08X" % value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for ports it picks itself (bind to 0, outgoing connections)."""
    try:
        lo, hi = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def free_port_range(count: int = 20) -> tuple[int, int]:
    """A run of `count` ports that are free right now, outside the kernel's ephemeral range so
    that no port from free_port() (a server's listen port) or a client's socket can fall in it."""
    lo, hi = ephemeral_ports()
    start, end = (1024, lo) if lo - 1024 >= count * 10 else (hi + 1, 65536)
    for _ in range(200):
        base = random.randrange(start, end - count)
        ok = True
        for p in range(base, base + count):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base, base + count - 1
    raise RuntimeError("no free port range")


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-looking test data."""
    rnd = random.Random(seed)
    block = rnd.randbytes(min(size, 1 << 16) or 1)
    out = bytearray()
    i = 0
    while len(out) < size:
        out += bytes(b ^ (i & 0xFF) for b in block[: size - len(out)]) if i else block[: size - len(out)]
        i += 1
    return bytes(out)


class Ftpd:
    """A real ftpd process; start, kill, restart, and log in to it."""

    def __init__(self, base: Path, **settings: str):
        self.base = base
        self.root = base / "root"
        self.state = base / "state"
        self.users_file = base / "users.json"
        self.port = free_port()
        lo, hi = free_port_range()
        self.passive = (lo, hi)
        # FTPD_BIN picks the binary under test; it is not a setting.
        self.env = {k: v for k, v in os.environ.items() if k != "FTPD_BIN"}
        self.env.update(
            {
                "FTPD_LISTEN": f"127.0.0.1:{self.port}",
                "FTPD_PASSIVE_PORTS": f"{lo}-{hi}",
                "FTPD_ROOT": str(self.root),
                "FTPD_STATE_DIR": str(self.state),
                "FTPD_USERS_FILE": str(self.users_file),
                "FTPD_LOG_LEVEL": "info",
                "FTPD_SHUTDOWN_GRACE": "5",
                "FTPD_TAKEOVER_WAIT": "5",
            }
        )
        self.env.update({f"FTPD_{k.upper()}": str(v) for k, v in settings.items()})
        # A test may choose the listen address (another interface, a wildcard).
        host, _, port = self.env["FTPD_LISTEN"].rpartition(":")
        self.host = "127.0.0.1" if host in ("0.0.0.0", "[::]") else host.strip("[]")
        self.port = int(port)
        self.proc: subprocess.Popen | None = None
        self.log_path = base / "ftpd.log"
        self.out_path = base / "ftpd.out"
        for name, pw in USERS.items():
            if not self.users_file.exists() or name not in self.users_file.read_text():
                self.cli("user", "add", name, "--password-stdin", "--iterations", "1000", input=pw + "\n")

    def cli(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(FTPD), *args], env=self.env, input=input, capture_output=True, text=True, check=check, timeout=60
        )

    def start(self) -> "Ftpd":
        assert self.proc is None or self.proc.poll() is not None
        log = open(self.log_path, "ab")
        out = open(self.out_path, "ab")
        self.proc = subprocess.Popen([str(FTPD), "serve"], env=self.env, stdout=out, stderr=log)
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ftpd exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                    s.recv(100)
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("ftpd did not start listening:\n" + self.log())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        """SIGKILL: no chance to save anything."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise

    def restart(self) -> "Ftpd":
        self.stop()
        return self.start()

    def ftp(self, user: str = "alice", timeout: float = 30) -> ftplib.FTP:
        f = ftplib.FTP()
        f.connect(self.host, self.port, timeout=timeout)
        f.login(user, USERS[user])
        return f

    def url(self, user: str = "alice", path: str = "") -> str:
        return f"ftp://{user}:{USERS[user]}@127.0.0.1:{self.port}/{path}"

    def file(self, user: str, name: str) -> Path:
        """Where an uploaded file lands on disk."""
        return self.root / user / name.lstrip("/")


@pytest.fixture
def ftpd_factory(tmp_path):
    """Make servers with custom settings: `ftpd_factory(durability="none")`."""
    servers: list[Ftpd] = []

    def make(**settings) -> Ftpd:
        s = Ftpd(tmp_path / f"srv{len(servers)}", **settings)
        servers.append(s)
        return s.start()

    yield make
    for s in servers:
        try:
            s.stop(10)
        except Exception:
            pass
        assert "panicked" not in s.log(), s.log()


@pytest.fixture
def ftpd(ftpd_factory) -> Ftpd:
    return ftpd_factory()


def info(f: ftplib.FTP, path: str = "") -> dict:
    """KEY INFO as a dict."""
    resp = f.sendcmd(("SITE KEY INFO " + path).rstrip())
    lines = resp.splitlines()
    assert lines[0].startswith("213-"), resp
    assert lines[-1].startswith("213 "), resp
    out = {}
    for line in lines[1:-1]:
        k, _, v = line.strip().partition("=")
        out[k] = v
    return out


def wait_for_disk_size(path, at_least: int, timeout: float = 20) -> int:
    """The size of `path` once the server has written at least `at_least` bytes to it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        size = path.stat().st_size if path.exists() else 0
        if size >= at_least:
            return size
        time.sleep(0.02)
    raise AssertionError(f"{path} did not reach {at_least} bytes")


def wait_for_settled_size(f: ftplib.FTP, path: str, timeout: float = 10) -> int:
    """SIZE once the server has stored what a dropped transfer sent (a box reconnects later
    than a test does)."""
    deadline = time.time() + timeout
    last = -1
    while True:
        try:
            size = int(f.sendcmd(f"SIZE {path}").split()[1])
        except ftplib.error_perm:
            size = -1
        if size == last and size >= 0 or time.time() > deadline:
            return size
        last = size
        time.sleep(0.2)
