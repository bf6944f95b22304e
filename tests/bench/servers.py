"""Servers the benchmarks start side by side on loopback: ftpd, a plain libunftp server built
from the same libunftp (ftpd/examples/plain_libunftp.rs), vsftpd (Debian package; anonymous
uploads, or virtual users through PAM's pam_userdb) and pure-ftpd (Debian package, installed or
unpacked from its .deb; virtual users in a puredb). Also what the benchmarks read of a server's
process tree in /proc: CPU time, PSS."""

import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))  # helpers.py, shared with the end-to-end tests
from helpers import free_port, free_port_range, stop_process, wait_listening  # noqa: E402

RELEASE = REPO / "target" / "release"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_table() -> dict[int, tuple[int, float]]:
    """Every live process: pid -> (parent pid, its own CPU seconds, user + system). Plain
    os/open calls: with thousands of processes (a forking server's sessions) this is read
    several times a second."""
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            stats[int(name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return stats


def descendants(root: int, stats: dict[int, tuple[int, float]]) -> set[int]:
    """`root` and every process below it in a proc_table()."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(c for c in children.get(pid, ()) if c not in tree)
    return tree


def pss_kib(pid: int) -> int:
    """A process's proportional set size in KiB (0 once it has gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


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

    def tree_cpu(self, stats: dict[int, tuple[int, float]] | None = None) -> dict[int, float]:
        """CPU seconds (user + system) of each live process in the server's tree. Its own
        time only: a child's time also shows in its parent's once reaped, and the child is
        counted by its own samples. `stats`: a proc_table() already read."""
        assert self.proc is not None
        stats = proc_table() if stats is None else stats
        return {p: stats[p][1] for p in descendants(self.proc.pid, stats) if p in stats}

    def tree_pss_kib(self, stats: dict[int, tuple[int, float]] | None = None) -> tuple[int, int]:
        """PSS in KiB summed over the server's process tree (/proc/PID/smaps_rollup: shared
        pages are split among the processes that map them, so the sum is the tree's share of
        memory), and how many processes were counted."""
        assert self.proc is not None
        stats = proc_table() if stats is None else stats
        pids = [p for p in descendants(self.proc.pid, stats) if p in stats]
        return sum(pss_kib(p) for p in pids), len(pids)

    def rss_kib(self, field: str = "VmRSS") -> int:
        """The server process's resident set in KiB (`field` "VmHWM": its peak so far)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        stop_process(self.proc, 15)

    def end_sessions(self) -> None:
        """SIGTERM to every process below the server's own: the sessions a forking server
        leaves running when its listener goes."""
        if self.proc and self.proc.poll() is None:
            for pid in sorted(descendants(self.proc.pid, proc_table()) - {self.proc.pid}):
                try:
                    os.kill(pid, signal.SIGTERM)
                except OSError:
                    pass


def ftpd_binary() -> Path:
    """The ftpd under test: BENCH_FTPD_BIN (to compare two builds), else the release build."""
    return Path(os.environ.get("BENCH_FTPD_BIN", RELEASE / "ftpd"))


class Ftpd(Server):
    name = "ftpd"
    user = "bench"
    password = "bench-password"

    def __init__(self, base: Path, binary: Path | None = None, **settings: str):
        super().__init__(base)
        # Another build to compare with (upload.py --baseline-ftpd), else the one under test.
        self.binary = binary or ftpd_binary()
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
                [str(self.binary), "user", "add", self.user, "--password-stdin"],
                input=self.password + "\n",
                env=self.env,
                check=True,
                capture_output=True,
                text=True,
            )

    def start(self) -> "Ftpd":
        self.proc = subprocess.Popen(
            [str(self.binary), "serve"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.base / "ftpd.log", "ab"),
        )
        wait_listening("127.0.0.1", self.port, self.proc, self.name)
        return self

    def file(self, name: str) -> Path:
        return self.user_file(self.user, name)

    def user_file(self, user: str, name: str) -> Path:
        return self.root / user / name


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
    """vsftpd with anonymous uploads into <root>/up."""

    name = "vsftpd"
    upload_dir = "up"
    extra: list[str] = []  # further vsftpd.conf lines (limits, say), set before start()

    def logins(self) -> list[str]:
        """The configuration lines that say who logs in and where files go."""
        (self.root / "up").mkdir(parents=True, exist_ok=True)
        shutil.chown(self.root / "up", "ftp")
        return [
            "anonymous_enable=YES",
            "anon_upload_enable=YES",
            "anon_other_write_enable=YES",
            "write_enable=YES",
            "no_anon_password=YES",
            f"anon_root={self.root}",
            "local_enable=NO",
        ]

    def start(self) -> "Vsftpd":
        exe = shutil.which("vsftpd") or "/usr/sbin/vsftpd"
        self.root = self.base / "root"
        self.root.mkdir(parents=True, exist_ok=True)
        empty = self.base / "empty"
        empty.mkdir(exist_ok=True)
        os.chmod(self.root, 0o755)
        lo, hi = self.passive
        conf = self.base / "vsftpd.conf"
        conf.write_text(
            "\n".join(
                [
                    "listen=YES",
                    "listen_address=127.0.0.1",
                    f"listen_port={self.port}",
                    *self.logins(),
                    *self.extra,
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

    def user_file(self, user: str, name: str) -> Path:
        """Where `user`'s upload `name` lands (every anonymous login shares <root>/up)."""
        return self.file(name)


def sha512_crypt(password: str) -> str:
    """A crypt(3) SHA-512 hash ($6$, 5,000 rounds: what `openssl passwd -6` and `mkpasswd -m
    sha-512` write), for the virtual users of VsftpdVirtual and PureFtpd."""
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt  # gone from Python 3.13: openssl below

        return crypt.crypt(password, crypt.mksalt(crypt.METHOD_SHA512))
    except ImportError:
        cmd = ["openssl", "passwd", "-6", "-stdin"]
        return subprocess.run(cmd, input=password + "\n", capture_output=True, text=True).stdout.strip()


def ftp_owner() -> tuple[str, int, int]:
    """The local account virtual users act as: `ftp` (made by Debian's vsftpd), else `nobody`."""
    for name in ("ftp", "nobody"):
        try:
            pw = pwd.getpwnam(name)
            return name, pw.pw_uid, pw.pw_gid
        except KeyError:
            continue
    raise RuntimeError("neither an ftp nor a nobody account")


class VsftpdVirtual(Vsftpd):
    """vsftpd with virtual users: PAM's pam_userdb checks each password against its crypt(3)
    hash in a Berkeley DB (written with db_load, Debian package db-util) through a PAM service
    file /etc/pam.d/ftpd-bench-*, removed again by stop(). Every user acts as the local user
    `ftp`, chrooted to a home of its own, <root>/<user>. `accounts`: (user, crypt hash)."""

    upload_dir = ""

    def __init__(self, base: Path, accounts: list[tuple[str, str]]):
        super().__init__(base)
        self.accounts = accounts
        self.pam = Path("/etc/pam.d") / f"ftpd-bench-{os.getpid()}-{self.port}"

    def logins(self) -> list[str]:
        owner, uid, gid = ftp_owner()
        pairs = self.base / "users.txt"  # db_load -T: a key line, then its value line
        pairs.write_text("".join(f"{user}\n{hashed}\n" for user, hashed in self.accounts))
        db = self.base / "users"  # pam_userdb adds the .db
        subprocess.run(["db_load", "-T", "-t", "hash", "-f", str(pairs), f"{db}.db"], check=True, capture_output=True)
        self.pam.write_text(f"auth required pam_userdb.so db={db} crypt=crypt\naccount required pam_permit.so\n")
        for user, _ in self.accounts:
            home = self.root / user
            home.mkdir(exist_ok=True)
            os.chown(home, uid, gid)
        return [
            "anonymous_enable=NO",
            "local_enable=YES",
            "write_enable=YES",
            "guest_enable=YES",
            f"guest_username={owner}",
            "virtual_use_local_privs=YES",
            "user_sub_token=$USER",
            f"local_root={self.root}/$USER",
            "chroot_local_user=YES",
            "allow_writeable_chroot=YES",
            f"pam_service_name={self.pam.name}",
        ]

    def user_file(self, user: str, name: str) -> Path:
        return self.root / user / name

    def stop(self) -> None:
        self.end_sessions()
        super().stop()
        self.pam.unlink(missing_ok=True)


def pure_ftpd_binaries(cache: Path) -> tuple[Path, Path, str]:
    """pure-ftpd and pure-pw, and how they were found: installed; else installed now with
    apt-get (without removing anything: Debian's pure-ftpd conflicts with vsftpd); else
    unpacked (`apt-get download`, `dpkg -x`) from pure-ftpd's and pure-ftpd-common's .debs into
    `cache`, kept for the next run. Raises RuntimeError when none of these works."""

    def found() -> tuple[Path, Path] | None:
        exe, pw = shutil.which("pure-ftpd"), shutil.which("pure-pw")
        return (Path(exe), Path(pw)) if exe and pw else None

    if found():
        return (*found(), "installed")
    install = subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-remove", "pure-ftpd"],
        capture_output=True,
        text=True,
        env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
    )
    if install.returncode == 0 and found():
        return (*found(), "installed now with apt-get")
    why = (install.stderr.strip().splitlines() or ["?"])[-1]
    exe, pw = cache / "usr/sbin/pure-ftpd", cache / "usr/bin/pure-pw"
    if not (exe.exists() and pw.exists()):
        debs = cache / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        get = ["apt-get", "download", "-q", "pure-ftpd", "pure-ftpd-common"]
        if subprocess.run(get, cwd=debs, capture_output=True).returncode:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
            got = subprocess.run(get, cwd=debs, capture_output=True, text=True)
            if got.returncode:
                raise RuntimeError(f"apt-get install: {why}; apt-get download: {got.stderr.strip()[-200:]}")
        for deb in sorted(debs.glob("*.deb")):
            subprocess.run(["dpkg", "-x", str(deb), str(cache)], check=True, capture_output=True)
    return exe, pw, f"unpacked from its .deb into {cache}; apt-get install said: {why}"


class PureFtpd(Server):
    """pure-ftpd in the foreground (standalone, one process per session plus its privileged
    helper) with virtual users in a puredb (`pure-pw mkdb`), each acting as the local user
    `ftp` and chrooted to a home of its own, <root>/<user>, made at its first login (-j).
    pure-ftpd caps its clients at half its passive range, so the range is sized from
    `max_clients`. `accounts`: (user, crypt hash), as pure-pw writes them with the hash it is
    given; `binaries`: pure_ftpd_binaries()."""

    name = "pure-ftpd"

    def __init__(self, base: Path, accounts: list[tuple[str, str]], max_clients: int, binaries: tuple[Path, Path]):
        super().__init__(base)
        self.accounts, self.max_clients, self.binaries = accounts, max_clients, binaries
        self.passive = free_port_range(2 * max_clients + 2)
        self.root = base / "root"

    def start(self) -> "PureFtpd":
        exe, pure_pw = self.binaries
        _, uid, gid = ftp_owner()
        self.root.mkdir(parents=True, exist_ok=True)
        passwd, pdb = self.base / "pureftpd.passwd", self.base / "pureftpd.pdb"

        def line(user: str, hashed: str) -> str:  # pure-pw's passwd format; /./: chroot there
            return f"{user}:{hashed}:{uid}:{gid}::{self.root / user}/./::::::::::::\n"

        passwd.write_text("".join(line(user, hashed) for user, hashed in self.accounts))
        subprocess.run([str(pure_pw), "mkdb", str(pdb), "-f", str(passwd)], check=True, capture_output=True)
        lo, hi = self.passive
        cmd = [str(exe), "-S", f"127.0.0.1,{self.port}", "-p", f"{lo}:{hi}", "-c", str(self.max_clients)]
        cmd += ["-C", str(self.max_clients), "-l", f"puredb:{pdb}", "-j", "-E", "-A", "-H"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.base / "pure-ftpd.log", "ab"))
        wait_listening("127.0.0.1", self.port, self.proc, self.name)
        return self

    def user_file(self, user: str, name: str) -> Path:
        return self.root / user / name

    def stop(self) -> None:
        # pure-ftpd's listener runs in a child of the process started; sessions below that.
        self.end_sessions()
        super().stop()


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
