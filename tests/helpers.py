"""Plain helpers the end-to-end tests share: the binaries under test and the accounts, test data
and its CRC, uploads and downloads with ftplib, raw control connections, running stb-upload,
and waiting for the server. Fixtures live in conftest.py.

Only the standard library: the benchmark scripts in tests/bench import this too, without pytest.
"""

import ftplib
import io
import json
import os
import random
import signal
import socket
import struct
import subprocess
import threading
import time
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FTPD = Path(os.environ.get("FTPD_BIN", REPO / "target" / "release" / "ftpd"))
STB_UPLOAD = Path(os.environ.get("STB_UPLOAD_BIN", REPO / "target" / "release" / "stb-upload"))

USERS = {"alice": "alice-pw", "bob": "bob-pw"}

KiB = 1 << 10
MiB = 1 << 20


# -- data and its CRC ----------------------------------------------------------------------------


def crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def key(value: int) -> str:
    """A KEY value as the protocol writes it."""
    return "0x%08X" % value


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


def data_of(size: int, seed: int) -> bytes:
    """`size` random bytes, the same for the same seed."""
    return random.Random(seed).randbytes(size)


# -- ports ---------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
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


# -- FTP with ftplib -----------------------------------------------------------------------------


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


def stor(f: ftplib.FTP, name: str, data: bytes, rest: int | None = None) -> str:
    """STOR (after REST when given); a 4xx/5xx reply raises."""
    return f.storbinary(f"STOR {name}", io.BytesIO(data), rest=rest)


def appe(f: ftplib.FTP, name: str, data: bytes) -> str:
    return f.storbinary(f"APPE {name}", io.BytesIO(data))


def declared_upload(f: ftplib.FTP, name: str, data: bytes) -> None:
    """`SITE KEY` with the data's CRC, then a STOR that must end in 226."""
    f.sendcmd(f"SITE KEY {key(crc32(data))}")
    assert stor(f, name, data).startswith("226")


def upload(srv, name: str, data: bytes, declare: bool = True) -> str:
    """A complete upload on its own connection, declaring the data's KEY first unless told not
    to; returns the 226."""
    f = srv.ftp()
    try:
        if declare:
            assert f.sendcmd(f"SITE KEY {key(crc32(data))}").startswith("230")
        reply = stor(f, name, data)
        assert reply.startswith("226"), reply
        return reply
    finally:
        f.quit()


def start_upload(f: ftplib.FTP, name: str, declared: int | None = None, rest: int | None = None) -> socket.socket:
    """Declares the KEY `declared` when given, then starts a binary `STOR name` (after REST when
    given) and returns its data connection: the caller sends, closes and reads the reply."""
    if declared is not None:
        f.sendcmd(f"SITE KEY {key(declared)}")
    f.voidcmd("TYPE I")
    return f.transfercmd(f"STOR {name}", rest)


def final_reply(f: ftplib.FTP) -> str:
    """The reply that ends a transfer; an error reply is returned as its text, not raised."""
    try:
        return f.voidresp()
    except ftplib.Error as e:
        return str(e)


def transfer_reply(f: ftplib.FTP, cmd: str, data: bytes, rest: int | None = None) -> str:
    """Runs an upload command (`STOR name`, `APPE name`; REST first when given) and returns its
    final reply, whatever it is. The server may refuse before or after the data connection
    opens, or stop reading early (a full disk): then sending hits a closed socket, and the reply
    still comes."""
    f.voidcmd("TYPE I")
    try:
        conn = f.transfercmd(cmd, rest)
    except ftplib.Error as e:
        return str(e)
    try:
        conn.sendall(data)
    except OSError:
        pass
    finally:
        conn.close()
    return final_reply(f)


def refused(f: ftplib.FTP, cmd: str, data: bytes, rest: int | None = None, declared: int | None = None) -> str:
    """An upload the server must refuse (a resume onto other bytes, past the end, with another
    KEY): declares the KEY `declared` when given, runs `cmd` as transfer_reply() does, asserts a
    5xx reply and returns it."""
    if declared is not None:
        f.sendcmd(f"SITE KEY {key(declared)}")
    reply = transfer_reply(f, cmd, data, rest)
    assert reply.startswith("5"), reply
    return reply


def retr(f: ftplib.FTP, name: str, rest: int | None = None) -> bytes:
    """RETR (from `rest` when given); the transfer must end in 226."""
    got = bytearray()
    assert f.retrbinary(f"RETR {name}", got.extend, rest=rest).startswith("226")
    return bytes(got)


def send_paced(conn: socket.socket, data: bytes, rate: float, chunk: int = 64 << 10, halt=None) -> int:
    """Sends `data` at about `rate` bytes/s until done, `halt` (a threading.Event) is set or the
    server stops reading; returns the bytes sent."""
    sent = 0
    t0 = time.monotonic()
    try:
        while sent < len(data) and not (halt and halt.is_set()):
            piece = data[sent : sent + chunk]
            conn.sendall(piece)
            sent += len(piece)
            time.sleep(max(0.0, sent / rate - (time.monotonic() - t0)))
    except OSError:
        pass
    return sent


# -- raw sockets ---------------------------------------------------------------------------------


def replies_until_closed(s: socket.socket, wait: float = 10) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    s.settimeout(wait)
    got = b""
    try:
        while chunk := s.recv(4096):
            got += chunk
    except ConnectionResetError:
        pass
    return got


def rst_close(sock: socket.socket) -> None:
    """Closes with a TCP reset, as a dropped link looks to the server."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def cut_upload(srv, name: str, data: bytes, sent: int, user: str = "alice") -> None:
    """An upload of `data`, declared with KEY, whose link resets once `sent` bytes are on disk:
    the box's connection dies in the middle of the data. The server must not call it a success."""
    g = srv.ftp()
    conn = start_upload(g, name, crc32(data))
    conn.sendall(data[:sent])
    wait_for_disk_size(srv.file(user, name), sent)
    rst_close(conn)
    assert final_reply(g)[:1] in "45", "a reset transfer is not a success"
    g.close()


def raw_control(host: str, port: int, timeout: float = 10):
    """A control connection past its 220 greeting: the socket and a binary reader of its lines."""
    s = socket.create_connection((host, port), timeout=timeout)
    r = s.makefile("rb")
    assert r.readline().startswith(b"220")
    return s, r


def raw_dialogue(port: int, lines: list[bytes], login: tuple[str, str] | None = None) -> list[bytes]:
    """Sends each line on a fresh control connection (logged in first when given) and returns
    each raw reply line."""
    s, r = raw_control("127.0.0.1", port)
    replies = []
    if login:
        s.sendall(b"USER %s\r\n" % login[0].encode())
        assert r.readline().startswith(b"331")
        s.sendall(b"PASS %s\r\n" % login[1].encode())
        assert r.readline().startswith(b"230")
    for line in lines:
        s.sendall(line)
        replies.append(r.readline())
    s.close()
    return replies


# -- TLS -----------------------------------------------------------------------------------------


def self_signed_cert(directory: Path, name: str = "ftpd") -> tuple[Path, Path]:
    """A fresh self-signed certificate for 127.0.0.1 and localhost and its key (PEM, made with
    openssl); the certificate is its own CA file for clients that verify (curl --cacert, lftp
    ssl:ca-file)."""
    cert, keyf = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(keyf), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, keyf


# -- stb-upload ----------------------------------------------------------------------------------


@dataclass
class Run:
    code: int
    result: dict
    stderr: str

    def __str__(self) -> str:
        return f"exit {self.code}, {self.result}, stderr:\n{self.stderr}"


def stb_upload(
    port: int, remote: str, local: Path, *args: str, user: str = "alice", password: str | None = None, timeout=300
) -> Run:
    """Runs stb-upload with --json; the password goes through --password-stdin."""
    password = USERS[user] if password is None else password
    proc = subprocess.run(
        [str(STB_UPLOAD), "--json", "--password-stdin", *args, f"ftp://{user}@127.0.0.1:{port}/{remote}", str(local)],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=timeout,
        env={k: v for k, v in os.environ.items() if k != "STB_PASSWORD"},
    )
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"expected one JSON line, got {proc.stdout!r}; stderr:\n{proc.stderr}"
    result = json.loads(lines[0])
    assert result["exit_code"] == proc.returncode, (result, proc.returncode)
    assert result["ok"] == (proc.returncode == 0), result
    return Run(proc.returncode, result, proc.stderr)


# -- waiting -------------------------------------------------------------------------------------


def wait_listening(host: str, port: int, proc: subprocess.Popen, what: str, timeout: float = 20, log=None) -> None:
    """Returns once a connection to host:port gets its first bytes; raises if `proc` exits or
    `timeout` passes first (with `log()`, the server's log, when given)."""
    tail = (lambda: ":\n" + log()) if log else (lambda: "")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}{tail()}")
        try:
            with socket.create_connection((host, port), timeout=0.5) as s:
                s.recv(100)
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not start listening{tail()}")


def stop_process(proc: subprocess.Popen | None, timeout: float = 10) -> None:
    """SIGTERM, and SIGKILL if it has not exited within `timeout`; nothing if it has ended."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def wait_for_disk_size(path, at_least: int, timeout: float = 20, proc: subprocess.Popen | None = None) -> int:
    """The size of `path` once the server has written at least `at_least` bytes to it; with
    `proc`, the client sending them must not end before."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        size = path.stat().st_size if path.exists() else 0
        if size >= at_least:
            return size
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"client ended early with {proc.returncode}: {err}")
        time.sleep(0.02)
    raise AssertionError(f"{path} did not reach {at_least} bytes")


def kill_once_stored(proc: subprocess.Popen, path, at_least: int, timeout: float = 20) -> None:
    """Waits until the client `proc` has got `at_least` bytes of its upload stored at `path`,
    then kills it with SIGKILL (a box that loses power)."""
    wait_for_disk_size(path, at_least, timeout, proc=proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


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


def wait_for_log(srv, text: str, count: int = 1, timeout: float = 10) -> None:
    """Returns once the server's log holds `text` `count` times."""
    deadline = time.time() + timeout
    while srv.log().count(text) < count:
        assert time.time() < deadline, f"{text!r} not logged:\n{srv.log()}"
        time.sleep(0.05)


class WebhookReceiver:
    """A webhook receiver on loopback (ftpd's `webhook_url`). Modes: `up` (200), `down` (503), `hang` (reads the
    request and never answers until released). `refuse` answers 503 to that many requests first.
    Every request is recorded as (mode answered, X-Ftpd-Seq, body, time received)."""

    def __init__(self, refuse: int = 0, mode: str = "up"):
        self.mode = mode
        self.refuse = refuse
        self.requests: list[tuple[str, int, bytes, float]] = []
        self.lock = threading.Lock()
        self.released = threading.Event()
        recv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                now = time.time()
                assert self.headers["Content-Type"] == "application/json"
                seq = int(self.headers["X-Ftpd-Seq"])
                with recv.lock:
                    mode = recv.mode
                    if recv.refuse > 0:
                        recv.refuse -= 1
                        mode = "down"
                    recv.requests.append((mode, seq, body, now))
                if mode == "hang":
                    recv.released.wait(60)
                    return
                status = 200 if mode == "up" else 503
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?k=1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def set(self, mode: str) -> None:
        with self.lock:
            self.mode = mode

    def accepted(self) -> list[tuple[int, bytes, float]]:
        """(seq, body, time) of the requests answered 200, in arrival order."""
        with self.lock:
            return [(s, b, t) for m, s, b, t in self.requests if m == "up"]

    def delivered(self) -> dict[int, bytes]:
        """Deduplicated by seq (at least once: duplicates are allowed)."""
        out: dict[int, bytes] = {}
        for seq, body, _ in self.accepted():
            assert out.setdefault(seq, body) == body, f"seq {seq} sent with two bodies"
        return out

    def tried(self, seq: int) -> bool:
        with self.lock:
            return any(s == seq for _, s, _, _ in self.requests)

    def wait_delivered(self, upto: int, timeout: float = 30) -> dict[int, bytes]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            got = self.delivered()
            if len(got) >= upto:
                return got
            time.sleep(0.05)
        raise AssertionError(f"only {sorted(self.delivered())} of 1..{upto} delivered")

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


# -- PROXY protocol and HAProxy -------------------------------------------------------------------


PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v1(client: str, client_port: int = 40000, server: str = "127.0.0.1", server_port: int = 21) -> bytes:
    """A PROXY protocol v1 (text) header for a TCP4 connection from `client` to `server`."""
    return f"PROXY TCP4 {client} {server} {client_port} {server_port}\r\n".encode()


def proxy_v2(client: str | None, client_port: int = 40000, server: str = "127.0.0.1", server_port: int = 21) -> bytes:
    """A PROXY protocol v2 (binary) header for a TCP4 connection from `client` to `server`; a
    `LOCAL` one, as a balancer's health check sends, when `client` is None."""
    if client is None:
        return PROXY_V2_SIGNATURE + bytes([0x20, 0x00, 0, 0])
    addresses = socket.inet_aton(client) + socket.inet_aton(server) + struct.pack("!HH", client_port, server_port)
    return PROXY_V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) + addresses


def disjoint_port_range(taken: list[tuple[int, int]]) -> tuple[int, int]:
    """A free passive range overlapping none in `taken`, appended to it: HAProxy listens on
    every node's range on one address."""
    while True:
        lo, hi = free_port_range()
        if all(hi < a or lo > b for a, b in taken):
            taken.append((lo, hi))
            return lo, hi


# -- PostgreSQL (the libpq environment pg_virtualenv sets) --------------------------------------


def psql(sql: str, db: str = "postgres") -> str:
    """Runs `sql` with psql; its unaligned output."""
    return subprocess.run(
        ["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


def pg_conninfo(db: str) -> str:
    """The libpq key=value string for database `db` on the server the environment names."""
    e = os.environ
    parts = {
        "host": e.get("PGHOST", "localhost"),
        "port": e.get("PGPORT", "5432"),
        "user": e.get("PGUSER", "postgres"),
        "password": e.get("PGPASSWORD", ""),
        "dbname": db,
    }
    return " ".join(f"{k}={v}" for k, v in parts.items() if v)


# The address a test balancer connects to the nodes from, as their `proxy_from` lists it (not
# 127.0.0.1: a test's own connections, readiness checks included, must not need a header).
BALANCER = "127.0.0.9"


@dataclass
class Node:
    """One ftpd node behind HAProxy: where it listens and its own passive range."""

    host: str
    port: int
    passive: tuple[int, int]


class HAProxy:
    """A real HAProxy (TCP mode) in front of ftpd nodes, set up as conf/haproxy.cfg is: the
    control port balanced over the nodes (`leastconn`, PROXY v2, a check that expects the 220
    banner), and each node's passive range forwarded to that node alone on the same port (PROXY
    v1). It listens on `host` (the control port is free_port()'s, the passive ports are the
    nodes' own numbers) and connects to the nodes from `source` when given, the address their
    `proxy_from` lists. A context manager: the process is always stopped on the way out."""

    def __init__(self, directory: Path, nodes: list[Node], host: str = "127.0.0.1", source: str | None = None):
        self.nodes, self.host, self.source = nodes, host, source
        self.port = free_port(host)
        self.cfg_path = directory / "haproxy.cfg"
        self.log_path = directory / "haproxy.log"
        self.proc: subprocess.Popen | None = None

    def config(self) -> str:
        lines = [
            "global",
            "    maxconn 2000",
            "    log stderr format raw local0 info",
            "defaults",
            "    mode tcp",
            "    log global",
            "    option tcplog",
            "    timeout connect 5s",
            "    timeout client 1h",
            "    timeout server 1h",
            "    timeout tunnel 1h",
        ]
        if self.source:
            lines.append(f"    source {self.source}")
        lines += [
            "frontend ftp",
            f"    bind {self.host}:{self.port}",
            "    default_backend ftp_nodes",
            "backend ftp_nodes",
            "    balance leastconn",
            "    option tcp-check",
            "    tcp-check expect rstring ^220",
            "    tcp-check send QUIT\\r\\n",
            "    tcp-check expect rstring ^221",
        ]
        lines += [
            f"    server node{i} {n.host}:{n.port} send-proxy-v2 check inter 2s"
            for i, n in enumerate(self.nodes, 1)
        ]
        for i, n in enumerate(self.nodes, 1):
            lines += [
                f"frontend ftp_passive_node{i}",
                f"    bind {self.host}:{n.passive[0]}-{n.passive[1]}",
                f"    default_backend ftp_passive_node{i}",
                f"backend ftp_passive_node{i}",
                f"    server node{i} {n.host} send-proxy",
            ]
        return "\n".join(lines) + "\n"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> "HAProxy":
        self.cfg_path.write_text(self.config())
        check = subprocess.run(["haproxy", "-c", "-f", str(self.cfg_path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(["haproxy", "-f", str(self.cfg_path), "-db"], stdout=log, stderr=log)
        try:
            # Through HAProxy to a node: the first bytes are a node's banner.
            wait_listening(self.host, self.port, self.proc, "haproxy", log=self.log)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self) -> "HAProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
