"""Python's ftplib against the front: KEY, uploads, resume, listing, download, ABOR, QUIT.

Not a pytest module: ftpd/tests/front_libunftp.rs runs it against a front it started,

    python3 tests/clients/ftplib_client.py HOST PORT USER PASSWORD

and expects "ftplib: all ok" as the last line.
"""
import ftplib
import io
import os
import sys
import threading

host, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]

ftp = ftplib.FTP()
ftp.connect(host, port, timeout=30)
ftp.login(user, password)

assert ftp.sendcmd("KEY 0x5F2D3A26") == "230 KEY[0x5F2D3A26]"
assert ftp.sendcmd("key NULL") == "230 KEY[NULL]"
assert ftp.sendcmd("SITE KEY INFO a.ts") == "230 KEY[INFO a.ts]"

data = os.urandom(3 * 1024 * 1024 + 7)
ftp.storbinary("STOR up.bin", io.BytesIO(data))
assert ftp.size("up.bin") == len(data)
assert "up.bin" in ftp.nlst()
lines = []
ftp.retrlines("LIST", lines.append)
assert any("up.bin" in line for line in lines), lines

got = bytearray()
ftp.retrbinary("RETR up.bin", got.extend)
assert bytes(got) == data

# Resume with REST + STOR.
ftp.storbinary("STOR up.bin", io.BytesIO(data[1000:]), rest=1000)
got = bytearray()
ftp.retrbinary("RETR up.bin", got.extend)
assert bytes(got) == data

# ABOR during a download (ftplib sends it as urgent data) while the data keeps being read.
big = os.urandom(32 * 1024 * 1024)
ftp.storbinary("STOR big.bin", io.BytesIO(big))
conn = ftp.transfercmd("RETR big.bin")
conn.recv(65536)
received = []
def drain():
    n = 0
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        n += len(chunk)
    received.append(n)
t = threading.Thread(target=drain)
t.start()
resp = ftp.abort()
t.join(60)
conn.close()
assert resp[:3] in ("225", "226", "426"), resp
# A transfer reply may still follow; read up to the NOOP's.
ftp.putcmd("NOOP")
while True:
    r = ftp.getmultiline()
    if r[:3] == "200":
        break
    assert r[:3] in ("225", "226", "426", "451"), r

ftp.quit()
print("ftplib: all ok")
