"""One writer per file, with takeover: a session that resumes a file still held by a stalled
transfer makes the old one stop and record what it has, and proceeds within the takeover wait;
two live sessions never interleave bytes in one file."""

import ftplib
import io
import random
import re
import threading
import time

import pytest

from helpers import MiB, crc32, final_reply, info, key, send_paced, start_upload, wait_for_disk_size


def test_a_reconnected_session_takes_over_a_stalled_upload(ftpd_factory):
    takeover_wait = 8
    srv = ftpd_factory(takeover_wait=takeover_wait)
    data = random.Random(30).randbytes(8 * MiB)
    sent_by_a = 2 * MiB + MiB // 2
    remote = srv.file("alice", "rec.ts")

    # Session A: declares, sends 2.5 MiB, then stalls with its data connection open.
    a = srv.ftp()
    a_data = start_upload(a, "rec.ts", crc32(data))
    a_data.sendall(data[:sent_by_a])
    wait_for_disk_size(remote, 2 * MiB)
    time.sleep(0.3)

    # Session B: the box after it reconnected, following the seed dialogue.
    b = srv.ftp()
    size = int(b.sendcmd("SIZE rec.ts").split()[1])
    assert 0 < size <= sent_by_a
    assert b.sendcmd("SITE KEY NULL") == f"230 {key(crc32(data))}"
    # The prefix proof: KEY INFO describes the same bytes SIZE counts, and they are ours (a
    # client that sees two different sizes cannot prove its prefix and uploads everything again).
    i = info(b, "rec.ts")
    assert (i["size"], i["received-crc"]) == (str(size), key(crc32(data[:size])))
    b.voidcmd("TYPE I")
    t0 = time.monotonic()
    reply = b.storbinary("STOR rec.ts", io.BytesIO(data[size:]), blocksize=MiB, rest=size)
    took = time.monotonic() - t0
    assert reply.startswith("226"), reply
    assert took < takeover_wait / 2, f"the newcomer waited {took:.1f}s: the stalled writer did not let go"

    # A is told its transfer failed; it had stored and recorded everything it sent.
    with pytest.raises(ftplib.error_temp, match="^426"):
        a.getresp()
    a_data.close()
    stopped = re.search(r"upload stopped \(taken over.*path=/rec.ts size=(\d+)", srv.log())
    assert stopped and int(stopped.group(1)) == sent_by_a, srv.log()

    assert remote.read_bytes() == data
    i = info(b, "rec.ts")
    assert (i["state"], i["size"], i["received-crc"], i["declared"]) == (
        "verified",
        str(len(data)),
        key(crc32(data)),
        key(crc32(data)),
    )
    b.quit()
    a.close()


def upload(srv, name: str, data: bytes, rate: float, start: threading.Barrier, delay: float, out: dict) -> None:
    f = srv.ftp()
    try:
        f.sendcmd(f"SITE KEY {key(crc32(data))}")
        f.voidcmd("TYPE I")
        start.wait(10)
        time.sleep(delay)
        conn = f.transfercmd(f"STOR {name}")
        send_paced(conn, data, rate)  # stops early when the server stops reading: taken over
        conn.close()
        out["reply"] = final_reply(f)
    finally:
        f.close()


@pytest.mark.parametrize("round", range(3))
def test_two_sessions_uploading_one_name_at_once_never_mix(ftpd, round):
    rnd = random.Random(31 + round)
    inputs = [rnd.randbytes(6 * MiB), rnd.randbytes(4 * MiB + 4321)]
    results = [{}, {}]
    start = threading.Barrier(2)
    threads = [
        threading.Thread(target=upload, args=(ftpd, "same.ts", inputs[n], 6 * MiB, start, rnd.random() * 0.3, results[n]))
        for n in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    replies = [r.get("reply", "") for r in results]

    final = ftpd.file("alice", "same.ts").read_bytes()
    assert final in inputs, "the file is a mix of the two uploads"
    winner = inputs.index(final)
    assert replies[winner].startswith("226"), replies
    assert replies[1 - winner].startswith("426"), replies  # the overlap made one take the other over
    f = ftpd.ftp()
    i = info(f, "same.ts")
    assert (i["state"], i["size"], i["received-crc"], i["declared"]) == (
        "verified",
        str(len(final)),
        key(crc32(final)),
        key(crc32(final)),
    )
    f.quit()


@pytest.mark.parametrize("action", ["DELE", "RENAME"])
def test_delete_or_rename_takes_a_stalled_upload_over(ftpd_factory, action):
    takeover_wait = 8
    srv = ftpd_factory(takeover_wait=takeover_wait)
    data = random.Random(33).randbytes(4 * MiB)
    sent = 2 * MiB + 12345
    a = srv.ftp()
    a_data = start_upload(a, "held.ts", crc32(data))
    a_data.sendall(data[:sent])
    wait_for_disk_size(srv.file("alice", "held.ts"), 2 * MiB)

    b = srv.ftp()
    t0 = time.monotonic()
    if action == "DELE":
        b.delete("held.ts")
    else:
        b.rename("held.ts", "moved.ts")
    assert time.monotonic() - t0 < takeover_wait / 2
    with pytest.raises(ftplib.error_temp, match="^426"):
        a.getresp()
    a_data.close()
    a.close()
    time.sleep(0.3)

    assert not srv.file("alice", "held.ts").exists(), "the stopped upload recreated the file"
    with pytest.raises(ftplib.error_perm):
        b.sendcmd("SITE KEY INFO held.ts")
    assert b.sendcmd("SITE KEY NULL held.ts") == "230 0x00"
    if action == "RENAME":
        # Everything A sent was stored before the rename, and the record moved with the file.
        assert srv.file("alice", "moved.ts").read_bytes() == data[:sent]
        i = info(b, "moved.ts")
        assert (i["size"], i["received-crc"], i["declared"], i["state"]) == (
            str(sent),
            key(crc32(data[:sent])),
            key(crc32(data)),
            "partial",
        )
    b.quit()
