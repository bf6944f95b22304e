"""A fault-injecting TCP relay for FTP, between a client and a real server.

The relay forwards the control connection and rewrites every `227 Entering Passive Mode
(h1,h2,h3,h4,p1,p2)` reply so that the port names a listener of the relay; the data connection
the client opens there is forwarded to the server's real passive port. That puts every byte of
upload data through the relay, which can then:

- cut a data connection after exactly `cut_after` bytes of upload data (client to server):
  `cut_mode="rst"` resets both sides (SO_LINGER 0), `cut_mode="fin"` lets the server read the
  bytes it got followed by a clean end of stream and closes the client's side;
- do so only on the first `cut_connections` data connections (`None`: on every one);
- limit the upload rate of data connections (`rate`, bytes per second).

Clients that connect data connections to the control connection's peer with the `227` port
(stb-upload and curl by default) need nothing else; the announced address is rewritten to the
relay's address as well.

    with Relay(server_port, cut_after=1000, cut_mode="rst", cut_connections=1) as relay:
        ... connect the client to 127.0.0.1:relay.port ...
        relay.data[0].up, relay.data[0].cut
"""

from __future__ import annotations

import re
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

PASV_RE = re.compile(rb"^227([ -].*?)\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)(.*)$", re.S)
SIOCOUTQ = 0x5411  # Linux: bytes in a socket's send queue not yet acknowledged by the peer
CHUNK = 256 * 1024


def reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    close(sock)


def close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


def shutdown(sock: socket.socket, how: int) -> None:
    try:
        sock.shutdown(how)
    except OSError:
        pass


def unacked(sock: socket.socket) -> int:
    import fcntl

    try:
        buf = fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0\0\0\0")
        return struct.unpack("i", buf)[0]
    except OSError:
        return 0


@dataclass
class DataConnection:
    """What happened on one data connection through the relay."""

    index: int
    up: int = 0  # bytes forwarded from the client to the server
    down: int = 0  # bytes forwarded from the server to the client
    cut: bool = False  # the relay cut it
    cut_at: int | None = None
    closed: threading.Event = field(default_factory=threading.Event)


class Relay:
    def __init__(
        self,
        server_port: int,
        server_host: str = "127.0.0.1",
        *,
        cut_after: int | None = None,
        cut_mode: str = "rst",
        cut_connections: int | None = None,
        rate: float | None = None,
        drain_wait: float = 0.05,
    ):
        assert cut_mode in ("rst", "fin"), cut_mode
        self.server = (server_host, server_port)
        self.cut_after = cut_after
        self.cut_mode = cut_mode
        self.cut_connections = cut_connections
        self.rate = rate
        self.drain_wait = drain_wait
        self.data: list[DataConnection] = []
        self.controls = 0  # control connections accepted
        self.refused = 0  # control connections the server did not accept
        self.log: list[str] = []
        self.lock = threading.Lock()
        self.sockets: set[socket.socket] = set()
        self.stopping = threading.Event()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._accept_control, daemon=True)

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> "Relay":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        shutdown(self.listener, socket.SHUT_RDWR)  # wakes the blocked accept()
        close(self.listener)
        with self.lock:
            live = list(self.sockets)
        for s in live:
            shutdown(s, socket.SHUT_RDWR)
            close(s)
        self.thread.join(5)

    def __enter__(self) -> "Relay":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _track(self, s: socket.socket) -> socket.socket:
        with self.lock:
            self.sockets.add(s)
        return s

    def _untrack(self, *socks: socket.socket) -> None:
        with self.lock:
            for s in socks:
                self.sockets.discard(s)

    def _note(self, text: str) -> None:
        with self.lock:
            self.log.append(f"{time.monotonic():.3f} {text}")

    def _spawn(self, target, *args) -> None:
        threading.Thread(target=target, args=args, daemon=True).start()

    # -- control connections ---------------------------------------------------------------

    def _accept_control(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self._track(client)
            self.controls += 1
            try:
                upstream = self._track(socket.create_connection(self.server, timeout=5))
                upstream.settimeout(None)
            except OSError as e:
                self.refused += 1
                self._note(f"control: server unreachable: {e}")
                self._untrack(client)
                reset(client)
                continue
            self._note("control: connected")
            self._spawn(self._forward, client, upstream, None, None)

    def _rewrite(self, line: bytes) -> bytes:
        m = PASV_RE.match(line)
        if not m:
            return line
        host = ".".join(m.group(i).decode() for i in range(2, 6))
        port = int(m.group(6)) * 256 + int(m.group(7))
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(30)
        mine = listener.getsockname()[1]
        self._spawn(self._accept_data, listener, (host, port))
        self._note(f"227: server {host}:{port} -> relay {mine}")
        return b"227%s(127,0,0,1,%d,%d)%s" % (m.group(1), mine >> 8, mine & 0xFF, m.group(8))

    # -- data connections ------------------------------------------------------------------

    def _accept_data(self, listener: socket.socket, target: tuple[str, int]) -> None:
        try:
            client, _ = listener.accept()
        except OSError:
            self._note("data: the client never connected")
            return
        finally:
            close(listener)
        client.settimeout(None)
        self._track(client)
        with self.lock:
            conn = DataConnection(len(self.data))
            self.data.append(conn)
        try:
            upstream = self._track(socket.create_connection(target, timeout=5))
            upstream.settimeout(None)
        except OSError as e:
            self._note(f"data {conn.index}: server unreachable: {e}")
            self._untrack(client)
            reset(client)
            conn.closed.set()
            return
        cut = (
            self.cut_after
            if self.cut_after is not None
            and (self.cut_connections is None or conn.index < self.cut_connections)
            else None
        )
        self._note(f"data {conn.index}: connected, cut at {cut} ({self.cut_mode})")
        self._forward(client, upstream, conn, cut)

    # -- forwarding ------------------------------------------------------------------------

    def _forward(
        self, client: socket.socket, upstream: socket.socket, conn: DataConnection | None, cut: int | None
    ) -> None:
        """Both directions of one relayed connection, in one thread (so that a reset is never
        raced by a blocked read on the same socket). Control connections (`conn` None) get
        their 227 replies rewritten; data connections are counted, rate-limited and cut."""
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, "up")
        sel.register(upstream, selectors.EVENT_READ, "down")
        open_dirs = {"up", "down"}
        pending = b""  # control: an incomplete reply line
        up = 0
        started = time.monotonic()
        step = CHUNK
        if conn is not None and self.rate:
            step = max(1024, min(CHUNK, int(self.rate / 50)))
        try:
            while open_dirs:
                if conn is not None and cut is not None and up >= cut and "up" in open_dirs:
                    self._cut(client, upstream, conn)
                    return
                if self.stopping.is_set():
                    raise OSError("relay stopping")
                for k, _ in sel.select(timeout=0.2):
                    if k.data == "up":
                        want = step if cut is None else max(1, min(step, cut - up))
                        chunk = client.recv(want)
                        if not chunk:
                            sel.unregister(client)
                            open_dirs.discard("up")
                            shutdown(upstream, socket.SHUT_WR)
                            continue
                        upstream.sendall(chunk)
                        if conn is not None:
                            up += len(chunk)
                            conn.up = up
                            if self.rate:
                                ahead = up / self.rate - (time.monotonic() - started)
                                if ahead > 0:
                                    time.sleep(ahead)
                    else:
                        chunk = upstream.recv(CHUNK)
                        if not chunk:
                            sel.unregister(upstream)
                            open_dirs.discard("down")
                            if pending:
                                client.sendall(pending)
                            shutdown(client, socket.SHUT_WR)
                            continue
                        if conn is None:
                            pending += chunk
                            *lines, pending = pending.split(b"\n")
                            chunk = b"".join(self._rewrite(line + b"\n") for line in lines)
                        else:
                            conn.down += len(chunk)
                        if chunk:
                            client.sendall(chunk)
            self._finish(client, upstream, rst=False)
        except OSError as e:
            self._note(f"{'data %d' % conn.index if conn else 'control'}: {e}; resetting both sides")
            self._finish(client, upstream, rst=True)
        finally:
            sel.close()
            if conn is not None:
                conn.closed.set()

    def _cut(self, client: socket.socket, upstream: socket.socket, conn: DataConnection) -> None:
        conn.cut, conn.cut_at = True, conn.up
        self._note(f"data {conn.index}: cut ({self.cut_mode}) after {conn.up} bytes")
        if self.cut_mode == "fin":
            # The server reads every forwarded byte, then a clean end of stream; the client's
            # side is closed (its further writes fail).
            self._finish(client, upstream, rst=False)
        else:
            # Let the server take in what was forwarded (acknowledged, being read), then reset
            # both sides: what the server read is all it can keep.
            deadline = time.monotonic() + 2
            while unacked(upstream) and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(self.drain_wait)
            self._finish(client, upstream, rst=True)

    def _finish(self, client: socket.socket, upstream: socket.socket, rst: bool) -> None:
        self._untrack(client, upstream)
        for s in (upstream, client):
            if rst:
                reset(s)
            else:
                shutdown(s, socket.SHUT_RDWR)
                close(s)
