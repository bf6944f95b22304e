"""Inline checksum: while bytes arrive the server knows the CRC of exactly what it has stored,
and it answers queries without re-reading files, whatever their size."""

import io
import random
import time

from helpers import MiB, crc32, info, key, start_upload


def wait_for_info(f, path: str, size: int, timeout: float = 5) -> dict:
    deadline = time.time() + timeout
    while True:
        i = info(f, path)
        if int(i["size"]) == size or time.time() > deadline:
            return i
        time.sleep(0.05)


def read_chars(pid: int) -> int:
    """Bytes the process has read through read-like system calls (files and sockets)."""
    for line in open(f"/proc/{pid}/io"):
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/PID/io")


def test_key_info_during_a_stalled_upload_shows_the_stored_bytes_and_their_crc(ftpd):
    data = random.Random(60).randbytes(6 * MiB)
    remote = ftpd.file("alice", "live.ts")
    a = ftpd.ftp()
    conn = start_upload(a, "live.ts", crc32(data))
    q = ftpd.ftp()

    # Bytes are stored as soon as a write buffer is full or the sender pauses.
    conn.sendall(data[: 3 * MiB])
    i = wait_for_info(q, "live.ts", 3 * MiB)
    assert (i["size"], i["received-crc"]) == (str(3 * MiB), key(crc32(data[: 3 * MiB]))), i
    assert i["state"] == "partial" and i["declared"] == key(crc32(data))
    assert remote.stat().st_size == 3 * MiB

    # Half a buffer more and an odd byte, then silence: after the pause every byte sent is in
    # the file and counted, and the CRC is that of exactly those bytes.
    sent = 3 * MiB + MiB // 2 + 1
    conn.sendall(data[3 * MiB : sent])
    i = wait_for_info(q, "live.ts", sent)
    assert (i["size"], i["received-crc"]) == (str(sent), key(crc32(data[:sent]))), i
    assert remote.stat().st_size == sent
    assert remote.read_bytes() == data[:sent]

    conn.sendall(data[sent:])
    conn.close()
    assert a.voidresp().startswith("226")
    i = info(q, "live.ts")
    assert (i["state"], i["size"], i["received-crc"]) == ("verified", str(len(data)), key(crc32(data)))
    a.quit()
    q.quit()


def test_key_info_on_a_256_mib_file_answers_without_reading_it(ftpd_factory):
    srv = ftpd_factory(durability="none")  # durability does not matter here; spare the disk
    rnd = random.Random(61)
    big = b"".join(rnd.randbytes(MiB) for _ in range(256))
    small = random.Random(62).randbytes(4096)
    f = srv.ftp()
    f.voidcmd("TYPE I")
    f.sendcmd(f"SITE KEY {key(crc32(big))}")
    assert f.storbinary("STOR big.ts", io.BytesIO(big), blocksize=MiB).startswith("226")
    f.sendcmd(f"SITE KEY {key(crc32(small))}")
    assert f.storbinary("STOR small.ts", io.BytesIO(small)).startswith("226")

    def timed_info(name: str) -> tuple[dict, float, int]:
        before = read_chars(srv.proc.pid)
        t0 = time.perf_counter()
        i = info(f, name)
        took = time.perf_counter() - t0
        return i, took, read_chars(srv.proc.pid) - before

    for _ in range(2):
        i, took, read = timed_info("big.ts")
        assert (i["state"], i["size"], i["received-crc"]) == ("verified", str(len(big)), key(crc32(big)))
        assert read < MiB, f"KEY INFO on a 256 MiB file read {read} bytes"
        assert took < 0.5, f"KEY INFO on a 256 MiB file took {took:.3f}s"
        i, took, read = timed_info("small.ts")
        assert i["received-crc"] == key(crc32(small))
        assert read < MiB and took < 0.5
    f.quit()

    # After a restart, neither start-up nor the query reads the file again.
    srv.restart()
    g = srv.ftp()
    i = info(g, "big.ts")
    assert (i["state"], i["received-crc"]) == ("verified", key(crc32(big)))
    assert read_chars(srv.proc.pid) < 16 * MiB, "start-up or KEY INFO re-read a stored file"
    g.quit()
