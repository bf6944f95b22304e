"""Durability: records survive restarts and crashes, and after a SIGKILL in the middle of an
upload the record describes exactly the bytes in the file, so the upload can be resumed."""

import io
import re
import threading

import pytest

from helpers import MiB, crc32, data_of, info, key, pattern, send_paced, start_upload, wait_for_disk_size, wait_for_log


class PacedSender(threading.Thread):
    """Sends `data` over a data connection at about `rate` bytes/s until done, stopped or cut."""

    def __init__(self, conn, data: bytes, rate: float):
        super().__init__(daemon=True)
        self.conn, self.data, self.rate = conn, data, rate
        self.halt = threading.Event()

    def run(self) -> None:
        send_paced(self.conn, self.data, self.rate, halt=self.halt)


def snapshot(srv, names):
    f = srv.ftp()
    out = {n: (f.sendcmd(f"SITE KEY NULL {n}"), info(f, n), f.sendcmd(f"SIZE {n}")) for n in names}
    f.quit()
    return out


def test_records_survive_sigterm_and_sigkill_restarts(ftpd):
    verified = pattern(2 * MiB, seed=10)
    plain = pattern(MiB, seed=11)
    partial = pattern(3 * MiB, seed=12)
    cut = 1_300_000

    f = ftpd.ftp()
    f.sendcmd(f"SITE KEY {key(crc32(verified))}")
    assert f.storbinary("STOR verified.ts", io.BytesIO(verified)).startswith("226")
    assert f.storbinary("STOR plain.ts", io.BytesIO(plain)).startswith("226")
    f.quit()
    # A declared upload whose link dropped: its KEY must survive with the partial bytes.
    g = ftpd.ftp()
    conn = start_upload(g, "partial.ts", crc32(partial))
    conn.sendall(partial[:cut])
    conn.close()
    g.sock.close()
    wait_for_log(ftpd, "path=/partial.ts")  # logged once the record is written

    names = ["verified.ts", "plain.ts", "partial.ts"]
    before = snapshot(ftpd, names)
    assert before["verified.ts"][0] == f"230 {key(crc32(verified))}"
    assert before["verified.ts"][1]["state"] == "verified"
    assert before["plain.ts"][0] == "230 0x00"
    assert before["plain.ts"][1]["state"] == "complete"
    assert before["plain.ts"][1]["received-crc"] == key(crc32(plain))
    assert before["partial.ts"][0] == f"230 {key(crc32(partial))}"
    p = before["partial.ts"][1]
    # A clean close short of the declared CRC ends as `mismatch`, kept for resuming.
    assert p["state"] in ("partial", "mismatch") and p["size"] == str(cut) and p["received-crc"] == key(crc32(partial[:cut]))

    assert ftpd.stop() == 0
    ftpd.start()
    assert snapshot(ftpd, names) == before

    ftpd.kill9()
    ftpd.start()
    assert snapshot(ftpd, names) == before
    assert ftpd.file("alice", "verified.ts").read_bytes() == verified
    assert ftpd.file("alice", "partial.ts").read_bytes() == partial[:cut]

    # The surviving KEY still guards and completes the resume.
    h = ftpd.ftp()
    h.voidcmd("TYPE I")
    assert h.storbinary("STOR partial.ts", io.BytesIO(partial[cut:]), rest=cut).startswith("226")
    assert info(h, "partial.ts")["state"] == "verified"
    h.quit()
    assert ftpd.file("alice", "partial.ts").read_bytes() == partial


@pytest.mark.parametrize("durability", ["fsync", "none"])
@pytest.mark.parametrize("when", ["while-sending", "after-a-stall"])
def test_sigkill_mid_transfer_leaves_a_record_of_exactly_the_bytes_on_disk(ftpd_factory, durability, when):
    # Checkpoints every MiB, writes of 256 KiB: a crash usually leaves bytes beyond the last
    # checkpoint, which start-up must read and count.
    srv = ftpd_factory(checkpoint_mib=1, upload_buffer_kib=256, upload_buffer_max_kib=256, durability=durability)
    data = data_of(40 * MiB, seed=13)
    path = srv.file("alice", "big.ts")

    f = srv.ftp()
    conn = start_upload(f, "big.ts", crc32(data))
    if when == "while-sending":
        sender = PacedSender(conn, data, rate=8 * MiB)
        sender.start()
        wait_for_disk_size(path, 5 * MiB + 123)
    else:
        # 5.5 MiB, then silence: everything sent is written, the last checkpoint is just below 5 MiB.
        sender = PacedSender(conn, data[: 5 * MiB + MiB // 2], rate=64 * MiB)
        sender.start()
        sender.join(10)
        assert wait_for_disk_size(path, 5 * MiB + MiB // 2) == 5 * MiB + MiB // 2
    srv.kill9()
    sender.halt.set()
    sender.join(10)
    conn.close()
    f.sock.close()

    on_disk = path.read_bytes()
    assert 5 * MiB < len(on_disk) < len(data), len(on_disk)
    assert on_disk == data[: len(on_disk)]

    srv.start()
    g = srv.ftp()
    i = info(g, "big.ts")
    assert int(i["size"]) == len(on_disk), (i, len(on_disk))
    assert i["received-crc"] == key(crc32(on_disk))
    assert i["state"] == "partial"
    assert i["declared"] == key(crc32(data))
    assert g.sendcmd("SITE KEY NULL big.ts") == f"230 {key(crc32(data))}"
    reconciled = re.search(r"reconciled interrupted upload .*path=/big.ts size=(\d+) recorded=(\d+)", srv.log())
    assert reconciled, srv.log()
    assert int(reconciled.group(1)) == len(on_disk)
    if when == "after-a-stall":
        # Checkpoints fall on buffer boundaries, about every MiB: the crash leaves the bytes after
        # the last one (up to 5.5 MiB) for recovery to read.
        recorded = int(reconciled.group(2))
        assert 4 * MiB < recorded < len(on_disk), "the crash should leave bytes beyond the last checkpoint"

    size = int(g.sendcmd("SIZE big.ts").split()[1])
    assert size == len(on_disk)
    g.voidcmd("TYPE I")
    assert g.storbinary("STOR big.ts", io.BytesIO(data[size:]), blocksize=1 << 20, rest=size).startswith("226")
    i = info(g, "big.ts")
    assert (i["state"], i["size"], i["received-crc"]) == ("verified", str(len(data)), key(crc32(data)))
    g.quit()
    assert path.read_bytes() == data
