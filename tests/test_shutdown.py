"""SIGTERM: running uploads get the grace period to finish; what outlasts it is stopped and
recorded exactly, and can be resumed after the restart."""

import ftplib
import io
import random
import signal
import socket
import threading
import time

from helpers import MiB, crc32, info, key, send_paced, start_upload, wait_for_disk_size


class PacedUpload(threading.Thread):
    """STOR `data` at about `rate` bytes/s on its own session; keeps the final reply."""

    def __init__(self, srv, name: str, data: bytes, rate: float):
        super().__init__(daemon=True)
        self.srv, self.name, self.data, self.rate = srv, name, data, rate
        self.sent = 0
        self.reply: str | None = None
        self.started = threading.Event()

    def run(self) -> None:
        f = self.srv.ftp()
        try:
            conn = start_upload(f, self.name, crc32(self.data))
            self.started.set()
            self.sent = send_paced(conn, self.data, self.rate)
            conn.close()
            try:
                self.reply = f.voidresp()
            except (ftplib.Error, OSError, EOFError) as e:
                self.reply = f"{type(e).__name__}: {e}"
        finally:
            self.started.set()
            f.close()


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            return s.recv(100) == b""
    except OSError:
        return True


def test_sigterm_lets_a_running_upload_finish_within_the_grace_period(ftpd_factory):
    grace = 6
    srv = ftpd_factory(shutdown_grace=grace)
    data = random.Random(50).randbytes(6 * MiB)
    up = PacedUpload(srv, "rec.ts", data, rate=3 * MiB)  # about 2 s
    up.start()
    up.started.wait(10)
    wait_for_disk_size(srv.file("alice", "rec.ts"), MiB)

    srv.signal(signal.SIGTERM)
    t0 = time.monotonic()
    up.join(30)
    assert up.reply is not None and up.reply.startswith("226"), up.reply
    code = srv.proc.wait(grace + 5)
    took = time.monotonic() - t0
    assert code == 0, srv.log()
    assert took < grace + 3, f"exit took {took:.1f}s"
    assert refused(srv.port)

    assert srv.file("alice", "rec.ts").read_bytes() == data
    srv.start()
    f = srv.ftp()
    i = info(f, "rec.ts")
    assert (i["state"], i["size"], i["received-crc"], i["declared"]) == (
        "verified",
        str(len(data)),
        key(crc32(data)),
        key(crc32(data)),
    )
    f.quit()


def test_sigterm_stops_an_upload_that_outlasts_the_grace_and_records_it_exactly(ftpd_factory):
    grace = 1
    srv = ftpd_factory(shutdown_grace=grace, checkpoint_mib=4)
    data = random.Random(51).randbytes(24 * MiB)
    remote = srv.file("alice", "long.ts")
    up = PacedUpload(srv, "long.ts", data, rate=2 * MiB)  # about 12 s
    up.start()
    up.started.wait(10)
    wait_for_disk_size(remote, MiB + 1)

    srv.signal(signal.SIGTERM)
    t0 = time.monotonic()
    code = srv.proc.wait(grace + 10)
    took = time.monotonic() - t0
    assert code == 0, srv.log()
    assert took < grace + 4, f"exit took {took:.1f}s"
    up.join(30)
    assert up.reply is None or not up.reply.startswith("226"), up.reply
    assert up.sent < len(data)

    on_disk = remote.read_bytes()
    assert 0 < len(on_disk) < len(data) and on_disk == data[: len(on_disk)]
    srv.start()
    assert "reconciled interrupted upload" not in srv.log(), "the stopped upload left an open record"
    f = srv.ftp()
    i = info(f, "long.ts")
    assert (i["state"], i["size"], i["received-crc"], i["declared"]) == (
        "partial",
        str(len(on_disk)),
        key(crc32(on_disk)),
        key(crc32(data)),
    )
    size = int(f.sendcmd("SIZE long.ts").split()[1])
    assert f.sendcmd("SITE KEY NULL") == f"230 {key(crc32(data))}"
    f.voidcmd("TYPE I")
    assert f.storbinary("STOR long.ts", io.BytesIO(data[size:]), blocksize=MiB, rest=size).startswith("226")
    assert info(f, "long.ts")["state"] == "verified"
    f.quit()
    assert remote.read_bytes() == data
