"""Servers the benchmarks start side by side on loopback: ftpd, a plain libunftp server built
from the same libunftp (ftpd/examples/plain_libunftp.rs) and vsftpd (Debian package)."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))  # helpers.py, shared with the end-to-end tests
from helpers import free_port, free_port_range, wait_listening  # noqa: E402

RELEASE = REPO / "target" / "release"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Server:
    name = "?"
    user = "anonymous"
    password = "x"
    upload_dir = ""

    def __init__(self, base: Path):
        self.base = base
        self.base.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.passive = free_port_range(50)
        self.proc: subprocess.Popen | None = None

    def url(self, name: str) -> str:
        d = f"{self.upload_dir}/" if self.upload_dir else ""
        return f"ftp://{self.user}:{self.password}@127.0.0.1:{self.port}/{d}{name}"

    def tree_cpu(self) -> dict[int, float]:
        """CPU seconds (user + system) of each live process in the server's tree. Its own
        time only: a child's time also shows in its parent's once reaped, and the child is
        counted by its own samples."""
        assert self.proc is not None
        stats = {}
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                stats[int(p.name)] = (int(fields[1]), sum(int(x) for x in fields[11:13]) / CLK_TCK)
        tree, todo = set(), [self.proc.pid]
        while todo:
            pid = todo.pop()
            tree.add(pid)
            todo.extend(c for c, (ppid, _) in stats.items() if ppid == pid and c not in tree)
        return {p: stats[p][1] for p in tree if p in stats}

    def rss_kib(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Ftpd(Server):
    name = "ftpd"
    user = "bench"
    password = "bench-password"

    def __init__(self, base: Path, **settings: str):
        super().__init__(base)
        self.root = base / "root"
        lo, hi = self.passive
        self.env = dict(os.environ)
        self.env.update(
            {
                "FTPD_LISTEN": f"127.0.0.1:{self.port}",
                "FTPD_PASSIVE_PORTS": f"{lo}-{hi}",
                "FTPD_ROOT": str(self.root),
                "FTPD_STATE_DIR": str(base / "state"),
                "FTPD_USERS_FILE": str(base / "users.json"),
                "FTPD_LOG_LEVEL": "warn",
            }
        )
        self.env.update({f"FTPD_{k.upper()}": str(v) for k, v in settings.items()})
        if not (base / "users.json").exists():
            subprocess.run(
                [str(RELEASE / "ftpd"), "user", "add", self.user, "--password-stdin"],
                input=self.password + "\n",
                env=self.env,
                check=True,
                capture_output=True,
                text=True,
            )

    def start(self) -> "Ftpd":
        self.proc = subprocess.Popen(
            [str(RELEASE / "ftpd"), "serve"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.base / "ftpd.log", "ab"),
        )
        wait_listening("127.0.0.1", self.port, self.proc, self.name)
        return self

    def file(self, name: str) -> Path:
        return self.root / self.user / name


class PlainLibunftp(Server):
    name = "libunftp"

    def start(self) -> "PlainLibunftp":
        self.root = self.base / "root"
        self.root.mkdir(exist_ok=True)
        lo, hi = self.passive
        self.proc = subprocess.Popen(
            [str(RELEASE / "examples" / "plain_libunftp"), f"127.0.0.1:{self.port}", str(self.root), f"{lo}-{hi}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=dict(os.environ, RUST_LOG="error"),
        )
        wait_listening("127.0.0.1", self.port, self.proc, self.name)
        return self

    def file(self, name: str) -> Path:
        return self.root / name


class Vsftpd(Server):
    name = "vsftpd"
    upload_dir = "up"

    def start(self) -> "Vsftpd":
        exe = shutil.which("vsftpd") or "/usr/sbin/vsftpd"
        self.root = self.base / "root"
        (self.root / "up").mkdir(parents=True, exist_ok=True)
        empty = self.base / "empty"
        empty.mkdir(exist_ok=True)
        shutil.chown(self.root / "up", "ftp")
        os.chmod(self.root, 0o755)
        lo, hi = self.passive
        conf = self.base / "vsftpd.conf"
        conf.write_text(
            "\n".join(
                [
                    "listen=YES",
                    "listen_address=127.0.0.1",
                    f"listen_port={self.port}",
                    "anonymous_enable=YES",
                    "anon_upload_enable=YES",
                    "anon_other_write_enable=YES",
                    "write_enable=YES",
                    "no_anon_password=YES",
                    f"anon_root={self.root}",
                    "local_enable=NO",
                    f"pasv_min_port={lo}",
                    f"pasv_max_port={hi}",
                    f"secure_chroot_dir={empty}",
                    "seccomp_sandbox=NO",
                    "background=NO",
                    "xferlog_enable=NO",
                    "",
                ]
            )
        )
        self.proc = subprocess.Popen([exe, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening("127.0.0.1", self.port, self.proc, self.name)
        return self

    def file(self, name: str) -> Path:
        return self.root / "up" / name


class CpuMeter:
    """Samples a server's process tree while a transfer runs: vsftpd reaps its per-session
    processes with SIGCHLD ignored, so their time never reaches the master's counters."""

    def __init__(self, server: Server, every: float = 0.02):
        import threading

        self.server, self.every = server, every
        self.first = server.tree_cpu()
        self.last = dict(self.first)
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            self.last.update(self.server.tree_cpu())
            time.sleep(self.every)

    def stop(self) -> float:
        self.stop_flag.set()
        self.thread.join()
        self.last.update(self.server.tree_cpu())
        return sum(v - self.first.get(p, 0.0) for p, v in self.last.items())
