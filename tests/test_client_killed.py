"""A real client process killed in the middle of an upload, then the upload resumed: the
server keeps the declared KEY and the bytes it stored, and the resumed file is byte-identical
and verified."""

import io
import random
import subprocess
import sys
import textwrap
import time

from helpers import USERS, MiB, crc32, final_reply, info, key, kill_once_stored, rst_close, start_upload, wait_for_log


def test_curl_killed_mid_upload_then_resumed_with_curl(ftpd, tmp_path):
    data = random.Random(20).randbytes(8 * MiB)
    local = tmp_path / "rec.ts"
    local.write_bytes(data)
    remote = ftpd.file("alice", "rec.ts")

    first = subprocess.Popen(
        ["curl", "-sS", "--limit-rate", "2M", "-Q", f"SITE KEY {key(crc32(data))}", "-T", str(local), ftpd.url("alice", "rec.ts")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(1)
    kill_once_stored(first, remote, MiB)
    wait_for_log(ftpd, "path=/rec.ts")  # the server has seen the end and recorded it

    stored = remote.read_bytes()
    assert MiB <= len(stored) < len(data) and stored == data[: len(stored)]
    f = ftpd.ftp()
    i = info(f, "rec.ts")
    assert (i["size"], i["received-crc"], i["declared"]) == (str(len(stored)), key(crc32(stored)), key(crc32(data)))
    assert i["state"] != "verified"
    f.quit()

    # curl -C - asks SIZE and sends the rest with APPE; it declares nothing this time.
    second = subprocess.run(
        ["curl", "-sS", "-C", "-", "-T", str(local), ftpd.url("alice", "rec.ts")], capture_output=True, text=True, timeout=60
    )
    assert second.returncode == 0, second.stderr
    assert remote.read_bytes() == data
    f = ftpd.ftp()
    i = info(f, "rec.ts")
    assert (i["state"], i["declared"], i["size"]) == ("verified", key(crc32(data)), str(len(data)))
    assert f.sendcmd("SITE KEY NULL rec.ts") == f"230 {key(crc32(data))}"
    f.quit()


SLOW_CLIENT = textwrap.dedent(
    """
    import ftplib, sys, time
    port, password, path, crc, rate = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
    data = open(path, "rb").read()
    f = ftplib.FTP()
    f.connect("127.0.0.1", int(port), timeout=30)
    f.login("alice", password)
    f.sendcmd("SITE KEY " + crc)
    f.voidcmd("TYPE I")
    conn = f.transfercmd("STOR rec.ts")
    t0, sent = time.monotonic(), 0
    while sent < len(data):
        conn.sendall(data[sent : sent + 65536])
        sent += 65536
        time.sleep(max(0.0, sent / rate - (time.monotonic() - t0)))
    conn.close()
    print(f.voidresp())
    """
)


def test_python_client_killed_mid_upload_then_resumed_with_rest_and_stor(ftpd, tmp_path):
    data = random.Random(21).randbytes(10 * MiB)
    local = tmp_path / "rec.ts"
    local.write_bytes(data)
    remote = ftpd.file("alice", "rec.ts")

    client = subprocess.Popen(
        [sys.executable, "-c", SLOW_CLIENT, str(ftpd.port), USERS["alice"], str(local), key(crc32(data)), str(3 * MiB)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    kill_once_stored(client, remote, 2 * MiB)
    wait_for_log(ftpd, "path=/rec.ts")

    # The box comes back: same name exists -> its KEY is ours -> its bytes are our prefix -> resume.
    f = ftpd.ftp()
    size = int(f.sendcmd("SIZE rec.ts").split()[1])
    assert 2 * MiB <= size < len(data)
    assert f.sendcmd("SITE KEY NULL") == f"230 {key(crc32(data))}"
    i = info(f, "rec.ts")
    assert (i["size"], i["received-crc"]) == (str(size), key(crc32(data[:size])))
    f.voidcmd("TYPE I")
    assert f.storbinary("STOR rec.ts", io.BytesIO(data[size:]), rest=size).startswith("226")
    i = info(f, "rec.ts")
    assert (i["state"], i["declared"], i["received-crc"]) == ("verified", key(crc32(data)), key(crc32(data)))
    f.quit()
    assert remote.read_bytes() == data


def test_data_connection_reset_right_after_it_opened_still_gets_a_reply(ftpd):
    """A link that dies just after the data connection opened: the client still gets a failure
    reply on the control connection (the front must not pass the reset on before libunftp has
    taken the connection in, or libunftp drops the transfer without a word), and the stored
    bytes are recorded as a partial file. The seed's resume dialogue, 20 times over."""
    data = bytes(range(256)) * 1024
    crc = key(crc32(data))
    for i in range(20):
        f = ftpd.ftp(timeout=15)
        size = 0 if i == 0 else int(f.sendcmd("SIZE rec.ts").split()[1])
        assert size == i, f"attempt {i}"
        if i:
            assert f.sendcmd("KEY NULL") == f"230 {crc}"
        else:
            f.sendcmd(f"KEY {crc}")
        conn = start_upload(f, "rec.ts", rest=size or None)
        conn.sendall(data[size : size + 1])
        rst_close(conn)
        resp = final_reply(f)
        assert resp[:1] in "45", f"attempt {i}: {resp}"
        f.close()
    f = ftpd.ftp()
    assert info(f, "rec.ts")["state"] == "partial"
    f.quit()
