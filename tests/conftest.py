"""Shared fixtures for the end-to-end tests: a real `ftpd` process on free loopback ports.

Every test gets its own server with a temporary root, state directory and users file. The
binary is `target/release/ftpd` (override with FTPD_BIN; see helpers.py); `tests/run` builds it
first. The plain functions the tests share are in helpers.py.
"""

import ftplib
import os
import signal
import subprocess
from pathlib import Path

import pytest

from helpers import FTPD, USERS, free_port, free_port_range, wait_listening


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
        wait_listening(self.host, self.port, self.proc, "ftpd", log=self.log)
        return self

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

