"""Garbage on the control connection: the server answers or hangs up, and keeps serving."""

import io
import random
import re
import socket
import time

from helpers import USERS, crc32, info, key, pattern, raw_control

REPLY_END = re.compile(rb"^\d{3} ", re.M)


class Raw:
    """A control connection that reconnects (and logs in again) when the server closes it."""

    def __init__(self, port: int, user: str | None):
        self.port, self.user = port, user
        self.sock: socket.socket | None = None
        self.closes = 0
        self.replies: list[bytes] = []

    def connect(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.buf = b""
        assert self.read().startswith(b"220")
        if self.user:
            self.sock.sendall(b"USER %s\r\n" % self.user.encode())
            assert self.read().startswith(b"331")
            self.sock.sendall(b"PASS %s\r\n" % USERS[self.user].encode())
            assert self.read().startswith(b"230")

    def read(self, timeout: float = 5) -> bytes:
        """One complete reply (single or multi-line); b"" when the server hung up."""
        assert self.sock is not None
        self.sock.settimeout(timeout)
        while True:
            lines = self.buf.split(b"\r\n")
            for i, line in enumerate(lines[:-1]):
                if REPLY_END.match(line):
                    reply = b"\r\n".join(lines[: i + 1]) + b"\r\n"
                    self.buf = b"\r\n".join(lines[i + 1 :])
                    return reply
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                chunk = b""
            if not chunk:
                return b""
            self.buf += chunk

    def send(self, line: bytes) -> bytes:
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        try:
            self.sock.sendall(line)
            reply = self.read()
        except (BrokenPipeError, ConnectionResetError):
            reply = b""
        if not reply:
            self.closes += 1
            self.sock.close()
            self.sock = None
        self.replies.append(reply)
        return reply

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


def garbage(seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    lines: list[bytes] = []
    for _ in range(120):  # random bytes, no line ends inside
        n = rnd.randrange(1, 300)
        lines.append(bytes(b for b in rnd.randbytes(n) if b not in (10, 13)) + b"\r\n")
    for _ in range(40):  # random printable text, sometimes starting like a command
        word = rnd.choice([b"", b"SITE ", b"SITE KEY ", b"REST ", b"STOR ", b"KEY ", b"RNFR "])
        text = bytes(rnd.randrange(32, 127) for _ in range(rnd.randrange(0, 120)))
        lines.append(word + text + b"\r\n")
    lines += [
        b"A" * 5000 + b"\r\n",
        b"NOOP " + b"x" * 100_000 + b"\r\n",
        b"SITE KEY " + b"f" * 10_240 + b"\r\n",
        b"SITE KEY NULL " + b"a" * 10_240 + b"\r\n",
        b"SITE KEY INFO " + b"/" * 10_240 + b"\r\n",
        b"SITE KEY 0x1234 " + b"d/" * 5000 + b"\r\n",
        b"SITE KEY NULL " + "\u00e9".encode() * 3000 + b"\r\n",
        b"SITE KEY NULL a\x00b\r\n",
        b"SITE KEY \x00\r\n",
        b"\x00" * 64 + b"\r\n",
        b"STOR \x00\r\n",
        b"SITE KEY INFO \x00/..\r\n",
        b"REST abc\r\n",
        b"REST -1\r\n",
        b"REST 18446744073709551616\r\n",
        b"REST 1e9\r\n",
        b"REST\r\n",
        b"REST 99999999999\r\n",
        b"SITE KEY\r\n",
        b"SITE KEY 0x\r\n",
        b"SITE KEY 0xgg\r\n",
        b"SITE KEY -0x1\r\n",
        b"SITE KEY 0x1 0x2 0x3\r\n",
        b"SITE KEY NULL ../../../../etc/passwd\r\n",
        b"SITE KEY INFO //\r\n",
        b"SITE KEY INFO /./../\r\n",
        b"SITE KEY INFO /proc/self/environ\r\n",
        b"SITE KEY NULL %s%s%s%n\r\n",
        b"SITE KEY NULL \\..\\..\\windows\r\n",
        b"SITE KEY 0xFFFFFFFF /dev/null\r\n",
        b"SITE KEY NULL \t \t\r\n",
        b"site key null\r\n",
        b"SITE\r\n",
        b"SITE  \r\n",
        b"SITE HASH\r\n",
        b"SITE HASH -a BOGUS x\r\n",
        b"SITE HASH -a CRC32 ../../../etc/passwd\r\n",
        b"SITE MD5 ../../x\r\n",
        b"RNTO x\r\n",
        b"STOR x\r\n",
        b"RETR x\r\n",
        b"APPE x\r\n",
        b"PORT 1,2,3\r\n",
        b"PORT 999,999,999,999,999,999\r\n",
        b"EPRT |9|x|y|\r\n",
        b"ABOR\r\n",
        b"CWD ../../..\r\n",
        b"MKD \r\n",
        b"DELE \r\n",
        b"SIZE\r\n",
        b"MDTM\r\n",
        b"\xff\xf4\xff\xfd\x06\r\n",  # telnet interrupt
        b"NO\rOP\r\n",
        b"NOOP\n",
        b"\r\n",
        b" \r\n",
        b"USER\r\n",
        "SITE KEY NULL \ud800".encode("utf-8", "surrogatepass") + b"\r\n",
        b"\xc3\r\n",  # a cut multi-byte sequence
    ]
    return lines


def assert_serving(srv) -> None:
    assert srv.proc.poll() is None, srv.log()
    data = pattern(500_000, seed=91)
    f = srv.ftp()
    f.sendcmd(f"SITE KEY {key(crc32(data))}")
    assert f.storbinary("STOR after.ts", io.BytesIO(data)).startswith("226")
    assert f.sendcmd("SITE KEY NULL after.ts") == f"230 {key(crc32(data))}"
    assert info(f, "after.ts")["state"] == "verified"
    f.quit()


def test_garbage_before_and_after_login_leaves_the_server_serving(ftpd):
    started = time.time()
    lines = garbage(seed=1)
    for user in (None, "alice"):
        raw = Raw(ftpd.port, user)
        for line in lines:
            reply = raw.send(line)
            # every reply that comes is a well-formed FTP reply; errors are 4xx/5xx
            if reply:
                assert re.match(rb"^\d{3}[ -]", reply), (line[:80], reply[:200])
            if user is None and reply:
                assert not reply.startswith(b"230"), (line[:80], reply)
        raw.close()
        assert len(raw.replies) == len(lines)
        # most lines got an answer; the rest made the server hang up, and it was reconnected
        assert sum(1 for r in raw.replies if r) > len(lines) // 2
    assert time.time() - started < 90
    assert_serving(ftpd)
    assert "panicked" not in ftpd.log()


def test_key_replies_to_malformed_arguments_are_501_and_keep_the_session(ftpd):
    raw = Raw(ftpd.port, "alice")
    for line in (
        b"SITE KEY 0xgg\r\n",
        b"SITE KEY NULL ../../../../etc/passwd\r\n",
        b"SITE KEY\r\n",
        b"SITE KEY 0x1 " + b"../" * 1000 + b"\r\n",
        b"SITE KEY " + b"f" * 3000 + b"\r\n",
    ):
        reply = raw.send(line)
        assert reply.startswith(b"501 KEY: "), (line[:60], reply)
        assert len(reply) < 300  # the reply does not echo a long argument
    assert raw.closes == 0
    # a name too long to exist is simply unknown
    assert raw.send(b"SITE KEY NULL " + b"a" * 3000 + b"\r\n") == b"230 0x00\r\n"
    assert raw.send(b"NOOP\r\n").startswith(b"200")
    raw.close()


def test_a_10k_key_argument_is_refused_and_the_server_goes_on(ftpd):
    for line in (
        b"SITE KEY " + b"f" * 10_240 + b"\r\n",
        b"SITE KEY NULL " + b"a" * 10_240 + b"\r\n",
        b"SITE KEY 0x1 " + b"d/" * 5_120 + b"\r\n",
    ):
        raw = Raw(ftpd.port, "alice")
        reply = raw.send(line)
        # refused as a line too long (then closed) or as a bad argument: never accepted
        assert reply.startswith((b"500 ", b"501 ")), (line[:40], reply)
        assert len(reply) < 300
        raw.close()
    assert_serving(ftpd)


def test_commands_pipelined_behind_pass_do_not_count_as_failed_logins(ftpd):
    """libunftp answers a command sent right behind PASS before the PASS itself; a correct
    login followed at once by more commands must not count as a failure."""
    for _ in range(8):  # more than failed_logins_max
        s, f = raw_control("127.0.0.1", ftpd.port)
        s.sendall(b"USER alice\r\nPASS alice-pw\r\nSITE KEY NULL x.ts\r\nNOOP\r\n")
        replies = [f.readline() for _ in range(4)]
        assert replies[0].startswith(b"331") and replies[1].startswith(b"230"), replies
        assert replies[2] == b"230 0x00\r\n" and replies[3].startswith(b"200"), replies
        s.close()
    # PASS before USER is refused without stalling the connection or counting as a failure
    for _ in range(6):
        s, f = raw_control("127.0.0.1", ftpd.port, timeout=5)
        s.sendall(b"PASS nothing\r\nNOOP\r\n")
        assert f.readline().startswith(b"503"), "PASS without USER"
        assert f.readline()[:1] in (b"2", b"5")
        s.close()
    assert login_ok(ftpd)


def login_ok(srv) -> bool:
    f = srv.ftp()
    f.quit()
    return True


def test_many_connections_dropped_mid_command_and_mid_transfer(ftpd):
    rnd = random.Random(2)
    for i in range(60):
        s = socket.create_connection(("127.0.0.1", ftpd.port), timeout=10)
        s.recv(100)
        if i % 3 == 0:
            s.sendall(b"USER alice\r\nPASS alice-pw\r\nSITE KEY 0x12345678\r\nPASV\r\nSTOR drop.ts\r\n")
        else:
            s.sendall(rnd.choice([b"USER al", b"SITE KEY NU", b"\xff", b"PASS"]))
        s.close()
    time.sleep(0.5)
    assert_serving(ftpd)
